"""Kodak rate-distortion and speed of a preset beside AVIF; prints tables and the BD-rate.

    python benchmarks/kodak_rd.py [--images 24] [--rates 0 1 2 3 4 5 6 7] [--json out.json]

For every rate point: mean bpp (whole stream), PSNR, MS-SSIM, encode and decode seconds per
image. Encode time = TAEF2 encode + analysis + entropy coding at that rate (each measured);
decode time = the whole ``codec.decode``. AVIF (Pillow, speed 6) runs at full size and on 2x
and 4x Lanczos downscales (upscaled back with Lanczos for the metrics); its envelope is the
best quality reached at each rate by any of the three. BD-rates are computed over 0.01-0.1 bpp.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import codec  # noqa: E402
from codec.encoder import _Analysed, _assemble  # noqa: E402
from codec.images import load_image, pad, to_tensor  # noqa: E402
from codec.presets import load_preset  # noqa: E402
from codec.settings import rate_to_level  # noqa: E402
from evaluation.metrics import bd_rate, envelope, ms_ssim, psnr  # noqa: E402

KODAK = ROOT.parent / "shared" / "datasets" / "kodak"
AVIF_QUALITIES = (0, 5, 10, 20, 30, 40, 50, 60)


def avif_point(img: Image.Image, factor: int, quality: int) -> tuple[float, float, float]:
    small = img if factor == 1 else img.resize((img.width // factor, img.height // factor), Image.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="AVIF", quality=quality, speed=6)
    out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if factor != 1:
        out = out.resize(img.size, Image.LANCZOS)
    return buf.tell() * 8 / (img.width * img.height), psnr(img, out), ms_ssim(img, out)


def in_range(points, lo=0.01, hi=0.1):
    return [p for p in points if lo <= p[0] <= hi]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--rates", type=float, nargs="+", default=[0, 1, 2, 3, 4, 5, 6, 7])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-avif", action="store_true")
    ap.add_argument("--json", help="also write all figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = load_preset()
    files = sorted(KODAK.glob("kodim*.png"))[: args.images]
    ours = {r: [] for r in args.rates}
    avif = {}
    ae_times = []
    for f in files:
        img = load_image(f)
        x = pad(to_tensor(img), p.pad_multiple)
        with torch.no_grad():
            t = time.perf_counter()
            latent = p.autoencoder.encode(x)
            t_ae_enc = time.perf_counter() - t
            t = time.perf_counter()
            p.autoencoder.decode(latent)
            t_ae_dec = time.perf_counter() - t
        ae_times.append((t_ae_enc, t_ae_dec))
        t = time.perf_counter()
        a = _Analysed(img.width, img.height, p.latent_codec.analyse(latent), [""])
        t_analyse = time.perf_counter() - t
        for r in args.rates:
            level = rate_to_level(p, r)
            t = time.perf_counter()
            stream = _assemble(p, a, level, p.latent_codec.code_latent(a.analysed, level)[0])[0]
            t_code = time.perf_counter() - t
            t = time.perf_counter()
            out = codec.decode(stream, preset=p, decoder="plain")  # the codec core; CDM: kodak_cdm.py
            t_dec = time.perf_counter() - t
            ours[r].append((len(stream) * 8 / (img.width * img.height), psnr(img, out), ms_ssim(img, out),
                            t_ae_enc + t_analyse + t_code, t_dec))  # fmt: skip
        if not args.no_avif:
            for factor in (1, 2, 4):
                for q in AVIF_QUALITIES:
                    avif.setdefault((factor, q), []).append(avif_point(img, factor, q))
        print(f"{f.name} done", file=sys.stderr, flush=True)

    ae = np.mean(ae_times, axis=0)
    print(f"\nKodak ({len(files)} images), preset {p.name}, model {p.model_id.hex()}, {args.threads} threads")
    print(f"TAEF2 alone: encode {ae[0]:.2f} s, decode {ae[1]:.2f} s per image\n")
    print(f"{'codec':<12}{'setting':<10}{'bpp':>9}{'PSNR':>8}{'MS-SSIM':>9}{'enc s':>8}{'dec s':>8}")
    rows = {}
    for r, vals in ours.items():
        m = np.mean(vals, axis=0)
        rows[f"resulic rate {r:g}"] = m.tolist()
        print(f"{'resulic':<12}{'rate ' + format(r, 'g'):<10}{m[0]:9.4f}{m[1]:8.2f}{m[2]:9.4f}{m[3]:8.2f}{m[4]:8.2f}")
    avif_means = {}
    for (factor, q), vals in sorted(avif.items()):
        m = np.mean(vals, axis=0)
        avif_means[(factor, q)] = m
        rows[f"avif x{factor} q{q}"] = m.tolist()
        print(f"{'avif 1/' + str(factor):<12}{'q' + str(q):<10}{m[0]:9.4f}{m[1]:8.2f}{m[2]:9.4f}")
    summary = {"rows": rows, "taef2_seconds": ae.tolist(), "images": len(files)}
    if avif_means:
        ours_psnr = [(float(np.mean([v[0] for v in vals])), float(np.mean([v[1] for v in vals]))) for vals in ours.values()]
        ours_ssim = [(float(np.mean([v[0] for v in vals])), float(np.mean([v[2] for v in vals]))) for vals in ours.values()]
        factors = sorted({f for f, _ in avif_means})
        env_psnr = envelope([[(m[0], m[1]) for (f, _), m in avif_means.items() if f == fa] for fa in factors])
        env_ssim = envelope([[(m[0], m[2]) for (f, _), m in avif_means.items() if f == fa] for fa in factors])
        print("\nBD-rate against the AVIF envelope over 0.01-0.1 bpp (negative: fewer bits):")
        for name, test, anchor in (("PSNR", ours_psnr, env_psnr), ("MS-SSIM", ours_ssim, env_ssim)):
            # the envelope is kept one point beyond the range on each side so it spans it
            lo = max([pt for pt in anchor if pt[0] < 0.01], default=None)
            hi = min([pt for pt in anchor if pt[0] > 0.1], default=None)
            anchor_r = [pt for pt in (lo, *in_range(anchor), hi) if pt]
            try:
                value = bd_rate(anchor_r, in_range(test) or test)
                print(f"  {name:<8} {value:+.1f} %")
                summary[f"bd_rate_{name.lower().replace('-', '_')}"] = value
            except ValueError as e:
                print(f"  {name:<8} not computable ({e})")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
