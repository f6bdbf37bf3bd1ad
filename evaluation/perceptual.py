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

import torch
import torch.nn.functional as F
from torch import nn

from evaluation.weights import (
    DISTS_CACHE,
    LPIPS_CACHE,
    RAW_SHA256,
    check_sha256,
    default_weights_dir,
    flax_convs,
    load_numpy_pickle,
    read_cache,
)

__all__ = ["LPIPS", "DISTS", "default_weights_dir"]

# tensors_digest of each model's state_dict, as loaded from the published files
LPIPS_DIGEST = "f6f7b5df82fea2fc803af9a7b5aec9e842769b1badad4213193f2b109dcf620c"
DISTS_DIGEST = ""


def _raw_pth(root: Path, name: str) -> dict[str, torch.Tensor]:
    data = check_sha256(root / name, RAW_SHA256[name])
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _raw_ckpt(root: Path, name: str) -> dict:
    return load_numpy_pickle(check_sha256(root / name, RAW_SHA256[name]))


class _Frozen(nn.Module):
    """Loading and freezing shared by both metrics."""

    CACHE: str
    DIGEST: str

    @classmethod
    def raw_state(cls, root: Path) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def from_dir(cls, path: str | os.PathLike | None = None):
        """The model from ``path`` (default: ``default_weights_dir()``), raw files or fetch cache."""
        root = Path(path) if path is not None else default_weights_dir()
        if (root / cls.CACHE).is_file():
            state = read_cache(root / cls.CACHE, cls.DIGEST)
        else:
            state = cls.raw_state(root)
        model = cls()
        model.load_state_dict(state)
        return model.requires_grad_(False).eval()


class LPIPS(_Frozen):
    """LPIPS v0.1 with the AlexNet backbone (Zhang et al., 2018), as the ``lpips`` package computes it."""

    CACHE = LPIPS_CACHE
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

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        feats = self.features(torch.cat([x, y]))
        d = 0
        for f, head in zip(feats, self.heads):
            f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fx, fy = f.chunk(2)
            d = d + head((fx - fy).pow(2)).mean((1, 2, 3))
        return d
