"""Side-by-side crops at equal size: original | AVIF | resulic, per image and target bpp.

For each target, resulic codes the image with ``--target-bpp`` and ``--scale auto`` (a smaller
image only where full size cannot get within the target; default settings otherwise) and AVIF
gets the best of its qualities and downscales (1, 2, 4) whose file is no larger than resulic's
stream (when none is, its smallest file, which is larger: the table says so). Each PNG holds
one crop of the three, labelled with bpp, PSNR, LPIPS and DISTS of the whole image; the script
prints the table.

    python benchmarks/crops.py --out docs/crops --images kodim15 kodim23 kodim05 --bpp 0.005 0.012 0.03

A target below what the smallest coded size reaches gives that size's lowest rate (the table says so).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

import codec
from evaluation.baselines import QUALITIES, SCALES, Classical
from evaluation.metrics import psnr
from evaluation.perceptual import default_weights_dir
from pipelines.perceptual import pair_metrics

KODAK = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak"
CROP = 320  # crop side in pixels


def avif_files(img: Image.Image) -> list[tuple[bytes, int, str]]:
    """Every AVIF setting of the image, once: (file, downscale, label)."""
    return [(Classical("avif", scale).encode(img, q), scale, f"q={q} at 1/{scale}")
            for scale in SCALES for q in QUALITIES["avif"]]  # fmt: skip


def avif_within(img: Image.Image, files: list[tuple[bytes, int, str]], nbytes: int) -> tuple[bytes, Image.Image, str]:
    """Of ``files``, the highest-PSNR one no larger than ``nbytes``; when none fits, the smallest
    (labelled as larger, so the comparison favours AVIF)."""
    fitting = [(data, Classical("avif", scale).decode(data, img.size), label)
               for data, scale, label in files if len(data) <= nbytes]  # fmt: skip
    if fitting:
        return max(fitting, key=lambda f: psnr(img, f[1]))
    data, scale, label = min(files, key=lambda f: len(f[0]))
    return data, Classical("avif", scale).decode(data, img.size), label + ", the smallest AVIF, larger"


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
    weights = str(default_weights_dir())

    def scores(ref: Image.Image, img: Image.Image, nbytes: int) -> str:
        with torch.no_grad():
            (lp,), (ds,) = (pair_metrics(m, weights, ref, [img]) for m in ("lpips", "dists"))
        bpp = 8 * nbytes / (ref.width * ref.height)
        return f"{bpp:.4f} bpp {psnr(ref, img):.2f} dB LPIPS {lp:.3f} DISTS {ds:.3f}"

    print("| image | target bpp | resulic | AVIF (no larger unless marked) | file |")
    print("|---|---|---|---|---|")
    for name in args.images:
        ref = Image.open(Path(args.dataset) / f"{name}.png").convert("RGB")
        files = avif_files(ref)
        box = ((ref.width - CROP) // 2, (ref.height - CROP) // 2, (ref.width + CROP) // 2, (ref.height + CROP) // 2)
        for target in args.bpp:
            stream = codec.encode(ref, target_bpp=target, scale="auto")
            ours = codec.decode(stream)
            avif = avif_within(ref, files, len(stream))
            ours_s = scores(ref, ours, len(stream))
            avif_s = f"{avif[2]}: {scores(ref, avif[1], len(avif[0]))}"
            file = out_dir / f"{name}_{target:g}bpp.png"
            scale = codec.info(stream)["scale"]
            labels = ["original", f"AVIF {8 * len(avif[0]) / (ref.width * ref.height):.4f} bpp",
                      f"resulic {8 * len(stream) / (ref.width * ref.height):.4f} bpp" + (f" (1/{scale} size)" if scale > 1 else "")]  # fmt: skip
            panel([ref.crop(box), avif[1].crop(box), ours.crop(box)], labels).save(file)
            print(f"| {name} | {target:g} | {ours_s} | {avif_s} | `{file}` |", flush=True)


if __name__ == "__main__":
    main()
