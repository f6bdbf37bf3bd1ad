"""Below the lowest trained rate: full size at extrapolated gains, or a smaller image?

The perceptual model's lowest rate point spends about 0.011 bpp on Kodak-sized photos; below
that the encoder codes at 1/2 or 1/4 of the size. This measures, on held-out photos (never an
evaluation set), whether full size at rates below 0 would do better at equal bpp. A rate r < 0
extrapolates each channel's log gain linearly from points 0 and 1 (what
``LatentCodec._interpolate`` does for r < 0), with no training: a lower bound on what trained
lower-λ points would give. Its bpp is the entropy model's estimate (rounded y and z), plus the
stream's overhead measured on the real rate-0 stream of the same image; the smaller sizes are
real streams, decoded as a decoder does.

    python benchmarks/low_rate_points.py ../shared/datasets/photos-train-v2 --images 8
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

import codec as rc
from codec.images import pad, to_image, to_tensor
from codec.presets import load_preset
from evaluation.metrics import psnr
from pipelines.perceptual import pair_metrics, weights_dir
from training.data import list_images
from training.photo_crops import load_photo_image


@torch.no_grad()
def extrapolated(p, img: Image.Image, rates: list[float]) -> list[tuple[float, Image.Image]]:
    """(estimated bpp, restoration) of ``img`` at full size for each rate (r < 0 extrapolates)."""
    w, h = img.size
    x = pad(to_tensor(img), p.pad_multiple)
    lc = p.latent_codec
    y = lc.g_a(p.autoencoder.encode(x))

    def coded(r: float) -> tuple[float, torch.Tensor]:
        res = lc.forward_y(y, torch.tensor([r]), rounded_z=True)
        return sum(-torch.log2(v).sum().item() for v in res["likelihoods"].values()), res["latent_hat"]

    overhead = 8 * len(rc.encode(img, rate=0, preset=p)) - coded(0.0)[0]  # the real stream's, beyond the estimate
    out = []
    for r in rates:
        bits, latent_hat = coded(r)
        restored = p.plain(0).decode(latent_hat)[:, :, :h, :w].clamp(0, 1)
        out.append(((bits + overhead) / (w * h), to_image(restored)))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="held-out photos (never an evaluation set)")
    ap.add_argument("--images", type=int, default=8, help="the last N photos of the folder")
    ap.add_argument("--max-side", type=int, default=768)
    ap.add_argument("--below", type=float, nargs="+", default=[-0.5, -1.0, -1.5, -2.0, -3.0],
                    help="full-size rates below 0 (extrapolated gains)")  # fmt: skip
    ap.add_argument("--full-rates", type=float, nargs="+", default=[0, 1, 2, 3, 4],
                    help="rates of the real streams at full size")  # fmt: skip
    ap.add_argument("--scaled-rates", type=float, nargs="+", default=[0, 2, 4, 6, 8],
                    help="rates of the real streams at 1/2 and 1/4 of the size")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--metric-weights", help="LPIPS and DISTS weights (default: as resulic eval finds them)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    p = load_preset()
    wdir = str(weights_dir(args.metric_weights))
    rows: dict[str, list[tuple[float, float, float, float]]] = {}
    for path in list_images(args.folder)[-args.images :]:
        img = load_photo_image(path, args.max_side)
        cands = [(f"full r={r:g}", b, out) for r, (b, out) in zip(args.below, extrapolated(p, img, args.below))]
        for scale, rates in ((1, args.full_rates), (2, args.scaled_rates), (4, args.scaled_rates)):
            for r in rates:
                s = rc.encode(img, rate=r, scale=scale, preset=p)
                name = f"{'full' if scale == 1 else f'1/{scale}'} r={r:g}"
                cands.append((name, 8 * len(s) / (img.width * img.height), rc.decode(s, preset=p)))
        outs = [c[2] for c in cands]
        lp, di = (pair_metrics(m, wdir, img, outs) for m in ("lpips", "dists"))
        for (name, bpp, out), a, b in zip(cands, lp, di):
            rows.setdefault(name, []).append((bpp, psnr(img, out), a, b))
        print(f"{path.name}: done", flush=True)
    print(f"\n{args.images} photos of {args.folder}, long side {args.max_side} (means)\n")
    print("| coding | bpp | PSNR | LPIPS | DISTS |\n|---|---|---|---|---|")
    for name, vals in sorted(rows.items(), key=lambda kv: np.mean([v[0] for v in kv[1]])):
        m = np.mean(vals, axis=0)
        print(f"| {name} | {m[0]:.4f} | {m[1]:.2f} | {m[2]:.3f} | {m[3]:.3f} |")


if __name__ == "__main__":
    main()
