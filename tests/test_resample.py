"""Resolution adaptation (codec.resample): the pinned upsampler against its spec and Pillow."""

import math

import numpy as np
import torch
from PIL import Image

from codec.images import to_tensor
from codec.resample import coded_size, lanczos_matrix, shrink, upsample
from tests.conftest import photo


def _spec_sample(row: np.ndarray, n_out: int, x: int) -> float:
    """One output sample written straight from schemas/bitstream_v1.md section 3.1."""
    n_in = len(row)
    u = (x + 0.5) * n_in / n_out - 0.5
    acc = total = 0.0
    for i in range(math.floor(u) - 2, math.floor(u) + 4):
        t = u - i
        w = 1.0 if t == 0 else (3 * math.sin(math.pi * t) * math.sin(math.pi * t / 3) / (math.pi * t) ** 2 if abs(t) < 3 else 0.0)
        acc += w * row[min(max(i, 0), n_in - 1)]
        total += w
    return acc / total


def test_coded_size_rounds_up():
    assert coded_size(768, 512, 2) == (384, 256)
    assert coded_size(767, 1, 4) == (192, 1)
    assert shrink(photo(67, 45), 2).size == (34, 23)


def test_weights_sum_to_one_and_keep_a_constant():
    m = lanczos_matrix(768, 192)
    assert torch.allclose(m.sum(1), torch.ones(768), atol=1e-6)
    x = torch.full((1, 3, 7, 5), 0.3)
    assert torch.allclose(upsample(x, 21, 13), torch.full((1, 3, 13, 21), 0.3), atol=1e-6)
    assert upsample(x, 5, 7) is x  # same size: nothing to do


def test_upsample_is_the_spec():
    rng = np.random.default_rng(0)
    img = rng.random((5, 9))
    up = upsample(torch.tensor(img, dtype=torch.float32)[None, None], 20, 11)[0, 0].numpy()
    cols = np.array([[_spec_sample(r, 20, x) for x in range(20)] for r in img])  # columns first
    want = np.array([[_spec_sample(cols[:, x], 11, y) for x in range(20)] for y in range(11)])
    assert np.abs(up - want).max() < 1e-5


def test_upsample_matches_pillows_lanczos_inside():
    """Pillow's Lanczos upscale is the same kernel (its edges are handled otherwise)."""
    small = photo(64, 48).resize((32, 24), Image.LANCZOS)
    ours = upsample(to_tensor(small), 64, 48).clamp(0, 1)[0]
    pillow = to_tensor(small.resize((64, 48), Image.LANCZOS))[0]
    inner = (slice(None), slice(6, -6), slice(6, -6))
    assert (ours[inner] - pillow[inner]).abs().max() < 2 / 255
