"""How a stream is decoded.

1. :func:`codec.parsing.parse` checks the container and finds the weights the stream names.
2. The latent codec entropy-decodes the hyper-latent, then the latent's symbols (in fixed
   point: the same symbols on every machine, ``codec.fixed_point``), and maps them to the
   autoencoder's latent ẑ.
3. ẑ becomes pixels one of two ways:
   - plain: the plain decoder of the stream's rate level (TAEF2's own, or a fine-tune
     blended per level);
   - CDM (when the model has one): a few denoiser steps from the start step the stream names,
     with its noise seed (and its text, for a text-conditioned model), then the restoration's
     fine detail, times the stream's detail gain, on the plain decode's low frequencies
     (``codec.cdm.detail``).
4. A stream coded at 1/2 or 1/4 of the size is upsampled to the original's size by the
   spec's pinned filter (``codec.resample``).

Streams of one model, size, scale, level and start step share one batched pass.
"""

from __future__ import annotations

import math

import torch
from PIL import Image

from codec.bitstream import Bitstream, coded_size
from codec.cdm.detail import UNIT_GAIN_CODE, decode_restored, gain_of
from codec.cdm.process import n_r_for_level
from codec.cdm.sampler import DEFAULT_STEPS, cdm_decode_latent
from codec.fixed_point import from_fixed
from codec.images import MAX_PIXELS, to_image
from codec.parsing import parse, resolve_preset
from codec.presets import DEFAULT_PRESET, Preset
from codec.resample import upsample
from codec.sd21.diffusion import SD21Diffusion
from codec.text_coding import decode_text
from codec.usage import UsageError

DECODERS = ("auto", "cdm", "plain")


def _decoder_for(p: Preset, decoder: str) -> str:
    if decoder not in DECODERS:
        raise UsageError(f"unknown decoder {decoder!r} (known: {', '.join(DECODERS)})")
    if decoder == "cdm" and p.cdm is None:
        raise UsageError(f"preset {p.name} model {p.model_id.hex()} has no CDM decoder: use the plain decoder")
    return "cdm" if decoder == "auto" and p.cdm is not None else "plain" if decoder == "auto" else decoder


def decode_batch(
    streams: list[bytes], *, preset: str | Preset | None = None, decoder: str = "auto", steps: int = DEFAULT_STEPS,
    device: str | torch.device | None = None, max_pixels: int = MAX_PIXELS, guidance: float | None = None,
) -> list[Image.Image]:
    """Decode streams; those of one size and level share one batched decoder pass.

    ``decoder``: "cdm" (compression-aware diffusion, ``steps`` denoiser evaluations from the
    stream's N_r with its seed), "plain" (the latent codec and the autoencoder only) or "auto"
    (CDM when the stream's model has one). ``device``: where the models the streams name run
    (``codec.device``; the CPU by default), unless ``preset`` is a loaded one. A stream of more
    than ``max_pixels`` pixels is refused (``$RESULIC_MAX_PIXELS``, 256 Mpx by default).
    ``guidance``: the classifier-free guidance scale of a text-conditioned CDM (None: the model's).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be a whole number >= 1, got {steps!r}")
    if guidance is not None and not math.isfinite(guidance):
        raise UsageError(f"guidance must be a finite number, got {guidance}")
    parsed = [parse(s, preset, device, max_pixels) for s in streams]
    out: list[Image.Image | None] = [None] * len(streams)
    groups: dict[tuple, list[int]] = {}
    for i, (s, p) in enumerate(parsed):
        h = s.header
        groups.setdefault((id(p), h.width, h.height, h.scale, h.rate_level, h.diffusion_start_step), []).append(i)
    for idx in groups.values():
        x = _decode_group(parsed[idx[0]][1], [parsed[i][0] for i in idx], decoder, steps, guidance)
        for j, i in enumerate(idx):
            out[i] = to_image(x[j : j + 1])
    return out  # type: ignore[return-value]


def decode(data: bytes, *, preset: str | Preset | None = None, decoder: str = "auto", steps: int = DEFAULT_STEPS,
           device: str | torch.device | None = None, max_pixels: int = MAX_PIXELS,
           guidance: float | None = None) -> Image.Image:  # fmt: skip
    """Restore an image from a bitstream; raises BitstreamError on a damaged, foreign or
    over-large stream."""
    return decode_batch([data], preset=preset, decoder=decoder, steps=steps, device=device, max_pixels=max_pixels,
                        guidance=guidance)[0]  # fmt: skip


def _decode_group(p: Preset, streams: list[Bitstream], decoder: str, steps: int, guidance: float | None = None) -> torch.Tensor:
    """Streams of model ``p`` that share their size, scale, level and start step -> (B, 3, H, W)
    in [0, 1] at the original's size."""
    h = streams[0].header
    cw, ch = h.coded_size
    with torch.no_grad():
        latent = p.latent_codec.decompress(
            [s.latent for s in streams], [s.hyper_latent for s in streams], p.z_shape(cw, ch), h.rate_level
        )
        if _decoder_for(p, decoder) == "cdm":
            x = _cdm_decode(p, streams, latent, steps, guidance)
        else:
            x = p.plain(h.rate_level).decode(latent)
        return upsample(x[:, :, :ch, :cw], h.width, h.height).clamp(0, 1)  # a stream coded at full size: unchanged


def _cdm_decode(p: Preset, streams: list[Bitstream], latent: torch.Tensor, steps: int,
                guidance: float | None = None) -> torch.Tensor:  # fmt: skip
    """``streams``' ẑ restored by the CDM and decoded at each stream's detail gain (still padded)."""
    h = streams[0].header
    level = h.rate_level
    n_r = h.diffusion_start_step or n_r_for_level(level, p.num_levels)  # 0: written before the model had a CDM
    seeds = [s.header.diffusion_seed for s in streams]
    texts = [decode_text(s.text, p.text_model) for s in streams] if p.cdm.text_conditioned else None
    if isinstance(p.cdm, SD21Diffusion):  # the paper's model: its VAE decodes the restored latent
        return p.autoencoder.decode(p.cdm.restore(latent, n_r, seeds, steps, texts, guidance))
    restored = cdm_decode_latent(p.cdm, latent, level, n_r, seeds, steps, texts, guidance)
    codes = [s.header.detail_gain for s in streams]
    gains = torch.tensor([gain_of(UNIT_GAIN_CODE if c is None else c) for c in codes], device=latent.device)
    return decode_restored(p.restored_decoder(level), p.plain(level), latent, restored, p.cdm.config.detail_sigma, gains)


def reconstruct(y_hats: list[torch.Tensor], levels: list[int], width: int, height: int,
                preset: str | Preset = DEFAULT_PRESET, scales: list[int] | None = None) -> list[Image.Image]:  # fmt: skip
    """The latent-only reconstruction a plain decoder gives for exact symbols ``y_hat`` at their
    rate levels and scales (as :func:`codec.encoder.encode_with_symbols` returns them, with each
    stream's level and scale), at the original's ``width`` × ``height``: what semantic residual
    coding captions."""
    p = resolve_preset(preset)
    scales = scales or [1] * len(y_hats)
    out: list[Image.Image | None] = [None] * len(y_hats)
    for level, scale in set(zip(levels, scales)):
        idx = [i for i, key in enumerate(zip(levels, scales)) if key == (level, scale)]
        cw, ch = coded_size(width, height, scale)
        with torch.no_grad():
            latent = p.latent_codec.g_s(from_fixed(torch.stack([y_hats[i] for i in idx])))
            x = upsample(p.plain(level).decode(latent)[:, :, :ch, :cw], width, height).clamp(0, 1)
        for j, i in enumerate(idx):
            out[i] = to_image(x[j : j + 1])
    return out  # type: ignore[return-value]
