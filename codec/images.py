"""Reading any PIL-readable image into RGB, and moving between PIL images and tensors.

Every failure becomes an :class:`ImageError` whose message is one line naming the input,
so that a bulk job can record it as the asset's reason and move on.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

# Decompression-bomb limit: 256 megapixels by default (PIL's own default is 89 MP).
MAX_PIXELS = int(os.environ.get("RESULIC_MAX_PIXELS", 256 * 1024 * 1024))


class ImageError(ValueError):
    """An input that cannot be compressed: ``str()`` is ``"<name>: <reason>"``, one line."""

    def __init__(self, label: str, reason: str) -> None:
        super().__init__(f"{label}: {reason}")
        self.reason = reason


def _to_rgb(img: Image.Image) -> Image.Image:
    """Normalise any mode to 8-bit RGB; transparency is composited over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(np.round(arr / peak * 255), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.round(np.asarray(img)), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def normalise(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation and convert to 8-bit RGB."""
    return _to_rgb(ImageOps.exif_transpose(img))


def load_image(source: str | os.PathLike | bytes, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open, apply the EXIF orientation, and normalise to RGB; raise ImageError on any problem."""
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as e:
        raise ImageError(label, f"cannot read file ({e.strerror or e})") from e
    if not data:
        raise ImageError(label, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(io.BytesIO(data))  # the header only: the size is checked before any pixel is read
                if img.width * img.height > max_pixels:
                    raise ImageError(label, f"too large ({img.width}x{img.height} exceeds {max_pixels} pixels)")
                Image.MAX_IMAGE_PIXELS = max_pixels  # PIL's own check of later frames, at this cap
                img.load()
            finally:
                Image.MAX_IMAGE_PIXELS = saved
            return normalise(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(label, f"too large (decompression bomb: {e})") from e
    except UnidentifiedImageError as e:
        raise ImageError(label, "not an image (unrecognised format)") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "truncated" in reason.lower() or isinstance(e, EOFError):
            raise ImageError(label, f"truncated image ({reason})") from e
        raise ImageError(label, f"unreadable image ({reason})") from e
    except MemoryError:  # not necessarily the file's: the caller decides (a bulk job retries it next time)
        raise
    except Exception as e:  # noqa: BLE001 - PIL on hostile metadata (struct.error, TypeError, ...): this file's failure
        reason = str(e).splitlines()[0] if str(e) else ""
        raise ImageError(label, f"unreadable image ({type(e).__name__}: {reason})") from e


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (1, 3, H, W) float in [0, 1]."""
    arr = np.asarray(img, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255


def to_image(x: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [0, 1] -> RGB PIL image (rounded to 8 bits)."""
    arr = (x[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


def pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad H and W up to a multiple (the codec's total stride); crop back after decoding."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
