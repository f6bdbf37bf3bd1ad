"""Encode and decode time of the default model beside its autoencoder's own time.

    python benchmarks/speed.py FOLDER [--images 6] [--rate 3] [--repeats 3] [--threads 2]

For each photo of FOLDER: the autoencoder's encoder alone (pixels -> latent), its decoder alone
(latent -> pixels), then ``codec.encode`` at ``--rate`` with the defaults a pipeline uses
(verification on) and ``codec.decode`` with the default decoder. Each figure is the median of
``--repeats`` runs after one warm-up. Prints seconds per image and the ratio to the
autoencoder (#20's target: encode and decode at most 2x the autoencoder's time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import codec  # noqa: E402
from codec.images import load_image, pad, to_tensor  # noqa: E402
from codec.presets import DEFAULT_PRESET, load_preset  # noqa: E402
from training.data import list_images  # noqa: E402


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--rate", type=float, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = load_preset(DEFAULT_PRESET)
    print(f"model {p.model_id.hex()} ({p.name}), rate {args.rate:g}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")  # fmt: skip
    print("| image | size | AE encode s | encode s | ratio | AE decode s | decode s | ratio |\n|---|---|---|---|---|---|---|---|")
    ratios: list[tuple[float, float]] = []
    for f in list_images(Path(args.folder))[: args.images]:
        img = load_image(f)
        x = pad(to_tensor(img), p.pad_multiple)
        with torch.no_grad():
            latent = p.autoencoder.encode(x)
            ae_enc = _median_s(lambda: p.autoencoder.encode(x), args.repeats)
            ae_dec = _median_s(lambda: p.autoencoder.decode(latent), args.repeats)
        stream = codec.encode(img, rate=args.rate)
        enc = _median_s(lambda: codec.encode_batch([img], rate=args.rate, verify_streams=True), args.repeats)
        dec = _median_s(lambda: codec.decode(stream), args.repeats)
        ratios.append((enc / ae_enc, dec / ae_dec))
        print(f"| {f.name} | {img.width}x{img.height} | {ae_enc:.2f} | {enc:.2f} | {enc / ae_enc:.2f} "
              f"| {ae_dec:.2f} | {dec:.2f} | {dec / ae_dec:.2f} |")  # fmt: skip
    enc_r, dec_r = (statistics.mean(r) for r in zip(*ratios))
    print(f"\nmean ratio to the autoencoder: encode {enc_r:.2f}x, decode {dec_r:.2f}x")


if __name__ == "__main__":
    main()
