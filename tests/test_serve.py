"""``resulic serve``'s set-up: where the token comes from, and which hosts may go without one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from codec.usage import UsageError
from conftest import ROOT
from pipelines.serve import MIN_TOKEN_CHARS, build_app, is_loopback, read_token

GOOD = "a" * MIN_TOKEN_CHARS


def test_token_from_environment_or_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MY_TOKEN", raising=False)
    assert read_token("MY_TOKEN", None) is None
    monkeypatch.setenv("MY_TOKEN", f" {GOOD}\n")
    assert read_token("MY_TOKEN", None) == GOOD
    f = tmp_path / "token"
    f.write_text("b" * 40 + "\n")
    assert read_token("MY_TOKEN", str(f)) == "b" * 40  # the file wins
    f.write_text("\n")
    with pytest.raises(UsageError, match="empty"):
        read_token("MY_TOKEN", str(f))
    with pytest.raises(UsageError, match="cannot read"):
        read_token("MY_TOKEN", str(tmp_path / "absent"))
    monkeypatch.setenv("MY_TOKEN", "short")
    with pytest.raises(UsageError, match="at least"):
        read_token("MY_TOKEN", None)


def test_loopback_hosts():
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.5", "example.com", "my-host"]))


def test_the_app_needs_a_token_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.delenv("RESULIC_SERVE_TOKEN", raising=False)
    with pytest.raises(UsageError, match="needs a bearer token"):
        build_app({"archive": str(tmp_path)})
    with pytest.raises(UsageError, match="replicas"):
        build_app({"archive": str(tmp_path), "allow_no_token": True, "replicas": 0})
    assert build_app({"archive": str(tmp_path), "allow_no_token": True, "replicas": "auto"}) is not None


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RESULIC_SERVE_TOKEN")} | env
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "serve", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=e)  # fmt: skip


def test_cli_refuses_a_public_host_without_a_token(tmp_path):
    r = _cli(str(tmp_path), "--host", "0.0.0.0")
    assert r.returncode == 2 and "without a token" in r.stderr and "Traceback" not in r.stderr
    r = _cli(str(tmp_path), "--host", "0.0.0.0", RESULIC_SERVE_TOKEN="short")
    assert r.returncode == 2 and "at least" in r.stderr and "short" not in r.stderr.replace("shorter", "")
    r = _cli(str(tmp_path / "nothing"), RESULIC_SERVE_TOKEN=GOOD)  # loopback with a token: the archive is checked first
    assert r.returncode == 1 and "not a resulic archive" in r.stderr


def test_serve_refuses_a_cluster_where_serve_already_runs(ray_local, tmp_path, monkeypatch):
    """Joining it would keep its host (0.0.0.0 on a cluster) for an app allowed no token, and
    stopping would remove its other apps."""
    from ray import serve

    from conftest import free_port
    from operators.archive import Archive
    from pipelines.cli import report_error
    from pipelines.serve import ServeAlreadyRunning, ServeOptions, serve_archive, serve_running

    Archive(str(tmp_path / "arc")).create({"preset": "taef2"})
    monkeypatch.delenv("RESULIC_SERVE_TOKEN", raising=False)
    assert not serve_running()
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    try:
        assert serve_running()
        with pytest.raises(ServeAlreadyRunning, match="Ray Serve already runs on this cluster"):
            serve_archive(ServeOptions(archive=str(tmp_path / "arc")), "127.0.0.1", free_port())
        monkeypatch.setenv("RESULIC_LOG_DIR", str(tmp_path / "logs"))
        assert report_error(ServeAlreadyRunning("x")) == 1  # the environment's state: exit 1, not 2
    finally:
        serve.shutdown()
    assert not serve_running()
