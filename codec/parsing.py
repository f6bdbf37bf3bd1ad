"""Reading a stream without decoding its image: the container parsed and checked against the
weights it names, its text, and what ``info`` reports.

Decoding (``codec.decoding``) and the encoder's verification (``codec.encoder.verify``) both
start from :func:`parse`.
"""

from __future__ import annotations

import torch

from codec.bitstream import Bitstream, BitstreamError
from codec.cdm.detail import gain_of
from codec.latent_codec import LEVELS_PER_POINT
from codec.presets import Preset, load_preset
from codec.text_coding import decode_text


def resolve_preset(preset: str | Preset, device: str | torch.device | None = None) -> Preset:
    """A preset by name, loaded on ``device``, or one the caller already holds (on its own device)."""
    return preset if isinstance(preset, Preset) else load_preset(preset, device=device)


def parse(data: bytes, preset: str | Preset | None = None,
          device: str | torch.device | None = None) -> tuple[Bitstream, Preset]:  # fmt: skip
    """Parse and check a stream against the weights it names (any released model of its preset),
    loaded on ``device`` unless ``preset`` is a loaded one."""
    stream = Bitstream.from_bytes(data)
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
    if stream.header.rate_level >= p.num_levels:
        raise BitstreamError(f"bitstream rate level {stream.header.rate_level} is out of range")
    return stream, p


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
