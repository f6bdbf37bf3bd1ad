"""Side-by-side crops at equal size: original | AVIF | resulic, per image and target bpp.

For each target, resulic codes the image with ``--target-bpp`` (default settings otherwise)
and AVIF gets the best of its qualities and downscales (1, 2, 4) whose file is no larger than
resulic's stream (when none is, its smallest file, which is larger: the table says so). Each PNG holds one crop of the three, labelled
with bpp, PSNR, LPIPS and DISTS of the whole image; the script prints the table.

    python benchmarks/crops.py --out docs/crops --images kodim15 kodim23 kodim05 --bpp 0.005 0.012 0.03

A target below the model's lowest rate gives the lowest rate's stream (the table says so).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import codec
from evaluation.baselines import QUALITIES, SCALES, Classical
from evaluation.metrics import psnr
from evaluation.perceptual import DISTS, LPIPS, default_weights_dir

KODAK = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak"
CROP = 320  # crop side in pixels


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def avif_within(img: Image.Image, nbytes: int) -> tuple[bytes, Image.Image, str]:
    """AVIF's highest-PSNR setting whose file fits in ``nbytes``; when none fits, its smallest
    file (labelled as larger, so the comparison favours AVIF)."""
    best, smallest = None, None
    for scale in SCALES:
        c = Classical("avif", scale)
        for q in QUALITIES["avif"]:
            data = c.encode(img, q)
            label = f"q={q} at 1/{scale}"
            if smallest is None or len(data) < len(smallest[0]):
                smallest = (data, label + ", the smallest AVIF, larger")
            if len(data) > nbytes:
                continue
            out = c.decode(data, img.size)
            score = psnr(img, out)
            if best is None or score > best[0]:
                best = (score, data, out, label)
    if best is not None:
        return best[1:]
    data, label = smallest
    return data, Classical("avif", int(label.split("1/")[1].split(",")[0])).decode(data, img.size), label


def panel(crops: list[Image.Image], labels: list[str]) -> Image.Image:
    w, h = crops[0].size
    out = Image.new("RGB", (len(crops) * w, h + 18), "white")
    draw = ImageDraw.Draw(out)
    for i, (c, text) in enumerate(zip(crops, labels)):
        out.paste(c, (i * w, 18))
        draw.text((i * w + 4, 3), text, fill="black")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/crops")
    p.add_argument("--images", nargs="+", default=["kodim15", "kodim23", "kodim05"])
    p.add_argument("--bpp", type=float, nargs="+", default=[0.005, 0.012, 0.03])
    p.add_argument("--dataset", default=str(KODAK))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    lpips, dists = LPIPS.from_dir(default_weights_dir()), DISTS.from_dir(default_weights_dir())

    def scores(ref: Image.Image, img: Image.Image, nbytes: int) -> str:
        with torch.no_grad():
            x, y = to_tensor(ref), to_tensor(img)
            lp, ds = float(lpips(y, x)), float(dists(y, x))
        bpp = 8 * nbytes / (ref.width * ref.height)
        return f"{bpp:.4f} bpp {psnr(ref, img):.2f} dB LPIPS {lp:.3f} DISTS {ds:.3f}"

    print("| image | target bpp | resulic | AVIF (no larger unless marked) | file |")
    print("|---|---|---|---|---|")
    for name in args.images:
        ref = Image.open(Path(args.dataset) / f"{name}.png").convert("RGB")
        box = ((ref.width - CROP) // 2, (ref.height - CROP) // 2, (ref.width + CROP) // 2, (ref.height + CROP) // 2)
        for target in args.bpp:
            stream = codec.encode(ref, target_bpp=target)
            ours = codec.decode(stream)
            avif = avif_within(ref, len(stream))
            ours_s = scores(ref, ours, len(stream))
            avif_s = f"{avif[2]}: {scores(ref, avif[1], len(avif[0]))}"
            file = out_dir / f"{name}_{target:g}bpp.png"
            labels = ["original", f"AVIF {8 * len(avif[0]) / (ref.width * ref.height):.4f} bpp",
                      f"resulic {8 * len(stream) / (ref.width * ref.height):.4f} bpp"]  # fmt: skip
            panel([ref.crop(box), avif[1].crop(box), ours.crop(box)], labels).save(file)
            print(f"| {name} | {target:g} | {ours_s} | {avif_s} | `{file}` |", flush=True)


if __name__ == "__main__":
    main()
