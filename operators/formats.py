"""What a restoration is written as: the image formats, their settings and their size limits.

Apart from ``operators.restore`` so that the service's ingress can check a request's format
without importing the decoder's libraries."""

from __future__ import annotations

import io

from PIL import Image

FORMATS = {"png": ("PNG", ".png", {}), "jpeg": ("JPEG", ".jpg", {"quality": 95}), "webp": ("WEBP", ".webp", {"quality": 95})}
# the widest and tallest image each format holds (libjpeg's limit as Pillow applies it; WebP's 14 bits)
MAX_SIDE = {"png": 2**31 - 1, "jpeg": 65500, "webp": 16383}


def too_large_for(fmt: str, width: int, height: int) -> str | None:
    """Why ``fmt`` cannot hold a ``width`` x ``height`` image (None: it can): known from the
    stream's header, before any decoding."""
    if max(width, height) <= MAX_SIDE[fmt]:
        return None
    fits = [f for f, side in MAX_SIDE.items() if max(width, height) <= side]
    return f"{fmt} holds at most {MAX_SIDE[fmt]} pixels a side, the image is {width}x{height}: ask for {' or '.join(fits)}"


def encode_image(image: Image.Image, fmt: str) -> bytes:
    name, _, kwargs = FORMATS[fmt]
    buf = io.BytesIO()
    image.save(buf, name, **kwargs)
    return buf.getvalue()
