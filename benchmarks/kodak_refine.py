"""What encoder-side refinement (codec.latent_refine) buys per rate level, on Kodak.

For each image and level: the unrefined and the refined stream's bpp and PSNR (plain decoder),
and the PSNR that the unrefined codec reaches at the refined stream's size (log-bpp
interpolation along its own curve, levels 0, 4, ..., 72): the gain at equal size.

    python benchmarks/kodak_refine.py --images kodim05 kodim14 kodim23 --levels 0 16 32 48 64 --steps 40
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from codec.fixed_point import from_fixed
from codec.images import load_image, pad, to_tensor
from codec.latent_refine import refine_y
from codec.presets import load_preset

KODAK = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "kodak"


def coded(p, y: torch.Tensor, level: int, x: torch.Tensor, size: tuple[int, int]) -> tuple[float, float]:
    """(bpp, PSNR) of the stream that codes ``y`` at ``level`` (latent and hyper-latent strings)."""
    w, h = size
    a = p.latent_codec.analyse_y(y)
    strings, y_hat = p.latent_codec.code_latent(a, level)
    with torch.no_grad():
        out = p.plain(level).decode(p.latent_codec.g_s(from_fixed(y_hat))).clamp(0, 1)[:, :, :h, :w]
    mse = float(((out * 255).round() / 255 - x[:, :, :h, :w]).pow(2).mean())
    return 8 * (len(strings[0]) + len(a["z_strings"][0])) / (w * h), 10 * math.log10(1 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", nargs="+", default=["kodim05", "kodim14", "kodim23"])
    ap.add_argument("--levels", type=int, nargs="+", default=[0, 16, 32, 48, 64])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = load_preset("taef2")
    print("| image | level | bpp | PSNR | refined bpp | refined PSNR | unrefined PSNR at that bpp | gain dB | refine s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.images:
        im = load_image(KODAK / f"{name}.png")
        x = pad(to_tensor(im), p.pad_multiple)
        with torch.no_grad():
            latent = p.autoencoder.encode(x)
            y0 = p.latent_codec.g_a(latent)
        curve = [coded(p, y0, lv, x, im.size) for lv in range(0, p.num_levels, 4)]
        log_bpp, curve_psnr = np.log([c[0] for c in curve]), np.array([c[1] for c in curve])
        for level in args.levels:
            base = coded(p, y0, level, x, im.size)
            t = time.perf_counter()
            y = refine_y(p.latent_codec, p.plain(level), y0, x, im.size, level, args.steps)
            secs = time.perf_counter() - t
            bpp, psnr = coded(p, y, level, x, im.size)
            at = float(np.interp(math.log(bpp), log_bpp, curve_psnr))  # clamps below level 0's size
            print(f"| {name} | {level} | {base[0]:.4f} | {base[1]:.2f} | {bpp:.4f} | {psnr:.2f} | {at:.2f} | {psnr - at:+.2f} | {secs:.0f} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
