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


def upsample2(n_in: int, n_out: int) -> nn.Sequential:
    """Sub-pixel 2x upsampling (conv then PixelShuffle): exact in fixed point, unlike transposed convs."""
    return nn.Sequential(conv3(n_in, 4 * n_out), nn.PixelShuffle(2))
