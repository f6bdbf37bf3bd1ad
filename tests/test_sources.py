"""Sources without Ray: parsing, listing in groups, manifests, WebDataset shards, fetch, retries."""

from __future__ import annotations

import errno

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import photo, png_bytes, write_shard
from operators import sources
from operators.sources import (
    LISTING_SCHEMA,
    Source,
    expand_shards,
    fetch,
    list_tasks,
    mark_unchanged,
    read_manifest,
)
from schemas.archive import STATUS_FAILED, STATUS_UNCHANGED


def _listing(source: Source, parallelism: int = 4) -> pa.Table:
    return pa.concat_tables([t for fn in list_tasks(source, parallelism) for t in fn()])


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "src"
    for rel in ["a.png", "sub/b.png", "sub/deep/c.jpg", "z/d.webp", "notes.txt"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * 10)
    return root


def test_parse_kinds():
    assert Source.parse("/data/photos").kind == "files"
    assert Source.parse("s3://bucket/photos/*.jpg").kind == "files"
    assert Source.parse("s3://b/shards/train-{000..009}.tar").kind == "webdataset"
    assert Source.parse("/x/shard-0.tar").kind == "webdataset"
    assert Source.parse("/x/list.parquet").kind == "manifest"
    assert Source.parse("gs://b/list.CSV").kind == "manifest"


def test_folder_listing_is_grouped_and_complete(folder):
    src = Source.parse(str(folder))
    tasks = list_tasks(src, parallelism=2)
    assert len(tasks) == 2  # top-level entries are shared between the read tasks, not one task per file
    table = _listing(src)
    assert sorted(table.column("key").to_pylist()) == ["a.png", "sub/b.png", "sub/deep/c.jpg", "z/d.webp"]
    assert all(u.startswith("file://") for u in table.column("source_uri").to_pylist())
    assert all(f.startswith("10:") for f in table.column("source_fingerprint").to_pylist())
    assert table.schema == LISTING_SCHEMA


def test_listing_blocks_are_bounded(folder, monkeypatch):
    monkeypatch.setattr(sources, "LIST_BLOCK_ROWS", 2)
    blocks = [t for fn in list_tasks(Source.parse(str(folder)), 1) for t in fn()]
    assert [b.num_rows for b in blocks] == [2, 2]


def test_glob_and_single_file(folder):
    table = _listing(Source.parse(str(folder / "sub" / "*.png")))
    assert table.column("key").to_pylist() == ["b.png"]
    table = _listing(Source.parse(str(folder / "a.png")))
    assert table.column("key").to_pylist() == ["a.png"]


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="source not found"):
        list_tasks(Source.parse(str(tmp_path / "nope")), 2)


def test_fingerprint_changes_with_content(folder):
    before = _listing(Source.parse(str(folder))).to_pylist()
    (folder / "a.png").write_bytes(b"y" * 11)
    after = _listing(Source.parse(str(folder))).to_pylist()
    fp = lambda rows, k: next(r["source_fingerprint"] for r in rows if r["key"] == k)  # noqa: E731
    assert fp(before, "a.png") != fp(after, "a.png")
    assert fp(before, "sub/b.png") == fp(after, "sub/b.png")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_manifest(tmp_path, fmt):
    table = pa.table({"uri": [f"file://{tmp_path}/x/a.png", "s3://bucket/p/b.jpg"], "caption": ["a dog", None]})
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        from pyarrow import csv

        csv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    rows = read_manifest(Source.parse(str(path))).to_pylist()
    assert [r["key"] for r in rows] == [f"{str(tmp_path).lstrip('/')}/x/a.png", "bucket/p/b.jpg"]
    assert rows[0]["caption"] == "a dog" and rows[1]["caption"] is None


def test_manifest_without_uri_column(tmp_path):
    pq.write_table(pa.table({"path": ["a.png"]}), tmp_path / "m.parquet")
    with pytest.raises(ValueError, match="needs a 'uri' column"):
        read_manifest(Source.parse(str(tmp_path / "m.parquet")))


def test_webdataset_shards(tmp_path):
    img = png_bytes(photo(32, 32))
    write_shard(tmp_path / "s-000.tar", {"0001.png": img, "0001.json": b"{}", "0002.png": img})
    write_shard(tmp_path / "s-001.tar", {"0003.png": img})
    full = (tmp_path / "s-001.tar").read_bytes()
    (tmp_path / "s-002.tar").write_bytes(full[:700])  # cut inside the member
    src = Source.parse(str(tmp_path / "s-{000..003}.tar"))
    listing = _listing(src)
    assert listing.column("key").to_pylist() == ["s-000", "s-001", "s-002", "s-003.tar"]
    assert listing.column("error").to_pylist()[3].startswith("shard not found")
    rows = expand_shards(listing, {}).to_pylist()
    ok = [r for r in rows if r["status"] is None]
    assert [r["key"] for r in ok] == ["s-000/0001.png", "s-000/0002.png", "s-001/0003.png"]
    assert ok[0]["source_uri"].endswith("s-000.tar#0001.png") and ok[0]["data"] == img
    bad = {r["key"]: r["error"] for r in rows if r["status"] == STATUS_FAILED}
    assert bad["s-002/"].startswith("truncated or damaged shard")
    assert set(bad) == {"s-002/", "s-003.tar"}


def test_fetch_reads_hashes_and_fails_per_row(folder):
    table = _listing(Source.parse(str(folder)))
    (folder / "a.png").unlink()  # gone between listing and reading
    out = fetch(table, {}).to_pylist()
    by = {r["key"]: r for r in out}
    assert by["a.png"]["status"] == STATUS_FAILED and by["a.png"]["error"] == "I/O error: file not found"
    assert by["sub/b.png"]["data"] == b"x" * 10 and by["sub/b.png"]["source_size"] == 10
    assert by["sub/b.png"]["source_sha256"] == __import__("hashlib").sha256(b"x" * 10).hexdigest()


def test_retry_recovers_from_transient_errors(monkeypatch):
    monkeypatch.setattr(sources.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset by peer")
        return "ok"

    assert sources._retry(flaky) == "ok" and len(calls) == 3
    calls.clear()

    def missing():
        calls.append(1)
        raise FileNotFoundError(errno.ENOENT, "nope")

    with pytest.raises(FileNotFoundError):
        sources._retry(missing)
    assert len(calls) == 1  # permanent errors are not retried


def test_mark_unchanged():
    batch = pa.table({"key": ["a", "b", "c"], "source_fingerprint": ["1", "2", "3"], "status": [None, None, "failed"],
                      "data": pa.array([b"a", b"b", None], pa.large_binary())})  # fmt: skip
    archived = pa.table({"key": ["a", "b", "c"], "source_fingerprint": ["1", "9", "3"]})
    out = mark_unchanged(batch, archived, "source_fingerprint").to_pylist()
    assert [r["status"] for r in out] == [STATUS_UNCHANGED, None, "failed"]
    assert out[0]["data"] is None and out[1]["data"] == b"b"
