"""Evaluation images are known by their pixels: every copy a user might make is caught, and no
training photo is mistaken for one."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from evaluation.heldout import HASHES, MAX_DISTANCE, HeldOutImageError, held_out_match, refuse_held_out
from tests.conftest import KODAK, ROOT

TRAIN = ROOT.parent / "shared" / "datasets" / "photos-train"


def _copy(img: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    buf.seek(0)
    return Image.open(buf)


@pytest.mark.parametrize("name", ["kodim04.png", "kodim15.png", "kodim23.png"])
def test_copies_of_an_evaluation_image_are_caught(name):
    img = Image.open(KODAK / name).convert("RGB")
    w, h = img.size
    assert held_out_match(img) == (f"kodak/{Path(name).stem}", 0)
    copies = [_copy(img, "JPEG", quality=20), _copy(img.resize((w // 4, h // 4)), "WEBP", quality=10),
              _copy(img.transpose(Image.Transpose.ROTATE_270), "JPEG", quality=40),
              _copy(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((w // 2, h // 2)), "PNG")]  # fmt: skip
    for copy in copies:
        match = held_out_match(copy)
        assert match is not None and match[0] == f"kodak/{Path(name).stem}" and match[1] <= 14
    with pytest.raises(HeldOutImageError, match=f"holiday.jpg is evaluation image kodak/{Path(name).stem}"):
        refuse_held_out(copies[0], "holiday.jpg")


def test_training_photos_are_far_from_every_evaluation_image():
    photos = sorted(p for p in TRAIN.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    assert len(photos) > 30
    for p in photos:
        with Image.open(p) as img:
            assert held_out_match(img) is None, p
            refuse_held_out(img, str(p))  # no error


def test_the_committed_hashes_are_the_evaluation_sets_own(tmp_path):
    """``python -m evaluation.heldout`` on ../shared/datasets/kodak gives the committed file."""
    stored = json.loads(HASHES.read_text())
    assert sorted(stored["sets"]["kodak"]) == sorted(p.stem for p in KODAK.glob("*.png")) and MAX_DISTANCE < 90
    script = f"import evaluation.heldout as h, pathlib; h.HASHES = pathlib.Path({str(tmp_path / 'h.json')!r}); " \
             f"h._write_set('kodak', pathlib.Path({str(KODAK)!r}))"  # fmt: skip
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, capture_output=True, timeout=120)
    assert json.loads((tmp_path / "h.json").read_text()) == stored
