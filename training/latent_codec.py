"""Training of the latent codec on CPU: resumable, checkpointed, logged.

Loss per item: bpp + lambda(rate) * 255**2 * D, with the rate drawn uniformly over the
continuous range of rate points, so that one model learns every rate and the gains in
between. D mixes two terms:
- the image MSE after the frozen TAEF2 decoder, on a window of the crop (the true target);
- a latent MSE weighted per channel by how much image MSE an error in that channel costs,
  measured once through the decoder. It is free to compute and calibrated in image-MSE units,
  so it carries the gradient where the decoder is too slow to run on every pixel on a CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save

from codec.autoencoder import TAEF2
from codec.latent_codec import LatentCodec, LatentCodecConfig
from operators.archive import write_local
from training.data import CropSampler, add_data_arguments, cache_from_specs, save_checkpoint
from training.runtime import positive_int, require_finite, seed_draws


@torch.no_grad()
def channel_sensitivity(ae: TAEF2, sampler: CropSampler, sigma: float = 0.3, images: int = 6) -> torch.Tensor:
    """Image MSE per unit of latent MSE, per latent channel (mean over a few crops)."""
    lat, _ = sampler.batch(images)
    base = ae.decode(lat)
    weights = torch.zeros(lat.shape[1])
    gen = torch.Generator().manual_seed(0)
    for c in range(lat.shape[1]):
        noisy = lat.clone()
        noisy[:, c] += sigma * torch.randn(noisy[:, c].shape, generator=gen)
        weights[c] = F.mse_loss(ae.decode(noisy), base) * lat.shape[1] / sigma**2
    return weights


def bits_per_pixel(likelihoods: dict, pixels: int) -> torch.Tensor:
    total = sum((-torch.log2(lik)).flatten(1).sum(1) for lik in likelihoods.values())
    return total / pixels


def clipped_step(loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    """One step of ``opt`` on ``loss``, the gradient norm clipped to 1 over the parameters it holds."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    opt.step()


def codec_step(loss: torch.Tensor, model: LatentCodec, opt: torch.optim.Optimizer, aux_opt: torch.optim.Optimizer) -> torch.Tensor:
    """One step on ``loss`` (gradient norm clipped to 1 over the parameters ``opt`` holds) and one
    of the hyperprior's quantiles on their own aux loss, which is returned."""
    clipped_step(loss, opt)
    aux_loss = model.entropy_bottleneck.loss()
    aux_opt.zero_grad(set_to_none=True)
    aux_loss.backward()
    aux_opt.step()
    return aux_loss


def fit_quantiles(model: LatentCodec, steps: int = 2000) -> float:
    """Converge the hyperprior's quantiles (they set the CDF tables' ranges) on the aux loss alone."""
    eb = model.entropy_bottleneck
    opt = torch.optim.Adam([eb.quantiles], lr=1e-2)
    for _ in range(steps):
        loss = eb.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def save_weights(model: LatentCodec, path: Path, meta: dict) -> None:
    """Frozen tables plus float16 weights (float16 is exact to load; the model uses these values),
    from a copy: fitting the quantiles and rounding must not change the model being trained, or a
    run would differ with --save-every and from its resumed self."""
    model = copy.deepcopy(model)
    fit_quantiles(model)
    model.eval()
    tensors = {k: v.detach().half().contiguous() for k, v in model.state_dict().items() if v.is_floating_point()}
    tensors.pop("gaussian.scale_table", None)  # integer CDF tables are stored by freeze() instead
    # Round-trip through float16 before freezing, so the tables match the shipped weights.
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    tensors.update({k: v.contiguous() for k, v in model.freeze().items()})
    write_local(path, save(tensors, metadata={"config": json.dumps(model.config.to_dict()), **meta}))


def load_model_weights(model: LatentCodec, state: dict[str, torch.Tensor]) -> None:
    """Checkpoint weights without the coding tables, which freeze() rebuilds at every export."""
    tables = ("_quantized_cdf", "_cdf_length", "_offset", "scale_table")
    state = {k: v for k, v in state.items() if not k.endswith(tables)}
    state["log_gain"] = extend_gains(state["log_gain"], model.log_gain.shape[0])
    model.load_state_dict(state, strict=False)


def extend_gains(log_gain: torch.Tensor, rate_points: int) -> torch.Tensor:
    """Gains for a model with more rate points than the checkpoint: new points continue the top
    two points' geometric step per channel, so a model can be extended to higher rates by
    fine-tuning instead of training from scratch."""
    have = log_gain.shape[0]
    if rate_points < have:
        raise ValueError(f"checkpoint has {have} rate points, the model only {rate_points}")
    if rate_points == have:
        return log_gain
    step = log_gain[-1] - log_gain[-2]
    extra = log_gain[-1] + step * torch.arange(1, rate_points - have + 1, dtype=log_gain.dtype)[:, None]
    return torch.cat([log_gain, extra])


def gains_at(log_gain: torch.Tensor, lambdas: list[float], new_lambdas: list[float]) -> torch.Tensor:
    """Each channel's log gain read off the trained points at other λ values: linear in log λ
    between points (as rates between points interpolate), and beyond either end along the end
    segment's line, so a fine-tune toward a wider rate range starts near each new point's optimum."""
    if len(new_lambdas) < 2 or min(new_lambdas) <= 0 or list(new_lambdas) != sorted(set(new_lambdas)):
        raise ValueError(f"lambdas must be positive and increasing, at least two: {new_lambdas}")
    x = torch.tensor(lambdas, dtype=torch.float64).log()
    out = []
    for lam in new_lambdas:
        v = math.log(lam)
        i = int(torch.searchsorted(x, torch.tensor(v, dtype=torch.float64)).clamp(1, len(x) - 1)) - 1
        t = (v - x[i].item()) / (x[i + 1] - x[i]).item()
        out.append(log_gain[i] * (1 - t) + log_gain[i + 1] * t)
    return torch.stack(out)


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p)
    p.add_argument("--out", default="runs/latent-codec")
    p.add_argument("--steps", type=positive_int, default=6000)
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--crop", type=int, default=32, help="latent crop side (image side / 8), a multiple of the codec stride")
    p.add_argument("--image-window", type=int, default=16, help="latent window decoded for the image loss; 0: none")
    p.add_argument("--image-loss-from", type=int, default=0, help="first step with the image loss (earlier: proxy only)")
    p.add_argument("--seed", type=int, default=0, help="seeds the crops, rates and noise (with the step a resumed run starts at)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--gain-lr-factor", type=float, default=30.0, help="learning-rate multiplier of the rate gains")
    p.add_argument("--density-lr-factor", type=float, default=10.0, help="learning-rate multiplier of the z density")
    p.add_argument("--init-from", help="start from this checkpoint's model weights (fresh optimiser, step 0)")
    p.add_argument("--stop-at", type=positive_int, help="stop after this step (checkpointed), keeping the --steps schedule")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-every", type=positive_int, default=250)
    p.add_argument("--weights-dir", default=None, help="TAEF2 weights directory")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ae = TAEF2.from_pretrained(args.weights_dir)
    files = cache_from_specs(args.data, Path(args.cache), ae)
    sampler = CropSampler(files, args.crop, seed=args.seed)

    ckpt_path = out / "checkpoint.pt"
    model = LatentCodec(LatentCodecConfig())
    if args.crop % model.stride:
        p.error(f"--crop must be a multiple of {model.stride}")
    aux_params = [p for n, p in model.named_parameters() if n.endswith("quantiles")]
    main_params = [p for n, p in model.named_parameters() if not n.endswith("quantiles")]
    # The gains get a much larger step: they are few, and if they lag, the shared transforms
    # shrink y for the low rates and starve the high ones.
    # The hyperprior's density gets a larger step too: while it is broad, every z symbol costs
    # bits whatever its value, and z would dominate the rate at the low end.
    density = [p for n, p in model.named_parameters() if n.startswith("entropy_bottleneck.") and not n.endswith("quantiles")]
    fast = {id(p) for p in density} | {id(model.log_gain)}
    opt = torch.optim.Adam(
        [{"params": [p for p in main_params if id(p) not in fast]},
         {"params": [model.log_gain], "lr_factor": args.gain_lr_factor},
         {"params": density, "lr_factor": args.density_lr_factor}],
        lr=args.lr,
    )  # fmt: skip
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3)
    step = 0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        load_model_weights(model, ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        aux_opt.load_state_dict(ckpt["aux_opt"])
        step = int(ckpt["step"])
        sens = ckpt["sensitivity"]
        seed_draws(args.seed, step, sampler.rng)
        print(f"resumed at step {step}", flush=True)
    else:
        if args.init_from:
            init = torch.load(args.init_from, map_location="cpu", weights_only=True)
            load_model_weights(model, init["model"])
            print(f"initialised from {args.init_from}", flush=True)
        else:
            model.init_transforms([it["latent"] for it in sampler.items])
            print("patch transforms initialised to the latents' KLT", flush=True)
        sens = channel_sensitivity(ae, sampler)
        print("channel sensitivity", [round(x, 1) for x in sens.tolist()], flush=True)

    log = open(out / "train.log", "a")
    k = model.config.num_rate_points
    pixels = (args.crop * 8) ** 2
    t0 = time.time()
    last = min(args.steps, args.stop_at or args.steps)
    while step < last:
        lr = args.lr * (0.1 if step > 0.85 * args.steps else 1.0)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_factor", 1.0)
        lat, img = sampler.batch(args.batch)
        rate = torch.rand(args.batch) * (k - 1)
        res = model(lat, rate)
        bpp = bits_per_pixel(res["likelihoods"], pixels)
        err = (res["latent_hat"] - lat).pow(2).mean((2, 3))
        d_proxy = (err * sens).mean(1)
        d = d_proxy
        psnr_img = None
        if args.image_window and step >= args.image_loss_from:
            w = args.image_window
            o = (args.crop - w) // 2
            dec = ae.decoder(res["latent_hat"][:, :, o : o + w, o : o + w]).clamp(0, 1)
            tgt = img[:, :, 8 * o : 8 * (o + w), 8 * o : 8 * (o + w)]
            b = 8  # decoder border effects: compare the interior only
            d_img = (dec - tgt)[:, :, b:-b, b:-b].pow(2).mean((1, 2, 3))
            d = 0.5 * d_proxy + 0.5 * d_img
            psnr_img = -10 * math.log10(max(d_img.mean().item(), 1e-10))
        lam = model.lambdas(rate)
        loss = (bpp + lam * 255**2 * d).mean()
        aux_loss = codec_step(loss, model, opt, aux_opt)
        step += 1
        if step % 25 == 0:
            lo, hi = rate < 1, rate > k - 2
            rec = {
                "step": step, "loss": round(loss.item(), 4), "bpp": round(bpp.mean().item(), 4),
                "psnr_proxy": round(-10 * math.log10(max(d_proxy.mean().item(), 1e-10)), 2),
                "psnr_img": None if psnr_img is None else round(psnr_img, 2),
                "bpp_low": round(bpp[lo].mean().item(), 4) if lo.any() else None,
                "bpp_high": round(bpp[hi].mean().item(), 4) if hi.any() else None,
                "aux": round(aux_loss.item(), 2), "lr": lr, "sec": round(time.time() - t0, 1),
            }  # fmt: skip
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if step % args.save_every == 0 or step == last:
            require_finite(step, model)
            save_checkpoint(
                {"model": model.state_dict(), "opt": opt.state_dict(), "aux_opt": aux_opt.state_dict(),
                 "step": step, "sensitivity": sens},
                ckpt_path,
            )  # fmt: skip
            save_weights(model, out / "latent_codec.safetensors", {"step": str(step)})


if __name__ == "__main__":
    main()
