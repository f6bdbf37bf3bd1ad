"""The codec's Python API: ``encode(image) -> bytes`` and ``decode(bytes) -> image``."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

import torch
from PIL import Image

from codec.bitstream import Bitstream, BitstreamError, Header
from codec.cdm.process import n_r_for_level
from codec.cdm.detail import UNIT_GAIN_CODE, DetailSplit, choose_gains, decode_restored, gain_of, split_detail
from codec.cdm.sampler import DEFAULT_STEPS, cdm_decode_latent
from codec.fixed_point import from_fixed
from codec.images import ImageError, load_image, normalise, pad, to_image, to_tensor
from codec.latent_codec import LEVELS_PER_POINT
from codec.presets import DEFAULT_PRESET, Preset, load_preset
from codec.text_coding import decode_text, encode_text


def _preset(preset: str | Preset) -> Preset:
    return preset if isinstance(preset, Preset) else load_preset(preset)


def rate_to_level(preset: Preset, rate: float) -> int:
    """A rate in trained-point units (0 = lowest, K-1 = highest; fractions interpolate) -> level."""
    level = round(rate * LEVELS_PER_POINT)
    if not 0 <= level < preset.num_levels:
        top = (preset.num_levels - 1) / LEVELS_PER_POINT
        raise ValueError(f"rate {rate} is outside [0, {top:g}] for preset {preset.name}")
    return level


def _as_image(image: Image.Image | str | os.PathLike | bytes) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else normalise(image)
    return load_image(image)


@dataclass
class _Analysed:
    width: int
    height: int
    analysed: dict
    texts: list[str]


def _analyse(p: Preset, images: list[Image.Image], texts: list[str] | None) -> _Analysed:
    texts = [""] * len(images) if texts is None else list(texts)
    if len(texts) != len(images):
        raise ValueError(f"{len(texts)} texts for {len(images)} images")
    sizes = {im.size for im in images}
    if len(sizes) != 1:
        raise ValueError("a batch must hold images of one size")
    x = torch.cat([to_tensor(im) for im in images]).to(next(p.autoencoder.parameters()).device)
    with torch.no_grad():
        latent = p.autoencoder.encode(pad(x, p.pad_multiple))
    w, h = images[0].size
    return _Analysed(w, h, p.latent_codec.analyse(latent), texts)


def _header(p: Preset, a: _Analysed, level: int, y: bytes) -> Header:
    """With a CDM, the stream names where diffusion starts (N_r, from the rate) and its noise seed
    (from the latent string: the same image and rate always give the same stream)."""
    if p.cdm is None:
        return Header(p.name, p.model_id, a.width, a.height, level)
    n_r = n_r_for_level(level, p.num_levels)
    gain = UNIT_GAIN_CODE if p.cdm.config.detail_sigma is not None else None  # chosen in _choose_detail_gains
    return Header(p.name, p.model_id, a.width, a.height, level, n_r, zlib.crc32(y) & 0xFFFF, gain)


def _assemble(p: Preset, a: _Analysed, level: int, y_strings: list[bytes]) -> list[bytes]:
    return [
        Bitstream(_header(p, a, level, y), z, y, encode_text(t, p.text_model)).to_bytes()
        for z, y, t in zip(a.analysed["z_strings"], y_strings, a.texts)
    ]


def _item(a: _Analysed, index: int) -> _Analysed:
    one = {**a.analysed, "y": a.analysed["y"][index : index + 1], "hyper_fx": a.analysed["hyper_fx"][index : index + 1],
           "z_strings": a.analysed["z_strings"][index : index + 1]}  # fmt: skip
    return _Analysed(a.width, a.height, one, a.texts[index : index + 1])


def _search_level(p: Preset, a: _Analysed, target_bpp: float) -> tuple[int, bytes, torch.Tensor]:
    """Highest level whose whole stream stays within ``target_bpp`` (level 0 if none does)."""
    pixels = a.width * a.height
    lo, hi = 0, p.num_levels - 1
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        strings, y_hat = p.latent_codec.code_latent(a.analysed, mid)
        stream = _assemble(p, a, mid, strings)[0]
        if len(stream) * 8 / pixels <= target_bpp:
            best, lo = (mid, stream, y_hat), mid + 1
        else:
            hi = mid - 1
    if best is None:
        strings, y_hat = p.latent_codec.code_latent(a.analysed, 0)
        best = (0, _assemble(p, a, 0, strings)[0], y_hat)
    return best


# How the encoder sets each image's CDM detail gain (codec.cdm.detail.choose_gains): the most
# texture up to the original's, within 0.9 dB of the plain decode's PSNR (the budget is
# 1 dB; 0.1 dB is left for the float differences of other hardware), at most 4x the detail.
DETAIL_BUDGET_DB = 0.9
DETAIL_MAX_TEXTURE = 1.0
DETAIL_MAX_CODE = 96  # gain_of(96) = 4


def _choose_detail_gains(p: Preset, images: list[Image.Image], pairs: list[tuple[bytes, torch.Tensor]],
                         texts: list[str]) -> list[tuple[bytes, torch.Tensor]]:  # fmt: skip
    """Decode each fresh stream as a CDM decoder will, against its original, and write the
    detail gain it should use into its head (models with detail transfer only)."""
    if p.cdm is None or p.cdm.config.detail_sigma is None:
        return pairs
    streams = [Bitstream.from_bytes(s) for s, _ in pairs]
    device = next(p.autoencoder.parameters()).device
    out = list(pairs)
    levels: dict[int, list[int]] = {}
    for i, s in enumerate(streams):
        levels.setdefault(s.header.rate_level, []).append(i)
    for level, idx in levels.items():
        h = streams[idx[0]].header
        with torch.no_grad():
            z_hat = p.latent_codec.g_s(from_fixed(torch.stack([pairs[i][1] for i in idx])))
            seeds = [streams[i].header.diffusion_seed for i in idx]
            cond = [texts[i] for i in idx] if p.cdm.text_conditioned else None
            restored = cdm_decode_latent(p.cdm, z_hat, level, h.diffusion_start_step, seeds, texts=cond)
            plain_ae = p.plain(level)
            split = split_detail(p.autoencoder, plain_ae, z_hat, restored, p.cdm.config.detail_sigma)
            plain = plain_ae.decode_from_features(split.plain_features).clamp(0, 1)
            original = torch.cat([to_tensor(images[i]) for i in idx]).to(device)
            crop = lambda t: t[:, :, : h.height, : h.width]  # noqa: E731
            split = DetailSplit(crop(split.low), crop(split.detail), split.plain_features)
            gains = choose_gains(split, original, crop(plain), DETAIL_BUDGET_DB, DETAIL_MAX_TEXTURE, DETAIL_MAX_CODE)
        for i, g in zip(idx, gains):
            s = streams[i]
            s.header.detail_gain = g
            out[i] = (Bitstream(s.header, s.hyper_latent, s.latent, s.text).to_bytes(), pairs[i][1])
    return out


class VerifyError(RuntimeError):
    """A freshly made stream did not decode to what the encoder meant (never written)."""


def verify(stream: bytes, y_hat: torch.Tensor, preset: str | Preset = DEFAULT_PRESET, text: str = "") -> None:
    """Parse ``stream`` as a decoder would and check that it entropy-decodes to exactly ``y_hat``
    and ``text``."""
    s, p = parse(stream, preset)
    if decode_text(s.text, p.text_model) != text:
        raise VerifyError("bitstream does not decode to the encoder's text")
    z_shape = p.z_shape(s.header.width, s.header.height)
    decoded = p.latent_codec.decompress_symbols([s.latent], [s.hyper_latent], z_shape, s.header.rate_level)
    if not torch.equal(decoded[0].to(y_hat.device), y_hat):
        raise VerifyError("bitstream does not decode to the encoder's symbols")


def encode_with_symbols(
    images: list[Image.Image | str | os.PathLike | bytes],
    *,
    rate: float | None = None,
    target_bpp: float | None = None,
    preset: str | Preset = DEFAULT_PRESET,
    texts: list[str] | None = None,
) -> list[tuple[bytes, torch.Tensor]]:
    """Each image's stream with the exact ``y_hat`` a decoder must recover from it (for :func:`verify`).

    ``texts`` (one per image, "" for none) go into the streams' text sections (the semantic residual).
    """
    if rate is not None and target_bpp is not None:
        raise ValueError("give either rate or target_bpp, not both")
    p = _preset(preset)
    pil = [_as_image(im) for im in images]
    a = _analyse(p, pil, texts)
    if target_bpp is not None:
        if target_bpp <= 0:
            raise ValueError("target_bpp must be positive")
        found = [_search_level(p, _item(a, i), target_bpp) for i in range(len(pil))]
        return _choose_detail_gains(p, pil, [(f[1], f[2][0]) for f in found], a.texts)
    level = rate_to_level(p, p.default_rate if rate is None else rate)
    strings, y_hat = p.latent_codec.code_latent(a.analysed, level)
    return _choose_detail_gains(p, pil, list(zip(_assemble(p, a, level, strings), y_hat)), a.texts)


def encode_batch(
    images: list[Image.Image | str | os.PathLike | bytes],
    *,
    rate: float | None = None,
    target_bpp: float | None = None,
    preset: str | Preset = DEFAULT_PRESET,
    verify_streams: bool = False,
    texts: list[str] | None = None,
) -> list[bytes]:
    """Encode images of one size together (the autoencoder and transforms run batched).

    With ``verify_streams`` every stream is parsed and entropy-decoded once before it is
    returned (:class:`VerifyError` if it does not give back the encoder's symbols).
    """
    pairs = encode_with_symbols(images, rate=rate, target_bpp=target_bpp, preset=preset, texts=texts)
    if verify_streams:
        for (stream, y_hat), text in zip(pairs, texts or [""] * len(pairs)):
            verify(stream, y_hat, preset, text)
    return [stream for stream, _ in pairs]


def encode(
    image: Image.Image | str | os.PathLike | bytes,
    *,
    rate: float | None = None,
    target_bpp: float | None = None,
    preset: str | Preset = DEFAULT_PRESET,
    text: str = "",
    pfo_steps: int = 0,
    pfo_seconds: float | None = None,
) -> bytes:
    """Compress one image (a PIL image, a path or encoded bytes), and optionally its residual text.

    With ``pfo_steps`` (and a text-conditioned CDM in the preset) the text's tokens are first
    refined against the decoder (perceptual fidelity optimisation, PEZ), within ``pfo_seconds``.
    """
    stream = encode_batch([image], rate=rate, target_bpp=target_bpp, preset=preset, texts=[text])[0]
    if not (pfo_steps and text):
        return stream
    from codec.cdm.prompt import CDMPromptDecoder
    from codec.semantic.pfo import optimise_prompt

    p = _preset(preset)
    dec = CDMPromptDecoder(p)
    target = to_tensor(_as_image(image)).to(next(p.autoencoder.parameters()).device)
    best = optimise_prompt(dec, dec.condition(stream), target, text, steps=pfo_steps, time_budget_s=pfo_seconds)
    return encode_batch([image], rate=rate, target_bpp=target_bpp, preset=preset, texts=[best.text])[0]


def parse(data: bytes, preset: str | Preset | None = None) -> tuple[Bitstream, Preset]:
    """Parse and check a stream against the weights it names (any released model of its preset)."""
    stream = Bitstream.from_bytes(data)
    name, model_id = stream.header.preset, stream.header.model_id
    if isinstance(preset, Preset) and preset.name != name:
        raise BitstreamError(f"bitstream was made with preset {name!r}, not {preset.name!r}")
    try:
        p = _preset(preset or name)
    except KeyError as e:
        raise BitstreamError(f"bitstream names preset {name!r}, which this decoder does not have") from e
    if model_id != p.model_id and not isinstance(preset, Preset):
        try:
            p = load_preset(name, model_id=model_id.hex())
        except KeyError:
            pass  # not a released model: refused below
    if model_id != p.model_id:
        raise BitstreamError(
            f"bitstream was made with {name} weights {model_id.hex()}, "
            f"but the loaded weights are {p.model_id.hex()} (and no released model has that id)"
        )
    if stream.header.rate_level >= p.num_levels:
        raise BitstreamError(f"bitstream rate level {stream.header.rate_level} is out of range")
    return stream, p


def reconstruct(y_hats: list[torch.Tensor], levels: list[int], width: int, height: int,
                preset: str | Preset = DEFAULT_PRESET) -> list[Image.Image]:  # fmt: skip
    """The latent-only reconstruction a plain decoder gives for exact symbols ``y_hat`` at their
    rate levels (as :func:`encode_with_symbols` returns them, with each stream's level): what
    semantic residual coding captions."""
    p = _preset(preset)
    out: list[Image.Image | None] = [None] * len(y_hats)
    for level in set(levels):
        idx = [i for i, lv in enumerate(levels) if lv == level]
        with torch.no_grad():
            latent = p.latent_codec.g_s(from_fixed(torch.stack([y_hats[i] for i in idx])))
            x = p.plain(level).decode(latent)[:, :, :height, :width]
        for j, i in enumerate(idx):
            out[i] = to_image(x[j : j + 1])
    return out  # type: ignore[return-value]


DECODERS = ("auto", "cdm", "plain")


def _decoder_for(p: Preset, decoder: str) -> str:
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r} (known: {', '.join(DECODERS)})")
    if decoder == "cdm" and p.cdm is None:
        raise ValueError(f"preset {p.name} model {p.model_id.hex()} has no CDM decoder: use the plain decoder")
    return "cdm" if decoder == "auto" and p.cdm is not None else "plain" if decoder == "auto" else decoder


def decode_batch(
    streams: list[bytes], *, preset: str | Preset | None = None, decoder: str = "auto", steps: int = DEFAULT_STEPS
) -> list[Image.Image]:
    """Decode streams; those of one size and level share one batched decoder pass.

    ``decoder``: "cdm" (compression-aware diffusion, ``steps`` denoiser evaluations from the
    stream's N_r with its seed), "plain" (the latent codec and the autoencoder only) or "auto"
    (CDM when the stream's model has one).
    """
    parsed = [parse(s, preset) for s in streams]
    out: list[Image.Image | None] = [None] * len(streams)
    groups: dict[tuple, list[int]] = {}
    for i, (s, p) in enumerate(parsed):
        h = s.header
        groups.setdefault((id(p), h.width, h.height, h.rate_level, h.diffusion_start_step), []).append(i)
    for (_, w, h, level, start), idx in groups.items():
        p = parsed[idx[0]][1]
        z_shape = p.z_shape(w, h)
        with torch.no_grad():
            latent = p.latent_codec.decompress(
                [parsed[i][0].latent for i in idx], [parsed[i][0].hyper_latent for i in idx], z_shape, level
            )
            if _decoder_for(p, decoder) == "cdm":
                n_r = start or n_r_for_level(level, p.num_levels)  # 0: written before the model had a CDM
                seeds = [parsed[i][0].header.diffusion_seed for i in idx]
                texts = [decode_text(parsed[i][0].text, p.text_model) for i in idx] if p.cdm.text_conditioned else None
                restored = cdm_decode_latent(p.cdm, latent, level, n_r, seeds, steps, texts)
                codes = [parsed[i][0].header.detail_gain for i in idx]
                gains = torch.tensor([gain_of(UNIT_GAIN_CODE if c is None else c) for c in codes])
                x = decode_restored(p.autoencoder, p.plain(level), latent, restored, p.cdm.config.detail_sigma, gains)
            else:
                x = p.plain(level).decode(latent)
            x = x[:, :, :h, :w]
        for j, i in enumerate(idx):
            out[i] = to_image(x[j : j + 1])
    return out  # type: ignore[return-value]


def decode(data: bytes, *, preset: str | Preset | None = None, decoder: str = "auto", steps: int = DEFAULT_STEPS) -> Image.Image:
    """Restore an image from a bitstream; raises BitstreamError on a damaged or foreign stream."""
    return decode_batch([data], preset=preset, decoder=decoder, steps=steps)[0]


def read_text(data: bytes, *, preset: str | Preset | None = None) -> str:
    """The residual text a stream carries ("" when it has none); no language model involved."""
    s, p = parse(data, preset)
    return decode_text(s.text, p.text_model)


def info(data: bytes) -> dict:
    """What a stream holds, without decoding it (and without loading any weights)."""
    s = Bitstream.from_bytes(data)
    h = s.header
    return {
        "format_version": 1, "preset": h.preset, "model_id": h.model_id.hex(), "width": h.width, "height": h.height,
        "rate_level": h.rate_level, "rate": h.rate_level / LEVELS_PER_POINT, "bytes": len(data),
        "bpp": len(data) * 8 / (h.width * h.height), "sections": s.section_bytes,
        "diffusion": {"start_step": h.diffusion_start_step, "seed": h.diffusion_seed,
                      "detail_gain": None if h.detail_gain is None else gain_of(h.detail_gain)},
    }  # fmt: skip


__all__ = ["encode", "encode_batch", "decode", "decode_batch", "info", "read_text", "parse", "verify", "ImageError", "BitstreamError", "VerifyError"]
