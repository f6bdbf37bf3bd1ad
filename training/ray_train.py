"""What the ``sd21`` trainers share: photos streamed by Ray Data as random crops, a Ray Train
``TorchTrainer`` across GPUs and nodes, and checkpoints on local or object storage.

Rerunning a command with the same ``--name`` and ``--storage-path`` resumes from its newest
checkpoint (model, optimisers, step); ``--steps`` is the total, so a longer rerun continues.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import posixpath
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from training.runtime import positive_int

IMAGE_EXTENSIONS = ["jpg", "jpeg", "png", "webp"]
STATE_FILE = "state.pt"


def add_ray_train_arguments(p: argparse.ArgumentParser, default_name: str) -> None:
    p.add_argument("--data", required=True, help="folder or object-store prefix of training photos (never an evaluation set)")
    p.add_argument("--captions", help="JSON file: photo file name -> caption (photos without one train with an empty prompt)")
    p.add_argument("--sd-model", required=True, help="Stable Diffusion 2.1-base: a diffusers folder or a hub id")
    p.add_argument("--storage-path", required=True, help="where checkpoints go: a folder or s3://bucket/prefix")
    p.add_argument("--name", default=default_name, help=f"the run's name under --storage-path (default {default_name}); "
                                                         "rerun with the same name to resume")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="training workers (one GPU each with --device cuda)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda", help="cuda: bf16 autocast on one GPU per worker")
    p.add_argument("--steps", type=positive_int, required=True, help="total optimiser steps (a rerun continues to it)")
    p.add_argument("--batch", type=positive_int, default=4, help="photos per worker and step")
    p.add_argument("--crop", type=int, default=512, help="crop side in pixels")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--save-every", type=positive_int, default=1000, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=0)


_CHECKED: set[str] = set()  # photos this worker process found no evaluation image (once a run, not once a pass)


def _refuse_held_out_once(img: Any, path: str) -> None:
    """``refuse_held_out`` once per photo and worker process. Module-level: a nested function is
    pickled with a copy of the globals it names, so each task would start with an empty set."""
    from evaluation.heldout import refuse_held_out

    if path not in _CHECKED:  # fails the run on its first pass: a folder's name proves nothing
        refuse_held_out(img, path)
        _CHECKED.add(path)


def crops_dataset(source: str, crop: int, captions: dict[str, str] | None = None):
    """Ray Data rows {"image": crop × crop × 3 uint8, "caption": str}: each photo read where it
    lies (folder, s3://, gs://), resized so that its short side is at least ``crop``, cut at a
    fresh random place on every pass."""
    import ray.data
    from PIL import Image

    captions = captions or {}

    def cut(row: dict[str, Any]) -> dict[str, Any]:
        img = Image.fromarray(row["image"])
        _refuse_held_out_once(img, row["path"])
        short = min(img.size)
        if short < crop:
            img = img.resize((max(crop, round(img.width * crop / short)), max(crop, round(img.height * crop / short))),
                             Image.Resampling.LANCZOS)  # fmt: skip
        rng = np.random.default_rng()
        x, y = int(rng.integers(0, img.width - crop + 1)), int(rng.integers(0, img.height - crop + 1))
        out = np.asarray(img.crop((x, y, x + crop, y + crop)))
        if rng.random() < 0.5:
            out = out[:, ::-1]
        return {"image": np.ascontiguousarray(out), "caption": captions.get(posixpath.basename(row["path"]), "")}

    return ray.data.read_images(source, mode="RGB", include_paths=True, file_extensions=IMAGE_EXTENSIONS).map(cut)


def local_copy(url: str) -> Path:
    """A local path for a file that may be on object storage (each worker fetches its own copy)."""
    if "://" not in url:
        return Path(url)
    import fsspec

    folder = Path(tempfile.mkdtemp(prefix="resulic-weights-"))
    target = folder / posixpath.basename(url)
    with fsspec.open(url, "rb") as src:
        target.write_bytes(src.read())
    return target


def batches(shard, batch: int, device: torch.device) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """(images (B, 3, H, W) in [0, 1] on ``device``, captions), pass after pass over the shard."""
    while True:
        for b in shard.iter_batches(batch_size=batch, batch_format="numpy", drop_last=True):
            images = torch.from_numpy(b["image"]).to(device).permute(0, 3, 1, 2).float() / 255
            yield images, [str(c) for c in b["caption"]]


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 on a GPU for the frozen networks' passes; full precision on a CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resume_state() -> tuple[dict | None, Path | None]:
    """The newest checkpoint's state and its folder (None, None on a fresh run)."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None, None
    folder = Path(tempfile.mkdtemp(prefix="resulic-resume-"))
    ckpt.to_directory(str(folder))
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True), folder


def report(metrics: dict, state: dict | None = None, export: Callable[[Path], None] | None = None) -> None:
    """Every worker reports; rank 0 also hands a checkpoint (its state and the exported weights)."""
    import ray.train

    if state is None or ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save(state, Path(d) / STATE_FILE)
        if export is not None:
            export(Path(d))
        (Path(d) / "metrics.json").write_text(json.dumps(metrics))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def seed_for(seed: int) -> int:
    """A per-worker seed (the same run and rank draw the same rates and noise after a resume)."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    return int(hashlib.sha256(f"{seed}:{rank}".encode()).hexdigest()[:8], 16)


def fit(loop: Callable[[dict], None], config: dict, args: argparse.Namespace):
    """Run ``loop`` on ``args.workers`` workers over ``args.data``; returns Ray Train's result."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.ray_runtime import ensure_ray

    ensure_ray()
    captions = json.loads(Path(args.captions).read_text()) if args.captions else None
    trainer = TorchTrainer(
        loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.device == "cuda"),
        datasets={"train": crops_dataset(args.data, args.crop, captions)},
        run_config=RunConfig(name=args.name, storage_path=args.storage_path if "://" in args.storage_path
                             else str(Path(args.storage_path).resolve()),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )  # fmt: skip
    return trainer.fit()


__all__ = ["add_ray_train_arguments", "crops_dataset", "local_copy", "batches", "autocast", "resume_state", "report", "fit", "seed_for"]
