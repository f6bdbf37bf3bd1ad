"""`resulic compact`: fewer files, every asset kept once, and a crash at any step finished or undone."""

from __future__ import annotations

import datetime as dt
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from operators.archive import Archive
from operators.sink import finalise_rows
from pipelines.compact import compact
from schemas.archive import COMPACT_PLAN


def _rows(keys: list[str], job: str, status: str | None = None, fp: str = "1:1") -> pa.Table:
    n = len(keys)
    table = pa.table({
        "key": keys, "source_uri": [f"file:///src/{k}" for k in keys], "source_fingerprint": [fp] * n,
        "source_sha256": [f"sha-{k}-{job}" for k in keys], "width": pa.array([64] * n, pa.int32()),
        "height": pa.array([64] * n, pa.int32()),
        "bitstream": pa.array([None if status else os.urandom(50) for _ in keys], pa.large_binary()),
        "bpp": [0.01] * n, "status": pa.array([status] * n, pa.string()), "error": [status and "not an image"] * n,
    })  # fmt: skip
    return finalise_rows(table, job, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=int(job[1:])))


def _nightly_archive(root) -> Archive:
    """Ten small files: changed sources supersede rows, a broken source fails after it was archived."""
    arc = Archive(str(root))
    arc.create({"preset": "taef2"})
    for night in range(10):
        keys = [f"n{night}-{i}" for i in range(3)] + ([f"n{night - 1}-0"] if night else [])
        arc.write_data_file(_rows(keys, f"j{night}", fp=f"{night}:x"), f"j{night:02d}", {})
    arc.write_data_file(_rows(["n3-1"], "j11", status="failed", fp="11:broken"), "j11", {})
    arc.refresh_index()
    return arc


def _state(arc: Archive) -> dict:
    """Every key's archived row (bitstream included) and its newest status and fingerprint."""
    index = Archive(arc.url).refresh_index(write=False)
    out = {}
    for entry in index.to_pylist():
        row = arc.read_asset(entry, columns=["key", "status", "bitstream", "source_fingerprint"])
        out[entry["key"]] = (row["status"], row["bitstream"], row["source_fingerprint"], entry["last_status"],
                             entry["last_source_fingerprint"])  # fmt: skip
    return out


def test_compact_cuts_files_and_keeps_every_asset_once(tmp_path):
    arc = _nightly_archive(tmp_path / "a")
    before, files = _state(arc), len(arc.data_files())
    r = compact(arc.url, rows_per_file=16)
    assert (r["files_before"], r["files_after"]) == (files, 2)  # 29 live rows (+1 newer failure) in files of 16
    assert r["rows_copied"] == 31 and _state(arc) == before
    assert before["n3-1"][0] == "written" and before["n3-1"][3:] == ("failed", "11:broken")  # the failure is kept
    again = compact(arc.url, rows_per_file=16)
    assert again["rows_copied"] == 0 and again["files_after"] == 2
    assert not os.path.exists(arc.path(COMPACT_PLAN))


def test_a_lone_compacted_file_is_compacted_again_once_rows_in_it_are_superseded(tmp_path):
    arc = _nightly_archive(tmp_path / "a")
    compact(arc.url, rows_per_file=16)  # one full file and one of 15 rows
    by_file: dict[str, list[str]] = {}
    for entry in Archive(arc.url).refresh_index(write=False).to_pylist():
        by_file.setdefault(entry["file"], []).append(entry["key"])
    small = min(by_file, key=lambda f: len(by_file[f]))
    stale = sorted(k for k in by_file[small] if k != "n3-1")[:3]  # sources changed since
    arc.write_data_file(_rows(stale + [f"new-{i}" for i in range(13)], "j20", fp="20:x"), "j20", {})  # a full file
    before, rows_in_small = _state(arc), pq.ParquetFile(arc.path(small)).metadata.num_rows
    r = compact(arc.url, rows_per_file=16)
    assert r["rows_copied"] == rows_in_small - 3 and (r["files_before"], r["files_after"]) == (3, 3)
    assert _state(arc) == before and small not in Archive(arc.url).data_files()
    assert compact(arc.url, rows_per_file=16)["rows_copied"] == 0  # nothing dead is left


def test_a_newer_failure_in_a_file_left_alone_is_still_remembered(tmp_path):
    """K is archived in a small file; its newer failure sits in a file full enough to be left
    alone. Compaction moves K's row: the failure must still count, or the next job retries it."""
    arc = Archive(str(tmp_path / "a"))
    arc.create({"preset": "taef2"})
    arc.write_data_file(_rows(["K"], "j1"), "j1", {})
    arc.write_data_file(pa.concat_tables([_rows(["K"], "j2", status="failed", fp="2:broken"),
                                          _rows(["a", "b", "c"], "j2")], promote_options="default"), "j2", {})  # fmt: skip
    arc.write_data_file(_rows(["L"], "j3"), "j3", {})
    before = _state(arc)
    assert before["K"][3:] == ("failed", "2:broken")
    assert compact(arc.url, rows_per_file=3)["rows_copied"] == 2  # j1 and j3; j2 holds 3 rows that count
    assert _state(arc) == before
    rebuilt = Archive(arc.url)
    rebuilt.repair()
    assert _state(rebuilt) == before  # the stored index agrees with one rebuilt from the files


def test_an_output_holding_a_kept_failure_is_full_and_compaction_settles(tmp_path):
    arc = Archive(str(tmp_path / "a"))
    arc.create({"preset": "taef2"})
    arc.write_data_file(_rows(["K", "M"], "j1"), "j1", {})
    arc.write_data_file(_rows(["K"], "j2", status="failed", fp="2:broken"), "j2", {})
    arc.write_data_file(_rows(["N"], "j3"), "j3", {})
    before = _state(arc)
    assert compact(arc.url, rows_per_file=3)["rows_copied"] == 4
    for _ in range(2):
        assert compact(arc.url, rows_per_file=3)["rows_copied"] == 0
    assert _state(arc) == before


def test_rows_of_an_unknown_status_are_kept_as_they_are(tmp_path):
    """A later version's rows (status "deleted", say) are not this version's to judge."""
    arc = Archive(str(tmp_path / "a"))
    arc.create({"preset": "taef2"})
    arc.write_data_file(_rows(["a", "b"], "j1"), "j1", {})
    arc.write_data_file(_rows(["a", "z"], "j2", status="deleted"), "j2", {})
    assert compact(arc.url, rows_per_file=100)["rows_copied"] == 4
    (only,) = arc.data_files()
    rows = pq.read_table(arc.path(only), columns=["key", "status"]).to_pylist()
    assert sorted((r["key"], r["status"]) for r in rows) == [("a", "deleted"), ("a", "written"), ("b", "written"),
                                                            ("z", "deleted")]  # fmt: skip


class Crash(BaseException):
    """A kill -9 at one step (BaseException: nothing in the code under test catches it)."""


def _crash_at(monkeypatch, step: int) -> list[int]:
    seen = [0]

    def hit(*_):
        seen[0] += 1
        if seen[0] == step:
            raise Crash(step)

    put, rm = Archive._put, LocalFileSystem.rm
    monkeypatch.setattr(Archive, "_put", lambda self, rel, data: (hit() if "_lease" not in rel else None, put(self, rel, data))[1])
    monkeypatch.setattr(LocalFileSystem, "rm", lambda self, path, *a, **k: (hit() if "_lease" not in str(path) else None,
                                                                           rm(self, path, *a, **k))[1])  # fmt: skip
    return seen


def test_a_compaction_killed_at_any_step_is_finished_or_undone(tmp_path, monkeypatch):
    template = tmp_path / "template"
    expected = _state(_nightly_archive(template))
    with monkeypatch.context() as m:  # how many steps a whole compaction takes
        seen = _crash_at(m, step=-1)
        shutil.copytree(template, tmp_path / "count")
        compact(str(tmp_path / "count"), rows_per_file=8)
    steps = seen[0]
    copies = sum(pq.ParquetFile(Archive(str(tmp_path / "count")).path(f)).metadata.num_rows
                 for f in Archive(str(tmp_path / "count")).data_files())  # fmt: skip
    assert steps > 8
    for step in range(1, steps + 1):
        root = tmp_path / f"crash-{step}"
        shutil.copytree(template, root)
        with monkeypatch.context() as m:
            _crash_at(m, step)
            with pytest.raises(Crash):
                compact(str(root), rows_per_file=8)
        # the next writer (here: compact again, taking the dead job's lease) finishes or undoes it
        r = compact(str(root), rows_per_file=8, break_lease=True)
        assert _state(Archive(str(root))) == expected, f"crash at step {step} of {steps} ({r['recovered']})"
        assert r["files_after"] == 4 and not os.path.exists(root / COMPACT_PLAN), step
        rows = sum(pq.ParquetFile(Archive(str(root)).path(f)).metadata.num_rows for f in Archive(str(root)).data_files())
        assert rows == copies, f"crash at step {step}: {rows} rows in data/, a whole compaction leaves {copies}"
