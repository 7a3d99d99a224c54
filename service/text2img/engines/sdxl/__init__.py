"""SDXL-Lightning on diffusers: spec (torch-free), weights (huggingface_hub), engine.

`spec` never imports torch or diffusers; `weights` imports huggingface_hub only; `engine`
builds `diffusers.StableDiffusionXLPipeline` from the cache (or, for `tiny-sdxl`, from
small random-weight configs in-process).
"""
