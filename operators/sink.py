"""Sink: the Ray Data datasink that commits asset rows to the archive and accounts for every input.

Every row of the job reaches the sink exactly once: written and failed rows are committed
to a data file (failed rows keep their reason; the next job retries them only when their
source changed, ``operators.incremental``); unchanged and still-failed rows are only counted,
except that an asset found unchanged by its bytes under a new listing fingerprint (a touched
file) has its archived row committed again under that fingerprint (:func:`archived_again`).
A WebDataset shard's marker row (read to its end) is handed back in the tally instead: the
driver commits the markers once every write task is done, so a marker never lands before the
members it vouches for. Each write task returns its tally; the driver adds them up.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import uuid
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink, WriteResult

from operators.archive import Archive
from schemas.archive import (ASSET_SCHEMA, STATUS_FAILED, STATUS_REFRESHED, STATUS_SHARD, STATUS_SKIPPED,
                            STATUS_STILL_FAILED, STATUS_UNCHANGED, STATUS_WRITTEN)


def finalise_rows(table: pa.Table, job_id: str, written_at: dt.datetime) -> pa.Table:
    """Settle the status of processed rows and fill the columns every archived row carries."""
    status = pc.fill_null(table.column("status"), STATUS_WRITTEN)
    table = table.set_column(table.column_names.index("status"), "status", status)
    n = table.num_rows
    extra = {"job_id": pa.array([job_id] * n, pa.string()),
             "written_at": pa.array([written_at] * n, pa.timestamp("us", tz="UTC"))}  # fmt: skip
    for name, arr in extra.items():
        table = table.append_column(name, arr)
    for f in ASSET_SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(n, f.type))
    return table


def commit_stopped_failures(arc: Archive, failures: list[dict], job_id: str, now: dt.datetime) -> str | None:
    """Commit the failed rows a stopped job's monitor kept (``FailureMonitor.kept_failures``)
    that its sink had not written: the data file's name, or None when there were none."""
    mine = [rel for rel in arc.data_files() if posixpath.basename(rel).startswith(f"{job_id}-")]
    done = set(arc.read_rows(mine).column("key").to_pylist())
    rows = [r for r in {r["key"]: r for r in failures}.values() if r["key"] not in done]
    if not rows:
        return None
    table = pa.Table.from_pylist(rows).sort_by("key")
    return arc.write_data_file(finalise_rows(table, job_id, now).select(ASSET_SCHEMA.names).cast(ASSET_SCHEMA),
                               f"{job_id}-stopped", {"job_id": job_id})  # fmt: skip


def archived_again(arc: Archive, refreshed: pa.Table, now: dt.datetime) -> pa.Table:
    """The archived rows of ``refreshed`` rows (the same bytes under a new listing fingerprint),
    read from their data files (``archived_*`` columns) and given the listing's ``source_uri``
    and ``source_fingerprint`` and this job's time (``job_id`` stays the encoding job's):
    committed, they let the next job skip the source without reading it. A row that cannot be
    read is left out (the next job reads its source again)."""
    wanted = refreshed.select(["key", "source_uri", "source_fingerprint", "archived_file", "archived_row_group",
                               "archived_row"]).to_pylist()  # fmt: skip
    places = [{"key": r["key"], "file": r["archived_file"], "row_group": r["archived_row_group"],
               "row": r["archived_row"]} for r in wanted]  # fmt: skip
    rows = [{**old, "source_uri": r["source_uri"], "source_fingerprint": r["source_fingerprint"], "written_at": now}
            for r, old in zip(wanted, arc.read_assets(places, columns=ASSET_SCHEMA.names))
            if not isinstance(old, Exception)]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=ASSET_SCHEMA)


class ArchiveDatasink(Datasink[dict]):
    def __init__(self, url: str, storage_options: dict[str, Any], job_id: str, min_rows: int = 128,
                 target_bpp: float | None = None) -> None:  # fmt: skip
        self.url, self.storage_options, self.job_id, self.min_rows = url, storage_options, job_id, min_rows
        self.target_bpp = target_bpp  # written rows above it are counted (the lowest rate at their size)
        self.result: WriteResult[dict] | None = None

    @property
    def min_rows_per_write(self) -> int:
        return self.min_rows

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        tally = {"written": 0, "unchanged": 0, "still_failed": 0, "failed": 0, "failures": [], "bytes_in": 0,
                 "bytes_out": 0, "pixels": 0, "bits_text": 0, "over_target": 0, "files": [], "nodes": {},
                 "shards": []}  # fmt: skip
        if not tables:
            return tally
        now = dt.datetime.now(dt.timezone.utc)
        table = finalise_rows(pa.concat_tables(tables, promote_options="default"), self.job_id, now)
        status = table.column("status")
        refreshed = table.filter(pc.equal(status, STATUS_REFRESHED))
        tally["unchanged"] = pc.sum(pc.is_in(status, pa.array([STATUS_UNCHANGED, STATUS_REFRESHED]))).as_py() or 0
        tally["still_failed"] = pc.sum(pc.equal(status, STATUS_STILL_FAILED)).as_py() or 0
        marker = pc.equal(status, STATUS_SHARD)
        tally["shards"] = table.filter(marker).select(["key", "source_uri", "source_fingerprint"]).to_pylist()
        kept = table.filter(pc.invert(pc.is_in(status, pa.array([*STATUS_SKIPPED, STATUS_SHARD]))))
        if "encoder_node" in kept.column_names:  # not archived: which nodes did the work, for the summary
            for node in kept.column("encoder_node").drop_null().to_pylist():
                tally["nodes"][node] = tally["nodes"].get(node, 0) + 1
        arc = Archive(self.url, self.storage_options)
        committed = kept
        if refreshed.num_rows:
            again = archived_again(arc, refreshed, now)
            committed = pa.concat_tables([kept.select(ASSET_SCHEMA.names).cast(ASSET_SCHEMA), again])
        # min_rows is also the most a file holds: each file commits its rows as soon as it lands
        for start in range(0, committed.num_rows, self.min_rows):
            name = f"{self.job_id}-{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}"
            chunk = committed.slice(start, self.min_rows)
            tally["files"].append(arc.write_data_file(chunk, name, {"job_id": self.job_id}))
        for row in kept.select(["source_uri", "status", "error", "source_size", "bitstream", "width", "height",
                                "bits_text", "bpp"]).to_pylist():  # fmt: skip
            if row["status"] == STATUS_FAILED:
                tally["failed"] += 1
                tally["failures"].append({"source": row["source_uri"], "reason": row["error"]})
            else:
                tally["written"] += 1
                tally["bytes_in"] += row["source_size"] or 0
                tally["bytes_out"] += len(row["bitstream"])
                tally["pixels"] += row["width"] * row["height"]
                tally["bits_text"] += row["bits_text"] or 0
                tally["over_target"] += self.target_bpp is not None and row["bpp"] > self.target_bpp
        return tally

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        self.result = write_result
