"""Classical codecs through Pillow, the baselines every evaluation runs beside resulic.

At ultra-low rates the practical way to use a classical codec is to downscale first and
upscale after: each codec runs at full size and on 2x and 4x Lanczos downscales, and the
metrics compare the upscaled result with the original.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, features

QUALITIES = {"jpeg": (1, 5, 10, 20, 35, 50), "webp": (0, 5, 10, 20, 35, 50),
             "avif": (0, 5, 10, 20, 30, 45), "jxl": (1, 5, 10, 20, 35, 50)}  # fmt: skip
SCALES = (1, 2, 4)


_PIL_FEATURE = {"jpeg": "jpg", "webp": "webp", "avif": "avif"}


def available(fmt: str) -> bool:
    """Whether Pillow here can write ``fmt`` (JPEG XL needs the pillow-jxl-plugin package)."""
    if fmt == "jxl":
        try:
            import pillow_jxl  # noqa: F401  (registers the format with Pillow)
        except ImportError:
            return False
        return True
    return bool(features.check(_PIL_FEATURE[fmt]))


@dataclass(frozen=True)
class Classical:
    fmt: str  # jpeg | webp | avif | jxl
    scale: int = 1  # 1, 2 or 4: encode a downscale by this factor

    @property
    def name(self) -> str:
        return self.fmt if self.scale == 1 else f"{self.fmt}-{self.scale}x"

    def encode(self, image: Image.Image, quality: int) -> bytes:
        small = image.copy()
        if self.scale != 1:
            small = image.resize((max(1, image.width // self.scale), max(1, image.height // self.scale)), Image.LANCZOS)
        small.info.clear()  # an ICC profile or comment of the source would be written and counted in its bpp
        buf = io.BytesIO()
        kw = {"quality": quality}
        if self.fmt == "avif":
            kw["speed"] = 6
        elif self.fmt == "webp":
            kw["method"] = 6
        small.save(buf, format={"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF", "jxl": "JXL"}[self.fmt], **kw)
        return buf.getvalue()

    def decode(self, data: bytes, size: tuple[int, int]) -> Image.Image:
        out = Image.open(io.BytesIO(data)).convert("RGB")
        return out if out.size == size else out.resize(size, Image.LANCZOS)
