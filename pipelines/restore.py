"""The restore pipeline: archive keys -> image files under DEST.

A few named keys are restored in-process: one index lookup, then the footer and one row
group of each asset's data file. ``--all`` or a key prefix runs as a Ray Data chain:
index rows -> bitstreams (one read per row group) -> decode actors -> files.

Every key asked for ends restored or failed with its reason; nothing one key does stops the
others. ``--all`` and ``--prefix`` list the assets archived as failed apart (``not_archived``:
the compress job already reported them) rather than as restore failures. Two keys that would
restore to one file (``photo`` and ``photo.png``; ``A.png`` and ``a.png`` on a disk that
folds case) never overwrite each other: one fails
(``operators.restore.claim_paths``). Restore only reads the archive, and each file appears
whole or not at all.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from codec.usage import UsageError
from operators.archive import Archive
from operators.restore import Restorer, case_insensitive, claim_paths, load_bitstreams
from schemas.archive import STATUS_FAILED
from pipelines.ray_runtime import ensure_ray, gpus_for, plan_pool, worker_env

RESTORE_BLOCK = 8


def restore(
    archive: str,
    dest: str,
    *,
    keys: list[str] | None = None,
    all_keys: bool = False,
    prefix: str | None = None,
    fmt: str = "png",
    workers: int | None = None,
    storage_options: dict[str, Any] | None = None,
    decoder: str = "auto",
    steps: int | None = None,
    device: str = "auto",
) -> dict:
    """``decoder``: "auto" (CDM when an asset's model has one, else plain), "cdm" or "plain".
    ``device``: where decoding runs (``codec.device``; "auto": a GPU when there is one)."""
    t0 = time.time()
    arc = Archive(archive, storage_options)
    arc.meta()  # refuses foreign archives and unknown versions
    if sum([bool(keys), all_keys, prefix is not None]) != 1:
        raise UsageError("name keys with --key, or use --all, or --prefix (one of them)")
    results: list[dict] = []
    not_archived: list[dict] = []
    if keys:
        keys = list(dict.fromkeys(keys))  # a key named twice is restored once
        found = {r["key"]: r for r in arc.lookup(keys).to_pylist()}
        clashes = claim_paths([k for k, r in found.items() if r["status"] != STATUS_FAILED], fmt, case_insensitive(dest))
        restorer = Restorer(dest, fmt, storage_options, decoder=decoder, steps=steps, device=device)
        for key in keys:
            entry = found.get(key)
            if entry is None or key in clashes:
                error = clashes[key] if entry else f"{key}: not in the archive"
                results.append({"key": key, "path": None, "restore_status": "failed", "error": error})
                continue
            try:
                row = arc.read_asset(entry, columns=["key", "status", "bitstream"])
            except Exception as e:  # noqa: BLE001 - a damaged or missing data file fails its own key only
                results.append({"key": key, "path": None, "restore_status": "failed",
                                "error": f"{key}: cannot read {entry['file']}: {type(e).__name__}: {e}"})  # fmt: skip
                continue
            path, err = restorer.restore_one(key, row["status"], row["bitstream"])
            results.append({"key": key, "path": path, "restore_status": "failed" if err else "restored", "error": err})
    else:
        index = arc.assets()  # a reader never writes the archive
        if prefix:
            index = index.filter(pc.starts_with(index.column("key"), prefix))
        failed = pc.equal(index.column("status"), STATUS_FAILED)
        not_archived = [{"key": r["key"], "reason": f"{r['key']}: archived as failed"}
                        for r in index.filter(failed).select(["key"]).to_pylist()]  # fmt: skip
        index = index.filter(pc.invert(failed))
        clashes = claim_paths(index.column("key").to_pylist(), fmt, case_insensitive(dest))
        if clashes:
            results += [{"key": k, "path": None, "restore_status": "failed", "error": e} for k, e in clashes.items()]
            index = index.filter(pc.invert(pc.is_in(index.column("key"), value_set=pa.array(list(clashes), pa.string()))))
        if index.num_rows:
            ensure_ray()
            plan = plan_pool(workers, gpus_for(device, None))
            # blocks of RESTORE_BLOCK keys: a block goes to one actor, so small blocks spread a
            # small job over the pool, and a job never starts more actors than it has blocks.
            # Each block reads its own row groups, so a full row group (ROW_GROUP_ROWS = 32) is
            # read up to four times: a read of milliseconds against seconds of decoding 8 images.
            blocks = [index.slice(i, RESTORE_BLOCK) for i in range(0, index.num_rows, RESTORE_BLOCK)]
            ds = ray.data.from_arrow(blocks)
            ds = ds.map_batches(load_bitstreams, fn_kwargs={"archive_url": archive, "storage_options": storage_options or {}},
                                batch_size=RESTORE_BLOCK, batch_format="pyarrow", num_cpus=0.5)  # fmt: skip
            ds = ds.map_batches(
                Restorer,
                fn_constructor_kwargs={"dest": dest, "fmt": fmt, "storage_options": storage_options,
                                       "threads": plan.threads_per_actor, "env": worker_env(),
                                       "decoder": decoder, "steps": steps, "device": device},  # fmt: skip
                compute=ray.data.ActorPoolStrategy(size=min(plan.actors, len(blocks))),
                batch_size=4,
                batch_format="pyarrow",
                num_cpus=plan.cpus_per_actor,
                num_gpus=plan.gpus_per_actor or None,
            )
            results += ds.select_columns(["key", "path", "restore_status", "error"]).take_all()
    failures = [{"key": r["key"], "reason": r["error"]} for r in results if r["restore_status"] != "restored"]
    return {
        "archive": archive, "dest": dest, "format": fmt,
        "restored": sum(r["restore_status"] == "restored" for r in results), "failed": len(failures),
        "failures": sorted(failures, key=lambda f: f["key"]),
        "not_archived": len(not_archived), "not_archived_keys": not_archived,
        "paths": sorted(r["path"] for r in results if r["path"]),
        "wall_seconds": round(time.time() - t0, 3),
    }  # fmt: skip


__all__ = ["restore"]
