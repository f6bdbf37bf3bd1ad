"""Shared fixtures: the real TAEF2 weights from ../shared and the project's trained latent codec."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
KODAK = ROOT.parent / "shared" / "datasets" / "kodak"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def preset():
    from codec.presets import load_preset

    return load_preset("taef2")


def photo(width: int = 96, height: int = 64, name: str = "kodim23.png") -> Image.Image:
    """A crop of a real photo (Kodak is only used for evaluation, never training)."""
    img = Image.open(KODAK / name).convert("RGB")
    return img.crop((200, 150, 200 + width, 150 + height))


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def psnr_arrays(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    return 10 * np.log10(255**2 / max(((x - y) ** 2).mean(), 1e-12))
