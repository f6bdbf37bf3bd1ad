"""Reading a stream without decoding its image: the container parsed and checked against the
weights it names, its text, and what ``info`` reports.

Decoding (``codec.decoding``) and the encoder's verification (``codec.encoder.verify``) both
start from :func:`parse`.
"""

from __future__ import annotations

import torch

from codec.bitstream import Bitstream, BitstreamError, PixelLimitError
from codec.cdm.detail import gain_of
from codec.cdm.process import NUM_TRAIN_TIMESTEPS
from codec.images import MAX_PIXELS
from codec.latent_codec import LEVELS_PER_POINT
from codec.presets import Preset, load_preset
from codec.text_coding import decode_text


MAX_SEED = 2**32 - 1  # the encoder writes 16 bits (spec section 8); a decoder reads up to 32
# An entropy-coded section is refused when longer than this per symbol: the top rate spends
# about 1 bit per symbol of y, so 16 bits each is far beyond any stream an encoder writes, and
# it bounds what a hostile stream makes the decoder allocate (codec.rans_guard).
MAX_BYTES_PER_SYMBOL = 2
MAX_TEXT_BYTES = 65536  # a residual caption is tens of bytes


def resolve_preset(preset: str | Preset, device: str | torch.device | None = None) -> Preset:
    """A preset by name, loaded on ``device``, or one the caller already holds (on its own device)."""
    return preset if isinstance(preset, Preset) else load_preset(preset, device=device)


def parse(data: bytes, preset: str | Preset | None = None, device: str | torch.device | None = None,
          max_pixels: int = MAX_PIXELS) -> tuple[Bitstream, Preset]:  # fmt: skip
    """Parse and check a stream against the weights it names (any released model of its preset),
    loaded on ``device`` unless ``preset`` is a loaded one. A stream of more than ``max_pixels``
    pixels is refused before any weights load."""
    stream = Bitstream.from_bytes(data)
    h = stream.header
    if h.width * h.height > max_pixels:
        raise PixelLimitError(f"bitstream claims {h.width}x{h.height} = {h.width * h.height:,} pixels, more than "
                             f"this decoder's cap of {max_pixels:,} ($RESULIC_MAX_PIXELS)")  # fmt: skip
    name, model_id = stream.header.preset, stream.header.model_id
    if isinstance(preset, Preset) and preset.name != name:
        raise BitstreamError(f"bitstream was made with preset {name!r}, not {preset.name!r}")
    try:
        p = resolve_preset(preset or name, device)
    except KeyError as e:
        raise BitstreamError(f"bitstream names preset {name!r}, which this decoder does not have") from e
    if model_id != p.model_id and not isinstance(preset, Preset):
        try:
            p = load_preset(name, model_id=model_id.hex(), device=device)
        except KeyError:
            pass  # not a released model: refused below
    if model_id != p.model_id:
        raise BitstreamError(
            f"bitstream was made with {name} weights {model_id.hex()}, "
            f"but the loaded weights are {p.model_id.hex()} (and no released model has that id)"
        )
    check_against_model(stream, p, max_pixels)
    return stream, p


def check_against_model(stream: Bitstream, p: Preset, max_pixels: int = MAX_PIXELS) -> None:
    """Every head field and section length against what model ``p`` can have written, before
    anything is allocated for the stream (spec section 2). The pixel cap also holds for the
    padded coded size the decoder works at (a 116,808 × 1 head pads to 15 Mpx)."""
    h = stream.header
    rows, cols = p.z_shape(*h.coded_size)
    working = rows * cols * p.pad_multiple**2
    if working > max_pixels:
        raise PixelLimitError(f"bitstream's {h.width}x{h.height} image is decoded at {working:,} pixels (padded), "
                             f"more than this decoder's cap of {max_pixels:,} ($RESULIC_MAX_PIXELS)")  # fmt: skip
    if h.rate_level >= p.num_levels:
        raise BitstreamError(f"bitstream rate level {h.rate_level} is out of range (this model has {p.num_levels})")
    if h.diffusion_start_step >= NUM_TRAIN_TIMESTEPS:
        raise BitstreamError(f"bitstream diffusion start step {h.diffusion_start_step} is out of range "
                             f"(0 … {NUM_TRAIN_TIMESTEPS - 1})")  # fmt: skip
    if h.diffusion_seed > MAX_SEED:
        raise BitstreamError(f"bitstream diffusion seed {h.diffusion_seed} is out of range (0 … {MAX_SEED})")
    n_z, n_y = p.latent_codec.symbol_counts((rows, cols))
    for name, payload, symbols in (("hyper_latent", stream.hyper_latent, n_z), ("latent", stream.latent, n_y)):
        if len(payload) > MAX_BYTES_PER_SYMBOL * symbols + 16:
            raise BitstreamError(f"bitstream section {name} holds {len(payload):,} bytes, more than "
                                 f"{MAX_BYTES_PER_SYMBOL} per symbol of its {symbols:,}")  # fmt: skip
    if len(stream.text) > MAX_TEXT_BYTES:
        raise BitstreamError(f"bitstream text section holds {len(stream.text):,} bytes (at most {MAX_TEXT_BYTES:,})")


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
