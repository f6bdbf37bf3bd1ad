"""LPIPS (v0.1, AlexNet) and DISTS in plain PyTorch, from the published weights only.

Both take RGB in [0, 1], (B, 3, H, W), and return (B,) distances (lower is closer). They are
differentiable in their inputs, with frozen parameters, so they serve as training losses on any
device as well as metrics. No torchvision: the backbones are rebuilt here layer for layer and
loaded from the files ``evaluation.weights`` checks (raw published files or the fetch cache).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from evaluation.weights import (
    DISTS_CACHE,
    DISTS_RAW,
    LPIPS_CACHE,
    LPIPS_RAW,
    RAW_SHA256,
    WeightsError,
    check_sha256,
    default_weights_dir,
    flax_convs,
    load_numpy_pickle,
    read_cache,
)

__all__ = ["LPIPS", "DISTS", "default_weights_dir"]

# tensors_digest of each model's state_dict, as loaded from the published files
LPIPS_DIGEST = "f6f7b5df82fea2fc803af9a7b5aec9e842769b1badad4213193f2b109dcf620c"
DISTS_DIGEST = "02ab8cc53d8005e2073d3745d67b9d82ca370d8c2595c196a96a77bf9d44321a"
M = TypeVar("M", bound="_Frozen")
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _raw_pth(root: Path, name: str) -> dict[str, torch.Tensor]:
    data = check_sha256(root / name, RAW_SHA256[name])
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _raw_ckpt(root: Path, name: str) -> dict:
    return load_numpy_pickle(check_sha256(root / name, RAW_SHA256[name]))


def _unit(f: torch.Tensor) -> torch.Tensor:
    """Features scaled to unit length over channels, as ``lpips`` does; the clamp only keeps the
    gradient finite where a ReLU zeroes every channel (there the value is 0 either way)."""
    return f / (f.pow(2).sum(1, keepdim=True).clamp_min(1e-20).sqrt() + 1e-10)


class _Frozen(nn.Module):
    """Loading and freezing shared by both metrics."""

    CACHE: str
    DIGEST: str
    RAW: tuple[str, ...]

    @classmethod
    def raw_state(cls, root: Path) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def from_dir(cls: type[M], path: str | os.PathLike | None = None) -> M:
        """The model from ``path`` (default: ``default_weights_dir()``), raw files or fetch cache."""
        root = Path(path) if path is not None else default_weights_dir()
        if (root / cls.CACHE).is_file():
            state = read_cache(root / cls.CACHE, cls.DIGEST)
        elif all((root / name).is_file() for name in cls.RAW):
            state = cls.raw_state(root)
        else:
            raise WeightsError(f"no {cls.__name__} weights in {root} ({cls.CACHE}, or {' and '.join(cls.RAW)}; "
                               "`resulic weights fetch-metrics` gets them)")  # fmt: skip
        model = cls()
        model.load_state_dict(state)
        return model.requires_grad_(False).eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def compare(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) distances between two (B, 3, H, W) RGB batches in [0, 1]. ``features`` and
        ``compare`` apart let a caller reuse one image's features against many."""
        return self.compare(self.features(x), self.features(y))


class LPIPS(_Frozen):
    """LPIPS v0.1 with the AlexNet backbone (Zhang et al., 2018), as the ``lpips`` package computes it."""

    CACHE = LPIPS_CACHE
    RAW = LPIPS_RAW
    DIGEST = LPIPS_DIGEST
    CHANNELS = (64, 192, 384, 256, 256)

    def __init__(self) -> None:
        super().__init__()
        c = self.CHANNELS
        self.convs = nn.ModuleList([nn.Conv2d(3, c[0], 11, 4, 2), nn.Conv2d(c[0], c[1], 5, padding=2),
                                    nn.Conv2d(c[1], c[2], 3, padding=1), nn.Conv2d(c[2], c[3], 3, padding=1),
                                    nn.Conv2d(c[3], c[4], 3, padding=1)])  # fmt: skip
        self.heads = nn.ModuleList([nn.Conv2d(ch, 1, 1, bias=False) for ch in c])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def raw_state(cls, root: Path) -> dict[str, torch.Tensor]:
        convs = flax_convs(_raw_ckpt(root, "alexnet.ckpt"), "AlexNet_0", 5)
        heads = _raw_pth(root, "lpips_v0.1/alex.pth")
        state = {k.replace("conv", "convs."): v for k, v in convs.items()}
        state.update({f"heads.{k}.weight": heads[f"lin{k}.model.1.weight"] for k in range(5)})
        return state

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x * 2 - 1 - self.shift) / self.scale
        out = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):
                h = F.max_pool2d(h, 3, 2)
            h = F.relu(conv(h))
            out.append(h)
        return out

    def compare(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        d = 0
        for a, b, head in zip(fx, fy, self.heads):
            d = d + head((_unit(a) - _unit(b)).pow(2)).mean((1, 2, 3))
        return d


class DISTS(_Frozen):
    """DISTS (Ding et al., 2020) with the VGG16 backbone and L2 pooling, as ``DISTS_pytorch`` computes it."""

    CACHE = DISTS_CACHE
    RAW = DISTS_RAW
    DIGEST = DISTS_DIGEST
    CHANNELS = (3, 64, 128, 256, 512, 512)  # the image itself, then each stage's output

    def __init__(self) -> None:
        super().__init__()
        widths = [c for stage in VGG16_STAGES for c in stage]
        self.convs = nn.ModuleList([nn.Conv2d(i, o, 3, padding=1) for i, o in zip([3, *widths[:-1]], widths)])
        self.alpha = nn.Parameter(torch.empty(1, sum(self.CHANNELS), 1, 1))
        self.beta = nn.Parameter(torch.empty(1, sum(self.CHANNELS), 1, 1))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        a = torch.tensor([0.5, 1.0, 0.5])  # np.hanning(5)[1:-1]: the reference's 3x3 L2-pooling window
        self.register_buffer("window", (a[:, None] * a[None, :] / 4).view(1, 1, 3, 3), persistent=False)

    @classmethod
    def raw_state(cls, root: Path) -> dict[str, torch.Tensor]:
        convs = flax_convs(_raw_ckpt(root, "vgg16.ckpt"), "VGG16_0", 13)
        state = {k.replace("conv", "convs."): v for k, v in convs.items()}
        state.update(_raw_pth(root, "dists/weights.pt"))
        return state

    def _l2pool(self, h: torch.Tensor) -> torch.Tensor:
        w = self.window.expand(h.shape[1], 1, 3, 3)
        return (F.conv2d(h.pow(2), w, stride=2, padding=1, groups=h.shape[1]) + 1e-12).sqrt()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.mean) / self.std
        out, convs = [x], iter(self.convs)
        for i, stage in enumerate(VGG16_STAGES):
            if i:
                h = self._l2pool(h)
            for _ in stage:
                h = F.relu(next(convs)(h))
            out.append(h)
        return out

    def compare(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        c1 = c2 = 1e-6
        w_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w_sum, self.CHANNELS, dim=1)
        betas = torch.split(self.beta / w_sum, self.CHANNELS, dim=1)
        score = 0
        for fx, fy, alpha, beta in zip(fx, fy, alphas, betas):
            mx, my = fx.mean((2, 3), keepdim=True), fy.mean((2, 3), keepdim=True)
            vx, vy = (fx - mx).pow(2).mean((2, 3), keepdim=True), (fy - my).pow(2).mean((2, 3), keepdim=True)
            cov = (fx * fy).mean((2, 3), keepdim=True) - mx * my
            s1 = (2 * mx * my + c1) / (mx.pow(2) + my.pow(2) + c1)
            s2 = (2 * cov + c2) / (vx + vy + c2)
            score = score + (alpha * s1 + beta * s2).sum((1, 2, 3))
        return 1 - score
