"""Building blocks of the latent codec's transforms."""

from __future__ import annotations

import torch
from torch import nn


def conv3(n_in: int, n_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1)


def conv5(n_in: int, n_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 5, stride=stride, padding=2)


class ResBlock(nn.Module):
    """conv-ReLU-conv with an identity skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv3(channels, channels), nn.ReLU(), conv3(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualStack(nn.Module):
    """x + body(x): a conv into ``hidden`` channels, residual blocks, and a zero-initialised conv
    back, so that the stack starts as the identity."""

    def __init__(self, channels: int, hidden: int, blocks: int) -> None:
        super().__init__()
        out = conv3(hidden, channels)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.body = nn.Sequential(conv3(channels, hidden), *[ResBlock(hidden) for _ in range(blocks)], nn.ReLU(), out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)
