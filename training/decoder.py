"""Fine-tune the autoencoder's decoder on decoded latents: ``resulic train decoder``.

TAEF2's decoder was trained on clean latents. The plain path feeds it ẑ, the latent codec's
reconstruction, whose errors are structured (blur, 4×4 patch seams at low rates) and which it
maps to images far worse than their latent MSE suggests. This trains a copy of the decoder on
(ẑ, original pixels) pairs: random aligned crops of the cached training latents, each coded at
a random rate level through the preset's exact codec path (the symbols a decoder recovers),
with the batch's image MSE on the crops' interiors (optionally plus 1 − MS-SSIM).

One decoder serves every rate, and the low rates' MSE is ten times the high rates', so the MSE
loss spends the decoder on the low rates: after 500 steps it gained 0.8-1.1 dB below level 32
on held-out photos and lost 0.2-0.55 dB above level 64. ``--loss db`` (the mean of each crop's
10·log10(MSE)) weighs the rates alike, but on the held-out photos it lost more at the high
rates, not less: it overfits the few training photos there. What the release does instead is
blend the weights per rate level toward TAEF2's own (``training.decoder_calibrate``). The
architecture is unchanged, so decoding costs the same. The latent codec and the encoder stay
frozen: streams already written decode with either decoder.

For a perceptual release (``--model-id`` of the v2 codec, ``--init release``: its own decoder
as the start) the loss can add LPIPS (the published AlexNet weights; DISTS is never trained on)
and an adversarial term, as HiFiC does: a conditional PatchGAN (``training.discriminator``)
that sees ẑ beside the image, trained with the non-saturating loss. An MSE- and LPIPS-trained
decoder averages the textures it cannot place; the adversarial term asks for texture a photo
of this ẑ would have. Tried on CPU for model 8147641cb2d9cfd8 (batch 4 of 256-pixel crops,
LPIPS 0.01, adversarial 0.002, both learning rates 1e-4, 400 training photos; 4.3 s a step):
after 250 and 500 steps it was worse than the release's own decoder on held-out photos at
rate 6 (LPIPS 0.249 -> 0.281, DISTS 0.244 -> 0.258, -0.8 dB) and no better at rate 0, with a
colour drift in flat skies (``benchmarks/decoder_compare.py``). A GAN needs far more steps than
CPU hours give: ``resulic train perceptual-codec --adversarial-weight W --device cuda`` trains
codec and decoder with the same term on a GPU.

Resumable: rerun the same command to continue. ``--out``/decoder.safetensors is the result.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from pathlib import Path

import torch
from pytorch_msssim import ms_ssim
from safetensors.torch import save

from codec.presets import load_preset
from evaluation.perceptual import LPIPS, default_weights_dir
from operators.archive import write_local
from training.cdm import decoded_latent
from training.data import CropSampler, add_data_arguments, cache_from_specs, save_checkpoint
from training.discriminator import AdversarialTerm
from training.runtime import positive_int, require_finite, seed_draws

BORDER = 16  # pixels of each crop's edge left out of the loss: ẑ and the decoder see no context there


def save_decoder(decoder: torch.nn.Module, path: Path, meta: dict) -> None:
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in decoder.state_dict().items()}
    write_local(path, save(tensors, metadata={k: str(v) for k, v in meta.items()}))


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p)
    p.add_argument("--out", default="runs/decoder")
    p.add_argument("--steps", type=positive_int, default=3000)
    p.add_argument("--batch", type=positive_int, default=4)
    p.add_argument("--crop", type=int, default=32, help="latent crop side (image side / 8), a multiple of 16")
    p.add_argument("--seed", type=int, default=0, help="seeds the crops, rates and noise (with the step a resumed run starts at)")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=positive_int, default=100, help="steps of linear learning-rate warm-up")
    p.add_argument("--loss", choices=("db", "mse"), default="mse",
                   help="db: the mean of each item's 10·log10(MSE); mse: the batch MSE (favours the low rates)")
    p.add_argument("--ms-ssim-weight", type=float, default=0.0, help="weight of 1 − MS-SSIM beside the image MSE")
    p.add_argument("--lpips-weight", type=float, default=0.0, help="weight of LPIPS (v0.1 AlexNet) beside the image MSE")
    p.add_argument("--adversarial-weight", type=float, default=0.0,
                   help="weight of the non-saturating adversarial term beside the image MSE (0: no discriminator)")  # fmt: skip
    p.add_argument("--disc-lr", type=float, default=1e-4, help="the discriminator's learning rate")
    p.add_argument("--model-id", help="the release whose latent codec codes the crops (default: the newest)")
    p.add_argument("--init", choices=("autoencoder", "release"), default="autoencoder",
                   help="start from TAEF2's own decoder or from the release's fine-tuned one")  # fmt: skip
    p.add_argument("--metric-weights", default=None, help="LPIPS weights directory (evaluation.perceptual)")
    p.add_argument("--stop-at", type=positive_int, help="stop after this step (checkpointed), keeping the --steps schedule")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-every", type=positive_int, default=100)
    p.add_argument("--weights-dir", default=None, help="TAEF2 weights directory")
    args = p.parse_args(argv)

    if args.crop % 16:
        p.error("--crop must be a multiple of 16 (the latent codec's hyperprior stride)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    preset = load_preset("taef2", weights_dir=args.weights_dir, model_id=args.model_id)
    ae = preset.autoencoder
    if args.init == "release" and preset.decoder_finetune is None:
        p.error(f"--init release: model {preset.model_id.hex()} has no decoder of its own")
    files = cache_from_specs(args.data, Path(args.cache), ae)
    sampler = CropSampler(files, args.crop, seed=args.seed)
    rng = random.Random(args.seed)
    start = (preset.decoder_finetune if args.init == "release" else ae).decoder  # frozen: the log's reference
    decoder = copy.deepcopy(start)
    decoder.requires_grad_(True).train()
    opt = torch.optim.Adam(decoder.parameters(), lr=args.lr)
    lpips = LPIPS.from_dir(args.metric_weights or default_weights_dir()) if args.lpips_weight > 0 else None
    adversarial = AdversarialTerm(args.disc_lr) if args.adversarial_weight > 0 else None
    ckpt_path, step = out / "checkpoint.pt", 0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        decoder.load_state_dict(ckpt["decoder"])
        opt.load_state_dict(ckpt["opt"])
        if adversarial:
            adversarial.load_state_dict(ckpt)
        step = int(ckpt["step"])
        seed_draws(args.seed, step, sampler.rng, rng)
        print(f"resumed at step {step}", flush=True)
    log = open(out / "train.log", "a")
    t0 = time.time()
    b = BORDER
    last = min(args.steps, args.stop_at or args.steps)
    while step < last:
        # Warm up: full-size Adam steps on every weight at once knock a trained decoder off its optimum.
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 if step > 0.85 * args.steps else 1.0)
        for g in opt.param_groups:
            g["lr"] = lr
        z0, img = sampler.batch(args.batch)
        levels = [rng.randrange(preset.num_levels) for _ in range(args.batch)]
        z_hat = torch.cat([decoded_latent(preset, z0[i : i + 1], lv) for i, lv in enumerate(levels)])
        x = decoder(z_hat).clamp(0, 1)[:, :, b:-b, b:-b]
        tgt = img[:, :, b:-b, b:-b]
        z_in = z_hat[:, :, b // 8 : -(b // 8), b // 8 : -(b // 8)]  # the latent cells of the interior
        extra = adversarial.train_step(tgt, x, z_in) if adversarial else {}
        mse = (x - tgt).pow(2).mean((1, 2, 3))
        loss = 10 * mse.clamp_min(1e-10).log10().mean() if args.loss == "db" else mse.mean()
        if args.ms_ssim_weight > 0:
            loss = loss + args.ms_ssim_weight * (1 - ms_ssim(x, tgt, data_range=1.0, size_average=False)).mean()
        if lpips:
            lp = lpips(x, tgt).mean()
            loss = loss + args.lpips_weight * lp
            extra["lpips"] = round(lp.item(), 4)
        if adversarial:
            adv = adversarial.generator_loss(x, z_in).mean()
            loss = loss + args.adversarial_weight * adv
            extra["adv"] = round(adv.item(), 4)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 10 == 0:
            with torch.no_grad():
                base = (start(z_hat).clamp(0, 1)[:, :, b:-b, b:-b] - tgt).pow(2).mean((1, 2, 3))
            gain = (10 * torch.log10(base / mse.detach().clamp_min(1e-10))).mean().item()
            rec = {"step": step, "loss": round(loss.item(), 6),
                   "psnr": round(-10 * math.log10(max(mse.mean().item(), 1e-10)), 2),
                   "gain_db": round(gain, 3), **extra, "levels": levels, "lr": lr, "sec": round(time.time() - t0, 1)}  # fmt: skip
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if step % args.save_every == 0 or step == last:
            require_finite(step, decoder)
            state = {"decoder": decoder.state_dict(), "opt": opt.state_dict(), "step": step}
            if adversarial:
                state |= adversarial.state_dict()
            save_checkpoint(state, ckpt_path)
            save_decoder(decoder, out / "decoder.safetensors",
                         {"step": step, "latent_codec_model_id": preset.model_id.hex(), "config": json.dumps(vars(args))})


if __name__ == "__main__":
    main()
