"""Training data for the latent codec: photos encoded to TAEF2 latents once, then cropped.

Encoding a 2-megapixel photo costs seconds on a CPU, so each photo (at a few scales, which
also brings the statistics closer to Kodak's 0.4-megapixel images) is encoded once and
cached as safetensors; training then draws random aligned (latent, image) crops.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save

from codec.autoencoder import TAEF2
from operators.archive import write_local

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
DEFAULT_SCALES = (0.7, 0.5)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The trainers' ``--data`` (photo folders with scales) and ``--cache`` (where latents are kept)."""
    p.add_argument("--data", nargs="+", default=["../shared/datasets/photos-train"],
                   help="photo folders, each optionally FOLDER:SCALE,SCALE (default scales 0.7,0.5)")  # fmt: skip
    p.add_argument("--cache", default=".cache/latents")


def trained_for(weights: str | Path) -> str | None:
    """The release (model id, hex) a trainer's safetensors output was trained for: its
    ``latent_codec_model_id`` metadata (None when it has none)."""
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        return (f.metadata() or {}).get("latent_codec_model_id")


def release_of(weights: str | Path, model_id: str | None) -> str | None:
    """The release a calibrator measures ``weights`` against: ``--model-id``, else the one their
    metadata names, else (None) the newest, said aloud."""
    recorded = trained_for(weights)
    if model_id and recorded and model_id != recorded:
        raise ValueError(f"{weights} was trained for release {recorded}, not --model-id {model_id}")
    if not (model_id or recorded):
        print(f"note: {weights} names no release: calibrating against the newest", flush=True)
    return model_id or recorded


def save_checkpoint(state: dict, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    write_local(path, buf.getvalue())


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def training_folder(folder: str | Path) -> Path:
    """``folder`` checked as training data: it exists, holds photos, and none of them is an
    evaluation image (by its pixels: ``evaluation.heldout``; a folder's name proves nothing)."""
    from evaluation.heldout import refuse_held_out_file

    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"training data folder not found: {folder}")
    photos = list_images(path)
    if not photos:
        raise ValueError(f"no photos in {folder}")
    for photo in photos:
        refuse_held_out_file(photo)
    return path


def _entry_key(folder: Path, path: Path, data: bytes, autoencoder: TAEF2) -> str:
    """A photo's cache entries' name, less the scale: readable, and keyed by what a latent
    depends on (the photo's place and bytes, the autoencoder's weights), so an edited photo or
    other weights never reuse a stale entry and ``a/001.png`` and ``a/b/001.png`` never share one."""
    h = hashlib.sha256(str(path.relative_to(folder)).encode())
    h.update(data)
    h.update(autoencoder.weights_sha256.encode())
    return f"{folder.name}-{path.stem}-{h.hexdigest()[:12]}"


def build_cache(
    folders: list[Path], cache_dir: Path, autoencoder: TAEF2, scales: tuple[float, ...] = DEFAULT_SCALES
) -> list[Path]:
    """Encode every photo of ``folders`` at every scale into ``cache_dir``; already cached
    entries are kept. Returns these folders' entries only: the cache may hold other folders'
    (a calibration's held-out photos), which are not this run's data. Each photo's bytes are
    read once to key and encode it (``training_folder`` opens each first to check it)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for folder in map(training_folder, folders):
        for path in list_images(folder):
            data = path.read_bytes()
            key = _entry_key(folder, path, data, autoencoder)
            for scale in scales:
                target = cache_dir / f"{key}-s{int(scale * 100)}.safetensors"
                out.append(target)
                if target.exists():
                    continue
                img = Image.open(io.BytesIO(data)).convert("RGB")
                if scale != 1.0:
                    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
                w, h = img.width // 8 * 8, img.height // 8 * 8
                arr = np.asarray(img, dtype=np.uint8)[:h, :w]
                x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255
                with torch.no_grad():
                    latent = autoencoder.encode(x)[0]
                entry = {"latent": latent.contiguous(), "image": torch.from_numpy(arr.copy())}
                write_local(target, save(entry))
                print(f"cached {target.name} {w}x{h}", flush=True)
    return out


def cache_from_specs(specs: list[str], cache_dir: Path, autoencoder: TAEF2) -> list[Path]:
    """``build_cache`` for command-line specs ``FOLDER`` or ``FOLDER:SCALE,SCALE``: their entries."""
    files: list[Path] = []
    for spec in specs:
        folder, _, scales = spec.partition(":")
        kw = {"scales": tuple(float(x) for x in scales.split(","))} if scales else {}
        files += build_cache([Path(folder)], Path(cache_dir), autoencoder, **kw)
    return files


class CropSampler:
    """Random aligned crops: a latent window and the image pixels it stands for (with flips)."""

    def __init__(self, files: list[Path], latent_crop: int, seed: int = 0) -> None:
        self.items = [load_file(str(f)) for f in files]
        self.items = [it for it in self.items if min(it["latent"].shape[1:]) >= latent_crop]
        self.crop = latent_crop
        self.rng = random.Random(seed)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        lat, img = [], []
        c = self.crop
        for _ in range(size):
            it = self.rng.choice(self.items)
            _, h, w = it["latent"].shape
            i, j = self.rng.randrange(h - c + 1), self.rng.randrange(w - c + 1)
            l = it["latent"][:, i : i + c, j : j + c]
            x = it["image"][8 * i : 8 * (i + c), 8 * j : 8 * (j + c)].permute(2, 0, 1).float() / 255
            if self.rng.random() < 0.5:  # the encoder is nearly equivariant to horizontal flips
                l, x = l.flip(-1), x.flip(-1)
            lat.append(l)
            img.append(x)
        return torch.stack(lat), torch.stack(img)
