"""text2img: a private text-to-image service (GLIDE, SDXL-Lightning) on a Google Cloud T4 GPU."""

__version__ = "0.1.0"
