"""``resulic serve``: the restore service (operators/restore_service.py) on Ray Serve.

``build_app`` is also the application builder a RayService names
(``import_path: pipelines.serve:build_app``), so the CLI and a cluster run the same service.
The bearer token is read here, from an environment variable or a file, and only its SHA-256
is handed to the replicas.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from codec.usage import UsageError

TOKEN_ENV = "RESULIC_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16  # shorter tokens can be guessed
APP_NAME = "resulic"


@dataclass
class ServeOptions:
    archive: str
    token_env: str = TOKEN_ENV
    token_file: str | None = None
    allow_no_token: bool = False  # the CLI sets it for loopback hosts only
    replicas: int | str = 1  # decoder replicas, or "auto" (autoscaling between 1 and max_replicas)
    max_replicas: int = 4
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    device: str = "auto"
    steps: int | None = None
    cache_mb: int = 256
    request_timeout_s: float = 60.0
    refresh_s: float = 10.0
    storage_options: dict[str, Any] = field(default_factory=dict)


def read_token(env_name: str, file: str | None) -> str | None:
    """The token from ``file`` (surrounding whitespace dropped) or else from ``$env_name``."""
    if file:
        try:
            with open(file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise UsageError(f"cannot read the token file {file}: {e.strerror}") from None
        if not token:
            raise UsageError(f"the token file {file} is empty")
    else:
        token = os.environ.get(env_name, "").strip() or None
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise UsageError(f"the service token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                         f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")  # fmt: skip
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


class ServeAlreadyRunning(RuntimeError):
    """The Ray cluster already runs Serve (exit 1: the environment's state, not a usage error)."""


def serve_running() -> bool:
    """Whether the connected Ray cluster already has a Serve controller. ``serve.start`` would
    join it and keep its HTTP options (Ray only logs that the new ones are ignored); there is
    no public call that says so without starting one, hence the controller's actor name."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


def build_app(args: dict[str, Any]):
    """The Serve application: the ingress bound to its decoder deployment."""
    from codec.images import MAX_PIXELS
    from operators.restore_service import AssetDecoder, RestoreAPI, ServiceSettings
    from pipelines.ray_runtime import worker_env

    o = ServeOptions(**args)
    token = read_token(o.token_env, o.token_file)
    if token is None and not o.allow_no_token:
        raise UsageError(f"the service needs a bearer token: set ${o.token_env} or pass --token-file "
                         "(only a loopback host may serve without one)")  # fmt: skip
    if o.replicas == "auto":
        scaling: dict[str, Any] = {"autoscaling_config": {"min_replicas": 1, "max_replicas": o.max_replicas,
                                                          "target_ongoing_requests": 8}}  # fmt: skip
    elif isinstance(o.replicas, int) and o.replicas >= 1:
        scaling = {"num_replicas": o.replicas}
    else:
        raise UsageError(f"replicas must be a positive integer or 'auto', got {o.replicas!r}")
    actor = {"num_cpus": o.cpus_per_replica, **({"num_gpus": o.gpus_per_replica} if o.gpus_per_replica else {})}
    threads = max(1, int(o.cpus_per_replica))
    decoder = AssetDecoder.options(ray_actor_options=actor, **scaling).bind(
        worker_env(), MAX_PIXELS, device=o.device, steps=o.steps, threads=threads)  # fmt: skip
    settings = ServiceSettings(
        archive=o.archive, max_pixels=MAX_PIXELS, storage_options=o.storage_options,
        token_sha256=hashlib.sha256(token.encode()).hexdigest() if token else None,
        cache_bytes=o.cache_mb << 20, request_timeout_s=o.request_timeout_s, refresh_s=o.refresh_s, steps=o.steps,
    )  # fmt: skip
    return RestoreAPI.options(ray_actor_options={"num_cpus": 0.5}).bind(decoder, settings)


def serve_archive(options: ServeOptions, host: str, port: int, on_ready: Callable[[], None] = lambda: None) -> None:
    """Start the service on ``host:port``, call ``on_ready``, and keep serving until SIGINT or
    SIGTERM."""
    from ray import serve

    from operators.archive import Archive
    from pipelines.ray_runtime import ensure_ray

    if not is_loopback(host) and read_token(options.token_env, options.token_file) is None:
        raise UsageError(f"refusing to serve on {host} without a token: set ${options.token_env} or pass --token-file")
    options.allow_no_token = is_loopback(host)
    Archive(options.archive, options.storage_options).meta()  # a wrong path fails here, not in a replica
    app = build_app(vars(options))
    ensure_ray()
    if serve_running():
        raise ServeAlreadyRunning(
            "Ray Serve already runs on this cluster: its HTTP host and port would stay its own (a token-less app "
            "could answer on a public address), and stopping would remove its other apps. Deploy resulic there as "
            "an application (infra/kuberay), serve from a cluster of its own, or, if it is what a killed "
            "`resulic serve` left, stop it (`serve shutdown`, or `ray stop` on a local cluster)")  # fmt: skip
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(app, name=APP_NAME, route_prefix="/")
        on_ready()
        stop.wait()
    finally:
        serve.shutdown()


__all__ = ["ServeOptions", "build_app", "serve_archive", "serve_running", "ServeAlreadyRunning", "read_token", "is_loopback", "TOKEN_ENV"]
