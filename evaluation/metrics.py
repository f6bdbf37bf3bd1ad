"""Image quality measures on 8-bit RGB images (the figures every benchmark reports).

Nothing here runs to encode or decode: the encoder's texture measure is ``codec.texture``,
which ``hf_energy`` reports on a whole image."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from pytorch_msssim import ms_ssim as _ms_ssim
from pytorch_msssim import ssim as _ssim

from codec.images import to_tensor
from codec.texture import hf_energy_tensor


def _pair(a: Image.Image, b: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    if a.size != b.size:
        raise ValueError(f"images differ in size: {a.size} vs {b.size}")
    return to_tensor(a.convert("RGB")), to_tensor(b.convert("RGB"))


PSNR_CAP = 100.0  # dB: an exact reconstruction's, so that one lossless image leaves a set's mean finite


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = _pair(a, b)
    mse = float(((x - y) ** 2).mean())
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(1 / mse))


def ms_ssim(a: Image.Image, b: Image.Image) -> float:
    """MS-SSIM on RGB in [0, 1]. Its five scales need more than 160 px a side; smaller images
    get single-scale SSIM with the largest odd window that fits (at most 11)."""
    x, y = _pair(a, b)
    side = min(x.shape[-2:])
    if side > 160:
        return float(_ms_ssim(x, y, data_range=1.0))
    if side < 2:  # a window of one pixel: no variance, so SSIM is its luminance term (the library refuses such shapes)
        c1 = 0.01**2
        return float(((2 * x * y + c1) / (x * x + y * y + c1)).mean())
    win = min(11, side if side % 2 else side - 1)
    return float(_ssim(x, y, data_range=1.0, win_size=max(win, 1)))


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(rate, quality) points a codec can actually offer: each beats every cheaper point's quality."""
    out, best = [], -np.inf
    for r, q in sorted(points):
        if q > best:
            out.append((r, q))
            best = q
    return out


def _log_rate_of_quality(points: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(quality, log rate) of a curve's Pareto front, quality strictly rising: what BD-rate
    interpolates. A dominated point (more bits, worse quality) is not a setting anyone would use,
    and would fold the interpolated curve back on itself."""
    front = pareto_front(points)
    return np.array([q for _, q in front]), np.log(np.array([r for r, _ in front]))


def _pchip(q: np.ndarray, log_r: np.ndarray):
    from scipy.interpolate import PchipInterpolator

    return PchipInterpolator(q, log_r)


def envelope(curves: list[list[tuple[float, float]]], samples: int = 129) -> list[tuple[float, float]]:
    """The best practical curve over several operating curves (one format at several scales): at
    each quality, the fewest bits any of them needs, each read between its points as ``bd_rate``
    reads it (log rate a PCHIP of quality), sampled at ``samples`` qualities per curve. Joining
    the curves' own points instead would draw chords between scales that no setting reaches, and
    a single scale could then beat the best curve."""
    dense: list[tuple[float, float]] = []
    for pts in curves:
        q, log_r = _log_rate_of_quality(pts)
        if len(q) < 2:  # one setting: a point, not a curve
            dense += pareto_front(pts)
            continue
        grid = np.linspace(q[0], q[-1], samples)
        dense += list(zip(np.exp(_pchip(q, log_r)(grid)).tolist(), grid.tolist()))
    return pareto_front(dense)


def bd_rate(anchor: list[tuple[float, float]], test: list[tuple[float, float]], lower_is_better: bool = False) -> float:
    """Bjøntegaard delta rate in percent: the mean rate change of ``test`` against ``anchor`` at equal
    quality, over the quality range both cover. Points are (rate, quality), quality higher-better
    unless ``lower_is_better`` (LPIPS, DISTS); each curve's dominated points are left out, and
    log-rate is interpolated as a monotone cubic (PCHIP) of quality, as in current BD-rate practice.
    Negative: ``test`` saves."""
    sign = -1.0 if lower_is_better else 1.0
    qa, ra = _log_rate_of_quality([(r, sign * q) for r, q in anchor])
    qt, rt = _log_rate_of_quality([(r, sign * q) for r, q in test])
    if len(qa) < 2 or len(qt) < 2 or max(qa.min(), qt.min()) >= min(qa.max(), qt.max()):
        raise ValueError("the two curves share no quality range")
    lo, hi = max(qa.min(), qt.min()), min(qa.max(), qt.max())
    grid = np.linspace(lo, hi, 1001)
    diff = _pchip(qt, rt)(grid) - _pchip(qa, ra)(grid)
    return float((np.exp(np.trapz(diff, grid) / (hi - lo)) - 1) * 100)


def hf_energy(image: Image.Image) -> float:
    """Mean squared Laplacian of the luma (BT.601, 0-255): how much fine texture an image holds."""
    return float(hf_energy_tensor(to_tensor(image.convert("RGB")).double())[0])


def hf_energy_ratio(reference: Image.Image, image: Image.Image) -> float:
    """High-frequency energy of ``image`` over the reference's: 1 keeps the texture, < 1 blurs it,
    > 1 adds more than was there."""
    if reference.size != image.size:
        raise ValueError(f"images differ in size: {reference.size} vs {image.size}")
    ref = hf_energy(reference)
    return hf_energy(image) / ref if ref > 0 else math.inf
