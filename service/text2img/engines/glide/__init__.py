"""GLIDE inference engine: our own, checkpoint-compatible implementation.

Modules (all importable without side effects; torch is imported by the model modules):

- `tokenizer`   GPT-2 byte-level BPE with GLIDE's lower-casing and padding; a byte tokenizer
- `config`      model options (upstream's keyword names) -> `ModelConfig`
- `text_encoder`, `unet`  the text transformer and the (super-resolution) UNet
- `schedules`   float64 noise schedules and respacing strings
- `samplers`    p_mean_variance, ancestral, DDIM and DPM-Solver++(2M); classifier-free guidance
- `tiny`        a small seeded random-weight model pair that needs no download
- `pipeline`    prompt -> 64x64 -> 256x256 images (the interface the service uses)
"""
