"""SDXL-Lightning on diffusers: spec (torch-free), weights (huggingface_hub), engine.

`spec` never imports torch or diffusers; `weights` imports huggingface_hub only; `engine`
builds `diffusers.StableDiffusionXLPipeline` from the cache (or, for `tiny-sdxl`, from
small random-weight configs in-process).
"""

import logging


class _NoTorchvisionNotice(logging.Filter):
    """Drops transformers' "`CLIPImageProcessor` requires torchvision (not installed);
    falling back to …Pil" notices, printed at every start when diffusers' SDXL pipeline
    module is imported. We draw from text only: the pipeline is built without a
    feature extractor or image encoder, so no image processor ever runs, and installing
    torchvision (a wheel that must match torch's exact CUDA build) would buy nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionNotice())
