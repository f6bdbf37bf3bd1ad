"""Encoder-side refinement: per image, gradient steps on ``y`` against rate + λ·distortion.

The analysis transform is amortised: one network maps every image to its ``y``, and ours was
trained for a few CPU-hours on about 50 photos. For a given image, a better ``y`` at the same
rate level usually exists, and the encoder can look for it, because it has the original and a
differentiable model of what a decoder spends and restores (Campos et al., "Content adaptive
optimization for neural image compression", CVPRW 2019; Yang et al., "Improving inference for
neural image compression", NeurIPS 2020). Only the encoder changes: a refined stream is an
ordinary stream of the same model, decoded by the same decoder, so the model id is unchanged.

What is minimised, per image, at the stream's rate level L:
    bits(ŷ, ẑ) / pixels + λ(L) · 255² · MSE(decoder(g_s(ŷ)), x)
- the bits are the training model's likelihoods of the rounded ``y`` and ``z``
  (``LatentCodec.forward_y`` with ``rounded_z``), with straight-through rounding;
- the MSE is the plain decoder's (``Preset.plain(L)``), which is too slow to run over the whole
  image at every step on a CPU (about 8 s forward and backward for a Kodak image). Each step
  decodes one window of ``window`` latents (default 24: 192 pixels, about 0.4 s) at a seeded
  random place, and leaves out its outer ``margin`` pixels where the window cuts the image,
  since the decoder sees no context there.

For a stream coded smaller (``--scale``), the distortion is the coded image's against the
shrunk original. Measuring it instead as a decoder outputs it (the window upsampled by the
pinned Lanczos, against the original) was tried in session 11: at equal stream size it moved
PSNR by −0.05 to +0.06 dB against this (kodim05 and kodim15, scales 2 and 4, 40 steps), so the
simpler distortion stays.

The figures (README, "Using the codec") come from ``benchmarks/kodak_refine.py`` (per level, the
gain at equal size) and ``resulic eval --codecs resulic-refined-scaled`` (BD-rates).
"""

from __future__ import annotations

from typing import Callable

import torch

from codec.autoencoder import TAEF2
from codec.latent_codec import LEVELS_PER_POINT, LatentCodec
from codec.usage import UsageError

DEFAULT_LR = 0.01  # Adam's step on y, in the analysis transform's units
DEFAULT_WINDOW = 24  # latents per window side (8 pixels each)
MARGIN = 8  # pixels left out where a window cuts the image
# (decoded window, its original, window_mask's weights) -> the distortion to minimise
Distortion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def window_mask(top: int, left: int, size: tuple[int, int], window: tuple[int, int], latent_size: tuple[int, int],
                margin: int = MARGIN) -> torch.Tensor:  # fmt: skip
    """(1, 1, 8·wh, 8·ww) weights of a decoded window's pixels: 1 inside the image and away from
    the window's cut edges, else 0. ``top``/``left`` in latents; ``size`` = (width, height) of
    the image in pixels; ``latent_size`` = (height, width) of the whole latent."""
    wh, ww = window
    lh, lw = latent_size
    rows = torch.arange(8 * top, 8 * (top + wh))
    cols = torch.arange(8 * left, 8 * (left + ww))
    row_ok = rows < size[1]
    col_ok = cols < size[0]
    if top > 0:
        row_ok &= rows >= 8 * top + margin
    if top + wh < lh:
        row_ok &= rows < 8 * (top + wh) - margin
    if left > 0:
        col_ok &= cols >= 8 * left + margin
    if left + ww < lw:
        col_ok &= cols < 8 * (left + ww) - margin
    return (row_ok[:, None] & col_ok[None, :]).float()[None, None]


def refusal(codec: LatentCodec) -> str | None:
    """Why this latent codec's streams cannot be refined, or None when they can.

    Measured on the v2 (conv, perceptual) model: 15 MSE-only steps raised the rate + distortion
    cost of a Kodak crop by 12 %; its training loss also weighs LPIPS, which this objective
    lacks. Refused rather than silently making streams worse. With LPIPS added
    (benchmarks/refine_perceptual.py) the gain is too small for its cost: see
    codec/weights/perceptual_v2/README.md."""
    if codec.config.transform == "patch":
        return None
    return ("--refine is not available for this model (its latent codec was trained with a "
            "perceptual loss that the refinement does not model); encode without it")


def refine_y(codec: LatentCodec, decoder: TAEF2, y0: torch.Tensor, image: torch.Tensor, size: tuple[int, int],
             level: int, steps: int, lr: float = DEFAULT_LR, window: int = DEFAULT_WINDOW, seed: int = 0) -> torch.Tensor:  # fmt: skip
    """The refined ``y`` (1, M, h, w) of one image, from ``y0`` (the analysis transform's of
    its latent); ``image`` (1, 3, H, W) the padded image in [0, 1], ``size`` its (width, height)
    before padding. ``seed`` sets the windows, so the same inputs give the same stream on one machine."""
    if steps < 0:
        raise UsageError("refinement steps must be >= 0")
    if steps == 0:
        return y0
    if reason := refusal(codec):
        raise UsageError(reason)
    return descend(codec, decoder, y0, image, size, level, steps, masked_mse, lr, window, seed)


def masked_mse(decoded: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The MSE over the pixels ``mask`` keeps (the refinement's distortion)."""
    return ((decoded - target).pow(2) * mask).sum() / (3 * mask.sum()).clamp_min(1)


def descend(codec: LatentCodec, decoder: TAEF2, y0: torch.Tensor, image: torch.Tensor, size: tuple[int, int], level: int,
            steps: int, distortion: Distortion, lr: float = DEFAULT_LR, window: int = DEFAULT_WINDOW,
            seed: int = 0) -> torch.Tensor:  # fmt: skip
    """``steps`` Adam steps on ``y`` against bits per pixel + λ(level)·255²·``distortion`` of one
    window a step (:func:`refine_y`, which checks its arguments first)."""
    rate = torch.tensor([level / LEVELS_PER_POINT], device=y0.device)
    lam = float(codec.lambdas(rate))
    pixels = size[0] * size[1]
    lh, lw = (codec.config.patch * n for n in y0.shape[-2:])  # the latent's size
    wh, ww = min(window, lh), min(window, lw)
    gen = torch.Generator().manual_seed(seed)
    y = y0.clone().requires_grad_()
    opt = torch.optim.Adam([y], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            top = int(torch.randint(0, lh - wh + 1, (), generator=gen))
            left = int(torch.randint(0, lw - ww + 1, (), generator=gen))
            out = codec.forward_y(y, rate, rounded_z=True)
            bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
            decoded = decoder.decoder(out["latent_hat"][:, :, top : top + wh, left : left + ww])
            target = image[:, :, 8 * top : 8 * (top + wh), 8 * left : 8 * (left + ww)]
            mask = window_mask(top, left, size, (wh, ww), (lh, lw)).to(image)
            loss = bits / pixels + lam * 255**2 * distortion(decoded, target, mask)
            (grad,) = torch.autograd.grad(loss, [y])  # the models' own parameters collect no gradient
            opt.zero_grad()
            y.grad = grad
            opt.step()
    return y.detach()
