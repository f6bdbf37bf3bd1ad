"""Load on the restore service (``resulic serve``) over loopback, beside the CLI's one-key restore.

    python benchmarks/serve_load.py [--assets 200] [--requests 2000] [--concurrency 1 8 32]
                                    [--repeat 0.7] [--max-seconds 300] [--cli-keys 5] [--workdir DIR] [--json]

Builds an archive of ``--assets`` training photos (photos-train-v2, long side ``--size``) with
the real compress job, then for each concurrency starts the service afresh (an empty cache),
sends ``--requests`` GETs from that many client threads, each with its own keep-alive
connection: with probability ``--repeat`` a key from a hot set of 20, else the next key not yet
asked for. Bounded: a level stops issuing requests after ``--max-seconds``. Prints per level
the latency percentiles of all requests and of those the service answered from its cache,
throughput, errors and the ratio to the CLI, whose throughput is measured by restoring
``--cli-keys`` of the same keys one ``resulic restore --key`` command each (#23's target: at
least 3x at concurrency 8, cached p95 under 50 ms, 0 errors).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HOT_KEYS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_archive(workdir: Path, assets: int, size: int) -> Path:
    """``assets`` training photos, resized, compressed by the real job (kept between runs)."""
    from PIL import Image

    arc = workdir / f"archive-{assets}-{size}"
    if (arc / "_archive.json").exists():
        return arc
    src = workdir / f"photos-{assets}-{size}"
    src.mkdir(parents=True, exist_ok=True)
    photos = sorted((ROOT.parent / "shared" / "datasets" / "photos-train-v2").glob("*.jpg"))
    if len(photos) < assets:
        raise SystemExit(f"need {assets} photos, found {len(photos)} in photos-train-v2")
    for i, p in enumerate(photos[:assets]):
        im = Image.open(p).convert("RGB")
        im.thumbnail((size, size))
        im.save(src / f"p{i:04d}.png")
    res = _cli("compress", str(src), str(arc), "--captioner", "none", "--json")
    summary = json.loads(res.stdout)
    if summary["written"] != assets:
        raise SystemExit(f"compress wrote {summary['written']} of {assets}: {res.stdout[-2000:]}")
    return arc


def _cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, capture_output=True, text=True,
                         env=env or _env(), timeout=3600)  # fmt: skip
    if check and res.returncode != 0:
        raise SystemExit(f"resulic {args[0]} failed: {res.stderr[-2000:]}")
    return res


def _env(**extra: str) -> dict:
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **extra}


class Service:
    """``resulic serve`` in a subprocess, on a free loopback port."""

    def __init__(self, archive: Path, token: str, replicas: int, log: Path) -> None:
        self.port, self.token = free_port(), token
        self.out = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", str(archive), "--port",
                                      str(self.port), "--replicas", str(replicas)], cwd=ROOT,
                                     env=_env(RESULIC_SERVE_TOKEN=token), stdout=self.out, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the service exited: {log.read_text()[-2000:]}")
            try:
                if self.get("/healthz", auth=False)[0] == 200:
                    return
            except OSError:
                time.sleep(1)
        raise SystemExit("the service did not start in 300 s")

    def get(self, path: str, auth: bool = True, conn: http.client.HTTPConnection | None = None) -> tuple[int, str]:
        c = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        c.request("GET", path, headers={"Authorization": f"Bearer {self.token}"} if auth else {})
        r = c.getresponse()
        r.read()
        if conn is None:
            c.close()
        return r.status, r.getheader("X-Resulic-Cache", "")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)
        self.out.close()


def request_keys(keys: list[str], n: int, repeat: float, seed: int) -> list[str]:
    """``n`` keys: a hot-set key with probability ``repeat``, else the next key not yet asked for
    (hot ones once all have been)."""
    rng = random.Random(seed)
    hot = rng.sample(keys, min(HOT_KEYS, len(keys)))
    fresh = iter(rng.sample(keys, len(keys)))
    out = []
    for _ in range(n):
        k = next(fresh, None) if rng.random() >= repeat else None
        out.append(k or rng.choice(hot))
    return out


def load(service: Service, keys: list[str], concurrency: int, max_seconds: float) -> dict:
    todo = iter(keys)
    lock = threading.Lock()
    samples: list[tuple[float, int, str]] = []
    deadline = time.time() + max_seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=120)
        while time.time() < deadline:
            with lock:
                key = next(todo, None)
            if key is None:
                break
            t0 = time.perf_counter()
            try:
                status, cache = service.get(f"/v1/assets/{key}", conn=conn)
            except OSError as e:
                status, cache = 0, type(e).__name__
                conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=120)
            with lock:
                samples.append((time.perf_counter() - t0, status, cache))
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = sorted(s[0] * 1000 for s in samples)
    hits = sorted(s[0] * 1000 for s in samples if s[2] == "hit")
    return {
        "concurrency": concurrency, "requests": len(samples), "errors": sum(s[1] != 200 for s in samples),
        "misses": sum(s[2] == "miss" for s in samples), "wall_s": round(wall, 2),
        "per_s": round(len(samples) / wall, 2), "p50_ms": _pct(ms, 50), "p95_ms": _pct(ms, 95), "p99_ms": _pct(ms, 99),
        "hit_p95_ms": _pct(hits, 95), "stopped_early": len(samples) < len(keys),
    }  # fmt: skip


def _pct(values: list[float], q: float) -> float | None:
    return round(values[min(len(values) - 1, int(len(values) * q / 100))], 1) if values else None


def cli_restore(archive: Path, keys: list[str], dest: Path) -> dict:
    """One ``resulic restore --key`` command per key, as a script without the service would."""
    seconds = []
    for k in keys:
        t0 = time.perf_counter()
        _cli("restore", str(archive), str(dest), "--key", k)
        seconds.append(time.perf_counter() - t0)
    return {"keys": len(keys), "mean_s": round(statistics.mean(seconds), 2), "per_s": round(1 / statistics.mean(seconds), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--assets", type=int, default=200)
    ap.add_argument("--size", type=int, default=256, help="long side of the archived photos (default 256)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--repeat", type=float, default=0.7, help="share of requests for the hot keys (default 0.7)")
    ap.add_argument("--replicas", type=int, default=1, help="decoder replicas (default 1)")
    ap.add_argument("--max-seconds", type=float, default=300, help="per level: stop issuing requests after this")
    ap.add_argument("--cli-keys", type=int, default=5)
    ap.add_argument("--workdir", help="where the archive is built and kept (default: a temporary folder, removed)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="resulic-serve-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        archive = build_archive(workdir, args.assets, args.size)
        from operators.archive import Archive

        all_keys = [r["key"] for r in Archive(str(archive)).assets().select(["key"]).to_pylist()]
        token = secrets.token_urlsafe(32)
        levels = []
        for i, c in enumerate(args.concurrency):
            service = Service(archive, token, args.replicas, workdir / f"serve-{c}.log")
            try:
                levels.append(load(service, request_keys(all_keys, args.requests, args.repeat, seed=i), c, args.max_seconds))
            finally:
                service.stop()
        cli = cli_restore(archive, request_keys(all_keys, args.cli_keys, 0.0, seed=99), workdir / "cli-out")
        for lv in levels:
            lv["x_cli"] = round(lv["per_s"] / cli["per_s"], 1)
        result = {"assets": len(all_keys), "size": args.size, "replicas": args.replicas, "cpus": os.cpu_count(),
                  "levels": levels, "cli": cli}  # fmt: skip
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{len(all_keys)} assets (long side {args.size} px), {args.replicas} decoder replica(s), {os.cpu_count()} CPUs")
            print(f"{'conc':>4} {'requests':>8} {'errors':>6} {'misses':>6} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} "
                  f"{'p99 ms':>7} {'hit p95':>7} {'x CLI':>6}")  # fmt: skip
            for lv in levels:
                print(f"{lv['concurrency']:>4} {lv['requests']:>8} {lv['errors']:>6} {lv['misses']:>6} {lv['per_s']:>7} "
                      f"{lv['p50_ms']:>7} {lv['p95_ms']:>7} {lv['p99_ms']:>7} {lv['hit_p95_ms']!s:>7} {lv['x_cli']:>6}"
                      + ("  (stopped at --max-seconds)" if lv["stopped_early"] else ""))  # fmt: skip
            print(f"CLI: resulic restore --key, one command per key: {cli['mean_s']} s a key ({cli['per_s']} keys/s, {cli['keys']} keys)")
        return 1 if any(lv["errors"] for lv in levels) else 0
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
