import pytest
import torch
from torch import nn

from codec.fixed_point import FixedSequential, from_fixed, to_fixed
from tests.conftest import torch_threads


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.PixelShuffle(2),
        nn.ReLU(), nn.Conv2d(16, 8, 5, stride=2, padding=2),
    )  # fmt: skip


def test_matches_float_network():
    net = _net()
    x = torch.randn(2, 8, 12, 10)
    got = from_fixed(FixedSequential(net)(to_fixed(x)))
    want = net(x)
    assert torch.allclose(got, want, atol=5e-3)


def test_exact_across_threads_batch_and_order():
    fixed = FixedSequential(_net())
    x = to_fixed(torch.randn(4, 8, 12, 10) * 3)
    with torch_threads(1):
        one = fixed(x)
    with torch_threads(2):
        two = fixed(x)
    singles = torch.cat([fixed(x[i : i + 1]) for i in range(4)])
    reversed_batch = fixed(x.flip(0)).flip(0)
    assert torch.equal(one, two) and torch.equal(one, singles) and torch.equal(one, reversed_batch)
    assert torch.equal(one, torch.round(one))  # integer-valued


def test_rejects_layers_without_exact_form():
    with pytest.raises(TypeError, match="GELU"):
        FixedSequential(nn.Sequential(nn.Conv2d(2, 2, 1), nn.GELU()))
    with pytest.raises(TypeError, match="float64"):
        FixedSequential(nn.Sequential(nn.ReLU()))(torch.zeros(1, 1, 1, 1))
