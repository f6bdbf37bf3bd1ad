"""The archive layout: metadata, committed data files, the index, and reads of one row group."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from operators.archive import Archive, ArchiveError, latest_per_key, write_whole
from operators.sink import finalise_rows
from schemas.archive import ASSET_SCHEMA, INDEX_SCHEMA, META_FILE, ROW_GROUP_ROWS, STAGING_DIR


def _rows(keys: list[str], job: str, status: str | None = None, payload: int = 2000, fp: str = "1:1") -> pa.Table:
    n = len(keys)
    table = pa.table({
        "key": keys, "source_uri": [f"file:///src/{k}" for k in keys], "source_fingerprint": [fp] * n,
        "source_sha256": [f"sha-{k}-{job}" for k in keys], "width": pa.array([64] * n, pa.int32()),
        "height": pa.array([64] * n, pa.int32()),
        "bitstream": pa.array([None if status else os.urandom(payload) for _ in keys], pa.large_binary()),
        "bpp": [0.01] * n, "status": pa.array([status] * n, pa.string()),
        "error": [status and "not an image"] * n,
    })  # fmt: skip
    return finalise_rows(table, job, dt.datetime.now(dt.timezone.utc))


def test_create_and_meta(tmp_path):
    arc = Archive(str(tmp_path / "a"))
    with pytest.raises(ArchiveError, match="not a resulic archive"):
        arc.meta()
    meta = arc.create({"preset": "taef2"})
    assert meta["preset"] == "taef2" and arc.meta() == meta
    assert arc.create({"preset": "other"})["preset"] == "taef2"  # an existing archive keeps its own
    (tmp_path / "a" / META_FILE).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ArchiveError, match="version 99 is not supported"):
        arc.meta()


def test_data_file_is_sorted_with_small_row_groups(tmp_path):
    arc = Archive(str(tmp_path))
    keys = [f"k{i:03d}" for i in range(100)][::-1]
    rel = arc.write_data_file(_rows(keys, "j1"), "j1-0", {"job_id": "j1"})
    pf = pq.ParquetFile(tmp_path / rel)
    assert pf.schema_arrow.remove_metadata() == ASSET_SCHEMA
    assert pf.schema_arrow.metadata[b"job_id"] == b"j1"
    assert pf.num_row_groups == -(-100 // ROW_GROUP_ROWS)
    assert pf.read(columns=["key"]).column("key").to_pylist() == sorted(keys)
    assert not list((tmp_path / STAGING_DIR).iterdir())  # moved out of staging, nothing left behind


def test_index_finds_uncommitted_files_and_newest_row_wins(tmp_path):
    arc = Archive(str(tmp_path))
    arc.write_data_file(_rows(["a", "b"], "j1"), "j1-0", {})
    index = arc.refresh_index()
    assert index.schema == INDEX_SCHEMA and index.column("key").to_pylist() == ["a", "b"]
    # a job that died after committing a file but before updating the index
    arc.write_data_file(_rows(["b", "c"], "j2"), "j2-0", {})
    index = arc.refresh_index()
    rows = {r["key"]: r for r in index.to_pylist()}
    assert sorted(rows) == ["a", "b", "c"]
    assert rows["b"]["file"] == "data/j2-0.parquet" and rows["a"]["file"] == "data/j1-0.parquet"


def test_a_later_failure_does_not_hide_an_archived_asset(tmp_path):
    arc = Archive(str(tmp_path))
    arc.write_data_file(_rows(["a"], "j1"), "j1-0", {})
    arc.write_data_file(_rows(["a", "b"], "j2", status="failed"), "j2-0", {})
    rows = {r["key"]: r for r in arc.refresh_index().to_pylist()}
    assert rows["a"]["status"] == "written" and rows["b"]["status"] == "failed"


def test_rows_of_a_status_this_version_does_not_know_are_ignored(tmp_path):
    """A later version's status (say "deleted") neither hides the archived asset nor stands for one."""
    arc = Archive(str(tmp_path))
    arc.write_data_file(_rows(["a"], "j1"), "j1-0", {})
    arc.write_data_file(_rows(["a", "z"], "j2", status="deleted"), "j2-0", {})
    (row,) = arc.refresh_index().to_pylist()
    assert (row["key"], row["status"], row["last_status"], row["file"]) == ("a", "written", "written", "data/j1-0.parquet")
    assert arc.lookup(["a", "z"]).column("key").to_pylist() == ["a"]


def test_latest_per_key_order():
    at = pa.array([1, 1, 2, 3], pa.timestamp("us", tz="UTC"))
    t = pa.table({"key": ["b", "a", "a", "a"], "status": ["written", "written", "written", "failed"],
                  "file": ["f1", "f1", "f2", "f3"], "written_at": at, "last_status": ["written", "written", "written", "failed"],
                  "last_source_fingerprint": ["1", "1", "2", "3"], "last_source_sha256": [None] * 4,
                  "last_written_at": at})  # fmt: skip
    out = latest_per_key(t).to_pylist()
    assert [(r["key"], r["file"]) for r in out] == [("a", "f2"), ("b", "f1")]
    # the archived row is the newest written one; the newest row of all is a failure, remembered
    assert [(r["last_status"], r["last_source_fingerprint"]) for r in out] == [("failed", "3"), ("written", "1")]


def test_a_failure_newer_than_the_archived_asset_is_remembered(tmp_path):
    arc = Archive(str(tmp_path))
    arc.write_data_file(_rows(["a"], "j1", fp="1:old"), "j1-0", {})
    arc.write_data_file(_rows(["a"], "j2", status="failed", fp="2:new"), "j2-0", {})
    (row,) = arc.refresh_index().to_pylist()
    assert (row["status"], row["source_fingerprint"], row["file"]) == ("written", "1:old", "data/j1-0.parquet")
    assert (row["last_status"], row["last_source_fingerprint"]) == ("failed", "2:new")
    arc.write_data_file(_rows(["a"], "j3", fp="3:fixed"), "j3-0", {})
    (row,) = arc.refresh_index().to_pylist()
    assert (row["status"], row["last_status"], row["last_source_fingerprint"]) == ("written", "written", "3:fixed")


def test_refresh_reads_only_files_it_has_not_read(tmp_path, monkeypatch):
    arc = Archive(str(tmp_path))
    arc.write_data_file(_rows(["a", "b"], "j1"), "j1-0", {})
    arc.write_data_file(_rows(["a", "b"], "j2"), "j2-0", {})  # supersedes every row of j1-0
    arc.refresh_index()
    read: list[str] = []
    original = Archive._index_rows
    monkeypatch.setattr(Archive, "_index_rows", lambda self, rel: read.append(rel) or original(self, rel))
    arc.write_data_file(_rows(["c"], "j3"), "j3-0", {})
    assert arc.refresh_index().column("key").to_pylist() == ["a", "b", "c"]
    assert read == ["data/j3-0.parquet"]  # not j1-0, although no index row points at it
    assert Archive(str(tmp_path)).refresh_index().num_rows == 3 and read == ["data/j3-0.parquet"]


def test_an_index_of_an_older_layout_is_rebuilt(tmp_path):
    arc = Archive(str(tmp_path))
    arc.write_data_file(_rows(["a", "b"], "j1"), "j1-0", {})
    old = arc.refresh_index().drop_columns(["last_status", "last_written_at"])
    pq.write_table(old, tmp_path / "_index" / "index.parquet")
    assert arc.refresh_index().schema == INDEX_SCHEMA and arc.load_index().num_rows == 2
    assert arc.lookup(["b"]).column("key").to_pylist() == ["b"]


def test_refresh_without_write_leaves_storage_alone(tmp_path):
    arc = Archive(str(tmp_path))
    arc.write_data_file(_rows(["a"], "j1"), "j1-0", {})
    assert arc.refresh_index(write=False).num_rows == 1
    assert not (tmp_path / "_index").exists()


def test_clean_staging(tmp_path):
    arc = Archive(str(tmp_path))
    (tmp_path / STAGING_DIR).mkdir()
    (tmp_path / STAGING_DIR / "half-written").write_bytes(b"x")
    arc.clean_staging()
    assert not (tmp_path / STAGING_DIR).exists()


class RecordingFS(LocalFileSystem):
    """A local filesystem that records every byte range read through it."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.reads: list[tuple[str, int, int]] = []

    def _open(self, path, mode="rb", **kw):
        f = super()._open(path, mode, **kw)
        if "r" in mode:
            reads, read = self.reads, f.read

            def recording_read(n=-1):
                at = f.tell()
                data = read(n)
                reads.append((path, at, len(data)))
                return data

            f.read = recording_read
        return f


def test_read_asset_reads_footer_and_one_row_group(tmp_path):
    Archive(str(tmp_path)).write_data_file(_rows([f"k{i:03d}" for i in range(320)], "j1"), "j1-0", {})
    arc = Archive(str(tmp_path))
    arc.refresh_index()
    entry = arc.lookup(["k077"]).to_pylist()[0]
    assert entry["row_group"] == 77 // ROW_GROUP_ROWS

    fs = RecordingFS(skip_instance_cache=True)
    rec = Archive(str(tmp_path), fs=fs)
    row = rec.read_asset(entry, columns=["key", "status", "bitstream"])
    assert row["key"] == "k077" and len(row["bitstream"]) == 2000

    path = str(tmp_path / entry["file"])
    size = os.path.getsize(path)
    meta = pq.ParquetFile(path).metadata
    footer_start = size - 8 - int.from_bytes(open(path, "rb").read()[-8:-4], "little")
    group = meta.row_group(entry["row_group"])
    starts = [min(c.data_page_offset, c.dictionary_page_offset or c.data_page_offset)
              for c in (group.column(i) for i in range(group.num_columns))]  # fmt: skip
    lo, hi = min(starts), max(s + group.column(i).total_compressed_size for i, s in enumerate(starts))
    read = 0
    for p, at, n in fs.reads:
        assert p == path
        if n:
            # every range read lies in the footer or in the wanted row group
            assert at >= footer_start - 64 * 1024 or (lo <= at and at + n <= hi), (at, n, lo, hi, footer_start)
            read += n
    # one row group plus the tail (pyarrow reads the last 64 KiB speculatively for the footer)
    assert read <= (hi - lo) + 64 * 1024 + (size - footer_start)
    assert read < size / 3  # 10 row groups of 32 assets: the other nine are never read


def test_read_assets_fails_a_stale_or_unreadable_entry_alone(tmp_path):
    from operators.restore import load_bitstreams

    Archive(str(tmp_path)).write_data_file(_rows([f"k{i:03d}" for i in range(40)], "j1"), "j1-0", {})
    arc = Archive(str(tmp_path))
    entries = arc.lookup(["k001", "k002", "k003", "k035"]).to_pylist()
    assert len({(e["file"], e["row_group"]) for e in entries[:3]}) == 1
    entries[1] = {**entries[1], "row": entries[1]["row"] + 1}  # the index says k002 lies where k003 does
    entries[3] = {**entries[3], "file": "data/gone.parquet"}
    got = arc.read_assets(entries, columns=["key", "bitstream"])
    assert [g["key"] if isinstance(g, dict) else type(g).__name__ for g in got] == [
        "k001", "ArchiveError", "k003", "FileNotFoundError"]  # fmt: skip
    assert "index is stale for key 'k002'" in str(got[1])
    with pytest.raises(ArchiveError, match="stale"):
        arc.read_asset(entries[1])
    out = load_bitstreams(pa.Table.from_pylist(entries), str(tmp_path), {}).to_pylist()
    assert [r["bitstream"] is not None for r in out] == [True, False, True, False]  # k001 and k003 restore
    assert out[1]["load_error"].startswith("k002: cannot read") and "stale" in out[1]["load_error"]
    for row in (-1, 10**6):  # a row the group does not have
        assert isinstance(arc.read_assets([{**entries[0], "row": row}])[0], ArchiveError)
    assert arc.read_assets(entries[:1], columns=["bitstream"])[0]["key"] == "k001"  # the key is always read


def test_reading_one_asset_from_s3_fetches_about_its_row_group(s3_server, monkeypatch):
    """No read-ahead: s3fs's default cache fetched 50 MB (here the whole file) for one asset."""
    import uuid

    import s3fs

    fetched, fetch = [], s3fs.core.S3File._fetch_range

    def recording(f, start: int, end: int) -> bytes:
        fetched.append(end - start)
        return fetch(f, start, end)

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", recording)
    bucket = f"read-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem().mkdir(bucket)
    arc = Archive(f"s3://{bucket}/arc")
    rel = arc.write_data_file(_rows([f"k{i:03d}" for i in range(320)], "j1", payload=20000), "j1-0", {})
    size = arc.fs.size(arc.path(rel))
    entry = arc.lookup(["k077"]).to_pylist()[0]
    fetched.clear()
    assert len(arc.read_asset(entry, columns=["bitstream"])["bitstream"]) == 20000
    assert sum(fetched) < size / 4, (sum(fetched), size)  # 10 row groups: about one, and the footer


def test_read_assets_fails_the_rows_of_a_file_without_a_wanted_column(tmp_path):
    from operators.restore import load_bitstreams

    arc = Archive(str(tmp_path))
    arc.write_data_file(_rows(["a", "b"], "j1"), "j1-0", {})
    entries = arc.lookup(["a", "b"]).to_pylist()
    path = tmp_path / entries[0]["file"]
    pq.write_table(pq.read_table(path).drop_columns(["bitstream", "job_id"]), path, row_group_size=ROW_GROUP_ROWS)
    got = arc.read_assets(entries, columns=["key", "bitstream"])
    assert all(isinstance(g, ArchiveError) and "has no column bitstream" in str(g) for g in got)
    out = load_bitstreams(pa.Table.from_pylist(entries), str(tmp_path), {}).to_pylist()  # its rows fail, not the batch
    assert all(r["bitstream"] is None and "has no column bitstream" in r["load_error"] for r in out)


def test_a_local_commit_is_flushed_to_disk_before_and_after_its_rename(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))[1])
    arc = Archive(str(tmp_path))
    rel = arc.write_data_file(_rows(["a"], "j1"), "j1-0", {})
    staged, folder = synced
    assert staged.startswith(str(tmp_path / STAGING_DIR)) and folder == str(tmp_path / "data")
    assert (tmp_path / rel).exists() and not list((tmp_path / STAGING_DIR).iterdir())


def test_unreadable_data_files_are_quarantined_not_fatal(tmp_path):
    arc = Archive(str(tmp_path))
    arc.write_data_file(_rows(["a", "b"], "j1"), "j1-0", {})
    good = (tmp_path / "data" / "j1-0.parquet").read_bytes()
    (tmp_path / "data" / "j2-0.parquet").write_bytes(good[: len(good) // 2])  # cut short by a crash
    (tmp_path / "data" / "j3-0.parquet").write_bytes(b"")  # an empty committed file (power loss, old code)
    # a reader skips them and moves nothing
    assert arc.refresh_index(write=False).column("key").to_pylist() == ["a", "b"]
    assert len(list((tmp_path / "data").iterdir())) == 3 and not arc.quarantined
    # a writer quarantines them, with why, and goes on
    assert arc.refresh_index().column("key").to_pylist() == ["a", "b"]
    assert sorted(q["file"] for q in arc.quarantined) == ["data/j2-0.parquet", "data/j3-0.parquet"]
    assert all("not a readable data file" in q["reason"] for q in arc.quarantined)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["j1-0.parquet"]
    note = json.loads((tmp_path / "_quarantine" / "j3-0.parquet.json").read_text())
    assert note["file"] == "data/j3-0.parquet" and "0 bytes" in note["reason"]
    assert (tmp_path / "_quarantine" / "j2-0.parquet").read_bytes() == good[: len(good) // 2]


def test_data_files_of_a_foreign_schema_are_quarantined_not_fatal(tmp_path):
    """Files another tool might write: a null where the schema forbids one, a column of a type
    that cannot be cast. Neither stops readers or writers."""
    arc = Archive(str(tmp_path))
    arc.write_data_file(_rows(["a"], "j1"), "j1-0", {})
    good = pq.read_table(tmp_path / "data" / "j1-0.parquet")
    nulls = good.set_column(good.schema.get_field_index("written_at"), pa.field("written_at", pa.timestamp("us", "UTC")),
                            pa.array([None], pa.timestamp("us", "UTC")))  # fmt: skip
    pq.write_table(nulls, tmp_path / "data" / "j2-0.parquet")
    struct = pa.array([{"size": 1, "mtime": 2}])
    pq.write_table(good.set_column(good.schema.get_field_index("source_fingerprint"), "source_fingerprint", struct),
                   tmp_path / "data" / "j3-0.parquet")  # fmt: skip
    assert Archive(str(tmp_path)).assets().column("key").to_pylist() == ["a"]
    assert Archive(str(tmp_path)).lookup(["a"]).column("file").to_pylist() == ["data/j1-0.parquet"]
    assert arc.refresh_index().column("key").to_pylist() == ["a"]
    assert sorted(q["file"] for q in arc.quarantined) == ["data/j2-0.parquet", "data/j3-0.parquet"]


def test_a_data_file_deleted_behind_the_index_is_noticed_by_the_next_writer(tmp_path):
    arc = Archive(str(tmp_path))
    arc.write_data_file(_rows(["a"], "j1"), "j1-0", {})
    arc.write_data_file(_rows(["b"], "j2"), "j2-0", {})
    arc.refresh_index()
    (tmp_path / "data" / "j2-0.parquet").unlink()  # by hand, or a bucket's lifecycle rule
    assert arc.refresh_index().column("key").to_pylist() == ["a"]  # b is encoded again by the job
    assert Archive(str(tmp_path)).lookup(["b"]).num_rows == 0


def test_failed_shards_are_not_assets(tmp_path):
    arc = Archive(str(tmp_path))
    arc.write_data_file(pa.concat_tables([_rows(["s0/"], "j1", status="failed"), _rows(["s0/a.png"], "j1")],
                                         promote_options="default"), "j1-0", {})  # fmt: skip
    assert arc.assets().column("key").to_pylist() == ["s0/a.png"]


def test_an_unreadable_index_is_rebuilt_and_repair_rebuilds_from_scratch(tmp_path):
    arc = Archive(str(tmp_path))
    arc.create({"preset": "taef2"})
    arc.write_data_file(_rows(["a", "b"], "j1"), "j1-0", {})
    arc.write_data_file(_rows(["b", "c"], "j2"), "j2-0", {})
    arc.refresh_index()
    (tmp_path / "_index" / "index.parquet").write_bytes(b"garbage")
    assert Archive(str(tmp_path)).lookup(["b"]).column("file").to_pylist() == ["data/j2-0.parquet"]  # readers too
    assert arc.refresh_index().column("key").to_pylist() == ["a", "b", "c"]
    (tmp_path / "data" / "j2-0.parquet").write_bytes(b"PAR1")
    r = Archive(str(tmp_path)).repair()
    assert (r["data_files"], r["rows"], r["keys"]) == (1, 2, 2) and r["quarantined"][0]["file"] == "data/j2-0.parquet"
    assert pq.read_table(tmp_path / "_index" / "index.parquet").column("key").to_pylist() == ["a", "b"]


def test_write_whole_replaces_or_leaves_the_old_file(tmp_path):
    fs = LocalFileSystem()
    target = tmp_path / "d" / "img.png"
    write_whole(fs, str(target), b"old")
    write_whole(fs, str(target), b"new content")
    assert target.read_bytes() == b"new content"
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OSError):
        write_whole(fs, str(tmp_path / "file" / "img.png"), b"x")  # a file where a folder must be
    with pytest.raises(IsADirectoryError):
        write_whole(fs, str(tmp_path / "d"), b"x")  # a folder where the file must be
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["d", "file", "img.png"]  # no temporary files left


def test_write_local_names_the_file_it_cannot_write(tmp_path, monkeypatch):
    from operators.archive import write_local

    monkeypatch.chdir(tmp_path)
    write_local("out/report.csv", b"a,b\n")  # relative to the working folder, folders made
    assert (tmp_path / "out" / "report.csv").read_bytes() == b"a,b\n"
    with pytest.raises(IsADirectoryError, match=r"^out: cannot write \(Is a directory\)$") as e:
        write_local("out", b"x")
    assert e.value.errno == errno.EISDIR
    assert (tmp_path / "out" / "report.csv").read_bytes() == b"a,b\n"
