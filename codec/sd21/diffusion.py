"""Compression-aware diffusion with Stable Diffusion 2.1-base and a ControlNet-XS branch.

The frozen SD UNet and a ControlNet-XS adapter (diffusers' ``UNetControlNetXSModel``) predict
the noise of the compression-aware forward process (``codec.cdm.process``): decoding noises ẑ to
the stream's N_r with its seed, then takes a few DDIM steps, each with classifier-free guidance
between the residual text and the negative prompt. The control branch sees ẑ itself at the
latent's resolution (a one-stage conditioning embedding: no downsampling), as the paper feeds
the decoded latent to its control branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from codec.cdm.process import alphas_cumprod, ddim_step, ddim_timesteps, start_point
from codec.cdm.sampler import stream_noise

GUIDANCE_SCALE = 2.5  # the paper's


@dataclass
class SD21DiffusionConfig:
    guidance_scale: float = GUIDANCE_SCALE
    negative_prompt: str = ""
    detail_sigma: None = None  # no detail transfer: the VAE decodes the restored latent itself
    decoder: str = "autoencoder"  # that VAE (codec.presets.Preset.restored_decoder)


class SD21Diffusion(nn.Module):
    text_conditioned = True

    def __init__(self, unet, adapter, text_encoder, tokenizer, config: SD21DiffusionConfig | None = None) -> None:
        super().__init__()
        from diffusers import UNetControlNetXSModel

        from codec.cdm.text import TextEncoder

        self.model = UNetControlNetXSModel.from_unet(unet, adapter).eval().requires_grad_(False)
        self.text_encoder = TextEncoder(text_encoder, tokenizer)
        self.config = config or SD21DiffusionConfig()

    def noise(self, z_t: torch.Tensor, t: int, text: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
        """The predicted effective noise at step t (the UNet with its control branch fed ẑ)."""
        tt = torch.full((z_t.shape[0],), t, dtype=torch.long, device=z_t.device)
        return self.model(z_t, tt, encoder_hidden_states=text, controlnet_cond=z_hat).sample

    def denoise(self, z_hat: torch.Tensor, n_r: int, noise: torch.Tensor, steps: int, text: torch.Tensor,
                uncond: torch.Tensor, guidance: float | None = None) -> torch.Tensor:  # fmt: skip
        """The DDIM chain from ẑ noised to N_r, guided between ``text`` and ``uncond`` embeddings
        (differentiable in them: prompt optimisation runs through it)."""
        ac = alphas_cumprod()
        dtype = z_hat.dtype
        scale = self.config.guidance_scale if guidance is None else guidance
        z = start_point(z_hat, n_r, noise.to(z_hat.device, dtype), ac)
        ts = ddim_timesteps(n_r, steps)
        for i, t in enumerate(ts):
            eps = self.noise(z, t, text, z_hat)
            if scale != 1.0:
                eps_u = self.noise(z, t, uncond, z_hat)
                eps = eps_u + scale * (eps - eps_u)
            a = ac[t].to(dtype)
            z0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
            z = ddim_step(z, z0, t, ts[i + 1] if i + 1 < len(ts) else 0, ac)
        return z

    @torch.no_grad()
    def restore(self, z_hat: torch.Tensor, n_r: int, seeds: list[int], steps: int, texts: list[str] | None,
                guidance: float | None = None) -> torch.Tensor:  # fmt: skip
        """(B, 4, h, w) decoded latents at one N_r -> restored latents (SD's scaled latent space)."""
        b, dtype = z_hat.shape[0], z_hat.dtype
        text = self.text_encoder.embed(texts or [""] * b).to(dtype)
        uncond = self.text_encoder.embed([self.config.negative_prompt] * b).to(dtype)
        return self.denoise(z_hat, n_r, stream_noise(tuple(z_hat.shape[1:]), seeds), steps, text, uncond, guidance)


__all__ = ["SD21Diffusion", "SD21DiffusionConfig", "GUIDANCE_SCALE"]
