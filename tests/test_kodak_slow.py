"""Whole Kodak images through the shipped preset (slow: run with `pytest -m slow`)."""

import pytest

import codec
from codec.images import load_image
from evaluation.metrics import psnr
from tests.conftest import KODAK

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["kodim04.png", "kodim19.png"])  # portrait and landscape
def test_rate_range_on_kodak(preset, name):
    img = load_image(KODAK / name)
    lowest = codec.encode(img, rate=0, preset=preset)
    highest = codec.encode(img, rate=9, preset=preset)
    bpp = lambda s: len(s) * 8 / (img.width * img.height)  # noqa: E731
    # the default model's full-size range is about 0.011-0.11 bpp (below it, --scale auto)
    assert bpp(lowest) < 0.015 and bpp(highest) > 0.08
    assert psnr(img, codec.decode(highest, preset=preset)) > psnr(img, codec.decode(lowest, preset=preset)) + 3
