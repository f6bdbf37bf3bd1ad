"""The adversarial term's discriminator: a conditional PatchGAN, as in HiFiC (Mentzer et al. 2020).

It scores overlapping patches of an image as real or decoded, given the decoded latent ẑ that
the decoder saw. Conditioning on ẑ lets it ask "is this a plausible photo *for this latent*",
so the decoder is pushed toward texture that follows the content the stream coded, not toward
any photo-like texture. Spectral norm on every conv keeps it Lipschitz, which made HiFiC's
training stable without gradient penalties. It lives in ``training`` because no decoder uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from codec.autoencoder import LATENT_CHANNELS, SCALE_FACTOR


class PatchDiscriminator(nn.Module):
    """(image in [0, 1], ẑ at 1/8 scale) -> one logit per patch of about 70×70 pixels."""

    def __init__(self, latent_channels: int = LATENT_CHANNELS, cond_channels: int = 12, width: int = 64) -> None:
        super().__init__()
        self.cond = nn.Sequential(
            spectral_norm(nn.Conv2d(latent_channels, cond_channels, 3, padding=1)), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=SCALE_FACTOR, mode="nearest"),
        )  # fmt: skip
        chans = [3 + cond_channels, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(chans, chans[1:])):
            layers += [spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=2 if i < 3 else 1, padding=1)), nn.LeakyReLU(0.2)]
        layers.append(spectral_norm(nn.Conv2d(chans[-1], 1, 4, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image * 2 - 1, self.cond(latent)], dim=1))


class AdversarialTerm:
    """The discriminator with its optimiser, and the two losses of the non-saturating GAN.

    Each training step calls :meth:`train_step` on the step's real and decoded images (the
    decoded ones detached), then adds ``weight * generator_loss(decoded)`` to the decoder's
    loss. The discriminator's weights are frozen outside its own step, so the decoder's
    backward pass does not fill their gradients.
    """

    def __init__(self, lr: float = 1e-4, device: str | torch.device = "cpu") -> None:
        self.disc = PatchDiscriminator().to(device).requires_grad_(False)
        # betas (0.5, 0.999): the usual GAN setting; Adam's default momentum lags the moving target.
        self.opt = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=(0.5, 0.999))

    def train_step(self, real: torch.Tensor, fake: torch.Tensor, latent: torch.Tensor) -> dict[str, float]:
        self.disc.requires_grad_(True)
        d_real, d_fake = self.disc(real, latent), self.disc(fake.detach(), latent)
        loss = (F.softplus(-d_real) + F.softplus(d_fake)).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.disc.requires_grad_(False)
        return {"d_loss": round(loss.item(), 4), "d_real": round(d_real.mean().item(), 3),
                "d_fake": round(d_fake.mean().item(), 3)}  # fmt: skip

    def generator_loss(self, fake: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Per image: the mean over its patches."""
        return F.softplus(-self.disc(fake, latent)).mean((1, 2, 3))

    def state_dict(self) -> dict:
        return {"disc": self.disc.state_dict(), "disc_opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.disc.load_state_dict(state["disc"])
        self.opt.load_state_dict(state["disc_opt"])
