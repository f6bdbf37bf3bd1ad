"""Perceptual metrics for `resulic eval`, computed only from the published networks, never from
random ones: LPIPS and DISTS per image pair, FID and KID per setting.

LPIPS and DISTS are ``evaluation.perceptual``'s, loaded from the metric-weights folder (by default
``evaluation.weights.default_weights_dir()``): the published files, or the cache
``resulic weights fetch-metrics`` writes; either way checked before use.

FID and KID are torchmetrics' own, on Inception features from torch-fidelity's published checkpoint,
which must sit in the same folder (or its ``checkpoints/``); ``resulic weights fetch-metrics
--inception`` downloads it where there is internet. It is checked before use: its SHA-256 must
start with the prefix its published name carries, and it must load with
``torch.load(weights_only=True)``, so the library's own (pickle-permitting) loader only ever opens
a file already shown to hold nothing but tensors. They are set-level: Inception features of
256-pixel patches (a grid, plus the grid shifted by half a patch, as HiFiC measures small sets like
Kodak) of every image in a setting, against the originals' patches.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evaluation.perceptual import DISTS, LPIPS
from evaluation.weights import WeightsError, default_weights_dir


@dataclass(frozen=True)
class Checkpoint:
    name: str
    url: str

    @property
    def sha256_prefix(self) -> str:
        return self.name.rsplit("-", 1)[1].split(".")[0]


INCEPTION = Checkpoint("weights-inception-2015-12-05-6726825d.pth",
                       "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                       "weights-inception-2015-12-05-6726825d.pth")  # fmt: skip
PAIR_MODELS = {"lpips": LPIPS, "dists": DISTS}
PATCH = 256


def _locate(folder: str | os.PathLike, ck: Checkpoint) -> Path | None:
    for p in (Path(folder) / ck.name, Path(folder) / "checkpoints" / ck.name):
        if p.is_file():
            return p
    return None


@functools.lru_cache(maxsize=None)
def _verify(path: str, prefix: str) -> str | None:
    """None when ``path`` is the published checkpoint, else why not."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if not h.hexdigest().startswith(prefix):
        return f"{path} is not the published file (its SHA-256 does not start with {prefix})"
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means: do not hand it to a pickle loader
        return f"{path} does not load as plain tensors ({type(e).__name__})"
    return None


def weights_dir(given: str | os.PathLike | None) -> Path:
    """The metric-weights folder, absolute (Ray workers may start elsewhere)."""
    return (Path(given) if given else default_weights_dir()).resolve()


def unavailable(metric: str, folder: str | os.PathLike | None) -> str | None:
    """Why ``metric`` cannot be computed from ``folder`` (None: it can)."""
    folder = weights_dir(folder)
    if metric in PAIR_MODELS:
        try:
            _pair_model(metric, str(folder))
        except WeightsError as e:
            return str(e)
        return None
    path = _locate(folder, INCEPTION)
    if path is None:
        return f"{INCEPTION.name} not found in {folder} (resulic weights fetch-metrics --inception)"
    return _verify(str(path), INCEPTION.sha256_prefix)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]


@functools.lru_cache(maxsize=None)
def _pair_model(metric: str, folder: str) -> LPIPS | DISTS:
    return PAIR_MODELS[metric].from_dir(folder)


@functools.lru_cache(maxsize=None)
def _inception(folder: str):
    from torchmetrics.image.fid import NoTrainInceptionV3

    return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                              feature_extractor_weights_path=str(_locate(folder, INCEPTION))).eval()  # fmt: skip


@torch.no_grad()
def pair_metrics(metric: str, folder: str, ref: Image.Image, outs: list[Image.Image]) -> list[float]:
    """LPIPS or DISTS of each of ``outs`` against ``ref`` (lower is closer); the reference's
    features are computed once (DISTS's VGG16 takes seconds per image on a CPU)."""
    model = _pair_model(metric, str(folder))
    f_ref = model.features(_to_tensor(ref))
    return [float(model.compare(model.features(_to_tensor(out)), f_ref)[0]) for out in outs]


def patches(img: Image.Image, size: int = PATCH) -> list[Image.Image]:
    """Non-overlapping size×size patches on a grid, then on the grid shifted by half a patch."""
    w, h = img.size
    boxes = [(x, y) for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]
    boxes += [(x, y) for y in range(size // 2, h - size + 1, size) for x in range(size // 2, w - size + 1, size)]
    if not boxes:  # smaller than a patch: the whole image
        return [img]
    return [img.crop((x, y, x + size, y + size)) for x, y in boxes]


@torch.no_grad()
def inception_features(folder: str, img: Image.Image) -> np.ndarray:
    """(patches, 2048) Inception pool features of ``img``'s patches, float32."""
    net = _inception(str(folder))
    batch = torch.cat([torch.from_numpy(np.array(p.convert("RGB"))).permute(2, 0, 1)[None] for p in patches(img)])
    return net(batch).float().numpy()


class _Given(torch.nn.Module):
    """Feature extractor for torchmetrics' FID/KID when the features are already computed."""

    num_features = 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def set_metric(metric: str, real: np.ndarray, fake: np.ndarray) -> float | None:
    """FID or KID (mean over subsets) between two sets of Inception features; None when too few."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(real), len(fake))
    if n < 2:
        return None
    if metric == "fid":
        m = FrechetInceptionDistance(feature=_Given())
    else:
        m = KernelInceptionDistance(feature=_Given(), subsets=50, subset_size=min(1000, n))
    m.update(torch.from_numpy(real).double(), real=True)
    m.update(torch.from_numpy(fake).double(), real=False)
    value = m.compute()
    return float(value[0] if isinstance(value, tuple) else value)


def fetch_inception(dest: str | os.PathLike, base_url: str | None = None, timeout: float = 600) -> Path:
    """Download FID and KID's Inception checkpoint into ``dest`` (unless intact there), checked as on
    use. ``base_url`` replaces its published folder (a mirror, or a file URL)."""
    from codec.weights_fetch import download

    target = Path(dest) / INCEPTION.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not (target.is_file() and _verify(str(target), INCEPTION.sha256_prefix) is None):
        url = INCEPTION.url if base_url is None else base_url.rstrip("/") + "/" + INCEPTION.name
        download(url, target, lambda p: _verify(str(p), INCEPTION.sha256_prefix), timeout)
    return target
