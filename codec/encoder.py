"""Encoding: images -> streams, under one :class:`codec.settings.EncodeSettings`.

Each image is analysed at its coded size (the autoencoder's encoder, then the latent codec's
analysis), coded at the level its settings give (a rate, or the highest level within a byte
budget), its latent refined first if asked, and its head given the detail gain a CDM decoder
should use (``codec.gain_choice``). :func:`verify` decodes a fresh stream's symbols once, as
a decoder will, before a pipeline keeps it.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image

from codec.bitstream import Bitstream, Header, coded_size
from codec.cdm.detail import UNIT_GAIN_CODE
from codec.cdm.process import n_r_for_level
from codec.gain_choice import choose_detail_gains
from codec.images import load_image, normalise, pad, to_tensor
from codec.latent_refine import refine_y
from codec.parsing import MAX_TEXT_BYTES, parse, resolve_preset
from codec.presets import DEFAULT_PRESET, Preset
from codec.resample import shrink
from codec.settings import EncodeSettings, detail_mode, rate_to_level, scale_for_bpp
from codec.text_coding import decode_text, encode_text
from codec.usage import UsageError

ImageInput = Image.Image | str | os.PathLike | bytes


def _as_image(image: ImageInput) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else normalise(image)
    return load_image(image)


@dataclass
class _Analysed:
    width: int  # the original's size (the coded image is 1/scale of it)
    height: int
    analysed: dict
    texts: list[str]
    scale: int = 1
    image: torch.Tensor | None = None  # (B, 3, H, W): the padded coded image, for refinement


def _analyse(p: Preset, images: list[Image.Image], texts: list[str] | None, scale: int = 1) -> _Analysed:
    """``images`` (originals of one size) analysed at 1/``scale`` of their size."""
    texts = [""] * len(images) if texts is None else list(texts)
    if len(texts) != len(images):
        raise ValueError(f"{len(texts)} texts for {len(images)} images")
    sizes = {im.size for im in images}
    if len(sizes) != 1:
        raise ValueError("a batch must hold images of one size")
    x = torch.cat([to_tensor(shrink(im, scale)) for im in images]).to(next(p.autoencoder.parameters()).device)
    x = pad(x, p.pad_multiple)
    with torch.no_grad():
        latent = p.autoencoder.encode(x)
    w, h = images[0].size
    return _Analysed(w, h, p.latent_codec.analyse(latent), texts, scale, x)


def coded_text(text: str | None, model) -> bytes:
    """The text section, refused (a usage error) when larger than a decoder accepts: never a
    stream that its own decoder would refuse."""
    coded = encode_text(text, model)
    if len(coded) > MAX_TEXT_BYTES:
        raise UsageError(f"the text codes to {len(coded):,} bytes, more than the {MAX_TEXT_BYTES:,} a stream holds")
    return coded


def _header(p: Preset, a: _Analysed, level: int, y: bytes) -> Header:
    """With a CDM, the stream names where diffusion starts (N_r, from the rate) and its noise seed
    (from the latent string: the same image and rate always give the same stream)."""
    if p.cdm is None:
        return Header(p.name, p.model_id, a.width, a.height, level, scale=a.scale)
    n_r = n_r_for_level(level, p.num_levels)
    gain = UNIT_GAIN_CODE if p.cdm.config.detail_sigma is not None else None  # chosen in choose_detail_gains
    return Header(p.name, p.model_id, a.width, a.height, level, n_r, zlib.crc32(y) & 0xFFFF, gain, a.scale)


def _assemble(p: Preset, a: _Analysed, level: int, y_strings: list[bytes]) -> list[bytes]:
    return [
        Bitstream(_header(p, a, level, y), z, y, coded_text(t, p.text_model)).to_bytes()
        for z, y, t in zip(a.analysed["z_strings"], y_strings, a.texts)
    ]


def _item(a: _Analysed, index: int) -> _Analysed:
    one = {**a.analysed, "y": a.analysed["y"][index : index + 1], "hyper_fx": a.analysed["hyper_fx"][index : index + 1],
           "z_strings": a.analysed["z_strings"][index : index + 1]}  # fmt: skip
    return _Analysed(a.width, a.height, one, a.texts[index : index + 1], a.scale, a.image[index : index + 1])


def _refined(p: Preset, a: _Analysed, level: int, steps: int) -> _Analysed:
    """``a`` with each image's ``y`` refined for ``level`` (:mod:`codec.latent_refine`)."""
    size = coded_size(a.width, a.height, a.scale)
    y = a.analysed["y"]
    ys = [refine_y(p.latent_codec, p.plain(level), y[i : i + 1], a.image[i : i + 1], size, level, steps)
          for i in range(y.shape[0])]  # fmt: skip
    return replace(a, analysed=p.latent_codec.analyse_y(torch.cat(ys)))


def _coded(p: Preset, a: _Analysed, level: int) -> tuple[int, bytes, torch.Tensor]:
    """One image's stream at ``level``, with its symbols."""
    strings, y_hat = p.latent_codec.code_latent(a.analysed, level)
    return level, _assemble(p, a, level, strings)[0], y_hat


def _refine_within(p: Preset, a: _Analysed, found: tuple[int, bytes, torch.Tensor], target_bpp: float,
                   steps: int) -> tuple[int, bytes, torch.Tensor]:  # fmt: skip
    """The best refined stream of one image within ``target_bpp``, from the unrefined search's
    ``found``. Refinement makes a level's stream smaller (by about a third on Kodak), so the
    level whose unrefined stream is that much larger than the budget is tried as well; where no
    refined stream fits, ``found`` stands."""
    pixels = a.width * a.height
    fits = lambda s: len(s) * 8 / pixels <= target_bpp  # noqa: E731
    level, stream, _ = found
    refined = _coded(p, _refined(p, a, level, steps), level)
    best = refined if fits(refined[1]) else found
    shrink_by = len(refined[1]) / len(stream)
    if shrink_by < 1:
        up = _search_level(p, a, target_bpp / shrink_by)[0]
        if up > level and fits((higher := _coded(p, _refined(p, a, up, steps), up))[1]):
            best = higher
    return best


def _search_level(p: Preset, a: _Analysed, target_bpp: float) -> tuple[int, bytes, torch.Tensor]:
    """Highest level whose whole stream stays within ``target_bpp`` (level 0 if none does)."""
    pixels = a.width * a.height
    lo, hi = 0, p.num_levels - 1
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        found = _coded(p, a, mid)
        if len(found[1]) * 8 / pixels <= target_bpp:
            best, lo = found, mid + 1
        else:
            hi = mid - 1
    return _coded(p, a, 0) if best is None else best


def _code(p: Preset, images: list[Image.Image], texts: list[str],
          s: EncodeSettings) -> list[tuple[bytes, torch.Tensor]]:  # fmt: skip
    """Streams (detail gain still unchosen) and symbols of images coded at 1/``s.scale`` (a
    number here, not "auto")."""
    return _code_analysed(p, _analyse(p, images, texts, s.scale), s)


def _code_analysed(p: Preset, a: _Analysed, s: EncodeSettings) -> list[tuple[bytes, torch.Tensor]]:
    """:func:`_code` of images already analysed."""
    if s.target_bpp is not None:
        found = [_search_level(p, _item(a, i), s.target_bpp) for i in range(len(a.texts))]
        if s.refine_steps:
            found = [_refine_within(p, _item(a, i), f, s.target_bpp, s.refine_steps) for i, f in enumerate(found)]
        return [(f[1], f[2][0]) for f in found]
    level = rate_to_level(p, p.default_rate if s.rate is None else s.rate)
    if s.refine_steps:
        a = _refined(p, a, level, s.refine_steps)
    strings, y_hat = p.latent_codec.code_latent(a.analysed, level)
    return list(zip(_assemble(p, a, level, strings), y_hat))


def _within_budget(p: Preset, image: Image.Image, text: str, s: EncodeSettings, scale: int,
                   pair: tuple[bytes, torch.Tensor]) -> tuple[bytes, torch.Tensor]:  # fmt: skip
    """``pair`` (coded at 1/``scale``), or, when even its lowest level overshoots ``s.target_bpp``,
    the image coded at the next smaller size the release has thresholds for, until one fits or
    none is left: a budget below what a size can reach is met by a smaller image, not ignored."""
    smaller = sorted(f for f in p.scale_below_bpp if f > scale)
    while 8 * len(pair[0]) / (image.width * image.height) > s.target_bpp and smaller:
        pair = _code(p, [image], [text], replace(s, scale=smaller.pop(0)))[0]
    return pair


def _encode_unchosen(images: list[ImageInput], s: EncodeSettings, preset: str | Preset, texts: list[str] | None,
                     ) -> tuple[Preset, list[Image.Image], list[str], list[tuple[bytes, torch.Tensor]]]:  # fmt: skip
    """:func:`encode_with_symbols` up to the detail gain: the model checked, and each image's
    stream (its head's gain still the unit code) with its symbols."""
    p = resolve_preset(preset)
    detail_mode(p, s.detail_gain)  # a gain this model cannot write fails before any work
    pil = [_as_image(im) for im in images]
    texts = [""] * len(pil) if texts is None else list(texts)
    if s.scale != "auto" or p.scale_below_bpp is None:  # a model without measured thresholds codes at full size
        pairs = _code(p, pil, texts, replace(s, scale=1) if s.scale == "auto" else s)
    elif s.target_bpp is not None:
        scale = scale_for_bpp(p, s.target_bpp)
        pairs = _code(p, pil, texts, replace(s, scale=scale))
        pairs = [_within_budget(p, im, t, s, scale, pair) for im, t, pair in zip(pil, texts, pairs)]
    else:  # the size of this rate at full size (unrefined), at the scale that does best at that size
        full = _analyse(p, pil, texts, 1)
        pairs = _code_analysed(p, full, replace(s, refine_steps=0))
        budget = [8 * len(stream) / (im.width * im.height) for (stream, _), im in zip(pairs, pil)]
        for i, b in enumerate(budget):
            if (scale := scale_for_bpp(p, b)) != 1:
                pairs[i] = _code(p, [pil[i]], [texts[i]], replace(s, rate=None, target_bpp=b, scale=scale))[0]
            elif s.refine_steps:  # stays at full size: refine the analysis already made
                pairs[i] = _code_analysed(p, _item(full, i), s)[0]
    return p, pil, texts, pairs


def encode_with_symbols(images: list[ImageInput], settings: EncodeSettings = EncodeSettings(), *,
                        preset: str | Preset = DEFAULT_PRESET, texts: list[str] | None = None,
                        device: str | torch.device | None = None) -> list[tuple[bytes, torch.Tensor]]:  # fmt: skip
    """Each image's stream with the exact ``y_hat`` a decoder must recover from it (for :func:`verify`).

    ``texts`` (one per image, "" for none) go into the streams' text sections (the semantic
    residual). Prompt optimisation is :func:`encode`'s, one image at a time. ``device``: where a
    preset given by name runs (``codec.device``; the CPU by default).
    """
    if settings.pfo_steps:
        raise ValueError("pfo_steps: prompt optimisation encodes one image with its text at a time (encode)")
    p, pil, texts, pairs = _encode_unchosen(images, settings, resolve_preset(preset, device), texts)
    return choose_detail_gains(p, pil, pairs, texts, settings.detail_gain)


class VerifyError(RuntimeError):
    """A freshly made stream did not decode to what the encoder meant (never written)."""


def verify(stream: bytes, y_hat: torch.Tensor, preset: str | Preset = DEFAULT_PRESET, text: str = "") -> None:
    """Parse ``stream`` as a decoder would and check that it entropy-decodes to exactly ``y_hat``
    and ``text``."""
    s, p = parse(stream, preset)
    if decode_text(s.text, p.text_model) != text:
        raise VerifyError("bitstream does not decode to the encoder's text")
    z_shape = p.z_shape(*s.header.coded_size)
    decoded = p.latent_codec.decompress_symbols([s.latent], [s.hyper_latent], z_shape, s.header.rate_level)
    if not torch.equal(decoded[0].to(y_hat.device), y_hat):
        raise VerifyError("bitstream does not decode to the encoder's symbols")


def _settings(settings: EncodeSettings | None, **choices: Any) -> EncodeSettings:
    """``settings``, or the same choices given one keyword each; not both."""
    given = EncodeSettings(**choices)
    if settings is None:
        return given
    if given != EncodeSettings():
        raise ValueError("give the encoder's choices either as settings or as keywords, not both")
    return settings


def encode_batch(
    images: list[ImageInput],
    *,
    settings: EncodeSettings | None = None,
    preset: str | Preset = DEFAULT_PRESET,
    texts: list[str] | None = None,
    verify_streams: bool = False,
    rate: float | None = None,
    target_bpp: float | None = None,
    detail_gain: str | float = "search",
    scale: int | str | None = None,
    refine_steps: int = 0,
    device: str | torch.device | None = None,
) -> list[bytes]:
    """Encode images of one size together (the autoencoder and transforms run batched).

    The choices come as ``settings`` or as the keywords of its fields (:class:`EncodeSettings`
    says what each does). With ``verify_streams`` every stream is parsed and entropy-decoded
    once before it is returned (:class:`VerifyError` if it does not give back the encoder's
    symbols). ``device``: where a preset given by name runs (the CPU by default).
    """
    s = _settings(settings, rate=rate, target_bpp=target_bpp, detail_gain=detail_gain, scale=scale,
                  refine_steps=refine_steps)  # fmt: skip
    preset = resolve_preset(preset, device)
    pairs = encode_with_symbols(images, s, preset=preset, texts=texts)
    if verify_streams:
        for (stream, y_hat), text in zip(pairs, texts or [""] * len(pairs)):
            verify(stream, y_hat, preset, text)
    return [stream for stream, _ in pairs]


def encode(
    image: ImageInput,
    *,
    settings: EncodeSettings | None = None,
    preset: str | Preset = DEFAULT_PRESET,
    text: str = "",
    rate: float | None = None,
    target_bpp: float | None = None,
    detail_gain: str | float = "search",
    scale: int | str | None = None,
    refine_steps: int = 0,
    pfo_steps: int = 0,
    pfo_seconds: float | None = None,
    device: str | torch.device | None = None,
) -> bytes:
    """Compress one image (a PIL image, a path or encoded bytes), and optionally its residual text.

    The choices come as ``settings`` or as the keywords of its fields (:class:`EncodeSettings`
    says what each does). With ``pfo_steps`` (and a text-conditioned CDM in the preset) the
    text's tokens are first refined against the decoder, within ``pfo_seconds``. ``device``:
    where a preset given by name runs (the CPU by default).
    """
    preset = resolve_preset(preset, device)
    s = _settings(settings, rate=rate, target_bpp=target_bpp, detail_gain=detail_gain, scale=scale,
                  refine_steps=refine_steps, pfo_steps=pfo_steps, pfo_seconds=pfo_seconds)  # fmt: skip
    plain = replace(s, pfo_steps=0, pfo_seconds=None)  # what is left once the text is chosen
    if not (s.pfo_steps and text):
        return encode_batch([image], settings=plain, preset=preset, texts=[text])[0]
    from codec.cdm.prompt import CDMPromptDecoder
    from codec.semantic.pfo import optimise_prompt

    # The prompt decoder renders at unit gain, so this first stream's gain is not chosen.
    p, pil, _, ((stream, y_hat),) = _encode_unchosen([image], plain, preset, [text])
    dec = CDMPromptDecoder(p)
    coded_at = Bitstream.from_bytes(stream).header.scale  # PFO compares at the coded size
    target = to_tensor(shrink(pil[0], coded_at)).to(next(p.autoencoder.parameters()).device)
    best = optimise_prompt(dec, dec.condition(stream), target, text, steps=s.pfo_steps, time_budget_s=s.pfo_seconds)
    if s.target_bpp is not None or s.scale == "auto":  # the text's size is part of the budget: code again
        return encode_batch([image], settings=plain, preset=preset, texts=[best.text])[0]
    # The latent's coding does not depend on the text: keep it (and any refinement of it), put the
    # new text in and choose the detail gain for it (the denoiser reads the text).
    fresh = replace(Bitstream.from_bytes(stream), text=coded_text(best.text, p.text_model)).to_bytes()
    return choose_detail_gains(p, pil, [(fresh, y_hat)], [best.text], s.detail_gain)[0][0]
