"""The Pulumi program of text2img: `pulumi up` runs `__main__.py` in this folder."""
