"""Where a trainer runs: the options shared by the trainers whose one command runs on a CPU
and on one GPU (``perceptual_codec``, ``cdm_perceptual``), and what they resolve to.

One place, so that both trainers read ``--device``/``--bf16``/``--threads`` the same way and a
GPU burst gets the same CUDA settings (TF32 matmuls, cuDNN autotuning) whichever it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from codec.device import resolve_device
from codec.usage import UsageError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast where ``bf16`` is on, else nothing: wrap what may run in bfloat16."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()


def add_runtime_arguments(p: argparse.ArgumentParser, *, steps: int, autocast_covers: str, save_every: int) -> None:
    """``--steps --minutes`` (what :class:`RunClock` reads), ``--device --bf16 --threads --save-every
    --log-every --seed --weights-dir --metric-weights``."""
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--minutes", type=float, help="stop (checkpointed) after this much wall time")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help=f"bfloat16 autocast for {autocast_covers} (default: on for cuda)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--save-every", type=int, default=save_every)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights-dir", default=None, help="TAEF2 weights directory")
    p.add_argument("--metric-weights", default=None, help="LPIPS weights directory (evaluation.perceptual)")


def start_runtime(args: argparse.Namespace) -> Runtime:
    """Resolve the options of :func:`add_runtime_arguments`, set threads and seed, and turn on TF32
    and cuDNN autotuning on CUDA (the crops have one shape a run). A device that is not there
    stops the run with the codec's reason (``codec.device.resolve_device``)."""
    try:
        device = resolve_device(args.device)
    except UsageError as e:
        raise SystemExit(str(e)) from None
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return Runtime(device, device.type == "cuda" if args.bf16 is None else args.bf16)


class RunClock:
    """A run bounded by ``--steps`` and by ``--minutes`` of wall time, whichever ends first, and
    resumable at a step and an elapsed time. The learning rate falls tenfold after 85 % of that
    budget; log records and checkpoints come on the ``--log-every``/``--save-every`` cadence, and
    a last checkpoint when the run ends between two."""

    def __init__(self, args: argparse.Namespace, log_path: Path) -> None:
        self.steps, self.budget = args.steps, args.minutes * 60 if args.minutes else math.inf
        self.log_every, self.save_every = args.log_every, args.save_every
        self.log_path, self.step, self.elapsed = log_path, 0, 0.0
        self._start = time.time()

    def resume(self, checkpoint: dict) -> None:
        """Go on from a checkpoint's ``step`` and ``elapsed`` (what :meth:`state` gave it)."""
        self.step, self.elapsed = int(checkpoint["step"]), float(checkpoint["elapsed"])
        self._start = time.time() - self.elapsed
        print(f"resumed at step {self.step}", flush=True)

    def state(self) -> dict:
        return {"step": self.step, "elapsed": self.elapsed}

    def running(self) -> bool:
        return self.step < self.steps and self.elapsed < self.budget

    def lr_scale(self) -> float:
        return 0.1 if max(self.step / self.steps, self.elapsed / self.budget) > 0.85 else 1.0

    def tick(self) -> None:
        """Count a finished step."""
        self.step += 1
        self.elapsed = time.time() - self._start

    def log_due(self) -> bool:
        return self.step % self.log_every == 0

    def log(self, record: dict) -> None:
        with open(self.log_path, "a") as log:
            log.write(json.dumps({"step": self.step, **record, "sec": round(self.elapsed, 1)}) + "\n")

    def save_if_due(self, checkpoint: Callable[[], None]) -> None:
        if self.step % self.save_every == 0:
            checkpoint()

    def finish(self, checkpoint: Callable[[], None]) -> None:
        if self.step % self.save_every:
            checkpoint()
