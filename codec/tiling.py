"""Exact tiling: a convolutional stage run tile by tile, with a halo, gives the whole image's result.

An untiled autoencoder holds several 64-channel tensors at the image's full resolution: about
1 GB of memory a megapixel, so a 24-megapixel photo needed about 25 GB (measured: 5.4 GB RSS
to decode 4 MP, 9.5 GB for 8 MP). The parts of TAEF2 that run at full resolution are purely
local (convolutions, ReLUs, nearest upsampling; the GroupNorms, which see the whole image, sit
at the latent's resolution and run whole), and so are the detail transfer's blur and bilinear
upsampling. An output pixel of such a stage depends only on inputs within its receptive field;
a tile cut with a halo at least that wide, and cropped back to its core, computes its core
exactly as the whole image does, up to the order of float additions. So the peak memory is a
tile's, and no seam can appear, unlike the overlap-and-blend tiling of large-image VAE
decoders (``diffusers``' ``enable_tiling``), which changes pixels near each seam.

Tiles live on a grid of "units" (latent pixels); an input or output at ``s`` pixels a unit
is cut at multiples of ``s``, so stride-2 convolutions and 2× upsamplings keep their phase.
An image of at most ``tile`` units a side is run whole, as before tiling existed: its pixels
are unchanged bit for bit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from torch.utils.checkpoint import checkpoint

from codec.usage import UsageError

TILE_ENV = "RESULIC_TILE_LATENTS"
# Latent pixels a tile's side: 128 (1024 image pixels) keeps a tile's activations near 1.5 GB
# with its halo, and leaves images up to about 1 megapixel untiled. Larger tiles waste less
# on halos (a GPU with memory to spare may set $RESULIC_TILE_LATENTS higher).
DEFAULT_TILE = 128
# Latent pixels of halo: TAEF2's widest receptive field tiled here is its decoder's path to the
# half-size preview, bilinearly upsampled: 10.4 latents counted layer by layer (measured: tiles
# match the whole image exactly from a halo of 10; ``tests/test_tiling.py`` shows smaller halos
# fail). A blur on top widens it (``codec.cdm.detail`` adds its radius).
HALO = 12


def tile_side() -> int:
    """The tile's side in latent pixels: ``$RESULIC_TILE_LATENTS`` or the default."""
    raw = os.environ.get(TILE_ENV)
    if raw is None:
        return DEFAULT_TILE
    try:
        side = int(raw)
    except ValueError:
        side = 0
    if side < 2 * HALO:
        raise UsageError(f"${TILE_ENV} must be a whole number of latent pixels >= {2 * HALO}, got {raw!r}")
    return side


def _cuts(length: int, tile: int) -> list[tuple[int, int]]:
    """``length`` units in ceil(length / tile) near-equal spans (no thin last tile)."""
    n = math.ceil(length / tile)
    edges = [round(i * length / n) for i in range(n + 1)]
    return list(pairwise(edges))


def tiled(fn: Callable[..., tuple[torch.Tensor, ...]], inputs: Sequence[torch.Tensor], *, scale_in: int,
          scale_out: int, halo: int = HALO, tile: int | None = None) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """``fn(*inputs)`` computed tile by tile.

    ``inputs``: (B, C, H·scale_in, W·scale_in) tensors on one grid of H × W units; ``fn`` maps
    crops of them to a tuple of (B, C', h·scale_out, w·scale_out) tensors. ``fn`` must be local
    within ``halo`` units (no normalisation over the image); then the result equals the whole
    call's. Differentiable: with gradients on, each tile is checkpointed (its activations
    recomputed in the backward pass), so memory stays a tile's there too.
    """
    tile = tile_side() if tile is None else tile
    if any(t.shape[-2] % scale_in or t.shape[-1] % scale_in for t in inputs):
        raise ValueError(f"tiled inputs must be whole units of {scale_in} pixels, got {tuple(inputs[0].shape[-2:])}")
    units_h, units_w = inputs[0].shape[-2] // scale_in, inputs[0].shape[-1] // scale_in
    if units_h <= tile and units_w <= tile:
        return tuple(fn(*inputs))
    grad = torch.is_grad_enabled()  # inputs or fn's own weights (a decoder in training) may need gradients
    outs: list[torch.Tensor] = []
    for y0, y1 in _cuts(units_h, tile):
        ya, yb = max(0, y0 - halo), min(units_h, y1 + halo)
        for x0, x1 in _cuts(units_w, tile):
            xa, xb = max(0, x0 - halo), min(units_w, x1 + halo)
            crops = [t[..., ya * scale_in : yb * scale_in, xa * scale_in : xb * scale_in] for t in inputs]
            parts = checkpoint(fn, *crops, use_reentrant=False) if grad else fn(*crops)
            if not outs:
                outs = [p.new_empty((*p.shape[:-2], units_h * scale_out, units_w * scale_out)) for p in parts]
            s = scale_out
            for out, part in zip(outs, parts):
                out[..., y0 * s : y1 * s, x0 * s : x1 * s] = part[
                    ..., (y0 - ya) * s : (y1 - ya) * s, (x0 - xa) * s : (x1 - xa) * s
                ]
    return tuple(outs)
