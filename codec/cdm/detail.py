"""Detail transfer: the restored image keeps the CDM's fine detail on the plain decode's low frequencies.

Most of what the full restoration costs in PSNR is not its fine texture but its coarse drift.
Measured on 12 held-out crops (Debian's ukui-wallpapers photos, never trained on), v1's
denoiser at its full strength cost this much PSNR (texture ratio in brackets):
- at level 32: 1.08 dB (0.99);
- at level 64: 2.23 dB (1.08).

Taking only the restoration's detail above a Gaussian of σ = 1.5 pixels, and the plain
decode's frequencies below it, cost this much:
- at level 32: 0.29 dB (0.96);
- at level 64: 0.45 dB (1.06).

The latent codec was trained for fidelity, so the plain decode is the better estimate where
its signal is; the denoiser's gain is the detail the codec could not afford.

The plain decode's low frequencies come from the autoencoder's preview
(``TAEF2.decode_preview``): its last stage is run at half resolution on the plain latent's
features. That costs about 0.6 of a decode, not a whole one, and on the same crops it kept the
cost within 0.04 dB of the exact split.

Decoded image: x = G_σ ∗ up₂(p) + g·(x_r − G_σ ∗ x_r), where
- x_r is the restored latent's full decode;
- p is the plain latent's preview;
- up₂ is bilinear upsampling (half-pixel centres);
- G_σ is the Gaussian below;
- g is the stream's detail gain (``gain_of`` its head code), which the encoder chose for this
  image (``choose_gains``).

The blur is written out here, not taken from torchvision, because the bitstream spec
(``schemas/bitstream_v1.md`` section 8) pins it exactly:
- a kernel of 2·⌈3σ⌉ + 1 taps, normalised to sum 1;
- separable, rows then columns;
- reflect padding.

A library's default may change between releases; an archived stream's pixels should not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from codec.autoencoder import TAEF2
from codec.texture import hf_energy_tensor
from codec.tiling import HALO, tiled


def gaussian_kernel(sigma: float) -> torch.Tensor:
    r = math.ceil(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, C, H, W) -> the same shape; reflect padding needs H and W above 3σ."""
    g = gaussian_kernel(sigma).to(x)
    r, c = (len(g) - 1) // 2, x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@dataclass
class DetailSplit:
    """A CDM decode split at σ: x(g) = low + g·detail, g being the stream's detail gain."""

    low: torch.Tensor  # G_σ ∗ up₂(preview of ẑ): the plain decode's low frequencies
    detail: torch.Tensor  # x_r − G_σ ∗ x_r: the restoration's detail
    plain: torch.Tensor | None = None  # ẑ's plain decode in [0, 1], when asked for (the gain search's reference)

    def compose(self, gains: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) gains (None: 1) -> the decoded images in [0, 1]."""
        g = 1.0 if gains is None else gains.to(self.detail).view(-1, 1, 1, 1)
        return (self.low + g * self.detail).clamp(0, 1)


def low_frequencies(preview: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, 3, H/2, W/2) preview -> G_σ ∗ up₂(preview), (B, 3, H, W)."""
    size = (2 * preview.shape[-2], 2 * preview.shape[-1])
    return gaussian_blur(F.interpolate(preview, size=size, mode="bilinear", align_corners=False), sigma)


def detail_of(restored: torch.Tensor, sigma: float) -> torch.Tensor:
    return restored - gaussian_blur(restored, sigma)


def split_images(restored: torch.Tensor, preview: torch.Tensor, sigma: float) -> DetailSplit:
    """``restored``: (B, 3, H, W) full decode, unclamped; ``preview``: (B, 3, H/2, W/2)."""
    return DetailSplit(low_frequencies(preview, sigma), detail_of(restored, sigma))


def _halo(sigma: float) -> int:
    """The decoder's halo widened by the blur's radius (in latent pixels)."""
    return HALO + math.ceil(math.ceil(3 * sigma) / TAEF2.scale_factor)


def plain_low(plain: TAEF2, z_hat: torch.Tensor, sigma: float,
              with_plain: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """ẑ's low frequencies from ``plain``'s preview, and with ``with_plain`` its plain decode
    too (the two share the decoder's features), computed in tiles (``codec.tiling``)."""

    def tile(head: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = plain.decode_features(head)
        low = low_frequencies(plain.decode_preview(features), sigma)
        return (low, plain.decode_from_features(features).clamp(0, 1)) if with_plain else (low,)

    out = tiled(tile, [plain.decode_head(z_hat)], scale_in=1, scale_out=TAEF2.scale_factor, halo=_halo(sigma))
    return out[0], out[1] if with_plain else None


def restored_detail(autoencoder: TAEF2, z_restored: torch.Tensor, sigma: float) -> torch.Tensor:
    """The detail of ``autoencoder``'s decode of the restored latent, computed in tiles."""
    tail = lambda h: (detail_of(autoencoder.decode_from_features(autoencoder.decode_features(h)), sigma),)
    return tiled(tail, [autoencoder.decode_head(z_restored)], scale_in=1, scale_out=TAEF2.scale_factor,
                 halo=_halo(sigma))[0]  # fmt: skip


def split_detail(autoencoder: TAEF2, plain: TAEF2, z_hat: torch.Tensor, z_restored: torch.Tensor, sigma: float,
                 with_plain: bool = False) -> DetailSplit:  # fmt: skip
    """``autoencoder`` decodes the restored latent; ``plain`` decodes ẑ (``Preset.plain``: a
    decoder fine-tuned on ẑ when the model has one, else the same autoencoder). With
    ``with_plain`` the split carries ẑ's plain decode as well."""
    low, plain_x = plain_low(plain, z_hat, sigma, with_plain)
    return DetailSplit(low, restored_detail(autoencoder, z_restored, sigma), plain_x)


def decode_restored(autoencoder: TAEF2, plain: TAEF2, z_hat: torch.Tensor, z_restored: torch.Tensor,
                    sigma: float | None, gains: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """The image of a CDM decode in [0, 1]: the restored latent's decode, or with ``sigma`` set
    its detail, times each item's gain, on the plain latent's low frequencies."""
    if sigma is None:
        return autoencoder.decode(z_restored)
    return split_detail(autoencoder, plain, z_hat, z_restored, sigma).compose(gains)


UNIT_GAIN_CODE = 64  # the head's detail gain code of gain 1 (and what a stream without the field means)


def gain_of(code: int) -> float:
    """Head code -> detail gain: 0 for 0, else 2^((code − 64)/16), so 1 … 127 cover 1/16 … 15.2 in
    steps of 4.4 %. Texture energy grows with the gain squared; linear steps of 1/16 would move
    a gain of 0.7 (as Kodak's smooth photos need) by 18 % of texture at a time."""
    return 0.0 if code == 0 else 2.0 ** ((code - UNIT_GAIN_CODE) / 16)


def gain_curves(split: DetailSplit, original: torch.Tensor, plain: torch.Tensor, max_code: int,
                output: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(B, max_code + 1) PSNR cost in dB against the plain decode, and texture ratio against the
    original, of every detail gain code, each measured exactly as decoded (clamp and 8-bit
    rounding). All tensors are (B, 3, H, W) in [0, 1], cropped to the image; ``output`` maps a
    composed decode to what the decoder outputs (the upsampling of a stream coded at a smaller
    scale), and ``plain`` is the plain decode's output."""
    q = lambda x: (x * 255).round() / 255  # noqa: E731  (the decoder's 8-bit output)
    ref = hf_energy_tensor(original)
    plain_mse = (q(plain) - original).pow(2).mean((1, 2, 3))
    costs, textures = [], []
    for code in range(max_code + 1):
        x = (split.low + gain_of(code) * split.detail).clamp(0, 1)
        x = q(x if output is None else output(x))
        costs.append(10 * torch.log10((x - original).pow(2).mean((1, 2, 3)).clamp_min(1e-12) / plain_mse.clamp_min(1e-12)))
        textures.append(hf_energy_tensor(x) / ref.clamp_min(1e-12))
    return torch.stack(costs, 1), torch.stack(textures, 1)


def pick_gains(cost: torch.Tensor, texture: torch.Tensor, budget_db: float, max_texture: float) -> list[int]:
    """Per row of :func:`gain_curves`, the code of most texture within both limits; with no code
    that meets both, the one of least PSNR cost."""
    ok = (cost <= budget_db) & (texture <= max_texture)
    best = torch.where(ok, texture, torch.full_like(texture, -1.0)).argmax(1)
    return [int(b) if ok[i].any() else int(cost[i].argmin()) for i, b in enumerate(best)]


def choose_gains(split: DetailSplit, original: torch.Tensor, plain: torch.Tensor, budget_db: float,
                 max_texture: float, max_code: int,
                 output: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[int]:  # fmt: skip
    """Per image, the detail gain code (0 … ``max_code``) that gives the most texture
    while its PSNR stays within ``budget_db`` of the plain decode's and its texture ratio at
    most ``max_texture``; with no gain that meets both, the one of least PSNR cost.

    The encoder has the original, so it can set how much detail each image gets: a blurrier
    reconstruction of a detailed photo needs more, a smooth photo less. A fixed amount
    calibrated on some photos falls short on others.
    """
    return pick_gains(*gain_curves(split, original, plain, max_code, output), budget_db, max_texture)
