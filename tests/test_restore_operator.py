"""Restore operator: where a key lands under DEST (never outside it) and one real decode."""

from __future__ import annotations

import os
import sys

import pytest
from PIL import Image

from conftest import photo, psnr_arrays
from operators.restore import Restorer, UnsafeKeyError, case_insensitive, claim_paths, dest_relpath


@pytest.mark.parametrize("key", ["../x.png", "a/../../x.png", "/etc/passwd", "a\\..\\x.png",
                                 "a//b.png", "./a.png", "a/\x00.png", "a/\nb.png", ""])  # fmt: skip
def test_unsafe_keys_are_refused(key):
    with pytest.raises(UnsafeKeyError):
        dest_relpath(key, "png")


def test_names():
    assert dest_relpath("a/b.png", "png") == "a/b.png"
    assert dest_relpath("a/B.PNG", "png") == "a/B.PNG"
    # keys differing only in their extension stay apart
    assert dest_relpath("a/b.jpg", "png") == "a/b.jpg.png"
    assert dest_relpath("a/b.jpg", "jpeg") == "a/b.jpg"
    assert dest_relpath("shard-0/0001.webp", "webp") == "shard-0/0001.webp"
    if os.name != "nt":  # a drive letter only where there are drives
        assert dest_relpath("a:b.png", "png") == "a:b.png" and dest_relpath("C:/x.png", "png") == "C:/x.png"


def test_keys_that_name_one_file_are_found(tmp_path):
    keys = ["photo", "photo.png", "x.jpg", "X.JPG.png", "ok.png", "../bad.png"]
    assert sorted(claim_paths(keys, "png")) == ["photo"]  # unsafe keys fail on their own
    assert sorted(claim_paths(keys, "png", fold_case=True)) == ["photo", "x.jpg"]  # X.JPG.png keeps its name
    assert claim_paths(["b", "a.png", "a"], "png") == {"a": "a: restores to the file a.png, as 'a.png' does; "
                                                            "restore it with --key into another folder"}
    assert case_insensitive(str(tmp_path / "dest")) is (sys.platform in ("darwin", "win32"))  # this disk's own answer
    assert case_insensitive("s3://bucket/out") is False


def test_restore_one(tmp_path, preset):
    import codec

    img = photo(96, 64)
    stream = codec.encode(img, rate=3, preset=preset)
    r = Restorer(str(tmp_path), "png")
    path, err = r.restore_one("d/p.jpg", "written", stream)
    assert err is None and path == str(tmp_path / "d" / "p.jpg.png")
    out = Image.open(path)
    assert out.size == (96, 64) and psnr_arrays(out.convert("RGB"), img) > 14
    assert r.restore_one("../evil.png", "written", stream) == (None, "unsafe key '../evil.png': empty, '.' or '..' path segment")
    assert r.restore_one("x.png", "failed", None)[1] == "x.png: not restorable (archived with status failed)"
    assert "x.png" in r.restore_one("x.png", "written", stream[:-5])[1]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["p.jpg.png"]



def test_a_format_that_cannot_hold_the_image_is_refused_before_decoding(tmp_path, monkeypatch):
    import codec
    from operators.formats import too_large_for

    assert too_large_for("webp", 16383, 10) is None and too_large_for("png", 70000, 10) is None
    assert too_large_for("jpeg", 65501, 8) == "jpeg holds at most 65500 pixels a side, the image is 65501x8: ask for png"
    strip = Image.new("RGB", (16400, 16))
    for x in range(0, 16400, 96):
        strip.paste(photo(96, 16), (x, 0))
    stream = codec.encode(strip, rate=0)
    monkeypatch.setattr(codec, "decode", lambda *a, **k: pytest.fail("decoded an image the format cannot hold"))
    path, error = Restorer(str(tmp_path), "webp").restore_one("long.png", "written", stream)
    assert path is None and error == "long.png: webp holds at most 16383 pixels a side, the image is 16400x16: ask for png or jpeg"
