"""`resulic train cdm-perceptual`: a CDM for a release whose decoder was trained with its latent
codec (the perceptual model), trained on the whole decode and on what the codec is judged by.

The first CDM (``training.cdm``) learned single denoiser steps against latent and image MSE plus
a texture term, for TAEF2's own decoder: its detail was generic grain. Here every step runs
decoding as a decoder does, for one rate level per batch:

- ẑ is the release's exact decoded latent at that level (the fixed-point symbols a decoder
  recovers, ``training.cdm.decoded_latent``);
- ẑ is noised to the level's N_r with fresh noise and denoised in ``--decode-steps`` DDIM
  evaluations (``codec.cdm.sampler.denoise``, differentiable: the model learns from the inputs
  its own earlier steps give it, not only from the forward process);
- the restored latent is decoded by the release's plain decoder of that level (the CDM's config
  says ``"decoder": "plain"``, with no detail transfer: that served TAEF2's blurrier decoder);
- loss = MSE + w_lpips · LPIPS of the decoded pixels (the codec's own distortion, LPIPS from the
  published weights), plus ``--adversarial-weight`` times HiFiC's adversarial term
  (``training.discriminator``), which is what makes the noise worth reading. DISTS is never
  trained on: it stays the judge.

The UNet's last convolution starts at zero, so step 0 decodes exactly as the plain decoder does;
each logged step records the plain decode's PSNR and LPIPS on the same crops beside the CDM's. The same
command runs on a CPU (resumable) and on one GPU (``--device cuda``, bfloat16 autocast for the
decoder and LPIPS). ``--minutes`` bounds a run by wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
from pathlib import Path

import torch

from codec.cdm.model import CDMConfig, CDMDenoiser
from codec.cdm.process import n_r_for_level
from codec.cdm.sampler import denoise
from codec.presets import load_preset
from evaluation.perceptual import LPIPS, default_weights_dir
from training.cdm import decoded_latent
from training.data import save_checkpoint
from training.discriminator import AdversarialTerm
from training.photo_crops import PhotoCrops, add_photo_arguments
from training.runtime import RunClock, add_runtime_arguments, positive_int, require_finite, start_runtime


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="the taef2 release (model id) the CDM is for (default: the newest)")
    add_photo_arguments(p)
    p.add_argument("--out", default="runs/cdm-perceptual")
    p.add_argument("--batch", type=positive_int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lpips-weight", type=float, default=0.01, help="LPIPS in image-MSE units (the codec's)")
    p.add_argument("--adversarial-weight", type=float, default=0.0, help="the adversarial term, in image-MSE units")
    p.add_argument("--disc-lr", type=float, default=1e-4)
    p.add_argument("--decode-steps", type=int, default=4, help="the DDIM evaluations decoding uses")
    p.add_argument("--config", help="JSON object of CDMConfig fields (default: the offline preset's)")
    add_runtime_arguments(p, steps=4000, autocast_covers="the decoder and LPIPS", save_every=200)
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    args = build_parser(prog).parse_args(argv)
    rt = start_runtime(args)
    device, bf16, autocast = rt.device, rt.bf16, rt.autocast
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    preset = load_preset("taef2", weights_dir=args.weights_dir, model_id=args.model, device=device)
    if preset.decoder_finetune is None:
        raise SystemExit(f"model {preset.model_id.hex()} has no decoder of its own: train its CDM with `resulic train cdm`")
    ae = preset.autoencoder
    lpips = LPIPS.from_dir(args.metric_weights or default_weights_dir()).to(device)
    data = PhotoCrops.from_args(args, device)

    ckpt_path = out / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, map_location=device, weights_only=True) if ckpt_path.exists() else None
    if ckpt is None:
        with torch.no_grad():
            lat = ae.encode(data.batch(16)).transpose(0, 1).flatten(1)
        fields = {"latent_mean": lat.mean(1).tolist(), "latent_std": lat.std(1).clamp_min(1e-3).tolist()}
        config = CDMConfig(num_levels=preset.num_levels, decoder="plain", **fields, **json.loads(args.config or "{}"))
    else:
        config = CDMConfig.from_dict(ckpt["config"])
    model = CDMDenoiser(config).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    adversarial = AdversarialTerm(args.disc_lr, device) if args.adversarial_weight > 0 else None
    run = RunClock(args, out / "train.log", rngs={"crops": data.gen, "levels": rng})
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        if adversarial:
            adversarial.load_state_dict(ckpt)
        run.resume(ckpt)
    else:
        (out / "args.json").write_text(json.dumps(vars(args), indent=1) + "\n")
    print(f"CDM for model {preset.model_id.hex()}: {sum(x.numel() for x in model.parameters()) / 1e6:.2f} M "
          f"parameters, {len(data)} photo scales on {device}; bf16 {bf16}", flush=True)  # fmt: skip

    def checkpoint() -> None:
        require_finite(run.step, model)
        state = {"model": model.state_dict(), "opt": opt.state_dict(), **run.state(), "config": dataclasses.asdict(config),
                 **(adversarial.state_dict() if adversarial else {})}  # fmt: skip
        save_checkpoint(state, ckpt_path)
        model.save_pretrained(out / "cdm", {"step": run.step, "latent_codec_model_id": preset.model_id.hex(),
                                            "trainer": "training.cdm_perceptual"})  # fmt: skip

    while run.running():
        lr = args.lr * run.lr_scale()
        for g in opt.param_groups:
            g["lr"] = lr
        x = data.batch(args.batch)
        level = rng.randrange(preset.num_levels)
        n_r = n_r_for_level(level, preset.num_levels)
        plain = preset.plain(level)
        with torch.no_grad():
            z_hat = decoded_latent(preset, ae.encode(x), level)
        restored = denoise(model, z_hat, level, n_r, torch.randn_like(z_hat), args.decode_steps)
        with autocast():
            x_hat = plain.decode(restored).float()
            lp = lpips(x_hat.clamp(0, 1), x).float()
        mse = (x_hat - x).pow(2).mean((1, 2, 3))
        d = mse + args.lpips_weight * lp
        extra = {}
        if adversarial:
            extra = adversarial.train_step(x, x_hat, z_hat)
            adv = adversarial.generator_loss(x_hat, z_hat)
            d = d + args.adversarial_weight * adv
            extra["adv"] = round(adv.mean().item(), 4)
        loss = d.mean() / mse.detach().mean().clamp_min(1e-6)  # relative: one gradient scale for every rate
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run.tick()
        if run.log_due():
            with torch.no_grad(), autocast():  # the plain decode of the same crops, for comparison
                x_plain = plain.decode(z_hat).float().clamp(0, 1)
                lp_plain = lpips(x_plain, x).float()
            psnr = lambda e: round(-10 * math.log10(max(e, 1e-10)), 2)
            run.log({"level": level, "n_r": n_r, "loss": round(loss.item(), 4),
                     "psnr": psnr(mse.mean().item()), "psnr_plain": psnr((x_plain - x).pow(2).mean().item()),
                     "lpips": round(lp.mean().item(), 4), "lpips_plain": round(lp_plain.mean().item(), 4),
                     **extra, "lr": lr})  # fmt: skip
        run.save_if_due(checkpoint)
    run.finish(checkpoint)
    print(f"stopped at step {run.step} after {run.elapsed:.0f} s; the CDM is in {out / 'cdm'}", flush=True)


if __name__ == "__main__":
    main()
