"""Pool sizing (pure arithmetic over what the cluster has), and which Ray a local job starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from conftest import ROOT

from pipelines.ray_runtime import plan_for


@pytest.mark.parametrize("cpus", [2, 3, 8, 16, 64])
def test_cpu_pool_leaves_a_cpu_for_reads_and_uses_one_thread_per_cpu(cpus: int) -> None:
    plan = plan_for(cpus, 0, None, None)
    assert plan.actors == cpus and plan.threads_per_actor == 1 and plan.gpus_per_actor == 0
    assert plan.actors * plan.cpus_per_actor <= cpus - 1  # the read stage always has a CPU


def test_two_pools_share_the_cpus() -> None:
    enc, cap = plan_for(8, 0, None, None, share=0.5), plan_for(8, 0, 1, None, share=0.5)
    assert enc.actors == 4 and enc.threads_per_actor == 1
    assert enc.actors * enc.cpus_per_actor + cap.actors * cap.cpus_per_actor <= 7
    assert cap.actors == 1 and cap.threads_per_actor == 4


def test_explicit_workers_split_the_threads() -> None:
    plan = plan_for(8, 0, 2, None)
    assert plan.actors == 2 and plan.threads_per_actor == 4 and 2 * plan.cpus_per_actor <= 7


def test_one_cpu_machine_still_gets_an_actor() -> None:
    plan = plan_for(1, 0, None, None)
    assert plan.actors == 1 and plan.cpus_per_actor == 0.25 and plan.threads_per_actor == 1


def test_gpu_pool_one_actor_per_gpu_and_refuses_missing_gpus() -> None:
    plan = plan_for(16, 4, None, None)
    assert plan.actors == 4 and plan.gpus_per_actor == 1.0 and plan.threads_per_actor == 4
    shared = plan_for(16, 4, None, None, share=0.5)
    assert shared.actors == 4 and shared.gpus_per_actor == 0.5
    with pytest.raises(ValueError, match="--gpus-per-worker 2 .* pass --workers N"):
        plan_for(16, 1, None, 2.0)


def test_gpu_pool_sized_from_the_request_not_the_cluster_now() -> None:
    """A cluster whose GPU group autoscales from zero has no GPU yet: the job's ask stands."""
    plan = plan_for(4, 0, 3, 1.0)
    assert plan.actors == 3 and plan.gpus_per_actor == 1.0


def test_local_ray_ignores_a_stale_latest_cluster_file() -> None:
    """A `ray start` or a crashed run leaves ray_current_cluster behind; a local job starts its
    own Ray instead of joining (or failing on) that address."""
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        os.makedirs(os.path.join(tmp, "ray"))
        with open(os.path.join(tmp, "ray", "ray_current_cluster"), "w") as f:
            f.write("127.0.0.1:9")  # nothing listens there
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": tmp}
        code = "from pipelines.ray_runtime import ensure_ray; import ray; ensure_ray(num_cpus=1); print(ray.cluster_resources()['CPU'])"  # fmt: skip
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == "1.0"
    finally:
        subprocess.run(["pkill", "-f", tmp], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def test_workers_get_every_override_the_model_depends_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """An override set on the driver (RESULIC_DECODER, say) reaches every Ray worker: a worker
    that missed one would code with another model than the one the job reports."""
    from codec.presets import PRESET_ENV
    from evaluation.weights import METRIC_WEIGHTS_ENV
    from pipelines.ray_runtime import worker_env

    wanted = {name: f"/set/by/driver/{name}" for name in (*PRESET_ENV, "RESULIC_MAX_PIXELS", "RESULIC_TILE_LATENTS",
                                                               METRIC_WEIGHTS_ENV)}  # fmt: skip
    for name, value in wanted.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RESULIC_UNRELATED", "x")
    assert worker_env() == wanted
    assert "RESULIC_DECODER" in wanted
