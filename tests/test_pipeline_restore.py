"""The restore pipeline and the catalog commands, on an archive built by the real compress job."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import codec
from codec.settings import EncodeSettings
from conftest import ROOT, photo_folder, torch_threads
from operators.archive import Archive
from operators.sink import finalise_rows
from pipelines.compress import compress
from pipelines.ray_runtime import plan_pool
from pipelines.restore import restore

pytestmark = pytest.mark.timeout(420)


@pytest.fixture(scope="module")
def archive(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("restore")
    src = photo_folder(root / "src", {"a.png": (64, 64), "sub/b.jpg": (96, 64), "sub/c.png": (64, 96)})
    (src / "sub" / "bad.png").write_bytes(b"nope")
    arc = root / "arc"
    compress(str(src), str(arc), settings=EncodeSettings(rate=2))
    return arc


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})  # fmt: skip


def _stream(arc, key: str) -> bytes:
    a = Archive(str(arc))
    return a.read_asset(a.lookup([key]).to_pylist()[0])["bitstream"]


def test_all_keys_with_ray(archive, tmp_path):
    """The Ray restore gives the pixels an in-process decode gives with the actors' thread count
    (the spec's reproducibility: same software, hardware and thread count)."""
    s = restore(str(archive), str(tmp_path / "out"), all_keys=True)
    assert (s["restored"], s["failed"], s["not_archived"]) == (3, 0, 1)  # compress reported bad.png already
    assert s["not_archived_keys"] == [{"key": "sub/bad.png", "reason": "sub/bad.png: archived as failed"}]
    for key, rel in [("a.png", "a.png"), ("sub/b.jpg", "sub/b.jpg.png"), ("sub/c.png", "sub/c.png")]:
        got = np.asarray(Image.open(tmp_path / "out" / rel).convert("RGB"))
        with torch_threads(plan_pool(None, None).threads_per_actor):
            want = np.asarray(codec.decode(_stream(archive, key)))
        assert np.array_equal(got, want)  # PNG is lossless


def test_prefix_and_formats(archive, tmp_path):
    s = restore(str(archive), str(tmp_path / "out"), prefix="sub/c", fmt="jpeg")
    assert s["restored"] == 1 and s["paths"] == [str(tmp_path / "out" / "sub" / "c.png.jpg")]
    assert Image.open(s["paths"][0]).format == "JPEG"


def test_named_keys_and_missing_key(archive, tmp_path):
    s = restore(str(archive), str(tmp_path / "out"), keys=["sub/c.png", "nope.png"], fmt="webp")
    assert s["restored"] == 1 and s["failures"] == [{"key": "nope.png", "reason": "nope.png: not in the archive"}]
    assert Image.open(tmp_path / "out" / "sub" / "c.png.webp").size == (64, 96)


def test_a_hostile_key_never_writes_outside_dest(archive, tmp_path):
    arc = tmp_path / "hostile"
    stream = _stream(archive, "a.png")
    rows = pa.table({"key": ["../escape.png", "ok.png"], "source_uri": ["x", "y"], "bitstream": pa.array([stream] * 2, pa.large_binary()),
                     "width": pa.array([64, 64], pa.int32()), "height": pa.array([64, 64], pa.int32()),
                     "status": pa.array([None, None], pa.string())})  # fmt: skip
    a = Archive(str(arc))
    a.create({"preset": "taef2"})
    a.write_data_file(finalise_rows(rows, "j", dt.datetime.now(dt.timezone.utc)), "j-0", {})
    dest = tmp_path / "dest"
    s = restore(str(arc), str(dest), all_keys=True)
    assert s["restored"] == 1 and s["failures"][0]["key"] == "../escape.png"
    assert "unsafe key" in s["failures"][0]["reason"]
    assert not (tmp_path / "escape.png").exists() and (dest / "ok.png").exists()


def test_cli_ls_info_restore(archive, tmp_path):
    res = _cli("ls", str(archive), "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["key"] for r in rows] == ["a.png", "sub/b.jpg", "sub/bad.png", "sub/c.png"]
    assert all({"key", "source_uri", "status", "bpp"} <= set(r) for r in rows)
    assert rows[2]["status"] == "failed" and rows[2]["bpp"] is None

    info = json.loads(_cli("info", str(archive), "--json").stdout)
    assert info["format"] == "resulic-archive" and info["version"] == 1 and info["preset"] == "taef2"
    assert (info["written"], info["failed"]) == (3, 1) and info["last_job"]["written"] == 3
    assert {"created_at", "created_by", "model_id"} <= set(info)

    res = _cli("restore", str(archive), str(tmp_path / "o"), "--key", "sub/b.jpg", "--json")
    assert res.returncode == 0 and res.stderr == "", res.stderr  # Ray's output is in the log file
    assert json.loads(res.stdout)["paths"] == [str(tmp_path / "o" / "sub" / "b.jpg.png")]
    res = _cli("restore", str(archive), str(tmp_path / "o"), "--key", "missing.png")
    assert res.returncode == 1 and "missing.png: not in the archive" in res.stdout
    res = _cli("restore", str(archive), str(tmp_path / "o"), "--key", "sub/bad.png")  # asked for by name: a failure
    assert res.returncode == 1 and "sub/bad.png: not restorable (archived with status failed)" in res.stdout
    res = _cli("restore", str(archive), str(tmp_path / "o"), "--all")
    assert res.returncode == 0 and "restored 3, failed 0" in res.stdout and "1 archived as failed" in res.stdout
    res = _cli("restore", str(archive), str(tmp_path / "o"), "--key", "a.png", "--all")
    assert res.returncode == 2 and "not allowed with" in res.stderr
    res = _cli("restore", str(archive), str(tmp_path / "o"), "--prefix", "typo/")
    assert res.returncode == 0 and "no asset key starts with 'typo/'" in res.stderr

    res = _cli("ls", str(tmp_path / "not-an-archive"))
    assert res.returncode != 0 and "not a resulic archive" in res.stderr


def _hand_made_archive(arc, archive, files: dict[str, list[str]]):
    """An archive whose data files (name -> keys) each hold the stream of ``a.png``; no index yet."""
    stream = _stream(archive, "a.png")
    a = Archive(str(arc))
    a.create({"preset": "taef2"})
    for name, keys in files.items():
        n = len(keys)
        rows = pa.table({"key": keys, "source_uri": keys, "bitstream": pa.array([stream] * n, pa.large_binary()),
                         "width": pa.array([64] * n, pa.int32()), "height": pa.array([64] * n, pa.int32()),
                         "status": pa.array([None] * n, pa.string())})  # fmt: skip
        a.write_data_file(finalise_rows(rows, name, dt.datetime.now(dt.timezone.utc)), name, {})
    return a


def _tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_restore_reads_only_and_finds_unindexed_assets(archive, tmp_path):
    """A job killed after committing a data file but before its index update: restore --key and
    --all find the asset without writing the archive (read-only credentials suffice)."""
    arc = tmp_path / "arc"
    a = _hand_made_archive(arc, archive, {"j1-0": ["old.png"]})
    a.refresh_index()
    _hand_made_archive(arc, archive, {"j2-0": ["late.png"]})  # committed, never indexed
    before = _tree(arc)
    s = restore(str(arc), str(tmp_path / "one"), keys=["late.png", "old.png"])
    assert s["restored"] == 2 and s["failed"] == 0
    s = restore(str(arc), str(tmp_path / "all"), all_keys=True)
    assert s["restored"] == 2 and (tmp_path / "all" / "late.png").exists()
    assert _tree(arc) == before  # nothing written, the index included


def test_one_bad_data_file_or_clashing_key_fails_only_its_keys(archive, tmp_path):
    arc = tmp_path / "arc"
    a = _hand_made_archive(arc, archive, {"j1-0": ["x.png", "y.png"], "j1-1": ["clash.png", "clash.png/z.png"],
                                          "j1-2": ["damaged.png"]})  # fmt: skip
    a.refresh_index()
    (arc / "data" / "j1-2.parquet").write_bytes(b"PAR1 not a parquet file any more")
    for how in ({"all_keys": True}, {"keys": ["x.png", "damaged.png", "clash.png", "clash.png/z.png", "y.png"]}):
        dest = tmp_path / f"out-{len(how)}-{'all' if 'all_keys' in how else 'keys'}"
        s = restore(str(arc), str(dest), **how)
        reasons = {f["key"]: f["reason"] for f in s["failures"]}
        assert s["restored"] + s["failed"] == 5 and {"x.png", "y.png"} <= {p.rsplit("/", 1)[1] for p in s["paths"]}
        assert "cannot read data/j1-2.parquet" in reasons["damaged.png"]
        # "clash.png" is a file where "clash.png/z.png" needs a folder (or the reverse): one of them fails
        assert len({"clash.png", "clash.png/z.png"} & set(reasons)) == 1 and s["failed"] == 2
        assert not [p for p in dest.rglob("*.tmp")]  # no partial files left behind


def test_keys_that_restore_to_one_file_never_overwrite_each_other(archive, tmp_path):
    """``photo`` and ``photo.png`` both name ``photo.png``: one restores, the other fails with
    why; a key named twice is restored once; ``a:b.png`` is an ordinary name on POSIX, and
    ``A.png`` and ``a.png`` are two files on a disk that keeps case (this one)."""
    arc = tmp_path / "arc"
    a = _hand_made_archive(arc, archive, {"j1-0": ["photo", "photo.png", "A.png", "a.png", "a:b.png"]})
    a.refresh_index()
    for how in ({"all_keys": True}, {"keys": ["photo", "photo.png", "a.png", "A.png", "a:b.png", "photo"]}):
        dest = tmp_path / ("all" if "all_keys" in how else "keys")
        s = restore(str(arc), str(dest), **how)
        assert (s["restored"], s["failed"]) == (4, 1), s
        assert s["failures"] == [{"key": "photo", "reason": "photo: restores to the file photo.png, as 'photo.png' "
                                                             "does; restore it with --key into another folder"}]
        assert sorted(p.name for p in dest.iterdir()) == ["A.png", "a.png", "a:b.png", "photo.png"]
    s = restore(str(arc), str(tmp_path / "alone"), keys=["photo"])
    assert s["restored"] == 1 and (tmp_path / "alone" / "photo.png").exists()
