"""Images to bytes in the format a request asked for (OpenAI's `output_format`).

`output_compression` (0-100, OpenAI's default 100) is the quality of the lossy formats:
100 keeps the most detail (WebP then encodes losslessly), lower values give smaller files.
PNG is always lossless, so it takes no compression value.
"""

from __future__ import annotations

import io

from PIL import Image

FORMATS = ("png", "jpeg", "webp")
DEFAULT_COMPRESSION = 100


def encode_image(
    image: Image.Image, output_format: str = "png", compression: int | None = None
) -> bytes:
    """Encode with Pillow; the bytes start with the format's own signature."""
    buf = io.BytesIO()
    quality = DEFAULT_COMPRESSION if compression is None else compression
    if output_format == "png":
        image.save(buf, format="PNG", compress_level=4)
    elif output_format == "jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=max(1, min(quality, 95)))
    elif output_format == "webp":
        if quality >= 100:
            image.save(buf, format="WEBP", lossless=True)
        else:
            image.save(buf, format="WEBP", quality=quality)
    else:
        raise ValueError(
            f"output_format must be one of {', '.join(FORMATS)}, got {output_format!r}"
        )
    return buf.getvalue()
