import math

import numpy as np
from PIL import Image

from codec.metrics import ms_ssim, psnr
from tests.conftest import photo


def test_psnr_known_value():
    a = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    b = Image.fromarray(np.full((8, 8, 3), 10, np.uint8))
    assert math.isclose(psnr(a, b), 10 * math.log10(255**2 / 100), rel_tol=1e-6)
    assert psnr(a, a) == math.inf


def test_ms_ssim_full_and_small_images():
    big = photo(256, 192)
    assert abs(ms_ssim(big, big) - 1) < 1e-6
    noisy = Image.fromarray(np.clip(np.asarray(big, np.int16) + 40, 0, 255).astype(np.uint8))
    assert 0 < ms_ssim(big, noisy) < 1
    small = photo(24, 20)
    assert abs(ms_ssim(small, small) - 1) < 1e-6
