"""Candidate decoders and codecs against a release: bpp, PSNR, LPIPS and DISTS per rate.

A decoder fine-tune (``resulic train decoder``) keeps the latent codec, so every ``--decoder``
candidate decodes the very same streams: each image is encoded once per rate and only the
decoder varies. A ``--model`` candidate is a whole ``resulic train perceptual-codec`` output
(its folder's ``latent_codec.safetensors`` and ``decoder.safetensors``, e.g. from a GPU burst):
it encodes its own streams. A ``--cdm`` candidate is a CDM folder (``resulic train cdm-perceptual``)
added to the release: its streams are the release's symbols with the CDM's seed and start step,
decoded as a decoder does. Run it on held-out training photos (never Kodak) to choose; `resulic
eval` then reports the release on Kodak.

    python benchmarks/decoder_compare.py HELD_OUT_FOLDER --rates 0 3 6 9 --images 12 \\
        --decoder release --decoder gan=runs/gan/decoder.safetensors --model burst=runs/burst \\
        --cdm p1=runs/cdm_p1/cdm
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from codec.bitstream import Bitstream
from codec.cdm.model import CDMDenoiser
from codec.cdm.sampler import DEFAULT_STEPS
from codec.decoding import decode, reconstruct
from codec.encoder import encode_with_symbols
from codec.presets import Preset, load_latent_codec, load_preset, model_digest
from codec.settings import EncodeSettings
from evaluation.metrics import psnr
from pipelines.perceptual import pair_metrics, weights_dir
from training.data import list_images
from training.photo_crops import load_photo_image


def with_decoder(p: Preset, path: str | None) -> Preset:
    """``p`` whose plain path decodes with the decoder file at ``path`` (None: ``p`` itself)."""
    if path is None:
        return p
    return Preset(p.name, p.autoencoder, p.latent_codec, p.text_model, p.weights_sha256, p.default_rate,
                  decoder_finetune=p.autoencoder.with_decoder(path))  # fmt: skip


def with_model(p: Preset, folder: str) -> Preset:
    """``p`` with the latent codec and decoder that a perceptual-codec run exported to ``folder``."""
    lc = load_latent_codec(Path(folder) / "latent_codec.safetensors")
    return Preset(p.name, p.autoencoder, lc, p.text_model, p.weights_sha256, p.default_rate,
                  decoder_finetune=p.autoencoder.with_decoder(Path(folder) / "decoder.safetensors"))  # fmt: skip


def with_cdm(p: Preset, folder: str) -> Preset:
    """``p`` with the CDM in ``folder``: a new model (its id hashes the CDM in, as a release's does)."""
    cdm = CDMDenoiser.from_pretrained(folder)
    return dataclasses.replace(p, cdm=cdm, weights_sha256=model_digest(p.weights_sha256, cdm.weights_sha256), _plain={})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="held-out photos (never an evaluation set you tune for)")
    ap.add_argument("--decoder", action="append", default=[],
                    help="NAME=FILE, or 'release' for the release's own decoder (repeatable)")  # fmt: skip
    ap.add_argument("--model", action="append", default=[],
                    help="NAME=FOLDER of a perceptual-codec run's latent codec and decoder (repeatable)")  # fmt: skip
    ap.add_argument("--cdm", action="append", default=[],
                    help="NAME=FOLDER of a CDM for the release, decoded with --steps evaluations (repeatable)")  # fmt: skip
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="a CDM's denoiser evaluations")
    ap.add_argument("--rates", type=float, nargs="+", default=[0, 3, 6, 9], help="encode --rate values")
    ap.add_argument("--images", type=int, default=12, help="the first N photos")
    ap.add_argument("--max-side", type=int, default=768, help="photos are downscaled to this long side (Kodak's)")
    ap.add_argument("--model-id", help="the release (default: the newest)")
    ap.add_argument("--metric-weights", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = load_preset("taef2", model_id=args.model_id)
    specs = args.decoder or ([] if args.model or args.cdm else ["release"])
    decoders = {s: None for s in specs if s == "release"} | dict(s.split("=", 1) for s in specs if s != "release")
    # one group per encoder: its streams are decoded by each of its candidates
    groups: list[tuple[Preset, dict[str, Preset]]] = []
    if decoders:
        groups.append((base, {name: with_decoder(base, path) for name, path in decoders.items()}))
    for name, folder in (s.split("=", 1) for s in args.model):
        model = with_model(base, folder)
        groups.append((model, {name: model}))
    for name, folder in (s.split("=", 1) for s in args.cdm):
        model = with_cdm(base, folder)
        groups.append((model, {name: model}))
    metrics_dir = str(weights_dir(args.metric_weights))
    rows: dict[tuple[str, float], list[tuple[float, float, float, float]]] = {}  # (candidate, rate)
    for path in list_images(Path(args.folder))[: args.images]:
        img = load_photo_image(path, args.max_side)
        for rate in args.rates:
            for encoder, presets in groups:
                stream, y_hat = encode_with_symbols([img], EncodeSettings(rate=rate), preset=encoder)[0]
                bpp = 8 * len(stream) / (img.width * img.height)
                level = Bitstream.from_bytes(stream).header.rate_level
                outs = {n: decode(stream, preset=p, steps=args.steps) if p.cdm else
                        reconstruct([y_hat], [level], img.width, img.height, p)[0] for n, p in presets.items()}  # fmt: skip
                lp = pair_metrics("lpips", metrics_dir, img, list(outs.values()))
                ds = pair_metrics("dists", metrics_dir, img, list(outs.values()))
                for i, (name, out) in enumerate(outs.items()):
                    rows.setdefault((name, rate), []).append((bpp, psnr(img, out), lp[i], ds[i]))
        print(f"{path.name} done", flush=True)
    names = [name for _, presets in groups for name in presets]
    print("\n| candidate | rate | bpp | PSNR | LPIPS | DISTS |\n|---|---|---|---|---|---|")
    for rate in args.rates:
        for name in names:
            m = np.mean(np.array(rows[name, rate]), axis=0)
            print(f"| {name} | {rate:g} | {m[0]:.4f} | {m[1]:.2f} | {m[2]:.3f} | {m[3]:.3f} |")
    print(f"\n{len(rows[name, rate])} photos of {args.folder} at a long side of {args.max_side}")


if __name__ == "__main__":
    main()
