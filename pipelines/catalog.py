"""What an archive holds: its assets (``resulic ls``) and its summary (``resulic info``).

Both read the index only (plus the metadata and job summaries), never the bitstreams, and
write nothing.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import pyarrow.compute as pc

from operators.archive import Archive
from schemas.archive import JOBS_DIR, STATUS_FAILED, STATUS_WRITTEN



def list_assets(archive: str, storage_options: dict[str, Any] | None = None) -> list[dict]:
    arc = Archive(archive, storage_options)
    arc.meta()
    index = arc.assets()
    cols = ["key", "source_uri", "status", "bpp", "source_sha256", "written_at"]
    rows = index.select(cols).to_pylist()
    for r in rows:
        r["written_at"] = r["written_at"].isoformat()
    return rows


def archive_info(archive: str, storage_options: dict[str, Any] | None = None) -> dict:
    arc = Archive(archive, storage_options)
    meta = arc.meta()
    index = arc.assets()
    written = index.filter(pc.equal(index.column("status"), STATUS_WRITTEN))
    jobs = sorted(arc.fs.glob(arc.path(f"{JOBS_DIR}/*.json")))
    last = None
    if jobs:
        with arc.fs.open(jobs[-1], "rb") as f:
            last = json.loads(f.read())
    bpp = pc.mean(written.column("bpp")).as_py() if written.num_rows else None
    return {
        "archive": archive, **meta,
        "assets": index.num_rows, "written": written.num_rows,
        "failed": pc.sum(pc.equal(index.column("status"), STATUS_FAILED)).as_py() or 0,
        "mean_bpp": bpp, "data_files": len(arc.data_files()), "jobs": len(jobs),
        "last_job": {k: last[k] for k in ("job_id", "written", "unchanged", "failed", "wall_seconds")} if last else None,
        "last_job_file": posixpath.basename(jobs[-1]) if jobs else None,
    }  # fmt: skip
