"""What a rerun skips: unchanged sources, sources that failed and did not change, whole shards."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from operators.archive import latest_per_key
from operators.incremental import account_skipped_shards, known_shards, known_sources, mark_unchanged, skip_known_shards
from schemas.archive import INDEX_SCHEMA, STATUS_SHARD, STATUS_STILL_FAILED, STATUS_UNCHANGED


def _index(rows: list[tuple]) -> pa.Table:
    """Index rows from (key, status, fingerprint, sha256, time) of each committed row."""
    at = [dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=r[4]) for r in rows]
    table = pa.table({
        "key": [r[0] for r in rows], "file": [f"data/f{r[4]}.parquet" for r in rows],
        "row_group": pa.array([0] * len(rows), pa.int32()), "row": pa.array([0] * len(rows), pa.int32()),
        "source_uri": [f"file:///src/{r[0]}" for r in rows], "source_fingerprint": [r[2] for r in rows],
        "source_sha256": [r[3] for r in rows], "status": [r[1] for r in rows], "bpp": [None] * len(rows),
        "written_at": at, "last_status": [r[1] for r in rows], "last_source_fingerprint": [r[2] for r in rows],
        "last_source_sha256": [r[3] for r in rows], "last_written_at": at,
    })  # fmt: skip
    return latest_per_key(table.cast(INDEX_SCHEMA))


def _batch(rows: list[tuple]) -> pa.Table:
    return pa.table({"key": [r[0] for r in rows], "source_fingerprint": [r[1] for r in rows],
                     "source_sha256": [r[2] for r in rows], "status": pa.array([None] * len(rows), pa.string()),
                     "data": pa.array([b"x"] * len(rows), pa.large_binary())})  # fmt: skip


def test_unchanged_and_still_failed_by_fingerprint_then_by_content():
    index = _index([
        ("a", "written", "1", "sa", 0),
        ("b", "failed", "2", None, 0),                              # failed to read
        ("c", "written", "3", "sc", 0), ("c", "failed", "4", "sd", 1),  # archived, then broke
        ("d", "failed", "5", "se", 0),
    ])  # fmt: skip
    batch = _batch([("a", "1", None), ("b", "2", None), ("c", "4", None), ("d", "9", "se"), ("e", "1", None)])
    out = mark_unchanged(batch, known_sources(index), "source_fingerprint")
    assert out.column("status").to_pylist() == [STATUS_UNCHANGED, STATUS_STILL_FAILED, STATUS_STILL_FAILED, None, None]
    assert out.column("data").to_pylist() == [None, None, None, b"x", b"x"]  # skipped bytes go no further
    # d's listing changed (a touch) but its bytes did not: the content hash finds the same failure
    out = mark_unchanged(out, known_sources(index), "source_sha256")
    assert out.column("status").to_pylist()[3] == STATUS_STILL_FAILED
    # --retry-failed: only archived sources are skipped
    again = mark_unchanged(batch, known_sources(index, retry_failed=True), "source_fingerprint")
    assert again.column("status").to_pylist() == [STATUS_UNCHANGED, None, None, None, None]


def test_a_failure_older_than_the_archived_asset_is_not_remembered():
    index = _index([("a", "failed", "1", None, 0), ("a", "written", "2", "s", 1)])
    out = mark_unchanged(_batch([("a", "1", None)]), known_sources(index), "source_fingerprint")
    assert out.column("status").to_pylist() == [None]  # the source went back to its broken version: try it


def test_known_shards_skip_whole_shards_with_their_members():
    index = _index([
        ("s0/", STATUS_SHARD, "F0", None, 0), ("s0/a.png", "written", "F0", "x", 0), ("s0/b.png", "failed", "F0", "y", 0),
        ("s1/", STATUS_SHARD, "F1", None, 0), ("s1/a.png", "written", "F1", "z", 0),
        ("s2/", "failed", "F2", None, 0), ("s2/a.png", "written", "F2", "w", 0),  # cut short after a.png
        ("s3/a.png", "written", "F3", "v", 0),  # no marker: a job died inside the shard
    ])  # fmt: skip
    shards = known_shards(index)
    listing = pa.table({"key": ["s0/", "s1/", "s2/", "s3/"], "source_uri": ["u0", "u1", "u2", "u3"],
                        "source_fingerprint": ["F0", "CHANGED", "F2", "F3"], "caption": pa.nulls(4, pa.string()),
                        "status": pa.nulls(4, pa.string()), "error": pa.nulls(4, pa.string())})  # fmt: skip
    marked = skip_known_shards(listing, shards)
    assert marked.column("status").to_pylist() == [STATUS_UNCHANGED, None, STATUS_UNCHANGED, None]  # one row a shard
    out = {r["key"]: r["status"] for r in account_skipped_shards(marked, shards).to_pylist()}
    assert out == {"s0/a.png": STATUS_UNCHANGED, "s0/b.png": STATUS_STILL_FAILED,  # skipped, members from the index
                   "s1/": None,  # changed: read again
                   "s2/": STATUS_STILL_FAILED, "s2/a.png": STATUS_UNCHANGED,
                   "s3/": None}  # fmt: skip
    again = known_shards(index, retry_failed=True)
    retry = {r["key"]: r["status"] for r in account_skipped_shards(skip_known_shards(listing, again), again).to_pylist()}
    assert retry == {"s0/": None, "s1/": None, "s2/": None, "s3/": None}  # shards with failures are read again


def test_a_shard_whose_member_failed_for_a_reason_not_its_own_is_read_again():
    """s0/b.png's captioning failed at the endpoint (its source forgotten): s0 is read again."""
    index = _index([
        ("s0/", STATUS_SHARD, "F0", None, 0), ("s0/a.png", "written", "F0", "x", 0), ("s0/b.png", "failed", None, None, 0),
        ("s1/", STATUS_SHARD, "F1", None, 0), ("s1/a.png", "failed", "F1", "z", 0),  # its own failure: skipped
    ])  # fmt: skip
    listing = pa.table({"key": ["s0/", "s1/"], "source_uri": ["u0", "u1"], "source_fingerprint": ["F0", "F1"],
                        "caption": pa.nulls(2, pa.string()), "status": pa.nulls(2, pa.string()),
                        "error": pa.nulls(2, pa.string())})  # fmt: skip
    for retry in (False, True):
        shards = known_shards(index, retry_failed=retry)
        out = {r["key"]: r["status"] for r in account_skipped_shards(skip_known_shards(listing, shards), shards).to_pylist()}
        assert out == ({"s0/": None, "s1/": None} if retry else {"s0/": None, "s1/a.png": STATUS_STILL_FAILED})


def test_a_touched_shard_s_members_stay_accounted_for():
    """s0 was touched (new fingerprint F0b) and read again: its members matched by their bytes
    kept their rows of F0, and the marker is F0b's. The next job skips s0 with every member."""
    index = _index([
        ("s0/", STATUS_SHARD, "F0", None, 0), ("s0/a.png", "written", "F0", "x", 0), ("s0/b.png", "failed", "F0", "y", 0),
        ("s0/", STATUS_SHARD, "F0b", None, 1), ("s0/c.png", "written", "F0b", "z", 1),  # c added in the new version
    ])  # fmt: skip
    shards = known_shards(index)
    listing = pa.table({"key": ["s0/"], "source_uri": ["u0"], "source_fingerprint": ["F0b"],
                        "caption": pa.nulls(1, pa.string()), "status": pa.nulls(1, pa.string()),
                        "error": pa.nulls(1, pa.string())})  # fmt: skip
    out = {r["key"]: r["status"] for r in account_skipped_shards(skip_known_shards(listing, shards), shards).to_pylist()}
    assert out == {"s0/a.png": STATUS_UNCHANGED, "s0/b.png": STATUS_STILL_FAILED, "s0/c.png": STATUS_UNCHANGED}


def test_shards_keyed_under_folders_hold_their_own_members():
    """train/shard-0/ and val/shard-0/ (shards of one name in two folders), beside a flat s/."""
    index = _index([
        ("train/shard-0/", STATUS_SHARD, "T", None, 0), ("train/shard-0/a.png", "written", "T", "1", 0),
        ("val/shard-0/", STATUS_SHARD, "V", None, 0), ("val/shard-0/a.png", "written", "V", "2", 0),
        ("val/shard-0/sub/b.png", "written", "V", "3", 0),  # a member whose own name has a folder
        ("s/", STATUS_SHARD, "S", None, 0), ("s/x/y.png", "written", "S", "4", 0),
    ])  # fmt: skip
    shards = known_shards(index)
    members = {r["key"]: r["shard"] for r in shards.to_pylist() if r["status"] != STATUS_SHARD}
    assert members == {"train/shard-0/a.png": "train/shard-0/", "val/shard-0/a.png": "val/shard-0/",
                       "val/shard-0/sub/b.png": "val/shard-0/", "s/x/y.png": "s/"}  # fmt: skip
    # a.tar beside a/b.tar: a member belongs to the deepest shard its key starts with, once
    nested = known_shards(_index([("a/", STATUS_SHARD, "A", None, 0), ("a/b/", STATUS_SHARD, "B", None, 0),
                                  ("a/b/1.png", "written", "B", "1", 0), ("a/2.png", "written", "A", "2", 0)]))  # fmt: skip
    assert sorted((r["key"], r["shard"]) for r in nested.to_pylist() if r["status"] != STATUS_SHARD) == [
        ("a/2.png", "a/"), ("a/b/1.png", "a/b/")]


def test_a_failure_found_while_listing_is_not_committed_again():
    """A manifest row whose file is missing (fingerprint MISSING) or whose key was listed for
    another uri (DUPLICATE) fails before any read; the same failure next time is still_failed,
    and a missing shard likewise."""
    from operators.sources import DUPLICATE, MISSING

    index = _index([("gone.png", "failed", MISSING, None, 0), ("k.png", "written", "1", "s", 0),
                    ("k.png", "failed", DUPLICATE, None, 1), ("s9/", "failed", MISSING, None, 0)])  # fmt: skip
    batch = pa.table({"key": ["gone.png", "k.png", "k.png", "new.png"], "source_fingerprint": [MISSING, "1", DUPLICATE, MISSING],
                      "source_sha256": pa.nulls(4, pa.string()), "status": [None, None, "failed", "failed"],
                      "data": pa.nulls(4, pa.large_binary())})  # fmt: skip
    out = mark_unchanged(batch, known_sources(index), "source_fingerprint")
    assert out.column("status").to_pylist() == [STATUS_STILL_FAILED, STATUS_UNCHANGED, STATUS_STILL_FAILED, "failed"]
    listing = pa.table({"key": ["s9/"], "source_uri": ["u9"], "source_fingerprint": [MISSING],
                        "caption": pa.nulls(1, pa.string()), "status": ["failed"], "error": ["shard not found: u9"]})  # fmt: skip
    shards = known_shards(index)
    out = account_skipped_shards(skip_known_shards(listing, shards), shards)
    assert out.column("status").to_pylist() == [STATUS_STILL_FAILED]


def test_the_same_bytes_under_a_new_fingerprint_are_refreshed_with_their_row_s_place():
    from schemas.archive import STATUS_REFRESHED

    index = _index([("a", "written", "1", "sa", 0), ("b", "written", "2", "sb", 0)])
    batch = _batch([("a", "1-touched", "sa"), ("b", "2", "sb"), ("c", "3", "sc")])  # b: read again, same fingerprint
    out = mark_unchanged(batch, known_sources(index), "source_sha256").to_pylist()
    assert [r["status"] for r in out] == [STATUS_REFRESHED, STATUS_UNCHANGED, None]
    assert [(r["archived_file"], r["archived_row_group"], r["archived_row"]) for r in out] == [
        ("data/f0.parquet", 0, 0), (None, None, None), (None, None, None)]
    assert [r["data"] for r in out] == [None, None, b"x"]
