import math

import numpy as np
from PIL import Image

from evaluation.metrics import PSNR_CAP, ms_ssim, psnr
from tests.conftest import photo


def test_psnr_known_value():
    a = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    b = Image.fromarray(np.full((8, 8, 3), 10, np.uint8))
    assert math.isclose(psnr(a, b), 10 * math.log10(255**2 / 100), rel_tol=1e-6)
    assert psnr(a, a) == PSNR_CAP  # finite, so a set with one lossless image keeps a mean


def test_ms_ssim_full_and_small_images():
    big = photo(256, 192)
    assert abs(ms_ssim(big, big) - 1) < 1e-6
    noisy = Image.fromarray(np.clip(np.asarray(big, np.int16) + 40, 0, 255).astype(np.uint8))
    assert 0 < ms_ssim(big, noisy) < 1
    small = photo(24, 20)
    assert abs(ms_ssim(small, small) - 1) < 1e-6
    # one pixel a side (the library refuses the shape): the one-pixel window's SSIM, as on a flat 2x2
    flat = [Image.new("RGB", (2, 2), c) for c in ((10, 20, 30), (12, 20, 30))]
    for size in ((1, 1), (1, 5), (7, 1)):
        a, b = (Image.new("RGB", size, im.getpixel((0, 0))) for im in flat)
        assert abs(ms_ssim(a, b) - ms_ssim(*flat)) < 1e-6 and ms_ssim(a, a) == 1.0


def test_bd_rate_hand_computed_cases():
    from evaluation.metrics import bd_rate

    anchor = [(0.01, 20.0), (0.02, 22.0), (0.05, 24.5), (0.1, 26.0)]
    assert abs(bd_rate(anchor, [(r * 0.8, q) for r, q in anchor]) - (-20.0)) < 1e-9
    assert abs(bd_rate(anchor, anchor)) < 1e-9
    # a log-linear pair: log r = q / 10 against log r = q / 10 + log 2 over q in [20, 30] -> +100 %
    a = [(float(np.exp(q / 10)), q) for q in (20.0, 25.0, 30.0)]
    b = [(2 * r, q) for r, q in a]
    assert abs(bd_rate(a, b) - 100.0) < 1e-6


def test_hf_energy_ratio():
    from PIL import ImageFilter

    from evaluation.metrics import hf_energy, hf_energy_ratio
    from tests.conftest import photo

    img = photo(96, 64)
    assert hf_energy_ratio(img, img) == 1.0
    assert hf_energy_ratio(img, img.filter(ImageFilter.GaussianBlur(2))) < 0.3
    assert hf_energy_ratio(img, img.filter(ImageFilter.UnsharpMask(3, 200))) > 1.2
    flat = Image.new("RGB", (8, 8), (10, 20, 30))
    assert hf_energy(flat) == 0.0


def test_pareto_front():
    from evaluation.metrics import pareto_front

    assert pareto_front([(3, 12.0), (1, 10.0), (2, 9.0), (4, 11.0)]) == [(1, 10.0), (3, 12.0)]
