"""Would a perceptual ``--refine`` help the perceptual model? Streams at equal budgets, with and without.

``--refine`` is refused for the perceptual models (``codec/latent_refine.py``): its objective,
rate + λ·MSE, lacks the LPIPS term they were trained with. This measures the objective they
would need, rate + λ(L)·255²·(MSE + w·LPIPS) over the same random windows (LPIPS on the
window's uncut part), for each ``--lpips-weight`` w, at each ``--target-bpp`` budget (where
the refined stream is the one at the highest rate level that fits, see ``refined_within``). The
encoder's own refinement is swapped for this one while the script runs; nothing else changes.

Run it on training photos (never an evaluation set); the figures are in
``codec/weights/perceptual_v2/README.md``:

    python benchmarks/refine_perceptual.py ../shared/datasets/photos-train-v2 --images 4 \\
        --lpips-weight 0.05 0.2 --steps 40
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

import codec
from codec.latent_codec import LEVELS_PER_POINT, LatentCodec
from codec.latent_refine import DEFAULT_LR, descend, masked_mse
from codec.presets import load_preset
from evaluation.metrics import psnr
from evaluation.perceptual import LPIPS
from pipelines.perceptual import pair_metrics, weights_dir
from training.data import list_images
from training.photo_crops import load_photo_image


def perceptual_refine(lpips: LPIPS, weight: float, lr: float):
    """A ``codec.latent_refine.refine_y`` whose distortion is MSE + ``weight``·LPIPS (LPIPS on
    the window's uncut part, the rectangle its mask keeps)."""

    def distortion(decoded: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask[0, 0].bool()
        rows, cols = keep.any(1).nonzero()[:, 0], keep.any(0).nonzero()[:, 0]
        box = (..., slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
        return masked_mse(decoded, target, mask) + weight * lpips(decoded[box].clamp(0, 1), target[box]).mean()

    def refine_y(lc: LatentCodec, decoder, y0: torch.Tensor, image: torch.Tensor, size: tuple[int, int], level: int,
                 steps: int) -> torch.Tensor:  # fmt: skip
        return descend(lc, decoder, y0, image, size, level, steps, distortion, lr)

    return refine_y


def refined_within(img: Image.Image, base: bytes, target: float, preset, refine, steps: int) -> bytes:
    """The refined stream at the highest rate level, at or below ``base``'s (the unrefined
    stream within ``target``), that still fits ``target``; ``base`` where none of three does.
    (The encoder's own search only looks upwards, as MSE refinement saves bits; a perceptual
    one may spend more, so this also steps down.)"""
    info = codec.info(base)
    pixels = info["width"] * info["height"]
    with mock.patch("codec.encoder.refine_y", refine):
        for level in range(info["rate_level"], max(info["rate_level"] - 3, -1), -1):
            stream = codec.encode(img, rate=level / LEVELS_PER_POINT, scale=info["scale"], preset=preset,
                                  refine_steps=steps)  # fmt: skip
            if 8 * len(stream) / pixels <= target:
                return stream
    return base


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="photos (training photos: never an evaluation set)")
    ap.add_argument("--images", type=int, default=4, help="the last N photos of the folder")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.012, 0.03, 0.08], help="--target-bpp budgets")
    ap.add_argument("--lpips-weight", type=float, nargs="+", default=[0.01, 0.05, 0.2])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=DEFAULT_LR)
    ap.add_argument("--max-side", type=int, default=768, help="photos are downscaled to this long side (Kodak's)")
    ap.add_argument("--metric-weights", default=None, help="LPIPS and DISTS weights (default: the fetched cache)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = load_preset("taef2")
    metrics_dir = str(weights_dir(args.metric_weights))
    lpips = LPIPS.from_dir(metrics_dir).eval().requires_grad_(False)
    arms = [("none", None)] + [(f"w={w:g}", perceptual_refine(lpips, w, args.lr)) for w in args.lpips_weight]
    rows: dict[tuple[str, float], list[tuple[float, float, float, float, float]]] = {}  # (arm, target)
    for path in list_images(Path(args.folder))[-args.images :]:
        img = load_photo_image(path, args.max_side)
        for target in args.targets:
            t0 = time.perf_counter()
            base = codec.encode(img, target_bpp=target, preset=preset, scale=1)  # refined at full size
            outs = [(base, codec.decode(base), time.perf_counter() - t0)]
            for _, refine in arms[1:]:
                t0 = time.perf_counter()
                stream = refined_within(img, base, target, preset, refine, args.steps)
                outs.append((stream, codec.decode(stream), time.perf_counter() - t0))
            lp = pair_metrics("lpips", metrics_dir, img, [o[1] for o in outs])
            ds = pair_metrics("dists", metrics_dir, img, [o[1] for o in outs])
            for i, ((name, _), (stream, out, seconds)) in enumerate(zip(arms, outs)):
                bpp = 8 * len(stream) / (img.width * img.height)
                rows.setdefault((name, target), []).append((bpp, psnr(img, out), lp[i], ds[i], seconds))
        print(f"{path.name} done", flush=True)
    print("\n| refinement | target bpp | bpp | PSNR | LPIPS | DISTS | encode s |\n|---|---|---|---|---|---|---|")
    for target in args.targets:
        for name, _ in arms:
            m = np.mean(np.array(rows[name, target]), axis=0)
            print(f"| {name} | {target:g} | {m[0]:.4f} | {m[1]:.2f} | {m[2]:.3f} | {m[3]:.3f} | {m[4]:.1f} |")
    print(f"\n{args.images} photos of {args.folder} at a long side of {args.max_side}; "
          f"{args.steps} steps, lr {args.lr:g}")


if __name__ == "__main__":
    main()
