"""Rate-distortion of each coded-size factor, the figures behind a release's ``scale_below_bpp``.

    python benchmarks/scales.py FOLDER [--images 14] [--scales 1 2 4] [--rates 0 1 ... 9] [--threads 2]
                                       [--perceptual] [--metric-weights DIR]

Every photo of FOLDER (never Kodak) is coded at each scale (``--scale`` 1, 2, 4: at 1/s of its
size) and rate, decoded with the plain decoder and upsampled back, and measured against the
original. Prints per scale and rate the mean bpp (of the original's pixels), PSNR and MS-SSIM,
and with ``--perceptual`` LPIPS and DISTS (from the published weights; what a perceptual model's
thresholds are read from). A scale's threshold is the stream size below which it beats the next
larger image on these curves (``codec/weights/README.md`` has the runs behind the releases).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import codec  # noqa: E402
from codec.images import load_image  # noqa: E402
from codec.presets import DEFAULT_PRESET, load_preset  # noqa: E402
from evaluation.metrics import ms_ssim, psnr  # noqa: E402
from pipelines.perceptual import pair_metrics, unavailable, weights_dir  # noqa: E402
from training.data import list_images  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--images", type=int, default=14)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--rates", type=float, nargs="+", default=list(range(10)))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--perceptual", action="store_true", help="also LPIPS and DISTS")
    ap.add_argument("--metric-weights", help="the published LPIPS/DISTS weights (default as resulic eval)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pair = ("lpips", "dists") if args.perceptual else ()
    folder = weights_dir(args.metric_weights)
    for metric in pair:
        if (why := unavailable(metric, folder)) is not None:
            raise SystemExit(f"{metric}: {why}")
    files = list_images(Path(args.folder))[: args.images]
    p = load_preset(DEFAULT_PRESET)
    gain = 1.0 if p.cdm is not None and p.cdm.config.detail_sigma is not None else "search"  # the plain decode ignores it
    rows: dict[tuple[int, float], list[list[float]]] = {}
    for f in files:
        img = load_image(f)
        keys = [(scale, rate) for scale in args.scales for rate in args.rates]
        streams = [codec.encode(img, rate=rate, scale=scale, detail_gain=gain) for scale, rate in keys]
        outs = [codec.decode(stream, decoder="plain") for stream in streams]
        # one call per metric and photo: the reference's features (seconds for DISTS) are computed once
        perceptual = [pair_metrics(m, str(folder), img, outs) for m in pair]
        for i, (key, stream, out) in enumerate(zip(keys, streams, outs)):
            row = [8 * len(stream) / (img.width * img.height), psnr(img, out), ms_ssim(img, out)]
            rows.setdefault(key, []).append(row + [values[i] for values in perceptual])
    print(f"{args.folder}: {len(files)} photos, plain decoder, {torch.get_num_threads()} threads")
    print("| scale | rate | bpp | PSNR | MS-SSIM |" + "".join(f" {m.upper()} |" for m in pair))
    print("|---|---|---|---|---|" + "---|" * len(pair))
    for (scale, rate), values in sorted(rows.items()):
        bpp, p, s, *perceptual = np.mean(values, 0)
        print(f"| {scale} | {rate:g} | {bpp:.4f} | {p:.2f} | {s:.3f} |" + "".join(f" {v:.3f} |" for v in perceptual))


if __name__ == "__main__":
    main()
