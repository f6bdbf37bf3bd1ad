"""How much fine texture an image holds: the mean squared Laplacian of its luma.

The encoder's detail gain search (``codec.cdm.detail``) holds each stream's texture to the
original's with this measure, and the evaluation's texture ratio (``evaluation.metrics``)
reports the same one, so what the encoder aims at is what the benchmarks print.
"""

from __future__ import annotations

import torch


def luma_laplacian(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, H-2, W-2): the Laplacian of the luma (BT.601, 0-255).
    Differentiable, so the CDM trainer's texture term measures what the benchmarks report."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    y = (x * w).sum(1) * 255
    return y[:, 1:-1, :-2] + y[:, 1:-1, 2:] + y[:, :-2, 1:-1] + y[:, 2:, 1:-1] - 4 * y[:, 1:-1, 1:-1]


def hf_energy_tensor(x: torch.Tensor) -> torch.Tensor:
    """Per item of a (B, 3, H, W) RGB batch in [0, 1]: the mean squared Laplacian of the luma."""
    return luma_laplacian(x).pow(2).mean((1, 2))
