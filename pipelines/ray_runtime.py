"""Starting Ray and sizing the actor pools to what the cluster has.

Local Ray binds loopback only (127.0.0.1): a laptop or CI machine never exposes its object
store or GCS. With ``RAY_ADDRESS`` set (a cluster, e.g. a RayJob on KubeRay) we join that
cluster instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray

from codec.presets import PRESET_ENV
from codec.tiling import TILE_ENV
from codec.usage import UsageError
from evaluation.weights import METRIC_WEIGHTS_ENV

LOOPBACK = "127.0.0.1"
# Environment a worker needs to find the same weights and limits as the driver: everything a
# loaded preset depends on (taken from the preset module, so that a new override cannot be left
# behind on the driver and silently change the model a cluster's workers code with), the pixel
# cap, and the metric weights of `resulic eval`.
FORWARDED_ENV = (*PRESET_ENV, "RESULIC_MAX_PIXELS", TILE_ENV, METRIC_WEIGHTS_ENV)


def worker_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def ensure_ray(num_cpus: int | None = None) -> None:
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        return
    # Ray turns a node address of 127.0.0.1 into the machine's own address and then listens on
    # every interface. Its single-machine mode (meant for laptops: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)
    # keeps the node address, and so every server, on loopback. The flag is read once, when Ray
    # is imported, so the module constant is set too (a private name: checked by
    # tests/test_pipeline_faults.py on every Ray upgrade); the environment passes it to Ray's
    # own processes.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    # address="local": a new local Ray, never the "latest cluster" Ray remembers in
    # /tmp/ray/ray_current_cluster (a `ray start` or a crashed test's cluster, possibly dead),
    # which ray.init() would otherwise join and then refuse num_cpus for.
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        log_to_driver=False,
        configure_logging=False,
    )


@dataclass
class PoolPlan:
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads_per_actor: int


def gpus_for(device: str, gpus_per_worker: float | None) -> float | None:
    """What each model actor asks Ray for, given ``--device``: "cpu" never a GPU; "cuda" (or
    "cuda:N") one GPU unless told otherwise; "auto" what :func:`plan_pool` gives (a GPU share
    when the cluster has GPUs)."""
    if device == "cpu":
        if gpus_per_worker:
            raise UsageError(f"--device cpu with --gpus-per-worker {gpus_per_worker:g}: choose one")
        return 0.0
    if device.startswith("cuda") and gpus_per_worker is None:
        return 1.0
    return gpus_per_worker


def plan_pool(workers: int | None, gpus_per_worker: float | None, share: float = 1.0) -> PoolPlan:
    """How many model-holding actors, and what each asks for.

    Given ``workers`` and ``gpus_per_worker``, the pool is what they say, whatever the cluster
    has at the moment (an autoscaler brings GPU nodes up from zero for the pending actors);
    otherwise it is sized from the cluster's resources now.

    On CPUs, actors together ask for at most all CPUs but one, so the read and decode tasks
    always have a CPU: an actor pool that takes every CPU starves the read stage and the job
    hangs (Ray Data backpressures the reads against a budget the actors hold). What they ask
    for is a scheduling share, not a thread count: by default there is one single-threaded
    actor per CPU of the pool's share, because independent processes beat one process's
    intra-op threads (measured at 384 px on 2 cores: two 1-thread encoders 1.67 img/s, one
    2-thread encoder 1.55 img/s; threads wait on each other at every operator, processes do
    not). ``share`` is this pool's part of the machine when two pools (encoder and captioner)
    run side by side; by default they then also share each GPU (half a GPU per actor).
    """
    res = ray.cluster_resources()
    return plan_for(float(res.get("CPU", 1)), float(res.get("GPU", 0)), workers, gpus_per_worker, share)


def plan_for(cpus: float, gpus: float, workers: int | None, gpus_per_worker: float | None, share: float = 1.0) -> PoolPlan:
    """:func:`plan_pool` for a cluster of ``cpus`` CPUs and ``gpus`` GPUs."""
    if gpus_per_worker is None:
        gpus_per_worker = share if gpus >= 1 else 0.0
    if gpus_per_worker > 0:
        # With --workers the pool asks for what the job needs, not what the cluster has now: an
        # autoscaling cluster whose GPU group stands at zero starts GPU nodes for the request.
        if workers is None and gpus < gpus_per_worker:
            raise UsageError(f"--gpus-per-worker {gpus_per_worker:g} but the cluster has {gpus:g} GPUs now; pass "
                             "--workers N to ask for N GPU actors (an autoscaling cluster starts GPU nodes for them)")  # fmt: skip
        n = workers or max(1, int(gpus * share // gpus_per_worker))
        return PoolPlan(n, min(1.0, max(0.25, share * (cpus - 1) / n)), gpus_per_worker, max(1, int(cpus // n)))
    n = workers or max(1, int(share * cpus))
    budget = max(0.25, share * (cpus - 1))
    return PoolPlan(n, min(1.0, budget / n), 0.0, max(1, int(share * cpus // n)))
