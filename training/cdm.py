"""Train the CDM denoiser for a preset on CPU: ``resulic train cdm``.

Data: the cached TAEF2 latents of the training photos (``training.data``), random aligned
(latent, image) crops. For each batch a rate level is drawn, ẑ is made by the preset's own
latent codec at that level (the exact symbols a decoder recovers), N_r follows the rate table,
and the step n is drawn uniformly from 1..N_r: the model only ever sees the part of the
trajectory decoding walks.

Losses, after the paper: stage 1 is the denoising MSE of the compression-aware process, taken
on the clean estimate since this denoiser predicts z₀ (``codec.cdm.process`` says why; the
paper's ‖ẑ − z₀‖² term trains its latent codec, which is frozen here); from
``--image-loss-from`` on, stage 2 adds an image-space MSE of the clean estimate through the
frozen TAEF2 decoder (a central window) and a texture term. An MSE optimum is the posterior
mean, which is blurry by construction: at N_r = 800 it is little more than ẑ, whose texture
ratio on Kodak is 0.13-0.19. The texture term asks for the original's amount of detail where
the original has it: the squared log ratio of local high-frequency energy maps (the squared
Laplacian of the luma that ``codec.texture`` measures, averaged over ``--texture-pool`` pixel
cells, plus a floor so that flat cells do not count), weighted by the batch's own image MSE so
that the trade of fidelity for texture is the same at every rate. The noise in z_n is the
randomness the model draws texture from. This is this project's choice (the paper relies on
Stable Diffusion's prior instead, which it does not have).

The step n is drawn, half the time, from the decoder's own DDIM timesteps for ``--decode-steps``
evaluations (where decoding evaluates the model), otherwise uniformly from 1..N_r.
Resumable: rerun the same command to continue.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import time
from pathlib import Path

import torch

from codec.cdm.model import CDMConfig, CDMDenoiser
from codec.cdm.process import alphas_cumprod, ddim_timesteps, forward_process, n_r_for_level
from codec.fixed_point import from_fixed
from codec.presets import load_preset
from codec.texture import luma_laplacian
from training.data import CropSampler, add_data_arguments, cache_from_specs, save_checkpoint
from training.runtime import positive_int, require_finite, seed_draws


def latent_stats(items: list[dict]) -> tuple[list[float], list[float]]:
    lat = torch.cat([it["latent"].flatten(1) for it in items], dim=1)
    return lat.mean(1).tolist(), lat.std(1).clamp_min(1e-3).tolist()


@torch.no_grad()
def decoded_latent(preset, z0: torch.Tensor, level: int) -> torch.Tensor:
    """ẑ: what a plain decoder recovers from z₀ coded at ``level`` (the exact codec path)."""
    lc = preset.latent_codec
    _, y_hat = lc.quantise(lc.analyse(z0), level)
    return lc.g_s(from_fixed(y_hat))


def energy_map(x: torch.Tensor, cell: int) -> torch.Tensor:
    """Squared luma Laplacian averaged over cell x cell pixels: where an image's detail is."""
    return torch.nn.functional.avg_pool2d(luma_laplacian(x).pow(2)[:, None], cell)


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p)
    p.add_argument("--out", default="runs/cdm")
    p.add_argument("--steps", type=positive_int, default=4000)
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--crop", type=int, default=32, help="latent crop side (image side / 8)")
    p.add_argument("--model-id", help="the release whose latent codec codes the crops (default: the newest)")
    p.add_argument("--seed", type=int, default=0, help="seeds the crops, rates and noise (with the step a resumed run starts at)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--image-loss-from", type=int, default=None, help="first step of stage 2 (default: 60%% of --steps)")
    p.add_argument("--image-loss-weight", type=float, default=1.0)
    p.add_argument("--image-window", type=int, default=16, help="latent window decoded for the image loss")
    p.add_argument("--texture-weight", type=float, default=0.1,
                   help="weight of the texture term in stage 2, relative to the image MSE (0: off)")  # fmt: skip
    p.add_argument("--texture-pool", type=int, default=16, help="cell side (pixels) of the local energy maps")
    p.add_argument("--texture-floor", type=float, default=25.0, help="added to each cell's energy (Laplacian²)")
    p.add_argument("--decode-steps", type=int, default=4, help="the DDIM evaluations decoding uses")
    p.add_argument("--config", help="JSON object of CDMConfig fields (default: the offline preset's)")
    p.add_argument("--init-from", help="a CDM weights directory to start from (its config and weights; not its "
                                       "blends, which a new calibration sets) when --out has no checkpoint")  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-every", type=positive_int, default=200)
    p.add_argument("--weights-dir", default=None, help="TAEF2 weights directory")
    args = p.parse_args(argv)

    if args.crop % 16:  # before the cache is built, which can take minutes
        p.error("--crop must be a multiple of 16 (the latent codec's hyperprior stride)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    preset = load_preset("taef2", weights_dir=args.weights_dir, model_id=args.model_id)
    ae = preset.autoencoder
    files = cache_from_specs(args.data, Path(args.cache), ae)
    sampler = CropSampler(files, args.crop, seed=args.seed)
    rng = random.Random(args.seed)
    ckpt_path, step = out / "checkpoint.pt", 0
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True) if ckpt_path.exists() else None
    saved = None if ckpt is None else ckpt.get("config")
    if ckpt is not None and saved is None and (out / "cdm" / "config.json").is_file():  # from before configs were kept
        saved = json.loads((out / "cdm" / "config.json").read_text())
    if saved is not None:  # a resumed run keeps its own normalisation, not one of today's cache
        model = CDMDenoiser(CDMConfig.from_dict(saved))
    elif args.init_from:  # its config and normalisation too: the weights were trained with them
        start = CDMDenoiser.from_pretrained(args.init_from)
        model = CDMDenoiser(dataclasses.replace(start.config, blend=[]))
        model.unet.load_state_dict(start.unet.state_dict())
    else:
        if ckpt is not None:
            print("note: no saved config: the normalisation is measured on today's data", flush=True)
        mean, std = latent_stats(sampler.items)
        model = CDMDenoiser(CDMConfig(num_levels=preset.num_levels, latent_mean=mean, latent_std=std,
                                      **json.loads(args.config or "{}")))  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        step = int(ckpt["step"])
        seed_draws(args.seed, step, sampler.rng, rng)
        print(f"resumed at step {step}", flush=True)
    print(f"CDM denoiser: {sum(x.numel() for x in model.parameters()) / 1e6:.2f} M parameters", flush=True)
    stage2 = int(0.6 * args.steps) if args.image_loss_from is None else args.image_loss_from
    ac = alphas_cumprod()
    log = open(out / "train.log", "a")
    t0 = time.time()
    while step < args.steps:
        lr = args.lr * (0.1 if step > 0.9 * args.steps else 1.0)
        for g in opt.param_groups:
            g["lr"] = lr
        z0, img = sampler.batch(args.batch)
        level = rng.randrange(preset.num_levels)
        n_r = n_r_for_level(level, preset.num_levels)
        z_hat = decoded_latent(preset, z0, level)
        zn0, znh = model.normalise(z0), model.normalise(z_hat)
        b = z0.shape[0]
        n = torch.randint(1, n_r + 1, (b,))
        on_schedule = torch.rand(b) < 0.5
        ts = torch.tensor(ddim_timesteps(n_r, args.decode_steps))
        n = torch.where(on_schedule, ts[torch.randint(len(ts), (b,))], n)
        z_n, _ = forward_process(zn0, znh, n, torch.full((b,), n_r), torch.randn_like(zn0), ac)
        pred = model(z_n, n, znh, torch.full((b,), level, dtype=torch.long))
        loss_z0 = (pred - zn0).pow(2).mean()
        loss, psnr_img, tex = loss_z0, None, None
        if step >= stage2 and args.image_loss_weight > 0:
            z0_pred = model.denormalise(pred)
            w, o = args.image_window, (args.crop - args.image_window) // 2
            dec = ae.decoder(z0_pred[:, :, o : o + w, o : o + w]).clamp(0, 1)
            tgt = img[:, :, 8 * o : 8 * (o + w), 8 * o : 8 * (o + w)]
            d_img = (dec - tgt)[:, :, 8:-8, 8:-8].pow(2).mean()
            loss = loss + args.image_loss_weight * d_img
            psnr_img = -10 * math.log10(max(d_img.item(), 1e-10))
            e_dec, e_tgt = (energy_map(x[:, :, 7:-7, 7:-7], args.texture_pool) for x in (dec, tgt))
            tex = (e_dec.sum() / e_tgt.sum()).item()  # the batch's ratio, as the metric takes an image's
            if args.texture_weight > 0:
                log_ratio = (e_dec + args.texture_floor).log() - (e_tgt + args.texture_floor).log()
                loss = loss + args.texture_weight * d_img.detach() * log_ratio.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 25 == 0:
            rec = {"step": step, "loss": round(loss.item(), 4), "z0_mse": round(loss_z0.item(), 4), "z_hat_mse": round((znh - zn0).pow(2).mean().item(), 4), "level": level,
                   "n_r": n_r, "psnr_img": None if psnr_img is None else round(psnr_img, 2),
                   "texture_ratio": None if tex is None else round(tex, 3), "lr": lr,
                   "sec": round(time.time() - t0, 1)}  # fmt: skip
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if step % args.save_every == 0 or step == args.steps:
            require_finite(step, model)
            save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                             "config": dataclasses.asdict(model.config)}, ckpt_path)  # fmt: skip
            model.save_pretrained(out / "cdm", {"step": step, "latent_codec_model_id": preset.model_id.hex()})


if __name__ == "__main__":
    main()
