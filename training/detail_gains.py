"""A release's per-level detail gain table: ``resulic train detail-gains``.

The encoder's search (``codec.cdm.detail.choose_gains``) decodes every fresh stream as a CDM
decoder will: a denoiser pass, the restored latent's decode and the plain decode. On 2 CPU
threads that made a Kodak encode 3.6 times the autoencoder's own encode (4.3 s against 1.2 s),
where the codec's target is 1.5 times. The table is the fast alternative: one head code per rate
level, chosen once on held-out photos, so an encode decodes nothing.

How the table is made:
- For each ``--every``-th level, every photo is encoded through the real encoder and decoded as
  a CDM decoder will. Each gain code's PSNR cost against the plain decode, and its texture ratio
  against the original, are measured exactly as decoded (``gain_curves``).
- The level keeps the code with the most mean texture whose mean cost is within the budget and
  whose mean texture ratio is at most the limit: the search's two limits, on the mean over
  photos rather than per photo. Levels in between are interpolated linearly.
- On the 14 held-out photos that made the release's table, the median of the search's own
  per-photo codes kept the limits less well: its mean texture ratio ran from 0.72 to 1.44
  across levels, the mean rule's from 0.93 to 0.99.

A photo far from the mean gets less than its best gain: the search stays the way to the most
texture within the budget for every image (``--detail-gain search``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from codec.bitstream import Bitstream
from codec.cdm.detail import gain_curves
from codec.encoder import encode_with_symbols
from codec.gain_choice import DETAIL_BUDGET_DB, DETAIL_MAX_CODE, DETAIL_MAX_TEXTURE, cdm_split
from codec.images import load_image, to_tensor
from codec.latent_codec import LEVELS_PER_POINT
from codec.presets import Preset, load_preset
from codec.resample import SCALES
from codec.settings import EncodeSettings
from operators.archive import write_local
from training.data import list_images, training_folder
from training.runtime import positive_int


def measure(preset: Preset, images: list, levels: list[int], max_code: int,
            scale: int = 1) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(images, levels, max_code + 1) PSNR cost (dB) and texture ratio of every gain code, for
    streams coded at 1/``scale`` of the size, as decoded at full size."""
    costs, textures = [], []
    for im in images:
        rows_c, rows_t = [], []
        for level in levels:
            settings = EncodeSettings(rate=level / LEVELS_PER_POINT, detail_gain=1.0, scale=scale)
            (stream, y_hat), = encode_with_symbols([im], settings, preset=preset)
            h = Bitstream.from_bytes(stream).header
            split, plain, output = cdm_split(preset, y_hat[None], h, [h.diffusion_seed], [""])
            c, t = gain_curves(split, to_tensor(im), plain, max_code, output)
            rows_c.append(c[0])
            rows_t.append(t[0])
        costs.append(torch.stack(rows_c))
        textures.append(torch.stack(rows_t))
    return torch.stack(costs), torch.stack(textures)


def table_codes(cost: torch.Tensor, texture: torch.Tensor, budget_db: float, max_texture: float) -> list[int]:
    """Per measured level (``cost``/``texture``: images × levels × codes): the code of most mean
    texture within both limits on the means; with none, the code of least mean cost."""
    mc, mt = cost.mean(0), texture.mean(0)
    ok = (mc <= budget_db) & (mt <= max_texture)
    best = torch.where(ok, mt, torch.full_like(mt, -1.0)).argmax(1)
    return [int(b) if ok[i].any() else int(mc[i].argmin()) for i, b in enumerate(best)]


def interpolate(levels: list[int], codes: list[int], num_levels: int) -> list[int]:
    return [int(round(v)) for v in np.interp(np.arange(num_levels), levels, codes)]


def to_json(table: dict) -> str:
    """One key a line (a table's lists stay on one line each, so a diff shows what moved)."""
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in table.items()) + "\n}\n"


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the table to write (JSON), named by a release's detail_gains; the scales of an "
                   "existing table of the same model that this run does not measure are kept")
    p.add_argument("--data", required=True, help="a folder of held-out photos (never Kodak, never the training photos)")
    p.add_argument("--images", type=positive_int, default=14)
    p.add_argument("--every", type=positive_int, default=8, help="measure every this many levels (and the top one)")
    p.add_argument("--budget-db", type=float, default=DETAIL_BUDGET_DB)
    p.add_argument("--max-texture", type=float, default=DETAIL_MAX_TEXTURE)
    p.add_argument("--scales", type=int, nargs="+", default=list(SCALES), choices=SCALES,
                   help="the coded-size factors to measure (a stream coded smaller has its own codes)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model-id", help="the released model to measure (hex; default: the newest)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = load_preset(model_id=args.model_id)
    if preset.cdm is None or preset.cdm.config.detail_sigma is None:
        p.error("the preset's model has no CDM with detail transfer: it writes no detail gain")
    files = list_images(training_folder(args.data))[: args.images]
    if not files:
        p.error(f"no images in {args.data}")
    n = preset.num_levels
    levels = sorted(set(range(0, n, args.every)) | {n - 1})
    t0 = time.time()
    images = [load_image(f) for f in files]
    codes_by_scale, measured = {}, {}
    for scale in args.scales:
        cost, texture = measure(preset, images, levels, DETAIL_MAX_CODE, scale)
        codes = table_codes(cost, texture, args.budget_db, args.max_texture)
        pick = lambda t: [round(float(t[:, i, c].mean()), 3) for i, c in enumerate(codes)]  # noqa: E731
        codes_by_scale[str(scale)] = interpolate(levels, codes, n)
        measured[str(scale)] = {
            "levels": levels, "codes": codes, "mean_cost_db": pick(cost), "mean_texture": pick(texture),
            "over_budget": [int((cost[:, i, c] > args.budget_db).sum()) for i, c in enumerate(codes)]}  # fmt: skip
        print(json.dumps({"scale": scale, **measured[str(scale)]}), flush=True)
    out = Path(args.out)
    if out.is_file():  # another run's scales of the same model stay (measure them one at a time if you like)
        old = json.loads(out.read_text())
        if old.get("model_id") == preset.model_id.hex() and isinstance(old.get("codes"), dict):
            codes_by_scale = {**old["codes"], **codes_by_scale}
            measured = {**old["measured"], **measured}
    table = {
        "model_id": preset.model_id.hex(), "codes": dict(sorted(codes_by_scale.items())), "measured": dict(sorted(measured.items())),
        "data": args.data, "images": [f.name for f in files], "budget_db": args.budget_db,
        "max_texture": args.max_texture, "seconds": round(time.time() - t0),
    }  # fmt: skip
    write_local(out, to_json(table).encode())
