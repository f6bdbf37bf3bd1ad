"""The cluster files stay in step with the code: they parse, and the commands they run are valid."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from pipelines.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _resulic_args(command: list[str]) -> list[str]:
    return command[command.index("resulic") + 1 :]


def test_nightly_job_runs_a_valid_compress():
    job = yaml.safe_load((ROOT / "infra" / "kuberay" / "nightly.yaml").read_text())
    assert job["spec"]["concurrencyPolicy"] == "Forbid"  # one writer per archive
    command = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    args = build_parser().parse_args(_resulic_args(command))
    assert args.command == "compress" and args.source.startswith("s3://") and args.json


def test_raycluster_gpu_group():
    rc = yaml.safe_load((ROOT / "infra" / "kuberay" / "raycluster.yaml").read_text())
    assert rc["kind"] == "RayCluster" and rc["spec"]["rayVersion"] == __import__("ray").__version__
    gpu = rc["spec"]["workerGroupSpecs"][0]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_cluster_launcher_config():
    cfg = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    assert cfg["head_node_type"] in cfg["available_node_types"]
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head  # no open dashboard port
    fetch = next(c for c in cfg["setup_commands"] if "resulic weights" in c)
    assert build_parser().parse_args(_resulic_args(shlex.split(fetch))).command == "weights"


def test_dockerfile_copies_what_the_package_needs():
    lines = (ROOT / "infra" / "Dockerfile").read_text().splitlines()
    copied = {line.split()[1] for line in lines if line.startswith("COPY")}
    packages = {"codec", "operators", "pipelines", "schemas"}
    assert packages <= copied and all((ROOT / p).is_dir() for p in packages)
