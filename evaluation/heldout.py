"""The evaluation images, known by their pixels, so that no trainer or calibration reads one.

A folder's name proves nothing: a copy of Kodak may be renamed, re-encoded, resized, rotated
or mirrored, and a folder of the user's own photos may well be called ``kodak``. Each held-out
image is known by a 255-bit perceptual hash (pHash): the signs against their median of the
16×16 lowest DCT frequencies of its 64×64 grey thumbnail, less the mean. It survives all of
those; a candidate is tested in its eight orientations. Only the hashes are committed
(``heldout.json``).

Measured with ``../shared`` (2026-12-08): the 24 Kodak images lie at least 104 bits apart;
JPEG (quality 20) and WebP (quality 10) copies at full size, a quarter of the size, rotated or
mirrored, within 14 bits of their original; the 459 training photos (photos-train and -v2) at
least 90 bits from any Kodak image. ``MAX_DISTANCE`` sits between. A crop is a new picture to
this hash and is not caught. (A 144-bit difference hash separated them by 23 against 31 bits.)

``python -m evaluation.heldout kodak ../shared/datasets/kodak`` (re)writes a set's hashes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 64  # grey thumbnail, pixels a side
FREQUENCIES = 16  # the lowest FREQUENCIES x FREQUENCIES DCT coefficients, less the mean: 255 bits
MAX_DISTANCE = 40  # bits: a match (copies are within 14, other photos 90 or more)
HASHES = Path(__file__).with_name("heldout.json")
_ORIENTATIONS = (None, *Image.Transpose)


class HeldOutImageError(ValueError):
    """A trainer was given an evaluation image."""


def _thumbnail(img: Image.Image) -> Image.Image:
    img.draft("RGB", (2 * SIDE, 2 * SIDE))  # JPEG decodes at a reduced scale: fast, and the hash is coarse
    return img.convert("L").resize((SIDE, SIDE), Image.Resampling.BOX)


def _bits(grey: Image.Image) -> int:
    from scipy.fft import dctn

    c = dctn(np.asarray(grey, np.float64), norm="ortho")[:FREQUENCIES, :FREQUENCIES].ravel()[1:]
    return int("".join("1" if b else "0" for b in (c > np.median(c))), 2)


def image_hash(img: Image.Image) -> int:
    """The hash of ``img`` as it is stored."""
    return _bits(_thumbnail(img))


def orientation_hashes(img: Image.Image) -> list[int]:
    """The hashes of ``img`` in its eight orientations (rotations and mirror images)."""
    thumb = _thumbnail(img)
    return [_bits(thumb if t is None else thumb.transpose(t)) for t in _ORIENTATIONS]


def _known() -> dict[str, int]:
    sets = json.loads(HASHES.read_text())["sets"]
    return {f"{name}/{image}": int(h, 16) for name, images in sets.items() for image, h in images.items()}


def held_out_match(img: Image.Image) -> tuple[str, int] | None:
    """(set/image, distance in bits) of the evaluation image ``img`` copies, or None."""
    candidates = orientation_hashes(img)
    best = min(((name, min((h ^ c).bit_count() for c in candidates)) for name, h in _known().items()),
               key=lambda m: m[1])  # fmt: skip
    return best if best[1] <= MAX_DISTANCE else None


def refuse_held_out(img: Image.Image, where: str) -> None:
    """Raise if ``img`` (read from ``where``) is a copy of an evaluation image."""
    match = held_out_match(img)
    if match:
        raise HeldOutImageError(f"{where} is evaluation image {match[0]} (hash {match[1]} bits away): "
                                "never train or calibrate on an evaluation set")  # fmt: skip


def _write_set(name: str, folder: Path) -> None:
    data = json.loads(HASHES.read_text()) if HASHES.exists() else {"sets": {}}
    data["hash"] = f"phash-{SIDE}px-{FREQUENCIES}x{FREQUENCIES}-box"
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    data["sets"][name] = {p.stem: f"{image_hash(Image.open(p)):064x}" for p in images}
    HASHES.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"{len(images)} images of {name} hashed into {HASHES}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="hash an evaluation set's images into evaluation/heldout.json")
    p.add_argument("name")
    p.add_argument("folder", type=Path)
    a = p.parse_args()
    _write_set(a.name, a.folder)
