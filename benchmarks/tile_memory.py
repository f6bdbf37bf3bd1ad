"""Peak memory and time of encoding and decoding large photos, tiled (the default) and untiled.

    python benchmarks/tile_memory.py [--photo PATH] [--megapixels 1 4 8] [--rate 3]

Each photo is a training photo (never Kodak) resized to the given size. Every encode and decode
runs in a fresh process (``resulic encode`` / ``resulic decode``, the CLI's defaults), whose
peak RSS is read from ``getrusage``; the untiled runs set ``$RESULIC_TILE_LATENTS`` above the
image's size. The last column compares the tiled decode's 8-bit pixels with the untiled one's
(``codec.tiling``: equal but for float rounding). An untiled 16-megapixel run needs about 18 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PHOTO = ROOT.parent / "shared" / "datasets" / "photos-train-v2" / "0001.jpg"
UNTILED = "100000"
# Runs one CLI command in this child and prints its peak RSS (the child's own: a fresh process).
CHILD = """
import json, resource, sys, time
from pipelines.cli import main
t = time.perf_counter()
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "s": time.perf_counter() - t,
                  "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def _run(args: list[str], tile: str | None) -> dict:
    env = dict(os.environ)
    env.pop("RESULIC_TILE_LATENTS", None)
    if tile:
        env["RESULIC_TILE_LATENTS"] = tile
    out = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(args)} exited {result['rc']}:\n{out.stderr[-2000:]}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", type=Path, default=DEFAULT_PHOTO)
    ap.add_argument("--megapixels", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    ap.add_argument("--rate", default="3")
    args = ap.parse_args()
    src = Image.open(args.photo).convert("RGB")
    print("| Mpx | size | tiles | encode s | encode peak GB | decode s | decode peak GB | pixels differing (max) |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for mp in args.megapixels:
            f = (mp * 1e6 / (src.width * src.height)) ** 0.5
            img = src.resize((round(src.width * f), round(src.height * f)), Image.BICUBIC)
            png = Path(tmp) / f"{mp}.png"
            img.save(png)
            decoded = {}
            for label, tile in (("untiled", UNTILED), ("tiled", None)):
                stream, out = Path(tmp) / f"{mp}-{label}.rsl", Path(tmp) / f"{mp}-{label}.png"
                enc = _run(["encode", str(png), str(stream), "--rate", args.rate], tile)
                dec = _run(["decode", str(Path(tmp) / f"{mp}-untiled.rsl"), str(out)], tile)  # one stream for both
                decoded[label] = np.asarray(Image.open(out), dtype=np.int16)
                diff = ""
                if label == "tiled":
                    d = np.abs(decoded["tiled"] - decoded["untiled"])
                    same = stream.read_bytes() == (Path(tmp) / f"{mp}-untiled.rsl").read_bytes()
                    diff = f"{(d > 0).mean():.2e} ({d.max()}); stream {'identical' if same else 'differs'}"
                print(f"| {mp:g} | {img.width}x{img.height} | {label} | {enc['s']:.1f} | {enc['peak_gb']:.2f} | "
                      f"{dec['s']:.1f} | {dec['peak_gb']:.2f} | {diff} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
