"""Archive pipeline benchmark: throughput against the in-process codec, peak memory, restore latency.

    python benchmarks/pipeline.py [--sizes 1000 10000] [--side 64] [--raw-images 500] [--restores 20]

1. Raw codec: the first --raw-images of the photos, encoded and verified in this process (one
   batch at a time, all threads), model loading excluded.
2. Pipeline: `compress` on local Ray over the first N photos, for each N in --sizes (the same
   images: each set is the start of the largest), its throughput over the whole job's wall
   time (Ray start-up excluded: Ray is started first; everything else, listing, actor start-up
   and model loading included) against the raw codec's (target >= 0.9x), and its peak memory:
   the highest sum of USS over the driver and every Ray process, sampled every 0.5 s (shared
   memory, such as the object store's mapping, is counted once). Target: flat in N.
3. A rerun over the smallest set with nothing to do: the fixed cost of a job.
4. One-key restore latency from the largest archive: `restore(keys=[k])` for random keys, the
   first call (cold: loads the model) and the median of the rest (warm).

The photos are random crops of ../shared/datasets/photos-train (never Kodak), saved as PNG.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from codec.encoder import encode_with_symbols, verify  # noqa: E402
from codec.presets import load_preset  # noqa: E402
from codec.settings import EncodeSettings  # noqa: E402
from pipelines.compress import compress  # noqa: E402
from pipelines.peak_memory import PeakMemory  # noqa: E402
from pipelines.ray_runtime import ensure_ray  # noqa: E402
from pipelines.restore import restore  # noqa: E402

TRAIN = ROOT.parent / "shared" / "datasets" / "photos-train"


def make_photos(folder: Path, n: int, side: int, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted(TRAIN.glob("*"))[:8]]
    paths = []
    for i in range(n):
        img = rng.choice(sources)
        x, y = rng.randrange(img.width - side), rng.randrange(img.height - side)
        path = folder / f"{i // 1000:03d}" / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.crop((x, y, x + side, y + side)).save(path)
        paths.append(path)
    return paths


def raw_throughput(paths: list[Path], rate: float, batch: int) -> float:
    preset = load_preset("taef2")
    torch.set_num_threads(os.cpu_count() or 1)
    images = [Image.open(p).convert("RGB") for p in paths[:batch]]
    settings = EncodeSettings(rate=rate)
    encode_with_symbols(images[:1], settings, preset=preset)  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(paths), batch):
        images = [Image.open(p).convert("RGB") for p in paths[i : i + batch]]
        for stream, y_hat in encode_with_symbols(images, settings, preset=preset):
            verify(stream, y_hat, preset)
    return len(paths) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--raw-images", type=int, default=500, help="how many of the largest set the raw codec encodes")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rate", type=float, default=2)
    ap.add_argument("--restores", type=int, default=20)
    ap.add_argument("--memory-every", type=float, default=2.0,
                    help="seconds between memory samples (each reads every process's smaps: not free)")
    ap.add_argument("--workdir", help="where photos and archives go (default: a temporary folder)")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="resulic-bench-"))
    ensure_ray()
    rows = []
    sets = {}
    for n in args.sizes:  # nested sets: the first n photos of the largest, so every job sees the same images
        sets[n] = work / f"n{n}"
    biggest_n = max(args.sizes)
    photos = make_photos(work / "all", biggest_n, args.side, seed=2)
    for n, folder in sets.items():
        for p in photos[:n]:
            dest = folder / p.relative_to(work / "all")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(p, dest)

    # 1. the raw codec on the same images (in this process, all threads, batches of --batch-size)
    raw = raw_throughput(photos[: args.raw_images], args.rate, args.batch_size)
    rows.append(("raw codec", f"{args.raw_images} photos {args.side}px", f"{raw:.2f} img/s", ""))

    # 2. the pipeline on N photos: throughput over the whole job (Ray already up), peak memory
    for n in args.sizes:
        with PeakMemory(args.memory_every, tree=True) as mem:
            s = compress(str(sets[n]), str(work / f"n{n}-archive"), settings=EncodeSettings(rate=args.rate),
                         batch_size=args.batch_size)
        assert s["written"] == n, s
        pipe = n / s["wall_seconds"]
        rows.append(("pipeline", f"{n} photos", f"{pipe:.2f} img/s (job wall {s['wall_seconds']:.0f} s), "
                     f"peak {mem.peak / 2**20:.0f} MiB USS (driver + Ray)", f"{pipe / raw:.2f}x raw"))  # fmt: skip

    # 3. a rerun with nothing to do: the fixed cost of a job (a nightly run over an unchanged bucket)
    n = min(args.sizes)
    t0 = time.perf_counter()
    s = compress(str(sets[n]), str(work / f"n{n}-archive"), settings=EncodeSettings(rate=args.rate),
                 batch_size=args.batch_size)
    assert s["written"] == 0 and s["unchanged"] == n, s
    rows.append(("rerun, no change", f"{n} photos", f"{time.perf_counter() - t0:.1f} s", ""))

    # 4. one-key restore latency from the biggest archive
    arc = work / f"n{biggest_n}-archive"
    keys = random.Random(3).sample([f"{i // 1000:03d}/{i:06d}.png" for i in range(biggest_n)], args.restores)
    times = []
    for k in keys:
        t0 = time.perf_counter()
        r = restore(str(arc), str(work / "restored"), keys=[k])
        times.append(time.perf_counter() - t0)
        assert r["restored"] == 1, r
    rows.append(("restore 1 key", f"from {biggest_n} assets", f"cold {times[0] * 1000:.0f} ms, warm median "
                 f"{statistics.median(times[1:]) * 1000:.0f} ms over {len(times) - 1}", ""))  # fmt: skip

    print(f"\nresulic pipeline benchmark ({os.cpu_count()} CPUs, torch {torch.__version__}; work dir {work})")
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
