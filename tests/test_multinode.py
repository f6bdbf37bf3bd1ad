"""A real two-node Ray cluster on loopback: `resulic compress` joins it through RAY_ADDRESS,
its encoder actors run on both nodes, and a job whose worker node is killed mid-job finishes
on the head node; the rerun finds every asset archived exactly once.

The nodes are Ray's own test cluster (``ray.cluster_utils.Cluster``): two raylets with their
own resources and object stores, one GCS, as a cluster of two machines has. ``ray start
--address`` is not used because Ray refuses a second node in the loopback-only mode that
keeps every server off the network (``pipelines.ray_runtime``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import ray

from conftest import ROOT, photo_folder

pytestmark = pytest.mark.timeout(600)

N_ASSETS = 24


@pytest.fixture
def cluster():
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # servers on loopback (see ray_runtime)
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    ray_constants.ENABLE_RAY_CLUSTER = False
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                      "include_dashboard": False})  # fmt: skip
    # The head writes its address to /tmp/ray/ray_current_cluster, where every later ray.init()
    # on this machine would look for a cluster; the jobs here get it through RAY_ADDRESS.
    ray._common.utils.reset_ray_address()
    try:
        worker = c.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        yield c, worker
    finally:
        c.shutdown()


def _cli(args: list[str], address: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, **(env or {}), "RAY_ADDRESS": address}
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # fmt: skip


def _summary(out: str) -> dict:
    """The --json summary: stdout holds it alone, even when Ray's driver prints a dead node's
    error messages (they go to stderr)."""
    return json.loads(out)


def _committed(archive) -> int:
    data = archive / "data"
    return len(list(data.glob("*.parquet"))) if data.exists() else 0


@pytest.mark.slow  # about 60 s; the two-node default check: test_actors_run_on_both_nodes
def test_compress_on_two_nodes_survives_losing_one(cluster, tmp_path):
    c, worker = cluster
    src = photo_folder(tmp_path / "src", {f"p{i:02d}.png": (192, 128) for i in range(N_ASSETS)})
    arc = tmp_path / "arc"
    args = ["compress", str(src), str(arc), "--workers", "2", "--batch-size", "1", "--rows-per-file", "1",
            "--device", "cpu", "--json"]  # fmt: skip

    # 1. a job on both nodes: an encoder actor on each (Ray Data spreads actors by default)
    first = _cli(args, c.address)
    while _committed(arc) < 4 and first.poll() is None:
        time.sleep(0.2)
    # 2. the worker node dies mid-job: its actor and any task on it are lost
    before_kill = _committed(arc)
    c.remove_node(worker, allow_graceful=False)
    try:
        out, err = first.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        first.kill()
        out, err = first.communicate()
        pytest.fail(f"the job did not end after its worker node died: {err[-3000:]}")
    assert before_kill >= 4, err[-3000:]
    # the job finishes on the head node: Ray Data restarts the lost actor there and re-runs the
    # lost tasks (a commit task re-run may commit a file twice; the index keeps each key once)
    assert first.returncode == 0, err[-3000:]
    summary = _summary(out)
    assert summary["written"] == N_ASSETS and summary["failed"] == 0, summary
    assert len(summary["encoder_nodes"]) == 2, summary["encoder_nodes"]

    # 3. the rerun, on the remaining node: every asset archived once, nothing encoded twice
    rerun = _cli(args, c.address)
    out, err = rerun.communicate(timeout=400)
    assert rerun.returncode == 0, err[-3000:]
    summary = _summary(out)
    assert summary["unchanged"] == N_ASSETS and summary["written"] == summary["failed"] == 0, summary
    index = pq.read_table(arc / "_index" / "index.parquet")
    keys = index.column("key").to_pylist()
    assert sorted(keys) == sorted(set(keys)) and len(keys) == N_ASSETS
    assert set(index.column("status").to_pylist()) == {"written"}


def test_actors_run_on_both_nodes(cluster, tmp_path, monkeypatch):
    """Also: an override set only where the job is submitted (RESULIC_DECODER; the nodes were
    started without it) reaches the actors on both nodes, so every stream names the job's model."""
    c, _ = cluster
    decoder = str(ROOT / "codec/weights/decoder_taef2_v1/decoder.safetensors")  # another decoder: another model
    src = photo_folder(tmp_path / "src", {f"p{i:02d}.png": (96, 64) for i in range(8)})
    res = _cli(["compress", str(src), str(tmp_path / "arc"), "--workers", "2", "--batch-size", "1",
                "--device", "cpu", "--json"], c.address, env={"RESULIC_DECODER": decoder})  # fmt: skip
    out, err = res.communicate(timeout=400)
    assert res.returncode == 0, (out + err)[-3000:]
    summary = _summary(out)
    assert summary["written"] == 8
    assert len(summary["encoder_nodes"]) == 2 and sum(summary["encoder_nodes"].values()) == 8, summary["encoder_nodes"]
    from codec.presets import DECODER_ENV, load_preset

    release = load_preset().model_id.hex()
    monkeypatch.setenv(DECODER_ENV, decoder)
    job_model = load_preset().model_id.hex()
    assert job_model != release
    ids = pq.read_table(tmp_path / "arc" / "data", columns=["model_id"]).column("model_id").to_pylist()
    assert ids == [job_model] * 8
