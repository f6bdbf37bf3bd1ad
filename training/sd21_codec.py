"""``resulic train sd21-codec``: the latent codec of the ``sd21`` preset, on Stable Diffusion's
4-channel latent, with Ray Train (GPUs and nodes; CPU for tests).

Per item: bpp + λ(rate)·255²·(MSE through the frozen VAE decoder + w·MSE on the latent), the
rate drawn uniformly over the codec's rate points (one model for every rate). The codec's
shape defaults to the paper's (N = 128, M = 192, slices 16/16/32/32/96, y at 1/32 of the image).
Each checkpoint holds ``latent_codec.safetensors``, the file ``$RESULIC_LATENT_CODEC`` takes.

    resulic train sd21-codec --sd-model stabilityai/stable-diffusion-2-1-base --data s3://bucket/photos \\
        --storage-path s3://bucket/runs --workers 8 --steps 300000
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from codec.latent_codec import LatentCodec, LatentCodecConfig
from training.latent_codec import bits_per_pixel, codec_step, load_model_weights, save_weights
from training.ray_train import add_ray_train_arguments, autocast, batches, fit, report, resume_state, seed_for

PAPER_CODEC = {"latent_channels": 4, "patch": 4, "transform": "conv", "hidden": 128, "y_channels": 192,
               "z_channels": 128, "slices": [16, 16, 32, 32, 96]}  # fmt: skip


def train_loop(cfg: dict) -> None:
    import ray.train
    import ray.train.torch
    from diffusers import AutoencoderKL

    from codec.sd21.preset import component_folder

    device = ray.train.torch.get_device()
    torch.manual_seed(seed_for(cfg["seed"]))
    vae = AutoencoderKL.from_pretrained(component_folder(cfg["sd_model"], "--sd-model", "Stable Diffusion") / "vae")
    vae = vae.to(device).eval().requires_grad_(False)
    scaling = float(vae.config.scaling_factor)
    model = LatentCodec(LatentCodecConfig(**cfg["codec"])).to(device)
    aux = [p for n, p in model.named_parameters() if n.endswith("quantiles")]
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if not n.endswith("quantiles")], lr=cfg["lr"])
    aux_opt = torch.optim.Adam(aux, lr=1e-3)
    state, _ = resume_state()
    step = 0
    if state is not None:
        load_model_weights(model, state["model"])
        opt.load_state_dict(state["opt"])
        aux_opt.load_state_dict(state["aux_opt"])
        step = int(state["step"])
    start = step
    net = ray.train.torch.prepare_model(model)  # DDP across workers
    k = model.config.num_rate_points

    def loss_of(x: torch.Tensor, rate: torch.Tensor, forward) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad(), autocast(device):
            z = vae.encode(x * 2 - 1).latent_dist.mode().float() * scaling
        res = forward(z, rate)
        bpp = bits_per_pixel(res["likelihoods"], x.shape[2] * x.shape[3])
        with autocast(device):
            x_hat = (vae.decode(res["latent_hat"] / scaling).sample.float() + 1) / 2
        d = F.mse_loss(x_hat, x, reduction="none").mean((1, 2, 3))
        d = d + cfg["latent_weight"] * F.mse_loss(res["latent_hat"], z, reduction="none").mean((1, 2, 3))
        return (bpp + model.lambdas(rate) * 255**2 * d).mean(), bpp, d

    data = batches(ray.train.get_dataset_shard("train"), cfg["batch"], device)
    probe_x, _ = next(data)  # a fixed batch at fixed rates, rounded: the loss the reports compare

    def probe_loss() -> float:
        model.eval()
        with torch.no_grad():
            value = float(loss_of(probe_x, torch.linspace(0, k - 1, probe_x.shape[0], device=device), model)[0])
        model.train()
        return value

    at_start = probe_loss()
    while step < cfg["steps"]:
        x, _ = next(data)
        loss, bpp, d = loss_of(x, torch.rand(x.shape[0], device=device) * (k - 1), net)
        codec_step(loss, model, opt, aux_opt)
        step += 1
        if step % cfg["save_every"] == 0 or step == cfg["steps"]:
            metrics = {"step": step, "started_at": start, "loss": float(loss), "bpp": float(bpp.mean()), "mse": float(d.mean()),
                       "probe_loss": probe_loss(), "probe_loss_at_start": at_start}  # fmt: skip
            snapshot = {"model": {k_: v.detach().cpu() for k_, v in model.state_dict().items()},
                        "opt": opt.state_dict(), "aux_opt": aux_opt.state_dict(), "step": step}  # fmt: skip
            report(metrics, snapshot, export=lambda d_: _export(model, d_, cfg, step))


def _export(model: LatentCodec, folder: Path, cfg: dict, step: int) -> None:
    """The codec file a preset loads (frozen tables and float16 weights), from a CPU copy."""
    copy = LatentCodec(model.config)
    copy.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    save_weights(copy, folder / "latent_codec.safetensors", {"step": str(step), "trainer": "sd21-codec",
                                                             "sd_model": cfg["sd_model"]})  # fmt: skip


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_ray_train_arguments(p, "sd21-codec")
    p.add_argument("--latent-weight", type=float, default=1.0, help="weight of the latent MSE beside the image MSE")
    p.add_argument("--codec-config", help="JSON of LatentCodecConfig fields (default: the paper's shape)")
    args = p.parse_args(argv)
    codec_cfg = {**asdict(LatentCodecConfig()), **PAPER_CODEC, **json.loads(args.codec_config or "{}")}
    config = {"sd_model": args.sd_model, "codec": codec_cfg, "steps": args.steps, "batch": args.batch, "lr": args.lr,
              "save_every": args.save_every, "latent_weight": args.latent_weight, "seed": args.seed}  # fmt: skip
    result = fit(train_loop, config, args)
    if result.error:
        raise result.error
    print(json.dumps({"checkpoint": result.checkpoint.path if result.checkpoint else None, "metrics": result.metrics}))


__all__ = ["main", "train_loop", "PAPER_CODEC"]
