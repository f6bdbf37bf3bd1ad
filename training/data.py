"""Training data for the latent codec: photos encoded to TAEF2 latents once, then cropped.

Encoding a 2-megapixel photo costs seconds on a CPU, so each photo (at a few scales, which
also brings the statistics closer to Kodak's 0.4-megapixel images) is encoded once and
cached as safetensors; training then draws random aligned (latent, image) crops.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from codec.autoencoder import TAEF2

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
DEFAULT_SCALES = (0.7, 0.5)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The trainers' ``--data`` (photo folders with scales) and ``--cache`` (where latents are kept)."""
    p.add_argument("--data", nargs="+", default=["../shared/datasets/photos-train"],
                   help="photo folders, each optionally FOLDER:SCALE,SCALE (default scales 0.7,0.5)")  # fmt: skip
    p.add_argument("--cache", default=".cache/latents")


def save_checkpoint(state: dict, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a run killed mid-write keeps its last checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def build_cache(
    folders: list[Path], cache_dir: Path, autoencoder: TAEF2, scales: tuple[float, ...] = DEFAULT_SCALES
) -> list[Path]:
    """Encode every photo at every scale into ``cache_dir``; already cached entries are kept.

    Returns every entry of the cache, including those made earlier with other folders or scales.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for folder in folders:
        for path in list_images(folder):
            for scale in scales:
                target = cache_dir / f"{folder.name}-{path.stem}-s{int(scale * 100)}.safetensors"
                out.append(target)
                if target.exists():
                    continue
                img = Image.open(path).convert("RGB")
                if scale != 1.0:
                    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
                w, h = img.width // 8 * 8, img.height // 8 * 8
                arr = np.asarray(img, dtype=np.uint8)[:h, :w]
                x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255
                with torch.no_grad():
                    latent = autoencoder.encode(x)[0]
                save_file({"latent": latent.contiguous(), "image": torch.from_numpy(arr.copy())}, str(target))
                print(f"cached {target.name} {w}x{h}", flush=True)
    return sorted(set(out) | set(cache_dir.glob("*.safetensors")))


def cache_from_specs(specs: list[str], cache_dir: Path, autoencoder: TAEF2) -> list[Path]:
    """``build_cache`` for command-line specs ``FOLDER`` or ``FOLDER:SCALE,SCALE``; every cache entry."""
    files: list[Path] = []
    for spec in specs:
        folder, _, scales = spec.partition(":")
        kw = {"scales": tuple(float(x) for x in scales.split(","))} if scales else {}
        files = build_cache([Path(folder)], Path(cache_dir), autoencoder, **kw)  # each call lists the whole cache
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
