"""CDM against the plain decoder on Kodak: quality, texture and decode time at each rate point.

    python benchmarks/kodak_cdm.py [--images 24] [--rates 0 2 4 6 8 9] [--steps 4] [--cdm DIR] [--crops docs]
                                   [--detail-gain search|table|G]

Each image is encoded once per rate; the same stream is decoded plainly and with CDM. Reported
per rate (means over the images): bpp, PSNR, MS-SSIM and the high-frequency energy ratio to the
original (mean squared Laplacian of the luma; 1 = the original's texture) for both decoders, and
the time of the autoencoder's own decode against CDM's whole decode (denoiser + autoencoder), and
the encode time beside the autoencoder's own encode (with --detail-gain search the encoder
decodes each image once more to choose its detail gain).
Target: CDM's ratio within 0.8-1.2 where the plain decode falls short, at <= 1 dB PSNR cost and
<= 2x the autoencoder's decode time. With --crops, side-by-side crops (original | plain | CDM)
of two images at the lowest rate are written there as PNG.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import codec  # noqa: E402
from codec.api import parse  # noqa: E402
from codec.images import pad, to_tensor  # noqa: E402
from codec.presets import CDM_ENV, load_preset  # noqa: E402
from codec.settings import parse_detail_gain  # noqa: E402
from evaluation.metrics import hf_energy_ratio, ms_ssim, psnr  # noqa: E402

KODAK = ROOT.parent / "shared" / "datasets" / "kodak"
CROP_IMAGES = ("kodim05.png", "kodim23.png")


def ae_decode_seconds(stream: bytes) -> float:
    s, p = parse(stream)
    h = s.header
    latent = p.latent_codec.decompress([s.latent], [s.hyper_latent], p.z_shape(h.width, h.height), h.rate_level)
    t0 = time.perf_counter()
    with torch.no_grad():
        p.autoencoder.decode(latent)
    return time.perf_counter() - t0


def ae_encode_seconds(img: Image.Image) -> float:
    p = load_preset()
    x = pad(to_tensor(img), p.pad_multiple)
    t0 = time.perf_counter()
    with torch.no_grad():
        p.autoencoder.encode(x)
    return time.perf_counter() - t0


def side_by_side(images: list[Image.Image], box: tuple[int, int, int, int]) -> Image.Image:
    crops = [im.crop(box) for im in images]
    w, h = crops[0].size
    out = Image.new("RGB", (w * len(crops) + 8 * (len(crops) - 1), h), "white")
    for i, c in enumerate(crops):
        out.paste(c, (i * (w + 8), 0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--rates", type=float, nargs="+", default=[0, 2, 4, 6, 8, 9])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cdm", help="CDM weights directory (default: the preset's)")
    ap.add_argument("--crops", help="folder for side-by-side crops at the lowest rate")
    ap.add_argument("--detail-gain", type=parse_detail_gain, default="search",
                    help="the encoder's detail gain: search, table or a number")
    args = ap.parse_args()
    if args.cdm:
        os.environ[CDM_ENV] = args.cdm
    p = load_preset()
    if p.cdm is None:
        sys.exit("the preset has no CDM: pass --cdm DIR")
    paths = sorted(KODAK.glob("*.png"))[: args.images]
    print(f"Kodak, {len(paths)} images, CDM {args.cdm or 'of the preset'}, {args.steps} steps, "
          f"detail gain {args.detail_gain}, "
          f"{torch.get_num_threads()} threads")
    print("| rate | bpp | PSNR plain | PSNR CDM | MS-SSIM plain | MS-SSIM CDM | HF ratio plain | HF ratio CDM |"
          " AE decode s | CDM decode s | CDM / AE | AE encode s | encode s | encode / AE |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lowest = min(args.rates)
    for rate in args.rates:
        m = {k: [] for k in ("bpp", "pp", "pc", "sp", "sc", "hp", "hc", "tae", "tcdm", "taee", "tenc")}
        for path in paths:
            img = Image.open(path).convert("RGB")
            t0 = time.perf_counter()
            stream = codec.encode(img, rate=rate, detail_gain=args.detail_gain)
            m["tenc"].append(time.perf_counter() - t0)
            m["taee"].append(ae_encode_seconds(img))
            plain = codec.decode(stream, decoder="plain")
            t0 = time.perf_counter()
            cdm = codec.decode(stream, decoder="cdm", steps=args.steps)
            m["tcdm"].append(time.perf_counter() - t0)
            m["tae"].append(ae_decode_seconds(stream))
            m["bpp"].append(8 * len(stream) / (img.width * img.height))
            m["pp"].append(psnr(img, plain))
            m["pc"].append(psnr(img, cdm))
            m["sp"].append(ms_ssim(img, plain))
            m["sc"].append(ms_ssim(img, cdm))
            m["hp"].append(hf_energy_ratio(img, plain))
            m["hc"].append(hf_energy_ratio(img, cdm))
            if args.crops and rate == lowest and path.name in CROP_IMAGES:
                Path(args.crops).mkdir(parents=True, exist_ok=True)
                box = (img.width // 2 - 128, img.height // 2 - 128, img.width // 2 + 128, img.height // 2 + 128)
                out = Path(args.crops) / f"cdm_{path.stem}_rate{rate:g}.png"
                side_by_side([img, plain, cdm], box).save(out)
        a = {k: float(np.mean(v)) for k, v in m.items()}
        print(f"| {rate:g} | {a['bpp']:.4f} | {a['pp']:.2f} | {a['pc']:.2f} | {a['sp']:.3f} | {a['sc']:.3f} | "
              f"{a['hp']:.2f} | {a['hc']:.2f} | {a['tae']:.2f} | {a['tcdm']:.2f} | {a['tcdm'] / a['tae']:.2f} | "
              f"{a['taee']:.2f} | {a['tenc']:.2f} | {a['tenc'] / a['taee']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
