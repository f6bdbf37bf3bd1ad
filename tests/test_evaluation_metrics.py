import math

import numpy as np
import pytest
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


def _saturating(offset: float, slope: float, cap: float, qualities: list[float]) -> list[tuple[float, float]]:
    """A PSNR-like curve: log rate rises with quality and steeply near the scale's ceiling ``cap``."""
    return [(float(np.exp(offset + slope * q + 1.0 / (cap - q))), q) for q in qualities]


def test_envelope_is_never_beaten_by_one_of_its_curves():
    from evaluation.metrics import bd_rate, envelope

    full = _saturating(-9.0, 0.30, 40, [22, 25, 28, 31])
    half = _saturating(-7.5, 0.25, 30, [20, 23, 26, 28.5])
    quarter = _saturating(-6.8, 0.22, 26, [18, 21, 23.5, 25])
    best = envelope([full, half, quarter])
    # joining the three curves' own points drew chords that full size beat by 22 %
    assert [round(bd_rate(best, c), 1) >= 0.0 for c in (full, half, quarter)] == [True] * 3
    assert abs(bd_rate(best, full)) < 0.05  # full size is the best curve over its own range
    assert min(q for _, q in best) == 18 and max(q for _, q in best) == 31
    assert all(r1 < r2 and q1 < q2 for (r1, q1), (r2, q2) in zip(best, best[1:]))
    assert envelope([[(0.1, 20.0)], [(0.2, 19.0), (0.3, 25.0)]])[0] == (0.1, 20.0)  # a lone point counts too


def test_bd_rate_leaves_dominated_points_out_in_either_direction():
    from evaluation.metrics import bd_rate

    anchor = [(0.01, 20.0), (0.02, 22.0), (0.05, 24.5), (0.1, 26.0)]
    test = [(r * 0.8, q) for r, q in anchor]
    worse = [*test, (0.06, 23.0)]  # more bits than (0.04, 24.5) for less quality: nobody's setting
    assert abs(bd_rate(anchor, worse) - (-20.0)) < 1e-9
    flip = [(r, -q) for r, q in anchor]  # a lower-is-better metric: the same curves, read the other way
    assert abs(bd_rate(flip, [(r, -q) for r, q in worse], lower_is_better=True) - (-20.0)) < 1e-9
    with pytest.raises(ValueError, match="share no quality range"):
        bd_rate(flip, [(r, -q) for r, q in worse])  # read higher-is-better, the front is one point
