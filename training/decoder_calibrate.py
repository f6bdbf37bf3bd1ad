"""How far toward a fine-tuned decoder each rate level goes: ``resulic train decoder-calibrate``.

A fine-tune on a few dozen photos (``training.decoder``) generalises at low rates and overfits
at high ones, so the blend is measured on photos it never trained on, through the exact codec,
and written with the weights into a new file (its metadata ``blend``) that a release can name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from codec.presets import load_preset
from operators.archive import write_local
from training.cdm import decoded_latent
from training.data import cache_from_specs, release_of
from training.runtime import positive_int


@torch.no_grad()
def measure_blends(preset, tuned, items: list[dict], levels: list[int], grid: list[float]) -> list[list[float]]:
    """Mean PSNR over ``items`` (cached latent + image crops) of every blend on ``grid``, per level."""
    decoders = [preset.autoencoder.blended(tuned, alpha) for alpha in grid]
    out = []
    for level in levels:
        row = []
        z_hats = [decoded_latent(preset, it["latent"][None], level) for it in items]
        for dec in decoders:
            psnr = [float(-10 * (dec.decode(z) - it["x"]).pow(2).mean().log10()) for z, it in zip(z_hats, items)]
            row.append(sum(psnr) / len(psnr))
        out.append(row)
        print(json.dumps({"level": level, "psnr": [round(v, 3) for v in row]}), flush=True)
    return out


def blend_table(levels: list[int], grid: list[float], psnr: list[list[float]], num_levels: int) -> list[float]:
    """Per level, the blend of the best mean PSNR at the measured levels, linearly in between."""
    best = [grid[int(np.argmax(row))] for row in psnr]
    return [round(float(a), 4) for a in np.interp(np.arange(num_levels), levels, best)]


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("decoder", help="a decoder.safetensors written by `resulic train decoder`")
    p.add_argument("out", help="the calibrated decoder file to write")
    p.add_argument("--data", required=True, help="a folder of held-out photos (never the training photos), FOLDER[:SCALE]")
    p.add_argument("--cache", default=".cache/latents")
    p.add_argument("--images", type=positive_int, default=10)
    p.add_argument("--crop", type=int, nargs=2, default=(48, 64), help="central latent crop, rows and columns")
    p.add_argument("--every", type=positive_int, default=8, help="measure every this many levels (and the top one)")
    p.add_argument("--grid", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--weights-dir", default=None, help="TAEF2 weights directory")
    p.add_argument("--model-id", help="the release to calibrate against (default: the one the weights' metadata "
                                      "names, else the newest)")
    args = p.parse_args(argv)
    if any(c % 16 for c in args.crop):
        p.error("--crop sides must be multiples of 16 (the latent codec's hyperprior stride)")
    torch.set_num_threads(args.threads)
    preset = load_preset("taef2", weights_dir=args.weights_dir, model_id=release_of(args.decoder, args.model_id))
    tuned = preset.autoencoder.with_decoder(args.decoder)
    files = cache_from_specs([args.data], Path(args.cache), preset.autoencoder)
    items = []
    for f in files[: args.images]:
        it = load_file(str(f))
        (h, w), (ch, cw) = it["latent"].shape[1:], args.crop
        if h < ch or w < cw:
            continue
        i, j = (h - ch) // 2, (w - cw) // 2
        x = it["image"][8 * i : 8 * (i + ch), 8 * j : 8 * (j + cw)].permute(2, 0, 1)[None].float() / 255
        items.append({"latent": it["latent"][:, i : i + ch, j : j + cw], "x": x})
    if not items:
        p.error(f"no cached photo of {args.data} is as large as the crop")
    n = preset.num_levels
    levels = sorted(set(range(0, n, args.every)) | {n - 1})
    psnr = measure_blends(preset, tuned, items, levels, args.grid)
    table = blend_table(levels, args.grid, psnr, n)
    with safe_open(args.decoder, "pt") as f:
        meta = dict(f.metadata() or {})
    meta.update(blend=json.dumps(table), calibration=json.dumps(
        {"data": args.data, "images": len(items), "crop": list(args.crop), "levels": levels, "grid": args.grid,
         "psnr": [[round(v, 3) for v in row] for row in psnr]}))  # fmt: skip
    write_local(args.out, save(load_file(args.decoder), metadata=meta))
    print(json.dumps({"blend": table}))


if __name__ == "__main__":
    main()
