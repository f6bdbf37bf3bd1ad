"""Perceptual metrics from pretrained networks (LPIPS, DISTS, FID, KID), computed only when the
user supplies the networks' published weights: never with randomly initialised backbones.

The metrics are torchmetrics' own. Their backbones are the published ImageNet checkpoints that
torchvision and torch-fidelity download on first use; here nothing is downloaded. The user
points ``--metric-weights DIR`` at a folder holding those files under their published names (a
``torch.hub`` cache such as ``~/.cache/torch/hub`` also works: files may sit in
``DIR/checkpoints``); ``resulic weights fetch-metrics DIR`` downloads them where there is
internet. Each file is checked before use: its SHA-256 must start with the prefix its published
name carries, and it must load with ``torch.load(weights_only=True)``, so the libraries' own
(pickle-permitting) loaders only ever open a file already shown to hold nothing but tensors.

FID and KID are set-level: Inception features of 256-pixel patches (a grid, plus the grid
shifted by half a patch, as HiFiC measures small sets like Kodak) of every image in a setting,
against the originals' patches.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Checkpoint:
    name: str
    url: str

    @property
    def sha256_prefix(self) -> str:
        return self.name.rsplit("-", 1)[1].split(".")[0]


ALEXNET = Checkpoint("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth")
VGG16 = Checkpoint("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth")
INCEPTION = Checkpoint("weights-inception-2015-12-05-6726825d.pth",
                       "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                       "weights-inception-2015-12-05-6726825d.pth")  # fmt: skip
NEEDS: dict[str, Checkpoint] = {"lpips": ALEXNET, "dists": VGG16, "fid": INCEPTION, "kid": INCEPTION}
PATCH = 256


def _locate(weights_dir: str | os.PathLike, ck: Checkpoint) -> Path | None:
    for p in (Path(weights_dir) / ck.name, Path(weights_dir) / "checkpoints" / ck.name):
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


def unavailable(metric: str, weights_dir: str | os.PathLike | None) -> str | None:
    """Why ``metric`` cannot be computed from ``weights_dir`` (None: it can)."""
    ck = NEEDS[metric]
    if weights_dir is None:
        return f"no --metric-weights folder given (it needs {ck.name})"
    path = _locate(weights_dir, ck)
    if path is None:
        return f"{ck.name} not found in {weights_dir}"
    return _verify(str(path), ck.sha256_prefix)


@contextlib.contextmanager
def _hub_dir(files: list[Path]):
    """torch.hub pointed at a temporary cache holding ``files``: the libraries find their
    checkpoints there and never reach for the network."""
    old = torch.hub.get_dir()
    with tempfile.TemporaryDirectory(prefix="resulic-hub-") as tmp:
        (Path(tmp) / "checkpoints").mkdir()
        for f in files:
            (Path(tmp) / "checkpoints" / f.name).symlink_to(f.resolve())
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub.set_dir(old)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]


@functools.lru_cache(maxsize=None)
def _lpips(weights_dir: str):
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    with _hub_dir([_locate(weights_dir, ALEXNET)]):
        return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).eval()


@functools.lru_cache(maxsize=None)
def _dists(weights_dir: str):
    # torchmetrics' DISTS metric class rebuilds (and reloads) its VGG on every update; its network
    # module, built once here, is the same computation
    from torchmetrics.functional.image.dists import DISTSNetwork

    with _hub_dir([_locate(weights_dir, VGG16)]):
        return DISTSNetwork().eval()


@functools.lru_cache(maxsize=None)
def _inception(weights_dir: str):
    from torchmetrics.image.fid import NoTrainInceptionV3

    return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                              feature_extractor_weights_path=str(_locate(weights_dir, INCEPTION))).eval()  # fmt: skip


@torch.no_grad()
def pair_metric(metric: str, weights_dir: str, ref: Image.Image, out: Image.Image) -> float:
    """LPIPS or DISTS between two images (lower is closer)."""
    if metric == "dists":
        return float(_dists(str(weights_dir))(_to_tensor(out), _to_tensor(ref)))
    m = _lpips(str(weights_dir))
    m.reset()
    return float(m(_to_tensor(out), _to_tensor(ref)))


def patches(img: Image.Image, size: int = PATCH) -> list[Image.Image]:
    """Non-overlapping size×size patches on a grid, then on the grid shifted by half a patch."""
    w, h = img.size
    boxes = [(x, y) for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]
    boxes += [(x, y) for y in range(size // 2, h - size + 1, size) for x in range(size // 2, w - size + 1, size)]
    if not boxes:  # smaller than a patch: the whole image
        return [img]
    return [img.crop((x, y, x + size, y + size)) for x, y in boxes]


@torch.no_grad()
def inception_features(weights_dir: str, img: Image.Image) -> np.ndarray:
    """(patches, 2048) Inception pool features of ``img``'s patches, float32."""
    net = _inception(str(weights_dir))
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


def fetch_metric_weights(dest: str | os.PathLike, base_url: str | None = None, timeout: float = 600) -> list[Path]:
    """Download the metric checkpoints into ``dest`` (skipping intact ones), each checked as on use.
    ``base_url`` replaces every file's published folder (a mirror, or a file URL)."""
    from codec.weights_fetch import download

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for ck in dict.fromkeys(NEEDS.values()):
        target = dest / ck.name
        if not (target.is_file() and _verify(str(target), ck.sha256_prefix) is None):
            url = ck.url if base_url is None else base_url.rstrip("/") + "/" + ck.name
            download(url, target, lambda p, c=ck: _verify(str(p), c.sha256_prefix), timeout)
        out.append(target)
    return out
