"""The cluster files stay in step with the code: they parse, and the commands they run are valid."""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import tomllib
import yaml

from pipelines.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _resulic_args(command: list[str]) -> list[str]:
    return command[command.index("resulic") + 1 :]


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _token_auth(container: dict) -> bool:
    env = _env(container)
    return env.get("RAY_AUTH_MODE") == "token" and env["RAY_AUTH_TOKEN"]["secretKeyRef"]["name"] == "resulic-ray-auth"


def test_nightly_job_submits_once_with_the_token_and_a_valid_compress():
    job = yaml.safe_load((ROOT / "infra" / "kuberay" / "nightly.yaml").read_text())
    pod = job["spec"]["jobTemplate"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert _token_auth(container) and _env(container)["RAY_ADDRESS"].endswith(":8265")
    args = build_parser().parse_args(_resulic_args(container["args"]))
    assert args.command == "compress" and args.source.startswith("s3://") and args.json
    # the pool is the job's ask: GPU actors the autoscaler can start nodes for
    assert args.workers and args.gpus_per_worker and args.device == "cuda" and args.max_failure_rate < 1
    # idempotent submission: one id per night, a retried pod follows the existing job
    script = (ROOT / container["command"][0].removeprefix("/opt/resulic/")).read_text()
    assert _env(container)["RESULIC_RUN_ID"] == {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}}
    assert 'id="${RESULIC_RUN_ID:-' in script  # what test_submit_script_against_a_job_server runs
    assert os.access(ROOT / "infra" / "submit_nightly.sh", os.X_OK)
    # the network policy lets exactly these pods reach the job server
    policy = yaml.safe_load((ROOT / "infra" / "kuberay" / "networkpolicy.yaml").read_text())
    submitter = next(r for r in policy["spec"]["ingress"] if r.get("ports"))
    assert submitter["from"][0]["podSelector"]["matchLabels"] == pod["metadata"]["labels"]
    assert submitter["ports"] == [{"port": 8265, "protocol": "TCP"}]
    # the id is the UTC date: the schedule is read in UTC too, and a stuck night ends before the next
    assert job["spec"]["timeZone"] == "Etc/UTC"
    assert job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] < 24 * 3600


def test_submit_script_is_valid_shell():
    subprocess.run(["sh", "-n", str(ROOT / "infra" / "submit_nightly.sh")], check=True)


@pytest.mark.slow
def test_submit_script_against_a_job_server():
    """A real Ray head's job server on loopback, with token auth: the script exits 0 exactly
    when the job succeeded, for a fresh submission and for a retry that follows the existing job."""
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "RAY_ADDRESS": f"http://127.0.0.1:{_free_port()}",
    }
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))  # as the cluster runs it
    dashboard = env["RAY_ADDRESS"].rsplit(":", 1)[1]
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    head = ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={_free_port()}", "--num-cpus=2",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            f"--temp-dir={temp}", "--disable-usage-stats"]  # fmt: skip
    subprocess.run(head, env=env, check=True, capture_output=True, timeout=120)
    script = str(ROOT / "infra" / "submit_nightly.sh")
    try:
        run = lambda run_id, *cmd: subprocess.run([script, *cmd], env={**env, "RESULIC_RUN_ID": run_id},
                                                  capture_output=True, text=True, timeout=180)  # fmt: skip
        ok = run("resulic-nightly-ok", sys.executable, "-c", "print('archived')")
        assert ok.returncode == 0, ok.stderr
        assert "archived" in ok.stdout and "job resulic-nightly-ok: SUCCEEDED" in ok.stderr
        again = run("resulic-nightly-ok", sys.executable, "-c", "raise SystemExit(5)")  # a retried pod
        assert again.returncode == 0 and "exists: following it" in again.stderr
        failed = run("resulic-nightly-bad", sys.executable, "-c", "raise SystemExit(1)")
        assert failed.returncode == 1 and "job resulic-nightly-bad: FAILED" in failed.stderr
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_raycluster_gpu_group_from_zero_and_token_auth_everywhere():
    rc = yaml.safe_load((ROOT / "infra" / "kuberay" / "raycluster.yaml").read_text())
    assert rc["kind"] == "RayCluster" and rc["spec"]["rayVersion"] == __import__("ray").__version__
    gpu = rc["spec"]["workerGroupSpecs"][0]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["minReplicas"] == 0 and gpu["replicas"] == 0 and rc["spec"]["enableInTreeAutoscaling"]
    head = rc["spec"]["headGroupSpec"]
    # the dashboard (Ray's job server) is on loopback, or every Ray process demands the token
    if head["rayStartParams"].get("dashboard-host") != "127.0.0.1":
        assert _token_auth(head["template"]["spec"]["containers"][0])
        assert _token_auth(gpu["template"]["spec"]["containers"][0])
        assert _token_auth(rc["spec"]["autoscalerOptions"])


def test_ray_pods_give_the_object_store_a_memory_backed_shm():
    """Kubernetes' default /dev/shm is 64 MiB: Ray would put its object store on disk."""
    rc = yaml.safe_load((ROOT / "infra" / "kuberay" / "raycluster.yaml").read_text())
    svc = yaml.safe_load((ROOT / "infra" / "kuberay" / "rayservice.yaml").read_text())["spec"]["rayClusterConfig"]
    for spec in (rc["spec"], svc):
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            pod = group["template"]["spec"]
            shm = next(v for v in pod["volumes"] if v["name"] == "shm")
            assert shm["emptyDir"]["medium"] == "Memory"
            assert {"name": "shm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


def test_the_image_build_context_leaves_local_state_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "runs"} <= set(ignored)


def test_cluster_launcher_config():
    cfg = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    assert cfg["head_node_type"] in cfg["available_node_types"]
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head  # no open dashboard port
    fetch = next(c for c in cfg["setup_commands"] if "resulic weights" in c)
    assert build_parser().parse_args(_resulic_args(shlex.split(fetch))).command == "weights"
    # the checkout is mounted without a virtual environment, caches or git history
    assert ".venv" in cfg["rsync_exclude"] and ".gitignore" in cfg["rsync_filter"]
    assert "[cluster]" in " ".join(cfg["setup_commands"])  # ray[default]: the job server
    # everything the ssh user writes is in its home: /opt is root's on the AMI
    assert all(k.startswith("~/") for k in cfg["file_mounts"])
    commands = cfg["setup_commands"] + cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert not any("/opt" in c for c in commands)


def test_every_pod_mounts_the_weights_volume_that_weights_yaml_creates_and_fills():
    claim, job = yaml.safe_load_all((ROOT / "infra" / "kuberay" / "weights.yaml").read_text())
    assert claim["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in claim["spec"]["accessModes"]
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    taef2_dir = next(
        line.split("=", 1)[1] for line in dockerfile.splitlines() if line.startswith("ENV RESULIC_TAEF2_DIR=")
    )
    fetch = job["spec"]["template"]["spec"]
    args = build_parser().parse_args(_resulic_args(fetch["containers"][0]["command"]))
    assert (args.command, args.dest) == ("weights", taef2_dir)
    assert fetch["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    rc = yaml.safe_load((ROOT / "infra" / "kuberay" / "raycluster.yaml").read_text())["spec"]
    svc = yaml.safe_load((ROOT / "infra" / "kuberay" / "rayservice.yaml").read_text())["spec"]["rayClusterConfig"]
    pods = [c["headGroupSpec"]["template"]["spec"] for c in (rc, svc)]
    pods += [g["template"]["spec"] for c in (rc, svc) for g in c["workerGroupSpecs"]]
    for pod in pods:
        volume = next(v for v in pod["volumes"] if v["name"] == "weights")
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "weights")
        assert taef2_dir.startswith(mount["mountPath"] + "/")
        # object-store credentials: a Secret if there is one, else the nodes' role
        assert all(e["secretRef"].get("optional") for e in pod["containers"][0].get("envFrom", []))
    assert " wget " in dockerfile  # KubeRay's injected probes run it


def test_dockerfile_copies_what_the_package_needs_and_installs_the_job_server():
    text = (ROOT / "infra" / "Dockerfile").read_text()
    copied = {line.split()[1] for line in text.splitlines() if line.startswith("COPY")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied and all((ROOT / p).is_dir() for p in packages)
    assert "infra" in copied  # submit_nightly.sh
    # `ray job submit` needs the dashboard's job server: ray[default], through the cluster extra
    assert any(d.startswith("ray[default]") for d in pyproject["project"]["optional-dependencies"]["cluster"])
    assert 'pip install --no-cache-dir ".[cluster]"' in text


def test_rayservice_runs_the_cli_service_with_its_token_from_a_secret(monkeypatch):
    import importlib

    svc = yaml.safe_load((ROOT / "infra" / "kuberay" / "rayservice.yaml").read_text())
    assert svc["kind"] == "RayService"
    cluster = svc["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == __import__("ray").__version__ and cluster["authOptions"]["mode"] == "token"
    config = yaml.safe_load(svc["spec"]["serveConfigV2"])
    app = config["applications"][0]
    module, name = app["import_path"].split(":")
    builder = getattr(importlib.import_module(module), name)
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]]
    containers += [g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]]
    for c in containers:  # the builder runs where Serve's controller puts it: every pod has the token
        ref = _env(c)[app["args"]["token_env"]]["secretKeyRef"]
        assert ref["name"] == "resulic-serve-token" and "value" not in c["env"][0]
    monkeypatch.setenv(app["args"]["token_env"], "x" * 32)
    assert builder(app["args"]) is not None  # the args are the builder's
    monkeypatch.delenv(app["args"]["token_env"])
    with pytest.raises(ValueError, match="needs a bearer token"):
        builder(app["args"])  # a cluster without the Secret refuses to start
    assert config["http_options"]["port"] == 8000
