"""Stable Diffusion's KL autoencoder behind the interface the codec uses for TAEF2: images in
[0, 1] to latents and back. Latents are the VAE's scaled ones (times ``scaling_factor``: unit
variance, what SD's UNet works on), so the latent codec and the diffusion decoder see the same
numbers."""

from __future__ import annotations

import torch
from torch import nn


class SDAutoencoder(nn.Module):
    def __init__(self, vae, weights_sha256: str) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.weights_sha256 = weights_sha256
        self.latent_channels = int(vae.config.latent_channels)
        self.scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling = float(vae.config.scaling_factor)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``image``: (B, 3, H, W) in [0, 1], sides multiples of ``scale_factor``. The posterior's
        mode, not a sample: the same image always gives the same latent (and stream)."""
        return self.vae.encode(image * 2 - 1).latent_dist.mode() * self.scaling

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return ((self.vae.decode(latent / self.scaling).sample + 1) / 2).clamp(0, 1)
