"""training.runtime: the device options the CPU-or-GPU trainers share."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import torch_threads
from training.runtime import RunClock, add_runtime_arguments, start_runtime


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_runtime_arguments(p, steps=9, autocast_covers="the decoder", save_every=123)
    return p.parse_args(list(argv))


def test_defaults_and_help():
    args = parse()
    assert (args.steps, args.minutes) == (9, None)
    assert (args.device, args.bf16, args.threads, args.save_every, args.log_every, args.seed) == ("auto", None, 2, 123, 25, 0)
    p = argparse.ArgumentParser()
    add_runtime_arguments(p, steps=9, autocast_covers="the decoder", save_every=1)
    assert "bfloat16 autocast for the decoder" in p.format_help()


def test_cpu_runs_in_float32_unless_bf16_is_asked():
    with torch_threads(torch.get_num_threads()):  # start_runtime sets 1: restore the count after
        rt = start_runtime(parse("--device", "cpu", "--threads", "1"))
        assert rt.device == torch.device("cpu") and not rt.bf16 and torch.get_num_threads() == 1
        with rt.autocast():
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        rt = start_runtime(parse("--device", "cpu", "--bf16", "--threads", "1"))
        with rt.autocast():
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_the_seed_is_set():
    n = str(torch.get_num_threads())
    start_runtime(parse("--device", "cpu", "--seed", "7", "--threads", n))
    a = torch.rand(3)
    start_runtime(parse("--device", "cpu", "--seed", "7", "--threads", n))
    assert torch.equal(a, torch.rand(3))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_device_stops_with_a_reason():
    assert start_runtime(parse("--device", "auto", "--threads", str(torch.get_num_threads()))).device == torch.device("cpu")
    with pytest.raises(SystemExit, match="no CUDA device"):
        start_runtime(parse("--device", "cuda"))


def test_the_clock_logs_saves_and_resumes(tmp_path):
    args = argparse.Namespace(steps=5, minutes=None, log_every=2, save_every=3)
    saves: list[int] = []
    run = RunClock(args, tmp_path / "train.log")
    while run.running():
        assert run.lr_scale() == (0.1 if run.step >= 5 * 0.85 else 1.0)
        run.tick()
        if run.log_due():
            run.log({"loss": run.step / 10})
        run.save_if_due(lambda: saves.append(run.step))
    run.finish(lambda: saves.append(run.step))
    assert saves == [3, 5]  # on the cadence, then where the run ended between two
    records = [json.loads(line) for line in (tmp_path / "train.log").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [(2, 0.2), (4, 0.4)] and list(records[0]) == ["step", "loss", "sec"]
    again = RunClock(argparse.Namespace(steps=8, minutes=None, log_every=2, save_every=3), tmp_path / "train.log")
    again.resume(run.state())
    assert again.step == 5 and again.running() and again.elapsed == run.elapsed


def test_the_clock_stops_at_its_minutes():
    run = RunClock(argparse.Namespace(steps=10**9, minutes=1.0, log_every=1, save_every=1), Path("unused"))
    run.resume({"step": 3, "elapsed": 59.0})
    assert run.running() and run.lr_scale() == 0.1  # 59 of 60 s spent: past 85 %
    run.resume({"step": 3, "elapsed": 61.0})
    assert not run.running()


def test_diverged_weights_are_never_checkpointed():
    from training.runtime import require_finite

    net = torch.nn.Linear(2, 2)
    require_finite(3, net)
    with torch.no_grad():
        net.weight[0, 0] = float("nan")
    with pytest.raises(SystemExit, match="non-finite weights at step 3"):
        require_finite(3, net)


def test_a_checkpoint_without_random_states_resumes_with_fresh_draws(tmp_path):
    """Checkpoints from before random states were kept: the generators, still at --seed's state,
    would replay the run's first crops; they are reseeded from the seed and the step instead."""
    import random

    def draws(checkpoint: dict) -> tuple[list[float], float]:
        gen, rng = torch.Generator().manual_seed(0), random.Random(0)
        args = argparse.Namespace(steps=8, minutes=None, log_every=2, save_every=3, seed=0)
        RunClock(args, tmp_path / "train.log", rngs={"crops": gen, "levels": rng}).resume(checkpoint)
        return torch.rand(3, generator=gen).tolist(), rng.random()

    start = (torch.rand(3, generator=torch.Generator().manual_seed(0)).tolist(), random.Random(0).random())
    old = draws({"step": 4, "elapsed": 1.0})
    assert old[0] != start[0] and old[1] != start[1]
    assert draws({"step": 4, "elapsed": 1.0}) == old  # reproducible
