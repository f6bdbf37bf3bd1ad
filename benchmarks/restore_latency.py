"""Restoring one key from a large archive against a small one.

    python benchmarks/restore_latency.py [--rows 10000 1000000] [--lookups 20] [--workdir DIR]

Builds a synthetic archive per size (data files of 4,096 rows, as ``resulic compact`` leaves
them, every row holding the golden stream of the default model), indexes it, then restores
``--lookups`` random keys one at a time (``pipelines.restore.restore`` with ``keys=[k]``: the
index lookup, one row group, the decode and the file write). Prints per size the median of the
index lookup and row read alone and of the whole restore, and the ratio to the smallest
archive (#22's target: within 2x at 1,000,000 rows).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from codec.presets import DEFAULT_PRESET, load_preset  # noqa: E402
from operators.archive import Archive  # noqa: E402
from operators.sink import finalise_rows  # noqa: E402
from pipelines.restore import restore  # noqa: E402

FILE_ROWS = 4096


def build(root: Path, rows: int, stream: bytes) -> Archive:
    arc = Archive(str(root))
    arc.create({"preset": DEFAULT_PRESET})
    at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for start in range(0, rows, FILE_ROWS):
        n = min(FILE_ROWS, rows - start)
        keys = [f"photos/{i:08d}.jpg" for i in range(start, start + n)]
        table = pa.table({
            "key": keys, "source_uri": [f"s3://bucket/{k}" for k in keys], "source_fingerprint": ["1:x"] * n,
            "source_sha256": [f"{i:064x}" for i in range(start, start + n)],
            "width": pa.array([64] * n, pa.int32()), "height": pa.array([64] * n, pa.int32()),
            "bitstream": pa.array([stream] * n, pa.large_binary()), "status": pa.nulls(n, pa.string()),
        })  # fmt: skip
        arc.write_data_file(finalise_rows(table, "bench", at), f"bench-{start // FILE_ROWS:06d}", {"job_id": "bench"})
    arc.refresh_index()
    return arc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--lookups", type=int, default=20)
    ap.add_argument("--workdir", help="where the archives are built (default: a temporary folder, removed)")
    args = ap.parse_args()
    model = load_preset(DEFAULT_PRESET).model_id.hex()[:16]
    stream = (ROOT / "tests" / "data" / f"golden_{DEFAULT_PRESET}_{model}.rsl").read_bytes()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="restore-latency-"))
    rng = random.Random(0)
    print(f"{'rows':>10} {'files':>6} {'build s':>8} {'lookup+read ms':>15} {'restore ms':>11} {'ratio':>6}")
    base = None
    try:
        for rows in args.rows:
            t = time.perf_counter()
            arc = build(work / f"arc-{rows}", rows, stream)
            built = time.perf_counter() - t
            keys = [f"photos/{rng.randrange(rows):08d}.jpg" for _ in range(args.lookups)]
            restore(arc.url, str(work / "out"), keys=[keys[0]])  # warm-up: model load
            reads, whole = [], []
            for k in keys:
                t = time.perf_counter()
                (entry,) = Archive(arc.url).lookup([k]).to_pylist()
                Archive(arc.url).read_asset(entry, columns=["key", "status", "bitstream"])
                reads.append(time.perf_counter() - t)
                t = time.perf_counter()
                r = restore(arc.url, str(work / "out"), keys=[k])
                whole.append(time.perf_counter() - t)
                assert r["restored"] == 1, r
            read_ms, restore_ms = statistics.median(reads) * 1e3, statistics.median(whole) * 1e3
            base = base or restore_ms
            print(f"{rows:>10} {len(arc.data_files()):>6} {built:>8.1f} {read_ms:>15.1f} {restore_ms:>11.1f} "
                  f"{restore_ms / base:>6.2f}")  # fmt: skip
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
