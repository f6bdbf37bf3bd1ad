"""The decoded latent's fixed grid: how strong it is per rate, and what removing it does.

The perceptual models' restorations carry a faint grid of small rings over smooth regions at
the lowest rates (``codec/weights/perceptual_v2/README.md``, known faults). The latent codec's
synthesis transform ends in two ×2 pixel shuffles, so a pattern that repeats every 4 latent
pixels (32 image pixels) with a fixed phase is its signature. This measures it as the *grid
share*: the energy of the part of a map that repeats with that period (per channel, the mean
over all positions of each of the period² phases), over the map's energy (its channel means
removed). A photo's own latent has next to none: about period² / positions, the chance level.

Per rate it prints the grid share of ẑ (the decoded latent), of the photo's own latent z and of
the restoration at the image's period. ``--notch`` also decodes each stream with ẑ's grid
subtracted and prints PSNR, LPIPS and DISTS beside the plain decode's: whether the grid can be
removed after the fact, without training (2026-12-07 on held-out photos: no, both metrics
worsen; ``benchmarks/results/joint_adv_cpu_v2.txt``). ``--model`` measures a
``resulic train perceptual-codec`` output instead of the release, so a fine-tune that is meant
to remove the grid (the adversarial term) can show it did.

    python benchmarks/zhat_grid.py HELD_OUT_FOLDER --images 6 --rates 0 3 [--model RUN] [--notch]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.decoder_compare import with_model
from codec.autoencoder import SCALE_FACTOR
from codec.bitstream import Bitstream
from codec.encoder import encode_with_symbols
from codec.fixed_point import from_fixed
from codec.images import pad, to_image, to_tensor
from codec.presets import load_preset
from codec.settings import EncodeSettings
from evaluation.metrics import psnr
from pipelines.perceptual import pair_metrics, weights_dir
from training.data import list_images
from training.photo_crops import load_photo_image

PERIOD = 4  # latent pixels: the synthesis transform's two ×2 pixel shuffles


def grid(t: torch.Tensor, period: int) -> torch.Tensor:
    """The part of ``t`` (B, C, H, W) that repeats every ``period`` pixels with a fixed phase:
    per channel, each phase's mean over the whole map (the channel's mean removed), tiled."""
    b, c, h, w = t.shape
    hp, wp = h // period * period, w // period * period
    phases = t[..., :hp, :wp].reshape(b, c, hp // period, period, wp // period, period).mean((2, 4))
    phases = phases - phases.mean((2, 3), keepdim=True)
    return phases.repeat(1, 1, -(-h // period), -(-w // period))[..., :h, :w]


def grid_share(t: torch.Tensor, period: int) -> float:
    """The energy of ``t``'s grid over ``t``'s energy, its channel means removed."""
    centred = t - t.mean((2, 3), keepdim=True)
    return (grid(t, period).pow(2).mean() / centred.pow(2).mean()).item()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="photos (held-out training photos to choose a model by: never tune on Kodak)")
    ap.add_argument("--images", type=int, default=6, help="the first N photos")
    ap.add_argument("--rates", type=float, nargs="+", default=[0, 3, 6, 9])
    ap.add_argument("--model", help="a perceptual-codec run's folder (default: the release)")
    ap.add_argument("--notch", action="store_true", help="also decode with ẑ's grid subtracted and compare")
    ap.add_argument("--max-side", type=int, default=768, help="photos are downscaled to this long side (Kodak's)")
    ap.add_argument("--metric-weights", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    p = load_preset("taef2")
    p = with_model(p, args.model) if args.model else p
    metrics_dir = str(weights_dir(args.metric_weights)) if args.notch else None
    shares: dict[float, list[tuple[float, float, float, float, float]]] = {}
    scores: dict[tuple[str, float], list[tuple[float, float, float]]] = {}
    for path in list_images(Path(args.folder))[: args.images]:
        img = load_photo_image(path, args.max_side)
        with torch.no_grad():  # the photo's own latent, of the padded image the encoder analyses
            z = p.autoencoder.encode(pad(to_tensor(img), p.pad_multiple))
        for rate in args.rates:
            stream, y_hat = encode_with_symbols([img], EncodeSettings(rate=rate), preset=p)[0]
            level = Bitstream.from_bytes(stream).header.rate_level
            with torch.no_grad():
                z_hat = p.latent_codec.g_s(from_fixed(y_hat[None]))
                latents = {"plain": z_hat} | ({"notch": z_hat - grid(z_hat, PERIOD)} if args.notch else {})
                outs = {name: p.plain(level).decode(latent)[..., : img.height, : img.width].clamp(0, 1)
                        for name, latent in latents.items()}  # fmt: skip
            bpp = 8 * len(stream) / (img.width * img.height)
            notched = grid_share(latents["notch"], PERIOD) if args.notch else float("nan")
            shares.setdefault(rate, []).append((bpp, grid_share(z_hat, PERIOD), grid_share(z, PERIOD), notched,
                                                grid_share(outs["plain"], PERIOD * SCALE_FACTOR)))  # fmt: skip
            if args.notch:
                images = [to_image(o) for o in outs.values()]
                lp, ds = (pair_metrics(m, metrics_dir, img, images) for m in ("lpips", "dists"))
                for i, (name, out) in enumerate(zip(outs, images)):
                    scores.setdefault((name, rate), []).append((psnr(img, out), lp[i], ds[i]))
        print(f"{path.name} done", flush=True)
    n = len(next(iter(shares.values())))
    print(f"\n{n} photos of {args.folder}; model {args.model or p.model_id.hex()}; grid period {PERIOD} latent pixels")
    print("| rate | bpp | grid share of ẑ | of the photo's latent | of ẑ after the notch | of the restoration |")
    print("|---|---|---|---|---|---|")
    for rate, rows in shares.items():
        m = np.mean(np.array(rows), axis=0)
        after_notch = f"{m[3]:.4f}" if args.notch else "-"
        print(f"| {rate:g} | {m[0]:.4f} | {m[1]:.4f} | {m[2]:.4f} | {after_notch} | {m[4]:.4f} |")
    if args.notch:
        print("\n| decode | rate | PSNR | LPIPS | DISTS |\n|---|---|---|---|---|")
        for rate in args.rates:
            for name in ("plain", "notch"):
                m = np.mean(np.array(scores[name, rate]), axis=0)
                print(f"| {name} | {rate:g} | {m[0]:.2f} | {m[1]:.3f} | {m[2]:.3f} |")


if __name__ == "__main__":
    main()
