"""`resulic train perceptual-codec`: the v2 latent codec and its pixel decoder, trained together.

The v1 codec learned its transforms against latent and pixel MSE with TAEF2's decoder frozen:
its restorations were blurred, blocky at the 4×4 patch grid and capped at 23.9 dB. Here the
codec has overlapping conv transforms (``transform="conv"``) and is trained end to end on
pixels, with the decoder (TAEF2's architecture, initialised from TAEF2) fine-tuned beside it:

    loss = bpp + λ(rate) · 255² · (MSE + w_lpips · LPIPS + w_latent · D_latent)

- LPIPS (AlexNet, the published weights, ``evaluation.perceptual``) is the perceptual term,
  as in HiFiC and ResULIC. DISTS is never trained on: it stays the honest judge.
- D_latent is the latent MSE weighted per channel by its cost in image MSE through TAEF2's
  own decoder. It keeps the decoded latent a TAEF2 latent, which the diffusion decoder and
  the caption's latent-only reconstruction read.
- One model serves every rate: the rate is drawn uniformly over the rate points per crop.
- ``--adversarial-weight``: HiFiC's adversarial term (``training.discriminator``), in image-MSE
  units like the others; the discriminator sees the decoded latent, detached, beside the image.
- ``--init-from MODEL_ID``: start from a release's latent codec and decoder instead of from
  scratch, so a GPU burst can spend its minutes fine-tuning (e.g. with the adversarial term).
- ``--freeze-codec`` (with ``--init-from``): train the decoder alone. The latent codec stays the
  release's, byte for byte (its file is copied into the export), so a release made from the run
  adds a 5 MB decoder instead of a 27 MB codec, and every stream's symbols stay those of the
  release's codec. The loss is the same; its rate term is then a constant.
- ``--lambdas``: the rate points' λ values (with ``--init-from``: each new point's gains start
  from the release's, read off at its λ, ``training.latent_codec.gains_at``), e.g. to reach lower
  rates at full size than the release's lowest point instead of coding a smaller image.

The same command runs on a CPU (resumable, in the background) and on one GPU (``--device
cuda``: bfloat16 autocast for the autoencoder, decoder and LPIPS; the entropy model stays in
float32), with the photos held on the device. ``--minutes`` bounds a run by wall time (a GPU
burst), and the learning-rate decay follows whichever of steps and time runs out first.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from codec.autoencoder import TAEF2
from codec.latent_codec import LatentCodec, LatentCodecConfig
from codec.presets import WEIGHTS_DIR, load_latent_codec, release
from evaluation.perceptual import LPIPS, default_weights_dir
from training.data import save_checkpoint
from training.decoder import save_decoder
from training.discriminator import AdversarialTerm
from training.latent_codec import bits_per_pixel, clipped_step, codec_step, gains_at, load_model_weights, save_weights
from training.photo_crops import PhotoCrops, add_photo_arguments
from training.runtime import RunClock, add_runtime_arguments, positive_int, require_finite, start_runtime

V2_CONFIG = dict(transform="conv", hidden=160, y_channels=320, z_channels=64,
                 slices=[16, 16, 32, 64, 192], param_hidden=128)  # fmt: skip


@torch.no_grad()
def channel_sensitivity(ae: TAEF2, latent: torch.Tensor, sigma: float = 0.3) -> torch.Tensor:
    """Image MSE per unit of latent MSE, per latent channel, through TAEF2's decoder."""
    base = ae.decode(latent)
    gen = torch.Generator(device=latent.device).manual_seed(0)
    out = torch.zeros(latent.shape[1], device=latent.device)
    for c in range(latent.shape[1]):
        noisy = latent.clone()
        noisy[:, c] += sigma * torch.randn(noisy[:, c].shape, generator=gen, device=latent.device)
        out[c] = F.mse_loss(ae.decode(noisy), base) * latent.shape[1] / sigma**2
    return out


def with_lambdas(codec: LatentCodec, lambdas: list[float]) -> LatentCodec:
    """A trainable copy of ``codec`` with rate points at ``lambdas``, its gains read off the old ones."""
    config = dataclasses.replace(codec.config, lambdas=list(lambdas), num_rate_points=len(lambdas))
    new = LatentCodec(config)
    state = codec.state_dict()
    state["log_gain"] = gains_at(state["log_gain"], codec.config.lambdas, list(lambdas))
    load_model_weights(new, state)
    return new


def export(codec: LatentCodec, decoder: torch.nn.Module, out: Path, meta: dict) -> None:
    """The release files: the latent codec (float16 + frozen tables) and the decoder (float32)."""
    cpu_codec = copy.deepcopy(codec).cpu().float()
    save_weights(cpu_codec, out / "latent_codec.safetensors", meta)
    save_decoder(decoder, out / "decoder.safetensors", meta)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_photo_arguments(p)
    p.add_argument("--out", default="runs/perceptual-codec")
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--decoder-lr", type=float, default=5e-5)
    p.add_argument("--gain-lr-factor", type=float, default=10.0)
    p.add_argument("--density-lr-factor", type=float, default=10.0)
    p.add_argument("--lpips-weight", type=float, default=0.01, help="LPIPS in image-MSE units")
    p.add_argument("--latent-weight", type=float, default=0.1, help="weighted latent MSE, in image-MSE units")
    p.add_argument("--adversarial-weight", type=float, default=0.0, help="the adversarial term, in image-MSE units (0: none)")
    p.add_argument("--disc-lr", type=float, default=1e-4, help="the discriminator's learning rate")
    p.add_argument("--init-from", metavar="MODEL_ID",
                   help="start from this taef2 release's latent codec and decoder (a fine-tune) instead of from scratch")  # fmt: skip
    p.add_argument("--freeze-codec", action="store_true",
                   help="with --init-from: train the decoder alone against the release's latent codec, "
                        "unchanged")  # fmt: skip
    p.add_argument("--lambdas", type=float, nargs="+",
                   help="the rate points' λ, increasing (default: the release's with --init-from, else v2's)")  # fmt: skip
    add_runtime_arguments(p, steps=20000, autocast_covers="autoencoder, decoder and LPIPS", save_every=500)
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    args = build_parser(prog).parse_args(argv)
    if args.freeze_codec and not args.init_from:
        raise SystemExit("--freeze-codec needs --init-from: the release whose latent codec stays as it is")
    if args.freeze_codec and args.lambdas:
        raise SystemExit("--lambdas retrains the gains: it cannot go with --freeze-codec")
    if args.lambdas and (len(args.lambdas) < 2 or min(args.lambdas) <= 0 or args.lambdas != sorted(set(args.lambdas))):
        raise SystemExit(f"--lambdas must be positive and increasing, at least two: {args.lambdas}")
    rt = start_runtime(args)
    device, bf16, autocast = rt.device, rt.bf16, rt.autocast
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    ae = TAEF2.from_pretrained(args.weights_dir).to(device)
    lpips = LPIPS.from_dir(args.metric_weights or default_weights_dir()).to(device)
    if args.init_from:
        entry = release("taef2", args.init_from)
        if "decoder" not in entry:
            raise SystemExit(f"--init-from {args.init_from}: that release has no decoder of its own to start from")
        codec_file = WEIGHTS_DIR / entry["latent_codec"]
        codec = load_latent_codec(codec_file)
        if args.lambdas:
            codec = with_lambdas(codec, args.lambdas)
        decoder = copy.deepcopy(ae.with_decoder(WEIGHTS_DIR / entry["decoder"]).decoder)
    else:
        config = V2_CONFIG | ({"lambdas": args.lambdas, "num_rate_points": len(args.lambdas)} if args.lambdas else {})
        codec, decoder = LatentCodec(LatentCodecConfig(**config)), copy.deepcopy(ae.decoder)
    train_codec = not args.freeze_codec
    codec = codec.to(device).requires_grad_(train_codec).train(train_codec)
    decoder = decoder.to(device).requires_grad_(True).train()
    data = PhotoCrops.from_args(args, device)
    print(f"{len(data)} photo scales on {device}; codec {sum(p.numel() for p in codec.parameters()) / 1e6:.1f} M "
          f"parameters; bf16 {bf16}", flush=True)  # fmt: skip

    quantiles = [p for n, p in codec.named_parameters() if n.endswith("quantiles")]
    density = [p for n, p in codec.named_parameters() if n.startswith("entropy_bottleneck.") and not n.endswith("quantiles")]
    special = {id(p) for p in quantiles + density} | {id(codec.log_gain)}
    # The gains and the hyperprior's density get larger steps (see training.latent_codec).
    groups = [{"params": [p for p in codec.parameters() if id(p) not in special], "lr_factor": 1.0},
              {"params": [codec.log_gain], "lr_factor": args.gain_lr_factor},
              {"params": density, "lr_factor": args.density_lr_factor}] if train_codec else []  # fmt: skip
    opt = torch.optim.Adam(groups + [{"params": list(decoder.parameters()), "lr_factor": args.decoder_lr / args.lr}],
                           lr=args.lr)  # fmt: skip
    aux_opt = torch.optim.Adam(quantiles, lr=1e-3) if train_codec else None
    # float32 outside autocast: spectral norm's power iteration wants the precision, and it is small
    adversarial = AdversarialTerm(args.disc_lr, device) if args.adversarial_weight > 0 else None

    ckpt_path = out / "checkpoint.pt"
    run = RunClock(args, out / "train.log", rngs={"crops": data.gen})
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ("codec" in ckpt) != train_codec:
            how = "not " if train_codec else ""
            raise SystemExit(f"{ckpt_path} was {how}made with --freeze-codec: resume it the same way")
        decoder.load_state_dict(ckpt["decoder"])
        opt.load_state_dict(ckpt["opt"])
        if train_codec:
            codec.load_state_dict(ckpt["codec"], strict=False)
            aux_opt.load_state_dict(ckpt["aux_opt"])
        if adversarial:
            adversarial.load_state_dict(ckpt)
        run.resume(ckpt)
        sens = ckpt["sensitivity"].to(device)
    else:
        with autocast():
            sens = channel_sensitivity(ae, ae.encode(data.batch(8)).float()).float()
        (out / "config.json").write_text(json.dumps({"codec": codec.config.to_dict(), "args": vars(args)}, indent=1))
    if not train_codec:  # the export's codec is the release's own file: the same bytes for every stream
        shutil.copyfile(codec_file, out / "latent_codec.safetensors")

    def checkpoint() -> None:
        require_finite(run.step, decoder, *([codec] if train_codec else []))
        state = {"decoder": decoder.state_dict(), "opt": opt.state_dict(), **run.state(),
                 "sensitivity": sens, **(adversarial.state_dict() if adversarial else {})}  # fmt: skip
        if train_codec:
            state |= {"codec": codec.state_dict(), "aux_opt": aux_opt.state_dict()}
        save_checkpoint(state, ckpt_path)
        meta = {"step": str(run.step), "trainer": "training.perceptual_codec"}
        if train_codec:
            export(codec, decoder, out, meta)
        else:
            save_decoder(decoder, out / "decoder.safetensors", meta | {"latent_codec_model_id": args.init_from})

    k = codec.config.num_rate_points
    while run.running():
        lr = args.lr * run.lr_scale()
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_factor"]
        x = data.batch(args.batch)
        with torch.no_grad(), autocast():
            lat = ae.encode(x).float()
        rate = torch.rand(args.batch, device=device) * (k - 1)
        with contextlib.nullcontext() if train_codec else torch.no_grad():
            res = codec(lat, rate)
        with autocast():
            x_hat = decoder(res["latent_hat"]).float()
            lp = lpips(x_hat.clamp(0, 1), x).float()
        mse = (x_hat - x).pow(2).mean((1, 2, 3))
        d_lat = ((res["latent_hat"] - lat).pow(2).mean((2, 3)) * sens).mean(1)
        bpp = bits_per_pixel(res["likelihoods"], args.crop**2)
        d = mse + args.lpips_weight * lp + args.latent_weight * d_lat
        extra = {}
        if adversarial:
            cond = res["latent_hat"].detach()
            extra = adversarial.train_step(x, x_hat, cond)
            adv = adversarial.generator_loss(x_hat, cond)
            d = d + args.adversarial_weight * adv
            extra["adv"] = round(adv.mean().item(), 4)
        loss = (bpp + codec.lambdas(rate) * 255**2 * d).mean()
        if train_codec:
            extra["aux"] = round(codec_step(loss, codec, opt, aux_opt).item(), 2)
        else:  # the decoder alone
            clipped_step(loss, opt)
        run.tick()
        if run.log_due():
            lo, hi = rate < 1, rate > k - 2
            run.log({
                "loss": round(loss.item(), 4), "bpp": round(bpp.mean().item(), 4),
                "psnr": round(-10 * math.log10(max(mse.mean().item(), 1e-10)), 2), "lpips": round(lp.mean().item(), 4),
                "psnr_latent": round(-10 * math.log10(max(d_lat.mean().item(), 1e-10)), 2),
                "bpp_low": round(bpp[lo].mean().item(), 4) if lo.any() else None,
                "bpp_high": round(bpp[hi].mean().item(), 4) if hi.any() else None,
                **extra, "lr": lr,
            })  # fmt: skip
        run.save_if_due(checkpoint)
    run.finish(checkpoint)
    print(f"stopped at step {run.step} after {run.elapsed:.0f} s; exports in {out}", flush=True)


if __name__ == "__main__":
    main()
