"""An archive after a year of nightly runs, in miniature: kills, reruns, growth, compaction.

    python benchmarks/soak.py [--photos 10000] [--kills 3] [--nights 30] [--new 0.01] [--broken 0.005]
                              [--size 32] [--kill-between 10 60] [--workdir DIR] [--json]

1. ``--photos`` small synthetic photos are compressed by ``resulic compress`` (a subprocess, its
   own local Ray) that is killed with SIGKILL (its whole process group) ``--kills`` times at
   random moments, each time rerun (``--break-lease``: the dead job's lease), then run to the end.
2. ``--nights`` incremental runs follow, each after adding ``--new`` of the collection as new
   photos and ``--broken`` as broken files (not images).
3. ``resulic compact`` runs once.

After each step the archive is checked: every photo archived exactly once, every broken file
one failed row (not one a night), and the time of an index refresh (what each job does first)
is recorded. Prints a table per night and the checks; exits 1 when a check fails. #22's targets:
the 30th night's refresh within 1.5x of the first's, compaction cuts the file count and keeps
every asset.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from operators.archive import Archive  # noqa: E402


def make_photos(src: Path, start: int, n: int, size: int, rng: np.random.Generator) -> list[str]:
    """Smooth random colour fields with a little noise: PNGs that decode and encode quickly."""
    keys = []
    for i in range(start, start + n):
        key = f"{i // 1000:03d}/p{i:06d}.png"
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
        img = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float32)
        img += rng.normal(0, 6, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(src / key)
        keys.append(key)
    return keys


def make_broken(src: Path, night: int, n: int) -> list[str]:
    keys = []
    for i in range(n):
        key = f"broken/n{night:02d}-{i:04d}.png"
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(b"not a photo " * (i % 7 + 1))
        keys.append(key)
    return keys


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def compress(src: Path, arc: Path, kill_after: float | None = None, extra: tuple[str, ...] = ()) -> dict | None:
    """One job; killed (SIGKILL to its process group) after ``kill_after`` seconds if given."""
    cmd = cli("compress", str(src), str(arc), "--json", "--rows-per-file", "128", "--max-failure-rate", "1", *extra)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True, env=env)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"compress exited {proc.returncode}")
    return json.loads(out)


def refresh_seconds(arc: Path) -> float:
    """An index refresh as a job starts with it (read the index, list the data files, index new ones)."""
    t = time.perf_counter()
    Archive(str(arc)).refresh_index()
    return time.perf_counter() - t


def check(arc: Path, photos: set[str], broken: set[str]) -> dict:
    """Index and data files against what the source holds."""
    t = time.perf_counter()
    index = Archive(str(arc)).refresh_index()
    refresh = time.perf_counter() - t
    rows = index.select(["key", "status"]).to_pylist()
    written = {r["key"] for r in rows if r["status"] == "written"}
    failed_rows: Counter = Counter()
    for f in sorted((arc / "data").glob("*.parquet")):
        t2 = pq.read_table(f, columns=["key", "status"])
        failed_rows.update(k for k, s in zip(t2.column("key").to_pylist(), t2.column("status").to_pylist()) if s == "failed")
    return {
        "refresh_s": refresh, "files": len(list((arc / "data").glob("*.parquet"))),
        "missing": len(photos - written), "unexpected": len(written - photos),
        "broken_unrecorded": len(broken - set(failed_rows)),
        "failed_rows_duplicated": sum(n - 1 for n in failed_rows.values() if n > 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=10_000)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--nights", type=int, default=30)
    ap.add_argument("--new", type=float, default=0.01)
    ap.add_argument("--broken", type=float, default=0.005)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--kill-between", type=float, nargs=2, default=[10.0, 60.0], metavar=("MIN_S", "MAX_S"),
                    help="each kill comes this many seconds after its job started (uniform)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="soak-"))
    src, arc = work / "src", work / "arc"
    rng, prng = np.random.default_rng(args.seed), random.Random(args.seed)
    photos = set(make_photos(src, 0, args.photos, args.size, rng))
    broken: set[str] = set()
    report: dict = {"photos": args.photos, "kills": [], "nights": []}
    try:
        t0 = time.time()
        for k in range(args.kills):  # each run killed at a random moment, then rerun
            after = prng.uniform(*args.kill_between)
            s = compress(src, arc, kill_after=after, extra=("--break-lease",) if k else ())
            report["kills"].append({"after_s": round(after, 1), "finished": s is not None})
        s = compress(src, arc, extra=("--break-lease",))
        report["initial"] = {"wall_s": round(time.time() - t0, 1), **check(arc, photos, broken)}
        print(f"initial: {args.photos} photos, {args.kills} kills at "
              f"{', '.join(str(k['after_s']) for k in report['kills'])} s: {report['initial']}")  # fmt: skip
        print(f"{'night':>5} {'written':>8} {'unchanged':>9} {'still':>6} {'failed':>6} {'files':>6} {'refresh s':>9} "
              f"{'missing':>7} {'dup failed':>10}")  # fmt: skip
        total = args.photos
        for night in range(1, args.nights + 1):
            new = round(args.photos * args.new)
            photos |= set(make_photos(src, total, new, args.size, rng))
            total += new
            broken |= set(make_broken(src, night, round(args.photos * args.broken)))
            refresh = refresh_seconds(arc)  # what the job is about to do first
            s = compress(src, arc)
            c = {**check(arc, photos, broken), "refresh_s": refresh}
            report["nights"].append({"night": night, **{k: s[k] for k in ("written", "unchanged", "still_failed", "failed")}, **c})
            print(f"{night:>5} {s['written']:>8} {s['unchanged']:>9} {s['still_failed']:>6} {s['failed']:>6} {c['files']:>6} "
                  f"{c['refresh_s']:>9.3f} {c['missing']:>7} {c['failed_rows_duplicated']:>10}")  # fmt: skip
        res = subprocess.run(cli("compact", str(arc), "--json"), cwd=ROOT, capture_output=True, text=True, check=True)
        report["compact"] = {**json.loads(res.stdout), **check(arc, photos, broken)}
        print(f"compact: {report['compact']}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    nights = report["nights"]
    ratio = nights[-1]["refresh_s"] / nights[0]["refresh_s"] if nights else None
    checks = {
        "every photo once, nothing unexpected": all(r["missing"] == 0 and r["unexpected"] == 0
                                                    for r in [report["initial"], *nights, report["compact"]]),
        "every broken file one failed row": all(r["broken_unrecorded"] == 0 and r["failed_rows_duplicated"] == 0
                                                for r in [*nights, report["compact"]]),
        f"last night's refresh within 1.5x of the first ({ratio and round(ratio, 2)}x)": ratio is None or ratio <= 1.5,
        "compact cuts the file count": report["compact"]["files_after"] < report["compact"]["files_before"],
    }  # fmt: skip
    report["checks"] = checks
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    if args.json:
        print(json.dumps(report))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
