"""Image quality measures on 8-bit RGB images (the figures every benchmark reports)."""

from __future__ import annotations

import math

import torch
from PIL import Image
from pytorch_msssim import ms_ssim as _ms_ssim
from pytorch_msssim import ssim as _ssim

from codec.images import to_tensor


def _pair(a: Image.Image, b: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    if a.size != b.size:
        raise ValueError(f"images differ in size: {a.size} vs {b.size}")
    return to_tensor(a.convert("RGB")), to_tensor(b.convert("RGB"))


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = _pair(a, b)
    mse = float(((x - y) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def ms_ssim(a: Image.Image, b: Image.Image) -> float:
    """MS-SSIM on RGB in [0, 1]. Its five scales need more than 160 px a side; smaller images
    get single-scale SSIM with the largest odd window that fits (at most 11)."""
    x, y = _pair(a, b)
    side = min(x.shape[-2:])
    if side > 160:
        return float(_ms_ssim(x, y, data_range=1.0))
    win = min(11, side if side % 2 else side - 1)
    return float(_ssim(x, y, data_range=1.0, win_size=max(win, 1)))
