"""The compress pipeline: a source of photos -> a Parquet archive of verified bitstreams.

Read top to bottom, it is one chain: list -> skip unchanged or still-failing sources (listing
fingerprint; whole WebDataset shards) -> read bytes (or stream shards) -> skip again (content
hash) -> decode -> encode and verify (actor pool) -> [caption original and reconstruction
(actor pool)] -> [residual text into the stream] -> commit to the archive. Every listed asset
reaches the sink exactly once, as written, unchanged, still failed or failed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import os
import threading
import time
from dataclasses import replace
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from codec.semantic.captioners import CaptionConfig
from codec.settings import EncodeSettings, detail_mode, over_target_reason
from codec.usage import UsageError
from operators.archive import Archive, new_job_id
from operators.caption import Captioner
from operators.decode import decode_images
from operators.encode import Encoder
from operators.failures import MAX_FAILURE_RATE, FailureMonitor, check_failures, count_listed, stop_reason
from operators.incremental import account_skipped_shards, known_shards, known_sources, mark_unchanged, skip_known_shards
from operators.lease import ArchiveLease
from operators.residual import attach_residual
from operators.sink import ArchiveDatasink, commit_stopped_failures, finalise_rows
from operators.sources import MISSING, ListingDatasource, Source, _retry, expand_shards, fetch, stat_sources
from pipelines.compact import recover
from pipelines.ray_runtime import PoolPlan, ensure_ray, gpus_for, plan_pool, worker_env
from schemas.archive import ASSET_SCHEMA, STATUS_FAILED, STATUS_SHARD, STATUS_WRITTEN


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
    device: str = "auto",
    max_failure_rate: float = MAX_FAILURE_RATE,
    break_lease: bool = False,
    retry_failed: bool = False,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Run one job with the encoder's choices ``settings``; returns its summary (also written to
    the archive's ``_jobs/``). ``device``: where the encoder actors run (``codec.device``; "auto":
    a GPU when Ray gives the actor one). The job stops early (summary ``aborted`` set) on a
    systemic error or when failures pass ``max_failure_rate`` (``operators.failures``). The job
    holds the archive's writer lease (``operators.lease``) from before it cleans staging to its
    summary; ``break_lease`` takes it from a live holder known to be dead. A source that failed
    before and has not changed is not retried unless ``retry_failed``. ``progress`` is called
    about twice a second with the running counts (``FailureMonitor.state``)."""
    if not 0 <= max_failure_rate <= 1:
        raise UsageError(f"--max-failure-rate must lie in [0, 1], not {max_failure_rate}")
    t0 = time.time()
    from codec.presets import load_preset

    p = load_preset(preset)  # fail fast on the driver: missing weights, unknown preset
    detail_mode(p, settings.detail_gain)  # and on a detail gain the model cannot write
    if settings.rate is None and settings.target_bpp is None:
        settings = replace(settings, rate=p.default_rate)
    src = Source.parse(source, storage_options)
    src.check()
    ensure_ray()
    job_id = new_job_id()
    arc = Archive(archive, storage_options)
    if arc.exists():
        arc.meta()  # refuses a foreign archive or an unknown version before the lease is taken
    # The monitor lives on the driver's node: on another node it would die with that node (and the
    # job with it) although the job itself survives losing a worker node.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    monitor = ray.remote(num_cpus=0, scheduling_strategy=here)(FailureMonitor).remote(max_failure_rate)
    # one writer per archive: a second job is refused here; losing the lease stops this job
    lease = ArchiveLease(arc, job_id, on_lost=lambda why: ray.get(monitor.stop.remote(why)))
    lease.acquire(force=break_lease)
    try:
        # created under the lease: two first jobs never race on it. An archive keeps its first
        # preset and model here; each stream names its own model, so later jobs may use others.
        arc.create({"preset": p.name, "model_id": p.model_id.hex(), "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                    "created_by": _versions()})  # fmt: skip
        recover(arc)  # a compaction killed half-way is finished or undone before anything is indexed
        arc.clean_staging()
        index = arc.refresh_index()
        known = known_sources(index, retry_failed)
        shards = known_shards(index, retry_failed) if src.kind == "webdataset" else None
        del index
        captions = captions or CaptionConfig()
        two_pools = captions.captions_reconstructions
        plan = plan_pool(workers, gpus_for(device, gpus_per_worker), share=0.5 if two_pools else 1.0)
        ds = build_pipeline(src, known, shards, preset, settings, plan, device, captions, monitor, batch_size=batch_size,
                            max_pixels=max_pixels, caption_workers=caption_workers,
                            caption_gpus_per_worker=caption_gpus_per_worker, model_id=p.model_id.hex())  # fmt: skip
        sink = ArchiveDatasink(archive, src.storage_options, job_id, min_rows=rows_per_file,
                               target_bpp=settings.target_bpp)  # fmt: skip
        aborted = None
        reporter = ProgressReporter(monitor, progress) if progress else contextlib.nullcontext()
        try:
            with reporter:
                ds.write_datasink(sink, ray_remote_args={"num_cpus": 0.25})
        except Exception as e:  # noqa: BLE001 - only the policy's own stops are summarised; others propagate
            if (aborted := stop_reason(e)) is None:
                raise
        finally:
            # Ray Data frees a failed execution's actor pools (and the CPUs and GPUs they hold)
            # by dropping its references: they live until the reference cycle is collected, and
            # the caller's next job would wait for them. (A logging handler that retains records,
            # such as pytest's capture, keeps them alive regardless: see pyproject's addopts.)
            del ds
            gc.collect()
        # the lease checked now, not at its next renewal: a writer that took it over since the last
        # batch must not find this job's markers and index written beside its own
        if lease.number is not None and lease.lost is None:
            _retry(lease.renew)  # a storage hiccup here must not lose the summary of a finished job
        if lease.lost is not None:  # another writer has the archive: nothing more is written to it
            aborted = aborted or f"LeaseLost: {lease.lost}"
            own = None
        elif not aborted:
            own = commit_shard_markers(arc, sink, job_id)
        else:  # so that the next run goes on past them (operators.failures)
            own = commit_stopped_failures(arc, ray.get(monitor.kept_failures.remote()), job_id,
                                          dt.datetime.now(dt.timezone.utc))  # fmt: skip
        index = arc.refresh_index(write=lease.lost is None)
        summary = summarise(sink, job_id, source, archive, p, settings, time.time() - t0)
        summary["files"] = sorted(summary["files"] + ([own] if own else []))  # the driver's own data file too
        if aborted:
            summary.update(aborted_counts(arc, index, job_id))
        summary["aborted"], summary["first_reasons"] = aborted, ray.get(monitor.state.remote())["reasons"]
        summary["quarantined"] = arc.quarantined  # unreadable data files moved aside (operators.archive)
        summary["captioner"] = captions.backend
        summary["detail_gain"], summary["scale"], summary["refine_steps"] = settings.detail_gain, settings.scale, settings.refine_steps
        arc.write_job_summary(job_id, summary)
        return summary
    finally:
        lease.release()


class ProgressReporter:
    """A driver thread that hands the monitor's counts to ``callback`` while the job runs."""

    def __init__(self, monitor: Any, callback: Callable[[dict], None], interval: float = 0.5) -> None:
        self.monitor, self.callback, self.interval = monitor, callback, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.callback(ray.get(self.monitor.state.remote()))

    def __enter__(self) -> "ProgressReporter":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.callback(ray.get(self.monitor.state.remote()))


def build_pipeline(src: Source, known: pa.Table, shards: pa.Table | None, preset: str, settings: EncodeSettings, plan: PoolPlan, device: str,
                   captions: CaptionConfig, monitor: Any, *, batch_size: int, max_pixels: int | None,
                   caption_workers: int | None, caption_gpus_per_worker: float | None,
                   model_id: str) -> ray.data.Dataset:  # fmt: skip
    """The job as one chain: list, skip what is archived, fetch, decode, encode, caption, check.
    ``model_id``: the model the driver loaded, which every encoder actor must hold too."""
    so, two_pools = src.storage_options, captions.captions_reconstructions
    light = {"batch_format": "pyarrow", "num_cpus": 0.5}
    ds = ray.data.read_datasource(ListingDatasource(src), num_cpus=0.5)
    if src.kind == "webdataset":
        ds = ds.map_batches(skip_known_shards, fn_kwargs={"shards": shards}, **light)
        ds = ds.map_batches(expand_shards, fn_kwargs={"storage_options": so}, batch_size=1, **light)
        ds = ds.map_batches(account_skipped_shards, fn_kwargs={"shards": shards}, **light)
    else:
        if src.kind == "manifest":  # a manifest without fingerprints: the store's metadata, not the bytes
            gone = known.filter(pc.equal(known.column("failed_source_fingerprint"), MISSING))  # asked again
            ds = ds.map_batches(stat_sources, fn_kwargs={"storage_options": so,
                                                         "missing": frozenset(gone.column("key").to_pylist())},
                                batch_size=64, **light)  # fmt: skip
        ds = ds.map_batches(mark_unchanged, fn_kwargs={"known": known, "by": "source_fingerprint"}, **light)
        ds = ds.map_batches(fetch, fn_kwargs={"storage_options": so}, batch_size=batch_size, **light)
    ds = ds.map_batches(mark_unchanged, fn_kwargs={"known": known, "by": "source_sha256",
                                                   "refresh": src.kind != "webdataset"}, **light)  # fmt: skip
    ds = ds.map_batches(count_listed, fn_kwargs={"monitor": monitor}, **light)
    limit = {"max_pixels": max_pixels} if max_pixels else {}
    ds = ds.map_batches(decode_images, fn_kwargs=limit, batch_size=batch_size, **light)
    ds = ds.map_batches(
        Encoder,
        fn_constructor_kwargs={"preset": preset, "settings": settings, "threads": plan.threads_per_actor,
                               "env": worker_env(), "reconstruct": two_pools, "device": device,
                               "model_id": model_id},  # fmt: skip
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
    ds = ds.map_batches(check_failures, fn_kwargs={"monitor": monitor}, **light)
    return ds


def caption_env(captions: CaptionConfig) -> dict[str, str]:
    """What caption actors need from the driver's environment: the weights paths and the API key
    (the key goes to the actors only, as an environment variable; it is never written anywhere)."""
    env = worker_env()
    if captions.api_key_env in os.environ:
        env[captions.api_key_env] = os.environ[captions.api_key_env]
    return env


def commit_shard_markers(arc: Archive, sink: ArchiveDatasink, job_id: str) -> str | None:
    """Commit the markers of the shards this job read to their end, once every write task is done
    (then every member row they vouch for is committed): the next job skips those shards unread."""
    markers = [m for t in (sink.result.write_returns if sink.result else []) for m in t["shards"]]
    if markers:
        table = pa.Table.from_pylist([{**m, "status": STATUS_SHARD} for m in markers],
                                     schema=pa.schema([ASSET_SCHEMA.field(n) for n in ("key", "source_uri", "source_fingerprint", "status")]))  # fmt: skip
        rows = finalise_rows(table, job_id, dt.datetime.now(dt.timezone.utc))
        return arc.write_data_file(rows, f"{job_id}-shards", {"job_id": job_id})
    return None


def summarise(sink: ArchiveDatasink, job_id: str, source: str, archive: str, preset: Any,
              settings: EncodeSettings, wall: float) -> dict:  # fmt: skip
    """The job's summary; ``preset``: the loaded preset the job encoded with (named with its model)."""
    tallies = sink.result.write_returns if sink.result else []
    total = {k: sum(t.get(k, 0) for t in tallies)
             for k in ("written", "unchanged", "still_failed", "failed", "bytes_in", "bytes_out", "pixels", "bits_text",
                       "over_target")}  # fmt: skip
    failures = [f for t in tallies for f in t["failures"]]
    nodes: dict[str, int] = {}
    for t in tallies:
        for node, n in t.get("nodes", {}).items():
            nodes[node] = nodes.get(node, 0) + n
    return {
        "job_id": job_id, "source": source, "archive": archive, "preset": preset.name, "model_id": preset.model_id.hex(),
        "rate": settings.rate, "target_bpp": settings.target_bpp,
        "written": total["written"], "unchanged": total["unchanged"], "still_failed": total["still_failed"],
        "failed": total["failed"], "over_target_bpp": total["over_target"],
        "failures": sorted(failures, key=lambda f: f["source"]),
        "bytes_in": total["bytes_in"], "bytes_out": total["bytes_out"],
        "mean_bpp": total["bytes_out"] * 8 / total["pixels"] if total["pixels"] else None,
        "text_bits": total["bits_text"],
        "wall_seconds": round(wall, 3),
        "images_per_second": round(total["written"] / wall, 4) if wall > 0 else None,
        "files": sorted(f for t in tallies for f in t["files"]),
        "encoder_nodes": dict(sorted(nodes.items())),
    }  # fmt: skip


def aborted_counts(arc: Archive, index: pa.Table, job_id: str) -> dict:
    """What a stopped job committed before it stopped (its sink never reported), from the index
    (data files are named after their job) and, for the failures' reasons, the failed rows."""
    mine = index.filter(pc.match_substring(index.column("file"), f"/{job_id}-"))
    failed = mine.filter(pc.equal(mine.column("status"), STATUS_FAILED))
    entries = failed.select(["key", "file", "row_group", "row"]).to_pylist()
    failures = [{"source": e["key"], "reason": f"(its row cannot be read: {row})"} if isinstance(row, Exception)
                else {"source": row["source_uri"], "reason": row["error"]}
                for e, row in zip(entries, arc.read_assets(entries, ["source_uri", "error"]))]  # each row group once
    # a written row of this job's files that keeps another job's id is a refreshed one (not encoded)
    written = 0
    for file in set(mine.filter(pc.equal(mine.column("status"), STATUS_WRITTEN)).column("file").to_pylist()):
        with arc.fs.open(arc.path(file), "rb") as f:
            rows = pq.read_table(f, columns=["status", "job_id"]).to_pylist()
        written += sum(r["status"] == STATUS_WRITTEN and r["job_id"] == job_id for r in rows)
    return {"written": written, "failed": len(failures), "failures": sorted(failures, key=lambda f: f["source"])}


def format_table(summary: dict) -> str:
    rows = [
        ("written", summary["written"]), ("unchanged", summary["unchanged"]),
        ("still failed", summary.get("still_failed", 0)), ("failed", summary["failed"]),
        ("bytes in", summary["bytes_in"]), ("bytes out", summary["bytes_out"]),
        ("mean bpp", "-" if summary["mean_bpp"] is None else f"{summary['mean_bpp']:.5f}"),
        ("images/s", summary["images_per_second"]), ("wall s", summary["wall_seconds"]),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if summary.get("over_target_bpp"):
        lines.append(f"OVER TARGET {summary['over_target_bpp']} written assets are over --target-bpp "
                     f"{summary['target_bpp']:g}: {over_target_reason(summary['scale'])}")  # fmt: skip
    lines += [f"FAILED {f['source']}: {f['reason']}" for f in summary["failures"]]
    lines += [f"QUARANTINED {q['file']}: {q['reason']} (its assets are encoded again)" for q in summary.get("quarantined", [])]
    if summary.get("aborted"):
        lines.append(f"STOPPED: {summary['aborted']} (committed rows stay; the next run takes the rest)")
    return "\n".join(lines)


__all__ = ["compress", "format_table"]
