"""The service's in-memory index: exact lookups, paged listings, refresh that reads only new
data files and starts over after a compaction (on real archives and Parquet files)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from operators.archive import Archive
from operators.asset_index import MAX_PAGE, AssetIndex
from operators.sink import finalise_rows
from pipelines.compact import compact


def _commit(a: Archive, name: str, keys: list[str], status: str | None = None) -> None:
    n = len(keys)
    rows = pa.table({"key": keys, "source_uri": keys, "bitstream": pa.array([b"s"] * n, pa.large_binary()),
                     "width": pa.array([8] * n, pa.int32()), "height": pa.array([8] * n, pa.int32()),
                     "status": pa.array([status] * n, pa.string()),
                     "error": pa.array(["broken" if status else None] * n, pa.string())})  # fmt: skip
    a.write_data_file(finalise_rows(rows, name, dt.datetime.now(dt.timezone.utc)), name, {})


@pytest.fixture()
def arc(tmp_path) -> Archive:
    a = Archive(str(tmp_path / "arc"))
    a.create({"preset": "taef2"})
    _commit(a, "j1-0", ["a.png", "b/c.png", "b/d.png", "e.png"])
    return a


def test_lookup_is_exact(arc):
    idx = AssetIndex(arc)
    assert idx.refresh() and len(idx) == 4
    assert idx.get("b/c.png")["file"] == "data/j1-0.parquet"
    for absent in ("b", "b/", "a.pn", "../a.png", "/a.png", "a.png/", ""):
        assert idx.get(absent) is None


def test_shard_rows_are_not_assets(arc):
    _commit(arc, "j2-0", ["s0/"], status="shard")
    _commit(arc, "j2-1", ["s1/"], status="failed")  # a shard cut short
    idx = AssetIndex(arc)
    idx.refresh()
    assert len(idx) == 4 and idx.get("s1/") is None
    assert [r["key"] for r in idx.page(limit=10)[0]] == ["a.png", "b/c.png", "b/d.png", "e.png"]


def test_pages(arc):
    idx = AssetIndex(arc)
    idx.refresh()
    rows, after = idx.page(limit=3)
    assert [r["key"] for r in rows] == ["a.png", "b/c.png", "b/d.png"] and after == "b/d.png"
    rows, after = idx.page(after=after, limit=3)
    assert [r["key"] for r in rows] == ["e.png"] and after is None
    rows, after = idx.page(prefix="b/", limit=1)
    assert [r["key"] for r in rows] == ["b/c.png"] and after == "b/c.png"
    rows, after = idx.page(prefix="b/", after=after, limit=1)
    assert [r["key"] for r in rows] == ["b/d.png"] and after is None  # e.png does not count: another prefix
    assert idx.page(prefix="zzz")[0] == [] and set(rows[0]) == {"key", "status", "bpp"}
    with pytest.raises(ValueError, match="limit"):
        idx.page(limit=MAX_PAGE + 1)


def test_refresh_reads_only_new_files_and_the_newest_row_wins(arc, monkeypatch):
    idx = AssetIndex(arc)
    idx.refresh()
    assert not idx.refresh()  # nothing new: no data file read
    _commit(arc, "j2-0", ["f.png"])
    _commit(arc, "j2-1", ["a.png"], status="failed")  # a failed retry does not hide the archived asset
    _commit(arc, "j2-2", ["e.png"])  # archived again: the newer row wins
    read: list[list[str]] = []
    real = arc.read_rows
    monkeypatch.setattr(arc, "read_rows", lambda files: read.append(files) or real(files))
    assert idx.refresh()
    assert read == [["data/j2-0.parquet", "data/j2-1.parquet", "data/j2-2.parquet"]]
    assert idx.get("f.png") is not None and idx.get("a.png")["status"] == "written"
    assert idx.get("e.png")["file"] == "data/j2-2.parquet" and len(idx) == 5


def test_refresh_after_a_compaction_starts_over(arc):
    _commit(arc, "j2-0", ["f.png"])
    idx = AssetIndex(arc)
    idx.refresh()
    compact(arc.url, rows_per_file=100)
    assert idx.refresh()
    files = {idx.get(k)["file"] for k in ("a.png", "b/c.png", "b/d.png", "e.png", "f.png")}
    assert len(files) == 1 and files <= idx.files and len(idx) == 5


def test_a_file_deleted_outside_a_compaction_leaves_the_readers_index(arc):
    _commit(arc, "j2-0", ["a.png", "g.png"])  # a newer a.png, and a key of its own
    arc.refresh_index()  # the stored index has read both files
    gone = arc.path(arc.lookup(["g.png"]).to_pylist()[0]["file"])
    arc.fs.rm(gone)  # a lifecycle rule, a person: no compaction updated the index first
    idx = AssetIndex(arc)
    idx.refresh()
    assert idx.get("g.png") is None  # not a 500 on read: not in the archive
    assert idx.get("a.png")["file"] == "data/j1-0.parquet"  # its older row, still there


def test_a_reader_on_s3_sees_what_other_processes_commit_and_remove(s3_server):
    """s3fs keeps listings: the reader's filesystem instance must not answer from them."""
    import uuid

    import s3fs

    bucket = f"idx-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem().mkdir(bucket)
    url = f"s3://{bucket}/arc"
    writer = Archive(url, fs=s3fs.S3FileSystem(skip_instance_cache=True))  # another process's
    writer.create({"preset": "taef2"})
    _commit(writer, "j1-0", ["a.png"])
    idx = AssetIndex(Archive(url))
    assert idx.refresh() and idx.get("a.png")
    _commit(writer, "j2-0", ["b.png"])
    assert idx.refresh() and idx.get("b.png")
    compact(url, rows_per_file=100)
    assert idx.refresh() and len(idx.files) == 1 and idx.get("a.png")["file"] == idx.get("b.png")["file"]
