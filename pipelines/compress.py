"""The compress pipeline: a source of photos -> a Parquet archive of verified bitstreams.

Read top to bottom, it is one chain: list -> skip unchanged (listing fingerprint) -> read
bytes (or expand WebDataset shards) -> skip unchanged (content hash) -> decode -> encode and
verify (actor pool) -> [caption original and reconstruction (actor pool)] -> [residual text
into the stream] -> commit to the archive. Every listed asset reaches the sink exactly once,
as written, unchanged or failed.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from dataclasses import replace
from typing import Any

import pyarrow.compute as pc
import ray

from codec.semantic.captioners import CaptionConfig
from codec.settings import EncodeSettings, detail_mode
from operators.archive import Archive
from operators.caption import Captioner
from operators.decode import decode_images
from operators.encode import Encoder
from operators.residual import attach_residual
from operators.sink import ArchiveDatasink
from operators.sources import ListingDatasource, Source, expand_shards, fetch, mark_unchanged
from pipelines.ray_runtime import ensure_ray, plan_pool, worker_env
from schemas.archive import STATUS_WRITTEN


def _versions() -> dict[str, str]:
    import pyarrow
    import torch

    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("resulic")
    except PackageNotFoundError:
        own = "unknown"
    return {"resulic": own, "torch": torch.__version__, "ray": ray.__version__, "pyarrow": pyarrow.__version__}


def compress(
    source: str,
    archive: str,
    *,
    preset: str = "taef2",
    settings: EncodeSettings = EncodeSettings(),
    workers: int | None = None,
    batch_size: int = 4,
    gpus_per_worker: float | None = None,
    storage_options: dict[str, Any] | None = None,
    rows_per_file: int = 128,
    max_pixels: int | None = None,
    captions: CaptionConfig | None = None,
    caption_workers: int | None = None,
    caption_gpus_per_worker: float | None = None,
) -> dict:
    """Run one job with the encoder's choices ``settings``; returns its summary (also written to
    the archive's ``_jobs/``)."""
    t0 = time.time()
    from codec.presets import load_preset

    p = load_preset(preset)  # fail fast on the driver: missing weights, unknown preset
    detail_mode(p, settings.detail_gain)  # and on a detail gain the model cannot write
    if settings.rate is None and settings.target_bpp is None:
        settings = replace(settings, rate=p.default_rate)
    src = Source.parse(source, storage_options)
    src.check()
    ensure_ray()
    job_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    arc = Archive(archive, storage_options)
    meta = arc.create({"preset": p.name, "model_id": p.model_id.hex(), "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                       "created_by": _versions()})  # fmt: skip
    arc.clean_staging()
    index = arc.refresh_index()
    archived = index.filter(pc.equal(index.column("status"), STATUS_WRITTEN)).select(
        ["key", "source_fingerprint", "source_sha256"]
    )
    captions = captions or CaptionConfig()
    two_pools = captions.captions_reconstructions
    plan = plan_pool(workers, gpus_per_worker, share=0.5 if two_pools else 1.0)
    so = src.storage_options
    light = {"batch_format": "pyarrow", "num_cpus": 0.5}
    ds = ray.data.read_datasource(ListingDatasource(src), num_cpus=0.5)
    ds = ds.map_batches(mark_unchanged, fn_kwargs={"archived": archived, "by": "source_fingerprint"}, **light)
    if src.kind == "webdataset":
        ds = ds.map_batches(expand_shards, fn_kwargs={"storage_options": so}, batch_size=1, **light)
    else:
        ds = ds.map_batches(fetch, fn_kwargs={"storage_options": so}, batch_size=batch_size, **light)
    ds = ds.map_batches(mark_unchanged, fn_kwargs={"archived": archived, "by": "source_sha256"}, **light)
    limit = {"max_pixels": max_pixels} if max_pixels else {}
    ds = ds.map_batches(decode_images, fn_kwargs=limit, batch_size=batch_size, **light)
    ds = ds.map_batches(
        Encoder,
        fn_constructor_kwargs={"preset": preset, "settings": settings, "threads": plan.threads_per_actor,
                               "env": worker_env(), "reconstruct": two_pools},  # fmt: skip
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        batch_size=batch_size,
        batch_format="pyarrow",
        num_cpus=plan.cpus_per_actor,
        num_gpus=plan.gpus_per_actor or None,
    )
    if two_pools:
        cap = plan_pool(caption_workers or 1, caption_gpus_per_worker, share=0.5)
        ds = ds.map_batches(
            Captioner,
            fn_constructor_kwargs={"config": captions.to_dict(), "env": caption_env(captions)},
            compute=ray.data.ActorPoolStrategy(size=cap.actors),
            batch_size=batch_size,
            batch_format="pyarrow",
            num_cpus=cap.cpus_per_actor,
            num_gpus=cap.gpus_per_actor or None,
        )
    if captions.backend != "none":
        ds = ds.map_batches(attach_residual, fn_kwargs={"preset": preset, "max_words": captions.max_residual_words,
                                                        "target_bpp": settings.target_bpp}, **light)  # fmt: skip
    sink = ArchiveDatasink(archive, so, job_id, min_rows=rows_per_file)
    ds.write_datasink(sink, ray_remote_args={"num_cpus": 0.25})
    arc.refresh_index()
    summary = summarise(sink, job_id, source, archive, meta, settings, time.time() - t0)
    summary["captioner"] = captions.backend
    summary["detail_gain"], summary["scale"], summary["refine_steps"] = settings.detail_gain, settings.scale, settings.refine_steps
    arc.write_job_summary(job_id, summary)
    return summary


def caption_env(captions: CaptionConfig) -> dict[str, str]:
    """What caption actors need from the driver's environment: the weights paths and the API key
    (the key goes to the actors only, as an environment variable; it is never written anywhere)."""
    env = worker_env()
    if captions.api_key_env in os.environ:
        env[captions.api_key_env] = os.environ[captions.api_key_env]
    return env


def summarise(sink: ArchiveDatasink, job_id: str, source: str, archive: str, meta: dict,
              settings: EncodeSettings, wall: float) -> dict:  # fmt: skip
    tallies = sink.result.write_returns if sink.result else []
    total = {k: sum(t.get(k, 0) for t in tallies)
             for k in ("written", "unchanged", "failed", "bytes_in", "bytes_out", "pixels", "bits_text")}  # fmt: skip
    failures = [f for t in tallies for f in t["failures"]]
    return {
        "job_id": job_id, "source": source, "archive": archive, "preset": meta["preset"],
        "rate": settings.rate, "target_bpp": settings.target_bpp,
        "written": total["written"], "unchanged": total["unchanged"], "failed": total["failed"],
        "failures": sorted(failures, key=lambda f: f["source"]),
        "bytes_in": total["bytes_in"], "bytes_out": total["bytes_out"],
        "mean_bpp": total["bytes_out"] * 8 / total["pixels"] if total["pixels"] else None,
        "text_bits": total["bits_text"],
        "wall_seconds": round(wall, 3),
        "images_per_second": round(total["written"] / wall, 4) if wall > 0 else None,
        "files": sorted(f for t in tallies for f in t["files"]),
    }  # fmt: skip


def format_table(summary: dict) -> str:
    rows = [
        ("written", summary["written"]), ("unchanged", summary["unchanged"]), ("failed", summary["failed"]),
        ("bytes in", summary["bytes_in"]), ("bytes out", summary["bytes_out"]),
        ("mean bpp", "-" if summary["mean_bpp"] is None else f"{summary['mean_bpp']:.5f}"),
        ("images/s", summary["images_per_second"]), ("wall s", summary["wall_seconds"]),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"FAILED {f['source']}: {f['reason']}" for f in summary["failures"]]
    return "\n".join(lines)


__all__ = ["compress", "format_table"]
