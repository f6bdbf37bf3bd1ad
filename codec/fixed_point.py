"""Exact fixed-point evaluation of the entropy-parameter networks.

Why: rANS decoding desynchronises as soon as the decoder derives one scale index or one
mean differently from the encoder (CompressAI issues #279 and #309: float results differ
with thread count, batch size, BLAS and device). Here those networks run on integers held
in float64. Every product and partial sum is an integer below 2**53, so it is exact, and
the result does not depend on summation order, threads, batching or hardware. Rescaling is
a division by a power of two followed by floor, which is exact too. This is the idea of
Ballé et al., "Integer networks for data compression with latent-variable models" (ICLR
2019), applied after training to a float network built from Conv2d, ReLU and PixelShuffle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACT_BITS = 12  # fractional bits of activations
WEIGHT_BITS = 14  # fractional bits of weights
ACT_LIMIT = float(2 ** (ACT_BITS + 8))  # activations are clamped to +-256 in real units
WEIGHT_LIMIT = float(2 ** (WEIGHT_BITS + 4))  # weights must lie within +-16
MAX_FAN_IN = 2**12  # with the limits above, every sum stays below 2**51


def to_fixed(x: torch.Tensor, bits: int = ACT_BITS) -> torch.Tensor:
    """Real tensor -> integer-valued float64 tensor (floor, so exact for float32 input)."""
    return torch.floor(x.double() * float(2**bits)).clamp_(-ACT_LIMIT, ACT_LIMIT)


def from_fixed(x: torch.Tensor, bits: int = ACT_BITS) -> torch.Tensor:
    return (x / float(2**bits)).float()


def shift_floor(x: torch.Tensor, bits: int) -> torch.Tensor:
    """floor(x / 2**bits): exact for integer-valued float64."""
    return torch.floor(x / float(2**bits))


class FixedConv2d(nn.Module):
    """A Conv2d with integer weights, run as im2col + matmul (no Winograd or FFT paths).

    The integer weights are buffers (they move with ``.to(device)``) but not state: they are
    derived from the float network each time the tables are loaded. A float64 matmul of integers
    below 2**53 is exact on any device, so CPU and GPU give the same result."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError("fixed-point conv supports groups=1, dilation=1 only")
        w = torch.round(conv.weight.detach().double().cpu() * 2**WEIGHT_BITS)
        if w.abs().max() > WEIGHT_LIMIT:
            raise ValueError(f"weight magnitude {w.abs().max().item() / 2**WEIGHT_BITS:.2f} exceeds fixed-point range")
        if w[0].numel() > MAX_FAN_IN:
            raise ValueError(f"fan-in {w[0].numel()} exceeds {MAX_FAN_IN}")
        self.register_buffer("weight", w.reshape(w.shape[0], -1), persistent=False)
        self.kernel = conv.kernel_size
        self.stride = conv.stride
        self.padding = conv.padding
        b = conv.bias.detach().double().cpu() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        self.register_buffer("bias", torch.round(b * 2 ** (ACT_BITS + WEIGHT_BITS))[None, :, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype != torch.float64:  # e.g. a .half() of the whole model: no longer exact
            raise TypeError(f"fixed-point weights must stay float64, not {self.weight.dtype}")
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel, padding=self.padding, stride=self.stride)
        out = self.weight @ cols + self.bias
        oh = (h + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1
        out = shift_floor(out, WEIGHT_BITS).clamp_(-ACT_LIMIT, ACT_LIMIT)
        return out.reshape(n, -1, oh, ow)


class FixedSequential(nn.Sequential):
    """Integer twin of an ``nn.Sequential`` of Conv2d, ReLU and PixelShuffle layers."""

    def __init__(self, net: nn.Sequential) -> None:
        layers: list[nn.Module] = []
        for layer in net:
            if isinstance(layer, nn.Conv2d):
                layers.append(FixedConv2d(layer))
            elif isinstance(layer, (nn.ReLU, nn.PixelShuffle)):
                layers.append(layer)
            else:
                raise TypeError(f"no exact fixed-point form for {type(layer).__name__}")
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float64:
            raise TypeError("fixed-point input must be integer-valued float64")
        return super().forward(x)
