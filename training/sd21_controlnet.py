"""``resulic train sd21-controlnet``: the ControlNet-XS adapter of the ``sd21`` preset, with Ray
Train, Stable Diffusion 2.1-base and the latent codec frozen.

Per item: a rate level drawn uniformly, its N_r, the decoded latent ẑ of the photo at that level,
a step n drawn uniformly from 1 … N_r, and the compression-aware forward process
(``codec.cdm.process``: at N_r it is ẑ noised); the loss is the MSE between the effective noise
and what the UNet with its control branch (fed ẑ) predicts, prompted by the photo's caption,
dropped to the empty prompt with probability ``--caption-dropout`` (the paper's 0.3) so that
classifier-free guidance has an unconditional model. The adapter is ``--size-ratio`` of the
UNet's width (the paper's 0.2). Each checkpoint holds ``controlnet/``, a diffusers
``ControlNetXSAdapter`` folder (what ``$RESULIC_CONTROLNET`` takes).

    resulic train sd21-controlnet --sd-model stabilityai/stable-diffusion-2-1-base \\
        --latent-codec runs/sd21-codec/checkpoint_.../latent_codec.safetensors --data s3://bucket/photos \\
        --captions captions.json --storage-path s3://bucket/runs --workers 8 --steps 300000
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from training.ray_train import (
    add_ray_train_arguments,
    autocast,
    batches,
    fit,
    local_copy,
    report,
    resume_state,
    seed_for,
)


def train_loop(cfg: dict) -> None:
    import ray.train
    import ray.train.torch
    from diffusers import ControlNetXSAdapter

    from codec.cdm.process import alphas_cumprod, forward_process, n_r_for_level
    from codec.cdm.text import TextEncoder
    from codec.latent_codec import LEVELS_PER_POINT
    from codec.presets import load_latent_codec
    from codec.sd21.preset import component_folder, load_sd_parts
    from training.controlnet_xs import combine_sharing

    device = ray.train.torch.get_device()
    gen = torch.Generator().manual_seed(seed_for(cfg["seed"]))
    vae, unet, text_encoder, tokenizer = load_sd_parts(component_folder(cfg["sd_model"], "--sd-model", "Stable Diffusion"))
    codec = load_latent_codec(local_copy(cfg["latent_codec"]))
    state, resumed = resume_state()
    if resumed is not None:
        adapter = ControlNetXSAdapter.from_pretrained(resumed / "controlnet")
    elif cfg["init_controlnet"]:
        adapter = ControlNetXSAdapter.from_pretrained(cfg["init_controlnet"])
    else:  # the decoded latent enters at the latent's resolution: a one-stage conditioning embedding
        adapter = ControlNetXSAdapter.from_unet(unet, size_ratio=cfg["size_ratio"], conditioning_channels=codec.config.latent_channels,
                                                conditioning_embedding_out_channels=(16,))  # fmt: skip
    model = combine_sharing(unet, adapter).to(device)
    for part in (vae, text_encoder, codec):
        part.to(device).eval().requires_grad_(False)
    opt = torch.optim.AdamW(adapter.parameters(), lr=cfg["lr"])
    step = 0
    if state is not None:
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
    start = step
    net = ray.train.torch.prepare_model(model)
    scaling = float(vae.config.scaling_factor)
    ac = alphas_cumprod().to(device)
    levels = codec.num_levels

    encoder = TextEncoder(text_encoder, tokenizer)  # the decoder's own prompt embedding

    def embed(texts: list[str]) -> torch.Tensor:
        with autocast(device):
            return encoder.embed(texts).float()

    def loss_of(x: torch.Tensor, texts: list[str], draw: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        with torch.no_grad(), autocast(device):
            z = vae.encode(x * 2 - 1).latent_dist.mode().float() * scaling
        level = torch.randint(0, levels, (b,), generator=draw)
        n_r = torch.tensor([n_r_for_level(int(lv), levels) for lv in level])
        n = (torch.rand(b, generator=draw) * n_r).long().clamp(min=1)
        with torch.no_grad():  # the codec in eval mode: rounded symbols, as decoding has them
            z_hat = codec(z, level.float().to(device) / LEVELS_PER_POINT)["latent_hat"]
        noise = torch.randn(z.shape, generator=draw).to(device)
        z_n, eff = forward_process(z, z_hat, n.to(device), n_r.to(device), noise, ac)
        with autocast(device):
            pred = net(z_n.float(), n.to(device), encoder_hidden_states=embed(texts), controlnet_cond=z_hat).sample
        return F.mse_loss(pred.float(), eff.float())

    data = batches(ray.train.get_dataset_shard("train"), cfg["batch"], device)
    probe_x, probe_texts = next(data)  # a fixed batch, rates and noise: the loss the reports compare

    def probe_loss() -> float:
        with torch.no_grad():
            return float(loss_of(probe_x, probe_texts, torch.Generator().manual_seed(0)))

    at_start = probe_loss()
    while step < cfg["steps"]:
        x, texts = next(data)
        texts = ["" if torch.rand(1, generator=gen).item() < cfg["caption_dropout"] else t for t in texts]
        loss = loss_of(x, texts, gen)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
        opt.step()
        step += 1
        if step % cfg["save_every"] == 0 or step == cfg["steps"]:
            metrics = {"step": step, "started_at": start, "loss": float(loss), "probe_loss": probe_loss(), "probe_loss_at_start": at_start}
            snapshot = {"opt": opt.state_dict(), "step": step}
            report(metrics, snapshot, export=lambda d: adapter.save_pretrained(d / "controlnet"))


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_ray_train_arguments(p, "sd21-controlnet")
    p.add_argument("--latent-codec", required=True, help="the sd21 latent codec file (resulic train sd21-codec), local or s3://")
    p.add_argument("--init-controlnet", help="start from this ControlNet-XS adapter folder")
    p.add_argument("--size-ratio", type=float, default=0.2, help="adapter width as a share of the UNet's (paper 0.2)")
    p.add_argument("--caption-dropout", type=float, default=0.3)
    args = p.parse_args(argv)
    config = {"sd_model": args.sd_model, "latent_codec": args.latent_codec, "init_controlnet": args.init_controlnet,
              "size_ratio": args.size_ratio, "caption_dropout": args.caption_dropout, "steps": args.steps,
              "batch": args.batch, "lr": args.lr, "save_every": args.save_every, "seed": args.seed}  # fmt: skip
    result = fit(train_loop, config, args)
    if result.error:
        raise result.error
    print(json.dumps({"checkpoint": result.checkpoint.path if result.checkpoint else None, "metrics": result.metrics}))


__all__ = ["main", "train_loop"]
