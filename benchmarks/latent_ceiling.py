"""The fidelity ceiling of the preset's parts on Kodak: what no amount of bits can pass.

    python benchmarks/latent_ceiling.py [--images 24] [--threads 2]

Per image, PSNR and MS-SSIM of:
- ``taef2``: the autoencoder alone, its latent unquantised;
- ``codec, y unquantised``: the latent codec's transforms with ``y`` left in floats
  (``g_s(g_a(latent))``), decoded by TAEF2's own decoder and by the plain decoder of the top
  rate level: the limit of the codec's rate-distortion curve as its rate grows without bound;
- ``codec, top level``: the top rate level's real stream (bpp given), plain decode;
- ``rank-M projection``: the latent's 4×4 patches (512 values) projected on the M strongest
  principal components of these same images' patches, decoded by TAEF2. The codec's ``y`` has
  256 channels per patch and its transforms start as this projection (M = 256, with the
  training latents' components): an oracle for the linear part of the transform.

The BD-rate of a codec is set by how fast its curve climbs, and a curve cannot climb past its
ceiling: where the ceiling is near the anchor's quality, the codec's slope flattens long before.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import codec  # noqa: E402
from codec.images import load_image, pad, to_image, to_tensor  # noqa: E402
from codec.latent_codec import latent_patches, patch_klt  # noqa: E402
from codec.presets import load_preset  # noqa: E402

V1_MODEL = "3fdbdd9a667f77da"
from evaluation.metrics import ms_ssim, psnr  # noqa: E402

KODAK = ROOT.parent / "shared" / "datasets" / "kodak"


def crop(x: torch.Tensor, img: Image.Image) -> Image.Image:
    """A decode (1, 3, H, W) of the padded image, back at ``img``'s size."""
    return to_image(x.clamp(0, 1)[:, :, : img.height, : img.width])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # the patch-transform model (v1), whose ceiling this measures: the newest release with a CDM
    p = load_preset(model_id=V1_MODEL)
    top = p.num_levels - 1
    rows: dict[str, list[tuple[float, float, float]]] = {}

    def add(name: str, ref, out, bpp: float = float("nan")) -> None:
        rows.setdefault(name, []).append((bpp, psnr(ref, out), ms_ssim(ref, out)))

    images, latents = [], []
    for path in sorted(KODAK.glob("*.png"))[: args.images]:
        img = load_image(path)
        w, h = img.size
        x = pad(to_tensor(img), p.pad_multiple)
        with torch.no_grad():
            latent = p.autoencoder.encode(x)
            add("taef2", img, crop(p.autoencoder.decode(latent), img))
            z_inf = p.latent_codec.g_s(p.latent_codec.g_a(latent))
            add("codec, y unquantised, TAEF2 decoder", img, crop(p.autoencoder.decode(z_inf), img))
            add("codec, y unquantised, plain decoder", img, crop(p.plain(top).decode(z_inf), img))
        stream = codec.encode(img, rate=p.latent_codec.config.num_rate_points - 1, detail_gain="table", preset=p)
        add("codec, top level (plain decode)", img, codec.decode(stream, decoder="plain", preset=p), 8 * len(stream) / (w * h))
        images.append(img)
        latents.append(latent[0])
        print(f"{path.name}: " + ", ".join(f"{k} {v[-1][1]:.2f} dB" for k, v in rows.items()), flush=True)

    k = p.latent_codec.config.patch
    components, mean = patch_klt(latents, k)
    for m in (128, 256, 384):
        b = components[:m].T
        for img, lat in zip(images, latents):
            projected = (latent_patches(lat, k) - mean) @ b @ b.T + mean
            z = F.fold(projected.T[None], lat.shape[-2:], k, stride=k).float()
            with torch.no_grad():
                add(f"rank-{m} projection (oracle PCA), TAEF2 decoder", img, crop(p.autoencoder.decode(z), img))

    n = len(next(iter(rows.values())))
    print(f"\nKodak, {n} images (means)\n")
    print("| reconstruction | bpp | PSNR (dB) | MS-SSIM |")
    print("|---|---|---|---|")
    for name, vals in rows.items():
        bpp, ps, ms = (sum(v[i] for v in vals) / n for i in range(3))
        print(f"| {name} | {'∞' if math.isnan(bpp) else f'{bpp:.4f}'} | {ps:.2f} | {ms:.3f} |")


if __name__ == "__main__":
    main()
