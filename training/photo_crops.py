"""Training photos held in memory (on the training device), cut into random crops.

The perceptual trainer runs the frozen autoencoder's encoder on every crop instead of reading
cached latents: on a GPU that costs less than moving latents, and it lets every crop come
from any position and flip. Photos are downscaled once on load so that their long side is at
most ``max_side`` (Kodak-like scale: 768), at one or more relative scales.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.data import list_images, training_folder

DEFAULT_DATA = ["../shared/datasets/photos-train-v2", "../shared/datasets/photos-train"]


def crop_side(text: str) -> int:
    """A ``--crop`` value: a multiple of 128 (8 for the autoencoder times the codec's stride 16)."""
    side = int(text)
    if side <= 0 or side % 128:
        raise argparse.ArgumentTypeError(f"{text} is not a multiple of 128 (the autoencoder's 8 times the codec's 16)")
    return side


def add_photo_arguments(p: argparse.ArgumentParser) -> None:
    """``--data --max-side --scales --crop``: what :meth:`PhotoCrops.from_args` reads."""
    p.add_argument("--data", nargs="+", default=DEFAULT_DATA, help="photo folders (never an evaluation set)")
    p.add_argument("--max-side", type=int, default=768, help="photos are downscaled to this long side on load")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.6], help="relative scales of each photo")
    p.add_argument("--crop", type=crop_side, default=256, help="crop side in pixels, a multiple of 128")


def load_photo(path: Path, max_side: int, scale: float = 1.0) -> torch.Tensor:
    """(3, H, W) uint8, long side at most ``max_side * scale`` (Lanczos)."""
    with Image.open(path) as im:
        img = im.convert("RGB")
    f = min(1.0, max_side / max(img.size)) * scale
    if f < 1.0:
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def load_photo_image(path: Path, max_side: int) -> Image.Image:
    """:func:`load_photo` as an RGB image: a held-out photo at the scale the trainers see, for
    the benchmarks that code it."""
    return Image.fromarray(load_photo(path, max_side).permute(1, 2, 0).numpy())


class PhotoCrops:
    """Random (crop × crop) RGB crops in [0, 1] with horizontal flips, from photos on ``device``."""

    def __init__(
        self,
        folders: Sequence[str | Path],
        crop: int,
        max_side: int = 768,
        scales: Sequence[float] = (1.0, 0.6),
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        paths = [p for f in folders for p in list_images(training_folder(f))]
        photos = (load_photo(p, max_side, s) for p in paths for s in scales)
        self.photos = [t.to(device) for t in photos if min(t.shape[1:]) >= crop]
        if not self.photos:
            raise ValueError(f"no photo is at least {crop} pixels on its short side")
        self.crop = crop
        self.device = torch.device(device)
        self.gen = torch.Generator().manual_seed(seed)

    @classmethod
    def from_args(cls, args: argparse.Namespace, device: torch.device) -> PhotoCrops:
        """The crops that the options of :func:`add_photo_arguments` (and ``--seed``) ask for."""
        return cls(args.data, args.crop, args.max_side, args.scales, device, seed=args.seed)

    def __len__(self) -> int:
        return len(self.photos)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.gen))

    def batch(self, size: int) -> torch.Tensor:
        c = self.crop
        out = []
        for _ in range(size):
            t = self.photos[self._randint(len(self.photos))]
            i, j = self._randint(t.shape[1] - c + 1), self._randint(t.shape[2] - c + 1)
            x = t[:, i : i + c, j : j + c]
            out.append(x.flip(-1) if self._randint(2) else x)
        return torch.stack(out).float().div_(255)
