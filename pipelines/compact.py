"""``resulic compact``: rewrite small and superseded data files into full ones, crash-safe.

Nightly jobs leave many small files (one per write task) and rows superseded by later ones
(a changed source, a retried failure). Compaction copies the rows that still count (per key,
the archived row, and a failure newer than it, which keeps an unchanged broken source from
being retried) out of every file that is small or holds superseded rows, into files of
``rows_per_file`` rows, then removes the old files. Each step is recorded in a plan
(``_compact/plan.json``) so that a compaction killed at any moment is finished or undone by
the next writer (``recover``):

1. the plan names the input files (not yet ``copied``);
2. each output is named in the plan, then committed into ``data/`` (whole, as any data file);
3. the plan is marked ``copied``;
4. the index is switched from the inputs to the outputs; the inputs are deleted;
5. the plan is deleted.

Killed before 3: the outputs (unindexed copies) are deleted and the inputs stay. Killed after 3:
steps 4 and 5 are done again (both are idempotent). Either way every asset is kept exactly once.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from codec.usage import UsageError
from operators.archive import Archive, new_job_id
from operators.lease import ArchiveLease
from schemas.archive import ASSET_SCHEMA, COMPACT_PLAN, DATA_DIR, ROW_STATUSES, STATUS_FAILED

ROWS_PER_FILE = 4096


def compact(archive: str, storage_options: dict[str, Any] | None = None, rows_per_file: int = ROWS_PER_FILE,
            break_lease: bool = False) -> dict:  # fmt: skip
    """Compact ``archive`` under its writer lease; returns the file counts before and after."""
    if rows_per_file < 1:
        raise UsageError(f"--rows-per-file must be at least 1, not {rows_per_file}")
    arc = Archive(archive, storage_options)
    arc.meta()
    job_id = new_job_id()
    lease = ArchiveLease(arc, "compact-" + job_id)
    lease.acquire(force=break_lease)
    try:
        recovered = recover(arc)
        arc.clean_staging()
        index = arc.refresh_index()
        before = arc.data_files()
        indexed = {c["values"]: c["counts"] for c in pc.value_counts(index.column("file")).to_pylist()}
        small = [f for f in before if indexed.get(f, 0) < rows_per_file]
        live = _live_counts(arc, index, small)  # index rows plus the newer failures kept beside them
        inputs = [f for f in small if live[f][0] < rows_per_file]
        if len(inputs) < 2 and all(live[f][0] == live[f][1] for f in inputs):
            return {"archive": archive, "files_before": len(before), "files_after": len(before), "rows_copied": 0,
                    "recovered": recovered}  # fmt: skip
        plan = {"job_id": job_id, "inputs": inputs, "outputs": [], "copied": False}
        arc.write_json(COMPACT_PLAN, plan)
        copied = 0
        for n, table in enumerate(_live_rows(arc, index, inputs, rows_per_file)):
            name = f"{job_id}-compact-{n:05d}"
            plan["outputs"].append(f"{DATA_DIR}/{name}.parquet")
            arc.write_json(COMPACT_PLAN, plan)  # listed before it exists: a crash after its commit undoes it too
            arc.write_data_file(table, name, {"job_id": job_id, "compacted": "true"})
            copied += table.num_rows
        plan["copied"] = True
        arc.write_json(COMPACT_PLAN, plan)
        _finish(arc, plan)
        return {"archive": archive, "files_before": len(before), "files_after": len(arc.data_files()),
                "rows_copied": copied, "recovered": recovered}  # fmt: skip
    finally:
        lease.release()


def recover(arc: Archive) -> str | None:
    """Finish or undo a compaction that was killed (the lease holder calls this first)."""
    try:
        with arc.fs.open(arc.path(COMPACT_PLAN), "rb") as f:
            plan = json.loads(f.read())
    except FileNotFoundError:
        return None
    if plan["copied"]:
        _finish(arc, plan)
        return "finished"
    for rel in plan["outputs"]:
        if arc.fs.exists(arc.path(rel)):
            arc.fs.rm(arc.path(rel))
    _remove_outputs_from_index(arc, plan["outputs"])
    arc.fs.rm(arc.path(COMPACT_PLAN))
    return "undone"


def _finish(arc: Archive, plan: dict) -> None:
    arc.replace_files(plan["inputs"], plan["outputs"])
    for rel in plan["inputs"]:
        if arc.fs.exists(arc.path(rel)):
            arc.fs.rm(arc.path(rel))
    arc.fs.rm(arc.path(COMPACT_PLAN))


def _remove_outputs_from_index(arc: Archive, outputs: list[str]) -> None:
    """An undone compaction's outputs may have been indexed by a reader-writer in between: the
    index is rebuilt when it names one (the inputs hold every row)."""
    index = arc.load_index()
    if outputs and pc.any(pc.is_in(index.column("file"), value_set=pa.array(outputs, pa.string()))).as_py():
        arc.repair()


def _live_counts(arc: Archive, index: pa.Table, files: list[str]) -> dict[str, tuple[int, int]]:
    """Per file, (rows that still count, rows): its index rows and the failures newer than them
    (:func:`_keep_rule`), read from three small columns. A file is full when the rows that
    count fill it: counting index rows alone, an output that holds a kept failure would never
    be full, and every compaction would rewrite it."""
    keep = _keep_rule(index, files)
    counts = {}
    for rel in files:
        live = total = 0
        with arc.fs.open(arc.path(rel), "rb") as f:
            pf = pq.ParquetFile(f)
            for g in range(pf.num_row_groups):
                kept = keep(rel, g, pf.read_row_group(g, columns=["key", "status", "written_at"]).to_pylist())
                live, total = live + sum(kept), total + len(kept)
        counts[rel] = (live, total)
    return counts


def _keep_rule(index: pa.Table, inputs: list[str]) -> Callable[[str, int, list[dict]], list[bool]]:
    """Which rows of a row group of ``inputs`` still count: the index's row of each key, a
    failure newer than it (its ``last_*`` columns), and any row of an unknown status."""
    chosen = {(r["file"], r["row_group"], r["row"]) for r in
              index.filter(pc.is_in(index.column("file"), value_set=pa.array(inputs, pa.string())))
              .select(["file", "row_group", "row"]).to_pylist()}  # fmt: skip
    newer_failure = index.filter(pc.and_(pc.equal(index.column("last_status"), STATUS_FAILED),
                                         pc.not_equal(index.column("status"), STATUS_FAILED)))  # fmt: skip
    failures = {(r["key"], r["last_written_at"]) for r in newer_failure.select(["key", "last_written_at"]).to_pylist()}

    def keep(rel: str, group: int, rows: list[dict]) -> list[bool]:
        # a row of a status this version does not know (a later version's) is not judged: kept
        return [(rel, group, i) in chosen or m["status"] not in ROW_STATUSES
                or (m["status"] == STATUS_FAILED and (m["key"], m["written_at"]) in failures)
                for i, m in enumerate(rows)]  # fmt: skip

    return keep


def _live_rows(arc: Archive, index: pa.Table, inputs: list[str], rows_per_file: int):
    """The rows of ``inputs`` that still count (:func:`_keep_rule`), in tables of ``rows_per_file`` rows."""
    keep_rows = _keep_rule(index, inputs)
    pending: list[pa.Table] = []
    count = 0
    for rel in inputs:
        with arc.fs.open(arc.path(rel), "rb") as f:
            pf = pq.ParquetFile(f)
            for g in range(pf.num_row_groups):
                group = pf.read_row_group(g).select(ASSET_SCHEMA.names)
                keep = keep_rows(rel, g, group.select(["key", "status", "written_at"]).to_pylist())
                kept = group.filter(pa.array(keep, pa.bool_()))
                if kept.num_rows:
                    pending.append(kept)
                    count += kept.num_rows
                while count >= rows_per_file:
                    table = pa.concat_tables(pending)
                    yield table.slice(0, rows_per_file)
                    rest = table.slice(rows_per_file)
                    pending, count = ([rest] if rest.num_rows else []), rest.num_rows
    if count:
        yield pa.concat_tables(pending)
