"""How the encoder writes each fresh stream's CDM detail gain (models whose CDM has detail
transfer only): a fixed code, the release's code for the stream's level and scale, or the
search, which decodes each stream as a CDM decoder will and measures it against its original.

The search's limits are here: ``training.detail_gains`` holds the release's table to the same
ones, on the mean over photos.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from codec.bitstream import Bitstream, Header
from codec.cdm.detail import DetailSplit, choose_gains, split_detail
from codec.cdm.sampler import cdm_decode_latent
from codec.fixed_point import from_fixed
from codec.images import to_tensor
from codec.presets import Preset
from codec.resample import upsample
from codec.settings import detail_mode

# How the search sets each image's CDM detail gain (codec.cdm.detail.choose_gains): the most
# texture up to the original's, within 0.9 dB of the plain decode's PSNR (the budget is
# 1 dB; 0.1 dB is left for the float differences of other hardware), at most 4x the detail.
DETAIL_BUDGET_DB = 0.9
DETAIL_MAX_TEXTURE = 1.0
DETAIL_MAX_CODE = 96  # gain_of(96) = 4


def cdm_split(p: Preset, y_hat: torch.Tensor, head: Header, seeds: list[int], texts: list[str] | None
              ) -> tuple[DetailSplit, torch.Tensor, Callable[[torch.Tensor], torch.Tensor] | None]:  # fmt: skip
    """What a CDM decoder makes of symbols ``y_hat`` (B, ...) of streams with head ``head`` (their
    level, start step and sizes): its detail split at the coded size, the plain decode as the
    decoder outputs it, and the map of a composed decode to that output (the upsampling of a
    stream coded smaller; None at full size). For :func:`codec.cdm.detail.gain_curves`."""
    cw, ch = head.coded_size
    with torch.no_grad():
        z_hat = p.latent_codec.g_s(from_fixed(y_hat))
        cond = texts if p.cdm.text_conditioned else None
        restored = cdm_decode_latent(p.cdm, z_hat, head.rate_level, head.diffusion_start_step, seeds, texts=cond)
        plain_ae = p.plain(head.rate_level)
        split = split_detail(p.autoencoder, plain_ae, z_hat, restored, p.cdm.config.detail_sigma, with_plain=True)
        plain = split.plain[:, :, :ch, :cw]
    output = None if head.scale == 1 else lambda x: upsample(x, head.width, head.height).clamp(0, 1)  # as a decoder does
    split = DetailSplit(split.low[:, :, :ch, :cw], split.detail[:, :, :ch, :cw])
    return split, plain if output is None else output(plain), output


def _with_gain(stream: Bitstream, code: int) -> bytes:
    stream.header.detail_gain = code
    return Bitstream(stream.header, stream.hyper_latent, stream.latent, stream.text).to_bytes()


def choose_detail_gains(p: Preset, images: list[Image.Image], pairs: list[tuple[bytes, torch.Tensor]],
                        texts: list[str], detail_gain: str | float) -> list[tuple[bytes, torch.Tensor]]:  # fmt: skip
    """``pairs`` (fresh streams, their head's gain still the unit code, with their symbols) with
    the detail gain ``detail_gain`` asks for written into each head; ``images`` are the
    originals the search measures against, ``texts`` what a text-conditioned denoiser reads."""
    mode = detail_mode(p, detail_gain)
    if mode is None:
        return pairs
    streams = [Bitstream.from_bytes(s) for s, _ in pairs]
    if mode != "search":
        table = p.detail_gains or {}
        missing = {s.header.scale for s in streams} - set(table) if mode == "table" else set()
        if missing:
            raise ValueError(f"preset {p.name} model {p.model_id.hex()} has no detail gain table for scale {min(missing)}")
        return [(_with_gain(s, mode if isinstance(mode, int) else table[s.header.scale][s.header.rate_level]), y)
                for s, (_, y) in zip(streams, pairs)]  # fmt: skip
    device = next(p.autoencoder.parameters()).device
    out = list(pairs)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(streams):
        groups.setdefault((s.header.rate_level, s.header.scale), []).append(i)
    for idx in groups.values():
        y_hat = torch.stack([pairs[i][1] for i in idx])
        seeds = [streams[i].header.diffusion_seed for i in idx]
        split, plain, output = cdm_split(p, y_hat, streams[idx[0]].header, seeds, [texts[i] for i in idx])
        original = torch.cat([to_tensor(images[i]) for i in idx]).to(device)
        gains = choose_gains(split, original, plain, DETAIL_BUDGET_DB, DETAIL_MAX_TEXTURE, DETAIL_MAX_CODE, output)
        for i, g in zip(idx, gains):
            out[i] = (_with_gain(streams[i], g), pairs[i][1])
    return out
