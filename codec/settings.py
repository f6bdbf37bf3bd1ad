"""The encoder's choices, one frozen ``EncodeSettings``: rate or byte budget, coded size, latent
refinement, detail gain and prompt optimisation.

The object checks on its own what it can when it is made, so a pipeline refuses bad choices on
its driver before any work, then carries the one object to its encoder actors. What depends on
a model is checked against its preset: a rate beyond its levels (:func:`rate_to_level`), a
detail gain it cannot write (:func:`detail_mode`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from codec.cdm.detail import UNIT_GAIN_CODE, gain_of
from codec.latent_codec import LEVELS_PER_POINT
from codec.presets import Preset
from codec.resample import SCALES
from codec.usage import UsageError

# How the encoder sets the detail gain (only models whose CDM has detail transfer write one):
# - "search" (the default): per image, by decoding it as a CDM decoder will; each image gets the
#   most texture within the limits of ``codec.gain_choice``. Two decodes more per image: on 2
#   CPU threads a Kodak encode takes 3.6 times the autoencoder's own encode;
# - "table": the release's per-level code (``training.detail_gains``), no decode, for throughput:
#   an encode then costs about what the autoencoder's encoder does. The limits hold on the mean
#   over photos, not per photo;
# - a number: that gain for every image (the nearest head code).
DETAIL_GAIN_MODES = ("search", "table")


@dataclass(frozen=True)
class EncodeSettings:
    """How to encode, the same for every image of a call or a job.

    ``rate``: in trained-point units (0 = lowest, K-1 = highest; fractions interpolate); or
    ``target_bpp``: per image, the highest rate whose whole stream fits this many bits per
    pixel (level 0 if none does); neither: the preset's default rate.
    ``detail_gain``: how the CDM detail gain is set ("search", "table" or a gain; see
    ``DETAIL_GAIN_MODES``).
    ``scale``: code each image at 1/scale of its size (1, 2 or 4), or "auto": the release's
    choice for the stream's size (:func:`scale_for_bpp`); with ``rate``, the size that rate
    gives at full size; with ``target_bpp``, also a smaller size whenever the chosen one cannot
    get within the budget. The stream's head says the scale; a decoder upsamples. Not given: 1
    with a rate (on the perceptual model full size beats a smaller image at every size both
    reach, in LPIPS; on the older ones CDM restores little texture on a smaller image), "auto"
    with ``target_bpp``, so that a budget below full size's lowest rate is met, not overshot.
    ``refine_steps``: refine each image's latent for its stream by that many gradient steps
    through the decoder (``codec.latent_refine``; 0: none). Smaller streams for the same
    fidelity, at about 0.7 s a step on 2 CPU threads for a Kodak image.
    ``pfo_steps``, ``pfo_seconds``: with a text and a text-conditioned CDM, first refine the
    text's tokens against the decoder (perceptual fidelity optimisation, PEZ) within that time;
    one image at a time (``codec.encoder.encode``).
    """

    rate: float | None = None
    target_bpp: float | None = None
    detail_gain: str | float = "search"
    scale: int | str | None = None
    refine_steps: int = 0
    pfo_steps: int = 0
    pfo_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.rate is not None and self.target_bpp is not None:
            raise UsageError("give either rate or target_bpp, not both")
        for name in ("rate", "target_bpp"):
            if getattr(self, name) is not None and not math.isfinite(getattr(self, name)):
                raise UsageError(f"{name} must be a finite number, not {getattr(self, name)}")
        if self.target_bpp is not None and self.target_bpp <= 0:
            raise UsageError("target_bpp must be positive")
        if self.scale is None:  # frozen: the default is resolved once, here, so every reader sees the same
            object.__setattr__(self, "scale", 1 if self.target_bpp is None else "auto")
        if self.scale != "auto" and self.scale not in SCALES:
            raise UsageError(f"unknown scale {self.scale!r} (one of auto, {', '.join(map(str, SCALES))})")
        for name in ("refine_steps", "pfo_steps"):
            steps = getattr(self, name)
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
                raise UsageError(f"{name} must be a whole number >= 0, got {steps!r}")
        if self.pfo_seconds is not None and not (math.isfinite(self.pfo_seconds) and self.pfo_seconds > 0):
            raise UsageError(f"pfo_seconds must be a positive number of seconds, got {self.pfo_seconds}")
        _check_detail_gain(self.detail_gain)


def _check_detail_gain(detail_gain: str | float) -> None:
    if isinstance(detail_gain, str) and detail_gain not in DETAIL_GAIN_MODES:
        raise UsageError(f"unknown detail gain {detail_gain!r} (a number, or one of {', '.join(DETAIL_GAIN_MODES)})")


def rate_to_level(preset: Preset, rate: float) -> int:
    """A rate in trained-point units (0 = lowest, K-1 = highest; fractions interpolate) -> level."""
    level = round(rate * LEVELS_PER_POINT)
    if not 0 <= level < preset.num_levels:
        top = (preset.num_levels - 1) / LEVELS_PER_POINT
        raise UsageError(f"rate {rate} is outside [0, {top:g}] for preset {preset.name}")
    return level


def scale_for_bpp(p: Preset, bpp: float) -> int:
    """The coded-size factor for a stream of ``bpp`` (the release's measured thresholds): the
    largest scale whose threshold lies above it, else 1."""
    return max([s for s, below in (p.scale_below_bpp or {}).items() if bpp < below], default=1)


def over_target_reason(scale: int | str) -> str:
    """Why a stream coded at ``scale`` is over its ``target_bpp``: the lowest rate of the sizes it
    could take (the warning ``encode`` and ``compress`` give)."""
    if scale == "auto":
        return "the lowest rate at the smallest coded size"
    return f"the lowest rate at 1/{scale} size (--scale auto codes a smaller image to meet it)"


def parse_detail_gain(text: str) -> str | float:
    """A detail gain as written on a command line: a mode name or a number (``detail_mode``
    checks it against a model)."""
    if text in DETAIL_GAIN_MODES:
        return text
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"expected a number or one of {', '.join(DETAIL_GAIN_MODES)}, got {text!r}") from None


def gain_code(gain: float) -> int:
    """The head code nearest to a detail gain (0 … 15.2; ``gain_of`` is its inverse)."""
    if not 0 <= gain <= gain_of(127):
        raise UsageError(f"detail gain {gain} is outside [0, {gain_of(127):.2f}]")
    return 0 if gain < gain_of(1) / 2 else max(1, min(127, round(UNIT_GAIN_CODE + 16 * math.log2(gain))))


def detail_mode(p: Preset, detail_gain: str | float) -> str | int | None:
    """``detail_gain`` checked for this model: "search", "table", a head code, or None (the model
    writes no gain)."""
    _check_detail_gain(detail_gain)
    if p.cdm is None or p.cdm.config.detail_sigma is None:
        if detail_gain == "search":  # the default: nothing to search for
            return None
        raise UsageError(f"preset {p.name} model {p.model_id.hex()} has no detail transfer: its streams carry no detail gain")
    if detail_gain == "table" and p.detail_gains is None:
        raise UsageError(f"preset {p.name} model {p.model_id.hex()} has no detail gain table: use 'search' or a number")
    return detail_gain if isinstance(detail_gain, str) else gain_code(float(detail_gain))
