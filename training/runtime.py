"""Where a trainer runs: the options shared by the trainers whose one command runs on a CPU
and on one GPU (``perceptual_codec``, ``cdm_perceptual``), and what they resolve to.

One place, so that both trainers read ``--device``/``--bf16``/``--threads`` the same way and a
GPU burst gets the same CUDA settings (TF32 matmuls, cuDNN autotuning) whichever it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import random
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


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a step count of 0 trains nothing; a cadence of 0 divides by it)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def add_runtime_arguments(p: argparse.ArgumentParser, *, steps: int, autocast_covers: str, save_every: int) -> None:
    """``--steps --minutes`` (what :class:`RunClock` reads), ``--device --bf16 --threads --save-every
    --log-every --seed --weights-dir --metric-weights``."""
    p.add_argument("--steps", type=positive_int, default=steps)
    p.add_argument("--minutes", type=positive_float, help="stop (checkpointed) after this much wall time")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help=f"bfloat16 autocast for {autocast_covers} (default: on for cuda)")  # fmt: skip
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads")
    p.add_argument("--save-every", type=positive_int, default=save_every)
    p.add_argument("--log-every", type=positive_int, default=25)
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


def require_finite(step: int, *modules: torch.nn.Module) -> None:
    """Stop before a checkpoint of weights that diverged (NaN or inf): writing it would make every
    resume start from them; the last good checkpoint stays."""
    for m in modules:
        if not all(torch.isfinite(p).all() for p in m.parameters()):
            raise SystemExit(f"non-finite weights at step {step}: nothing written, the last checkpoint stands "
                             "(a lower --lr or other --lambdas may help)")  # fmt: skip


def _seed_of(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def seed_draws(seed: int, step: int, *rngs: random.Random | torch.Generator) -> None:
    """Seed torch and ``rngs`` from ``--seed`` and the step a run starts at: the same command gives
    the same run, and a run resumed without saved random states draws afresh instead of
    replaying its first crops (the checkpoints of :class:`RunClock` keep those states)."""
    torch.manual_seed(_seed_of(f"{seed}:{step}"))
    for i, rng in enumerate(rngs):
        if isinstance(rng, torch.Generator):
            rng.manual_seed(_seed_of(f"{seed}:{step}:{i}"))
        else:
            rng.seed(f"{seed}:{step}:{i}")


def _as_tuple(state):
    """``random.Random.getstate()``'s nested tuples, as a checkpoint may give them back (lists)."""
    return tuple(_as_tuple(s) for s in state) if isinstance(state, list | tuple) else state


class RunClock:
    """A run bounded by ``--steps`` and by ``--minutes`` of wall time, whichever ends first, and
    resumable at a step and an elapsed time. The learning rate falls tenfold after 85 % of that
    budget; log records and checkpoints come on the ``--log-every``/``--save-every`` cadence, and
    a last checkpoint when the run ends between two.

    ``rngs``: the trainer's own random generators (its crops', its rate draws'); with torch's
    global ones they are saved in each checkpoint and restored on resume, so a resumed run draws
    what the uninterrupted one would have, instead of the run's first crops again."""

    def __init__(self, args: argparse.Namespace, log_path: Path,
                 rngs: dict[str, torch.Generator | random.Random] | None = None) -> None:  # fmt: skip
        self.steps, self.budget = args.steps, args.minutes * 60 if args.minutes else math.inf
        self.seed = getattr(args, "seed", 0)
        self.log_every, self.save_every = args.log_every, args.save_every
        self.log_path, self.step, self.elapsed = log_path, 0, 0.0
        self.rngs = rngs or {}
        self._start = time.time()

    def resume(self, checkpoint: dict) -> None:
        """Go on from a checkpoint's ``step``, ``elapsed`` and random states (what :meth:`state` gave it)."""
        self.step, self.elapsed = int(checkpoint["step"]), float(checkpoint["elapsed"])
        self._start = time.time() - self.elapsed
        saved = checkpoint.get("rng")
        if saved is None:  # a checkpoint from before random states were kept: draw afresh, not replay the start
            print("note: this checkpoint holds no random states: the resumed run draws afresh", flush=True)
            seed_draws(self.seed, self.step, *self.rngs.values())
        else:
            torch.set_rng_state(saved["torch"].cpu())
            if saved["cuda"] and torch.cuda.is_available():  # as many as this machine has
                torch.cuda.set_rng_state_all([s.cpu() for s in saved["cuda"][: torch.cuda.device_count()]])
            for name, gen in self.rngs.items():
                if isinstance(gen, torch.Generator):
                    gen.set_state(saved[name].cpu())
                else:
                    gen.setstate(_as_tuple(saved[name]))
        print(f"resumed at step {self.step}", flush=True)

    def state(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        for name, gen in self.rngs.items():
            rng[name] = gen.get_state() if isinstance(gen, torch.Generator) else gen.getstate()
        return {"step": self.step, "elapsed": self.elapsed, "rng": rng}

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
