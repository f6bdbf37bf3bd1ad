"""Evaluation images are known by their pixels: every copy a user might make is caught, and no
training photo is mistaken for one."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from evaluation.heldout import (
    HASH,
    HASHES,
    MAX_DISTANCE,
    HeldOutImageError,
    held_out_match,
    refuse_held_out,
    refuse_held_out_file,
)
from tests.conftest import KODAK, ROOT


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
    shared = ROOT.parent / "shared" / "datasets"
    photos = sorted(p for d in ("photos-train", "photos-train-v2") for p in (shared / d).rglob("*")
                    if p.suffix.lower() in (".png", ".jpg", ".jpeg"))  # fmt: skip
    assert len(photos) > 400
    for p in photos:
        refuse_held_out_file(p)  # no error: each is 90 bits or more from every Kodak image
    with Image.open(photos[0]) as img:
        assert held_out_match(img) is None


def test_the_committed_hashes_are_the_evaluation_sets_own(tmp_path):
    """``python -m evaluation.heldout kodak ../shared/datasets/kodak`` gives the committed file."""
    stored = json.loads(HASHES.read_text())
    assert stored["hash"] == HASH and MAX_DISTANCE < 90
    assert sorted(stored["sets"]["kodak"]) == sorted(p.stem for p in KODAK.glob("*.png"))
    script = f"import evaluation.heldout as h, pathlib; h.HASHES = pathlib.Path({str(tmp_path / 'h.json')!r}); " \
             f"h.write_set('kodak', pathlib.Path({str(KODAK)!r}))"  # fmt: skip
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, capture_output=True, timeout=120)
    assert json.loads((tmp_path / "h.json").read_text()) == stored


def test_a_set_is_never_emptied_or_replaced_by_mistake(tmp_path, monkeypatch):
    import evaluation.heldout as heldout

    monkeypatch.setattr(heldout, "HASHES", tmp_path / "h.json")
    folder = tmp_path / "eval"
    folder.mkdir()
    with pytest.raises(ValueError, match="no images"):
        heldout.write_set("mine", folder)
    for name in ("kodim03.png", "kodim23.png"):
        Image.open(KODAK / name).save(folder / name)
    assert sorted(heldout.write_set("mine", folder)) == ["kodim03", "kodim23"]
    (folder / "kodim03.png").rename(folder / "other.png")
    with pytest.raises(ValueError, match=r"would lose \['kodim03'\] and gain \['other'\]: pass --replace"):
        heldout.write_set("mine", folder)
    Image.open(KODAK / "kodim05.png").save(folder / "other.jpg")
    with pytest.raises(ValueError, match=r"share a name: \['other'\]"):
        heldout.write_set("mine", folder, replace=True)
    (folder / "other.jpg").unlink()
    assert sorted(heldout.write_set("mine", folder, replace=True)) == ["kodim23", "other"]
    assert held_out_match(Image.open(KODAK / "kodim23.png")) == ("mine/kodim23", 0)
    data = json.loads((tmp_path / "h.json").read_text())
    (tmp_path / "h.json").write_text(json.dumps({**data, "hash": "dhash-12"}))
    with pytest.raises(ValueError, match="holds dhash-12 hashes"):
        held_out_match(Image.open(KODAK / "kodim23.png"))


def test_an_unreadable_photo_is_named(tmp_path):
    bad = tmp_path / "cut.png"
    bad.write_bytes((KODAK / "kodim23.png").read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"cut.png: cannot read the image"):
        refuse_held_out_file(bad)
