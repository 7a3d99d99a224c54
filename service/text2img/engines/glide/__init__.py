"""GLIDE inference engine: our own, checkpoint-compatible implementation.

Modules (all importable without side effects; torch is imported by the model modules):

- `tokenizer`   GPT-2 byte-level BPE with GLIDE's lower-casing and padding; a byte tokenizer
- `config`      model options (upstream's keyword names) -> `ModelConfig`
- `text_encoder`, `unet`  the text transformer and the (super-resolution) UNet
- `schedules`   float64 noise schedules and respacing strings
- `samplers`    p_mean_variance, ancestral, DDIM and DPM-Solver++(2M); classifier-free guidance
- `tiny`        a small seeded random-weight model pair that needs no download
- `pipeline`    prompt -> 64x64 -> 256x256 images
- `spec`        GLIDE and TINY specs and their frozen settings (torch-free)
- `engine`      `load` and `GlideEngine`: the engine interface the service and the CLI use
- `cache`, `download`, `convert`, `files`, `weights`  the weights: cache layout and status,
                HTTP, checkpoint checks and the fp16 copy, disk helpers, the registry's
                `ensure`/`status`
"""
