"""How much of the CDM restoration each rate keeps: ``resulic train cdm-calibrate``.

Texture a decoder invents is not the original's texture. Wherever it is not exactly where the
original's was, its energy adds to the error. Measured on Kodak with the plain decoder
(kodim05 and kodim23), adding independent texture with the spectrum that the plain decode lacks
would cost:
- at rate 0, 0.04-0.64 dB, because the error there is large anyway;
- at rate 8, 0.45-1.67 dB, because the error there is small.
So a fixed amount of restoration that is cheap at low rates is too dear at high ones.

The decoder keeps ẑ + s·(restored − ẑ), with s chosen per rate level. This is the same fidelity
against realism trade that the rate → N_r table makes.

How s is calibrated:
- It uses crops of the photos given with `--data` (the training photos by default), never Kodak.
- For every ``--every``-th level, the trainer's exact codec path gives ẑ. The CDM decodes it
  with per-crop seeds. Each blend s on a grid is decoded as a CDM decoder would (with the
  config's detail transfer when it has one).
- The PSNR cost of each s is the plain decode's mean PSNR minus its own.
- The level keeps the largest s whose cost is within ``--budget-db`` and whose texture ratio
  is at most ``--max-texture``, both interpolated linearly between grid points. Levels in
  between are interpolated linearly too.
- s stays within [0, 1]: the blend runs from the plain decode to the full restoration. A grid
  up to 3 was tried, to extrapolate the restoration where it was cheap on the training crops.
  At rate 0 it chose s = 1.48. On Kodak that over-sharpened: texture ratio 2.10 at a cost of
  1.66 dB.
- The result goes into the CDM's ``config.json``. The config is part of the model id, so this
  makes a new model. The measurements go to ``calibration.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from codec.cdm.detail import DetailSplit, plain_low, restored_detail
from codec.cdm.model import CDMDenoiser
from codec.cdm.process import n_r_for_level
from codec.cdm.sampler import cdm_decode_latent
from codec.presets import load_preset
from codec.texture import hf_energy_tensor
from operators.archive import write_local
from training.cdm import decoded_latent
from training.data import CropSampler, cache_from_specs, release_of
from training.runtime import positive_int

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
BORDER = 8  # pixels of each crop left out of the measures (the decoder sees no context there)


def largest_within(grid: tuple[float, ...], curves: list[tuple[list[float], float]]) -> float:
    """The largest s up to which every piecewise-linear curve stays at or below its limit
    (the first crossing counts: s never jumps past a region that breaks a limit)."""
    fine = np.linspace(grid[0], grid[-1], 1 + 200 * round(grid[-1] - grid[0]))
    ok = np.ones_like(fine, dtype=bool)
    for values, limit in curves:
        ok &= np.interp(fine, grid, values) <= limit + 1e-12
    bad = np.flatnonzero(~ok)
    return float(fine[-1] if len(bad) == 0 else fine[max(bad[0] - 1, 0)])


@torch.no_grad()
def measure_level(preset, model: CDMDenoiser, z0: torch.Tensor, img: torch.Tensor, level: int,
                  steps: int = 4) -> dict:  # fmt: skip
    """Mean PSNR and the texture ratio of every blend on GRID at one level."""
    z_hat = decoded_latent(preset, z0, level)
    restored = cdm_decode_latent(model, z_hat, level, n_r_for_level(level, preset.num_levels),
                                 list(range(z0.shape[0])), steps)  # fmt: skip
    b = BORDER
    tgt = img[:, :, b:-b, b:-b]
    def mean_psnr(dec: torch.Tensor) -> float:
        mse = (dec - tgt).pow(2).mean((1, 2, 3)).clamp_min(1e-10)
        return float((-10 * mse.log10()).mean())

    psnr, texture = [], []
    ae, sigma = preset.autoencoder, model.config.detail_sigma
    plain_ae = preset.plain(level)
    # the plain path once: its decode, and every blend's low frequencies
    low, plain_x = (None, plain_ae.decode(z_hat)) if sigma is None else plain_low(plain_ae, z_hat, sigma, with_plain=True)
    plain = mean_psnr(plain_x[:, :, b:-b, b:-b])
    for s in GRID:
        blended = z_hat + s * (restored - z_hat)
        whole = ae.decode(blended) if sigma is None else DetailSplit(low, restored_detail(ae, blended, sigma)).compose()
        dec = whole[:, :, b:-b, b:-b]
        psnr.append(mean_psnr(dec))
        texture.append(float(hf_energy_tensor(dec).sum() / hf_energy_tensor(tgt).sum()))
    return {"level": level, "plain_psnr": plain, "psnr": psnr, "texture_ratio": texture}


def calibrate(model: CDMDenoiser, preset, z0: torch.Tensor, img: torch.Tensor, budget_db: float,
              max_texture: float, every: int, steps: int = 4) -> tuple[list[float], list[dict]]:  # fmt: skip
    model.config.blend = []  # measure the full restoration
    levels = sorted(set(range(0, preset.num_levels, every)) | {preset.num_levels - 1})
    rows = []
    for level in levels:
        r = measure_level(preset, model, z0, img, level, steps)
        r["cost_db"] = [r["plain_psnr"] - p for p in r["psnr"]]
        r["blend"] = largest_within(GRID, [(r["cost_db"], budget_db), (r["texture_ratio"], max_texture)])
        rows.append(r)
        print(json.dumps({k: (np.round(v, 3).tolist() if isinstance(v, list) else v) for k, v in r.items()}), flush=True)
    blend = np.interp(np.arange(preset.num_levels), levels, [r["blend"] for r in rows])
    return [round(float(x), 3) for x in blend], rows


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cdm", help="the CDM weights directory (config.json is rewritten with the blends)")
    p.add_argument("--data", nargs="+", default=["../shared/datasets/photos-train"],
                   help="photo folders, each optionally FOLDER:SCALE,SCALE (never the evaluation set)")  # fmt: skip
    p.add_argument("--cache", default=".cache/latents")
    p.add_argument("--crops", type=positive_int, default=12)
    p.add_argument("--crop", type=int, default=32, help="latent crop side")
    p.add_argument("--budget-db", type=float, default=0.9, help="PSNR the restoration may cost at each level")
    p.add_argument("--max-texture", type=float, default=1.0, help="texture ratio the blend may reach")
    p.add_argument("--every", type=positive_int, default=8, help="calibrate every N-th rate level, interpolate between")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model-id", help="the release to calibrate against (default: the one the weights' metadata "
                                      "names, else the newest)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    # calibrated against the release it was trained for, not whichever is newest
    preset = load_preset("taef2", model_id=release_of(Path(args.cdm) / "model.safetensors", args.model_id))
    model = CDMDenoiser.from_pretrained(args.cdm)
    sampler = CropSampler(cache_from_specs(args.data, Path(args.cache), preset.autoencoder), args.crop, seed=args.seed)
    z0, img = sampler.batch(args.crops)
    blend, rows = calibrate(model, preset, z0, img, args.budget_db, args.max_texture, args.every)
    cfg_path = Path(args.cdm) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["blend"] = blend
    write_local(cfg_path, (json.dumps(cfg, indent=1) + "\n").encode())
    record = {"budget_db": args.budget_db, "max_texture": args.max_texture, "grid": GRID, "crops": args.crops, "seed": args.seed, "data": args.data,
              "levels": rows}  # fmt: skip
    write_local(Path(args.cdm) / "calibration.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote the blends of {len(blend)} levels into {cfg_path}")


if __name__ == "__main__":
    main()
