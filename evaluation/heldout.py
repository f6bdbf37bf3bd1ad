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
HASH = f"phash-{SIDE}px-{FREQUENCIES}x{FREQUENCIES}-box"  # heldout.json's hashes are of this kind
MAX_DISTANCE = 40  # bits: a match (copies are within 14, other photos 90 or more)
HASHES = Path(__file__).with_name("heldout.json")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_ORIENTATIONS = (None, *Image.Transpose)


class HeldOutImageError(ValueError):
    """A trainer was given an evaluation image."""


def _thumbnail(img: Image.Image) -> Image.Image:
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
    data = json.loads(HASHES.read_text())
    if data.get("hash") != HASH:
        raise ValueError(f"{HASHES} holds {data.get('hash')} hashes, this code makes {HASH}: rewrite every set")
    return {f"{name}/{image}": int(h, 16) for name, images in data["sets"].items() for image, h in images.items()}


def held_out_match(img: Image.Image) -> tuple[str, int] | None:
    """(set/image, distance in bits) of the evaluation image ``img`` copies, or None."""
    candidates = orientation_hashes(img)
    distances = [(name, min((h ^ c).bit_count() for c in candidates)) for name, h in _known().items()]
    best = min(distances, key=lambda m: m[1], default=None)
    return best if best is not None and best[1] <= MAX_DISTANCE else None


def refuse_held_out(img: Image.Image, where: str) -> None:
    """Raise if ``img`` (read from ``where``) is a copy of an evaluation image."""
    match = held_out_match(img)
    if match:
        raise HeldOutImageError(f"{where} is evaluation image {match[0]} (hash {match[1]} bits away): "
                                "never train or calibrate on an evaluation set")  # fmt: skip


def refuse_held_out_file(path: Path) -> None:
    """:func:`refuse_held_out` on an image file; a JPEG is decoded at a reduced scale (fast, and
    the hash is coarse). An unreadable file is an error that names it."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (2 * SIDE, 2 * SIDE))
            img.load()
            refuse_held_out(img, str(path))
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: cannot read the image ({e})") from e


def write_set(name: str, folder: Path, replace: bool = False) -> dict[str, str]:
    """Hash every image of ``folder`` as evaluation set ``name`` into ``heldout.json``. Replacing
    an existing set by other images takes ``replace`` (a wrong folder must not quietly drop its
    protection)."""
    from operators.archive import write_local

    data = json.loads(HASHES.read_text()) if HASHES.exists() else {"hash": HASH, "sets": {}}
    if data["sets"] and data.get("hash") != HASH:
        raise ValueError(f"{HASHES} holds {data.get('hash')} hashes: rewrite every set with {HASH}, from a new file")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    stems = [p.stem for p in images]
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    if len(set(stems)) != len(stems):
        raise ValueError(f"two images of {folder} share a name: {sorted({s for s in stems if stems.count(s) > 1})}")
    old = set(data["sets"].get(name, {}))
    if old and old != set(stems) and not replace:
        raise ValueError(f"set {name} would lose {sorted(old - set(stems))} and gain {sorted(set(stems) - old)}: "
                         "pass --replace if that is meant")  # fmt: skip
    hashes = {}
    for p in images:
        with Image.open(p) as img:
            hashes[p.stem] = f"{image_hash(img):064x}"
    data["hash"], data["sets"][name] = HASH, hashes
    write_local(HASHES, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
    return hashes


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="hash an evaluation set's images into evaluation/heldout.json")
    p.add_argument("name")
    p.add_argument("folder", type=Path)
    p.add_argument("--replace", action="store_true", help="replace the set's images by the folder's")
    a = p.parse_args()
    print(f"{len(write_set(a.name, a.folder, a.replace))} images of {a.name} hashed into {HASHES}")
