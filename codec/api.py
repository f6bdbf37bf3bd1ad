"""The codec's Python API: ``encode(image) -> bytes`` and ``decode(bytes) -> image``."""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from PIL import Image

from codec.bitstream import Bitstream, BitstreamError, Header, coded_size
from codec.cdm.process import n_r_for_level
from codec.cdm.detail import UNIT_GAIN_CODE, DetailSplit, choose_gains, decode_restored, gain_of, split_detail
from codec.cdm.sampler import DEFAULT_STEPS, cdm_decode_latent
from codec.fixed_point import from_fixed
from codec.images import ImageError, load_image, normalise, pad, to_image, to_tensor
from codec.latent_codec import LEVELS_PER_POINT
from codec.latent_refine import refine_y
from codec.resample import SCALES, shrink, upsample
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


def _header(p: Preset, a: _Analysed, level: int, y: bytes) -> Header:
    """With a CDM, the stream names where diffusion starts (N_r, from the rate) and its noise seed
    (from the latent string: the same image and rate always give the same stream)."""
    if p.cdm is None:
        return Header(p.name, p.model_id, a.width, a.height, level, scale=a.scale)
    n_r = n_r_for_level(level, p.num_levels)
    gain = UNIT_GAIN_CODE if p.cdm.config.detail_sigma is not None else None  # chosen in _choose_detail_gains
    return Header(p.name, p.model_id, a.width, a.height, level, n_r, zlib.crc32(y) & 0xFFFF, gain, a.scale)


def _assemble(p: Preset, a: _Analysed, level: int, y_strings: list[bytes]) -> list[bytes]:
    return [
        Bitstream(_header(p, a, level, y), z, y, encode_text(t, p.text_model)).to_bytes()
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


# How the encoder's search sets each image's CDM detail gain (codec.cdm.detail.choose_gains): the
# most texture up to the original's, within 0.9 dB of the plain decode's PSNR (the budget
# is 1 dB; 0.1 dB is left for the float differences of other hardware), at most 4x the detail.
DETAIL_BUDGET_DB = 0.9
DETAIL_MAX_TEXTURE = 1.0
DETAIL_MAX_CODE = 96  # gain_of(96) = 4

# How the encoder sets the detail gain (only models whose CDM has detail transfer write one):
# - "search" (the default): per image, by decoding it as a CDM decoder will; each image gets the
#   most texture within the limits above. Two decodes more per image: on 2 CPU threads a Kodak
#   encode takes 3.6 times the autoencoder's own encode;
# - "table": the release's per-level code (``training.detail_gains``), no decode, for throughput:
#   an encode then costs about what the autoencoder's encoder does. The limits hold on the mean
#   over photos, not per photo;
# - a number: that gain for every image (the nearest head code).
DETAIL_GAIN_MODES = ("search", "table")


def parse_detail_gain(text: str) -> str | float:
    """A detail gain as written on a command line: a mode name or a number (``detail_mode``
    checks it against a model)."""
    if text in DETAIL_GAIN_MODES:
        return text
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number or one of {', '.join(DETAIL_GAIN_MODES)}, got {text!r}") from None


def gain_code(gain: float) -> int:
    """The head code nearest to a detail gain (0 … 15.2; ``gain_of`` is its inverse)."""
    if not 0 <= gain <= gain_of(127):
        raise ValueError(f"detail gain {gain} is outside [0, {gain_of(127):.2f}]")
    return 0 if gain < gain_of(1) / 2 else max(1, min(127, round(UNIT_GAIN_CODE + 16 * math.log2(gain))))


def detail_mode(p: Preset, detail_gain: str | float) -> str | int | None:
    """``detail_gain`` checked for this model: "search", "table", a head code, or None (the model
    writes no gain)."""
    if isinstance(detail_gain, str) and detail_gain not in DETAIL_GAIN_MODES:
        raise ValueError(f"unknown detail gain {detail_gain!r} (a number, or one of {', '.join(DETAIL_GAIN_MODES)})")
    if p.cdm is None or p.cdm.config.detail_sigma is None:
        if detail_gain == "search":  # the default: nothing to search for
            return None
        raise ValueError(f"preset {p.name} model {p.model_id.hex()} has no detail transfer: its streams carry no detail gain")
    if detail_gain == "table" and p.detail_gains is None:
        raise ValueError(f"preset {p.name} model {p.model_id.hex()} has no detail gain table: use 'search' or a number")
    return detail_gain if isinstance(detail_gain, str) else gain_code(float(detail_gain))


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
        split = split_detail(p.autoencoder, plain_ae, z_hat, restored, p.cdm.config.detail_sigma)
        plain = plain_ae.decode_from_features(split.plain_features).clamp(0, 1)[:, :, :ch, :cw]
    output = None if head.scale == 1 else lambda x: upsample(x, head.width, head.height).clamp(0, 1)  # as a decoder does
    split = DetailSplit(split.low[:, :, :ch, :cw], split.detail[:, :, :ch, :cw], None)
    return split, plain if output is None else output(plain), output


def _with_gain(stream: Bitstream, code: int) -> bytes:
    stream.header.detail_gain = code
    return Bitstream(stream.header, stream.hyper_latent, stream.latent, stream.text).to_bytes()


def _choose_detail_gains(p: Preset, images: list[Image.Image], pairs: list[tuple[bytes, torch.Tensor]],
                         texts: list[str], detail_gain: str | float) -> list[tuple[bytes, torch.Tensor]]:  # fmt: skip
    """Write into each fresh stream's head the detail gain a CDM decoder should use (models with
    detail transfer only): a fixed code, the release's code for the level, or the search's,
    which decodes each stream as a CDM decoder will and measures it against its original."""
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


def encode_with_symbols(
    images: list[Image.Image | str | os.PathLike | bytes],
    *,
    rate: float | None = None,
    target_bpp: float | None = None,
    preset: str | Preset = DEFAULT_PRESET,
    texts: list[str] | None = None,
    detail_gain: str | float = "search",
    scale: int | str = 1,
    refine_steps: int = 0,
) -> list[tuple[bytes, torch.Tensor]]:
    """Each image's stream with the exact ``y_hat`` a decoder must recover from it (for :func:`verify`).

    ``texts`` (one per image, "" for none) go into the streams' text sections (the semantic residual).
    ``detail_gain``: how the CDM detail gain is set ("search", "table" or a gain; see
    ``DETAIL_GAIN_MODES``). ``scale``: code each image at 1/scale of its size (1, the
    default, 2 or 4), or "auto": the release's choice for the stream's size (``scale_for_bpp``);
    with ``rate``, the size that rate gives at full size. The stream's head says the scale; a
    decoder upsamples. A smaller coded image is more faithful at ultra-low rates (PSNR, MS-SSIM)
    but CDM restores little texture on it, which is why full size stays the default.
    ``refine_steps``: refine each image's latent for its stream by that many gradient steps
    through the decoder (:mod:`codec.latent_refine`; 0, the default: none). Smaller streams for
    the same fidelity, at about 0.7 s a step on 2 CPU threads for a Kodak image.
    """
    p, pil, texts, pairs = _encode_unchosen(images, rate=rate, target_bpp=target_bpp, preset=preset, texts=texts,
                                            detail_gain=detail_gain, scale=scale, refine_steps=refine_steps)  # fmt: skip
    return _choose_detail_gains(p, pil, pairs, texts, detail_gain)


def _encode_unchosen(images: list, *, rate: float | None, target_bpp: float | None, preset: str | Preset,
                     texts: list[str] | None, detail_gain: str | float, scale: int | str, refine_steps: int,
                     ) -> tuple[Preset, list[Image.Image], list[str], list[tuple[bytes, torch.Tensor]]]:  # fmt: skip
    """:func:`encode_with_symbols` up to the detail gain: the arguments checked, and each image's
    stream (its head's gain still the unit code) with its symbols."""
    if rate is not None and target_bpp is not None:
        raise ValueError("give either rate or target_bpp, not both")
    if target_bpp is not None and target_bpp <= 0:
        raise ValueError("target_bpp must be positive")
    check_scale(scale)
    check_refine_steps(refine_steps)
    p = _preset(preset)
    detail_mode(p, detail_gain)  # a bad value fails before any work
    pil = [_as_image(im) for im in images]
    texts = [""] * len(pil) if texts is None else list(texts)
    if scale != "auto" or p.scale_below_bpp is None:  # a model without measured thresholds codes at full size
        pairs = _code(p, pil, texts, 1 if scale == "auto" else scale, rate, target_bpp, refine_steps)
    elif target_bpp is not None:
        pairs = _code(p, pil, texts, scale_for_bpp(p, target_bpp), None, target_bpp, refine_steps)
    else:  # the size of this rate at full size (unrefined), at the scale that does best at that size
        full = _analyse(p, pil, texts, 1)
        pairs = _code_analysed(p, full, rate, None)
        budget = [8 * len(stream) / (im.width * im.height) for (stream, _), im in zip(pairs, pil)]
        for i, b in enumerate(budget):
            if (s := scale_for_bpp(p, b)) != 1:
                pairs[i] = _code(p, [pil[i]], [texts[i]], s, None, b, refine_steps)[0]
            elif refine_steps:  # stays at full size: refine the analysis already made
                pairs[i] = _code_analysed(p, _item(full, i), rate, None, refine_steps)[0]
    return p, pil, texts, pairs


def check_refine_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"refine_steps must be a whole number >= 0, got {steps!r}")


def check_scale(scale: int | str) -> None:
    if scale != "auto" and scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r} (one of auto, {', '.join(map(str, SCALES))})")


def scale_for_bpp(p: Preset, bpp: float) -> int:
    """The coded-size factor for a stream of ``bpp`` (the release's measured thresholds): the
    largest scale whose threshold lies above it, else 1."""
    return max([s for s, below in (p.scale_below_bpp or {}).items() if bpp < below], default=1)


def _code(p: Preset, images: list[Image.Image], texts: list[str], scale: int, rate: float | None,
          target_bpp: float | None, refine_steps: int = 0) -> list[tuple[bytes, torch.Tensor]]:  # fmt: skip
    """Streams (detail gain still unchosen) and symbols of images coded at 1/``scale``, their
    ``y`` refined with ``refine_steps`` steps (:mod:`codec.latent_refine`; 0: none)."""
    return _code_analysed(p, _analyse(p, images, texts, scale), rate, target_bpp, refine_steps)


def _code_analysed(p: Preset, a: _Analysed, rate: float | None, target_bpp: float | None,
                   refine_steps: int = 0) -> list[tuple[bytes, torch.Tensor]]:  # fmt: skip
    """:func:`_code` of images already analysed."""
    if target_bpp is not None:
        found = [_search_level(p, _item(a, i), target_bpp) for i in range(len(a.texts))]
        if refine_steps:
            found = [_refine_within(p, _item(a, i), f, target_bpp, refine_steps) for i, f in enumerate(found)]
        return [(f[1], f[2][0]) for f in found]
    level = rate_to_level(p, p.default_rate if rate is None else rate)
    if refine_steps:
        a = _refined(p, a, level, refine_steps)
    strings, y_hat = p.latent_codec.code_latent(a.analysed, level)
    return list(zip(_assemble(p, a, level, strings), y_hat))


def encode_batch(
    images: list[Image.Image | str | os.PathLike | bytes],
    *,
    rate: float | None = None,
    target_bpp: float | None = None,
    preset: str | Preset = DEFAULT_PRESET,
    verify_streams: bool = False,
    texts: list[str] | None = None,
    detail_gain: str | float = "search",
    scale: int | str = 1,
    refine_steps: int = 0,
) -> list[bytes]:
    """Encode images of one size together (the autoencoder and transforms run batched).

    With ``verify_streams`` every stream is parsed and entropy-decoded once before it is
    returned (:class:`VerifyError` if it does not give back the encoder's symbols).
    """
    pairs = encode_with_symbols(images, rate=rate, target_bpp=target_bpp, preset=preset, texts=texts,
                                detail_gain=detail_gain, scale=scale, refine_steps=refine_steps)
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
    detail_gain: str | float = "search",
    scale: int | str = 1,
    refine_steps: int = 0,
) -> bytes:
    """Compress one image (a PIL image, a path or encoded bytes), and optionally its residual text.

    ``detail_gain`` (models whose CDM has detail transfer): "search" chooses each image's gain by
    decoding it (the most texture within the fidelity budget; the encode takes about 3.6 times
    as long), "table" takes the release's per-level gain (no decode), a number fixes the gain.

    With ``pfo_steps`` (and a text-conditioned CDM in the preset) the text's tokens are first
    refined against the decoder (perceptual fidelity optimisation, PEZ), within ``pfo_seconds``.
    ``refine_steps``: see :func:`encode_with_symbols`.
    """
    kw = {"rate": rate, "target_bpp": target_bpp, "preset": preset, "detail_gain": detail_gain, "scale": scale,
          "refine_steps": refine_steps}  # fmt: skip
    if not (pfo_steps and text):
        return encode_batch([image], texts=[text], **kw)[0]
    from codec.cdm.prompt import CDMPromptDecoder
    from codec.semantic.pfo import optimise_prompt

    # The prompt decoder renders at unit gain, so this first stream's gain is not chosen.
    p, pil, _, ((stream, y_hat),) = _encode_unchosen([image], texts=[text], **kw)
    dec = CDMPromptDecoder(p)
    coded_at = Bitstream.from_bytes(stream).header.scale  # PFO compares at the coded size
    target = to_tensor(shrink(pil[0], coded_at)).to(next(p.autoencoder.parameters()).device)
    best = optimise_prompt(dec, dec.condition(stream), target, text, steps=pfo_steps, time_budget_s=pfo_seconds)
    if target_bpp is not None or scale == "auto":  # the text's size is part of the budget: code again
        return encode_batch([image], texts=[best.text], **kw)[0]
    # The latent's coding does not depend on the text: keep it (and any refinement of it), put the
    # new text in and choose the detail gain for it (the denoiser reads the text).
    fresh = replace(Bitstream.from_bytes(stream), text=encode_text(best.text, p.text_model)).to_bytes()
    return _choose_detail_gains(p, pil, [(fresh, y_hat)], [best.text], detail_gain)[0][0]


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
                preset: str | Preset = DEFAULT_PRESET, scales: list[int] | None = None) -> list[Image.Image]:  # fmt: skip
    """The latent-only reconstruction a plain decoder gives for exact symbols ``y_hat`` at their
    rate levels and scales (as :func:`encode_with_symbols` returns them, with each stream's
    level and scale), at the original's ``width`` × ``height``: what semantic residual coding
    captions."""
    p = _preset(preset)
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
        groups.setdefault((id(p), h.width, h.height, h.scale, h.rate_level, h.diffusion_start_step), []).append(i)
    for (_, w, h, scale, level, start), idx in groups.items():
        p = parsed[idx[0]][1]
        cw, ch = parsed[idx[0]][0].header.coded_size
        z_shape = p.z_shape(cw, ch)
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
            x = upsample(x[:, :, :ch, :cw], w, h).clamp(0, 1)  # a stream coded at full size: unchanged
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
        "rate_level": h.rate_level, "rate": h.rate_level / LEVELS_PER_POINT, "scale": h.scale, "bytes": len(data),
        "bpp": len(data) * 8 / (h.width * h.height), "sections": s.section_bytes,
        "diffusion": {"start_step": h.diffusion_start_step, "seed": h.diffusion_seed,
                      "detail_gain": None if h.detail_gain is None else gain_of(h.detail_gain)},
    }  # fmt: skip


__all__ = ["encode", "encode_batch", "decode", "decode_batch", "info", "read_text", "parse", "verify", "ImageError", "BitstreamError", "VerifyError"]
