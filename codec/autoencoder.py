"""TAEF2: the tiny autoencoder for the FLUX.2 latent space, as the offline preset's backbone.

The module layout mirrors the published state dicts (``taef2_encoder.pth`` and
``taef2_decoder.pth``) key for key, so ``load_state_dict(strict=True)`` is the check
that this is the same network. The weights are data the user supplies: they are loaded
from a directory with ``weights_only=True`` and never shipped with the project.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from codec.tiling import tiled

ENCODER_FILE = "taef2_encoder.pth"
DECODER_FILE = "taef2_decoder.pth"
LATENT_CHANNELS = 32
SCALE_FACTOR = 8
WEIGHTS_ENV = "RESULIC_TAEF2_DIR"
# The decoder's last stage (upsample to full size, conv, block, conv to RGB) starts here; before
# it the features are at half the image's resolution.
LAST_STAGE = 16
# Where each network's GroupNorms (which see the whole image) end or begin: the decoder's first
# DECODER_HEAD modules and the encoder's modules from ENCODER_LOCAL on run whole, at the latent's
# resolution; the rest, at up to full resolution, is local and runs in tiles (``codec.tiling``).
DECODER_HEAD = 6
ENCODER_LOCAL = 11
# Relative to the checkout: ``<repo>/../shared/weights/taef2``.
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "weights" / "taef2"


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """Soft clamp of the latent to about [-3, 3], as the decoder was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """Residual conv block; the deepest blocks add a per-pixel bottleneck branch to their input."""

    def __init__(self, channels: int, pooled: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv(channels, channels), nn.ReLU(), _conv(channels, channels), nn.ReLU(), _conv(channels, channels)
        )
        self.pool = (
            nn.Sequential(
                nn.Conv2d(channels, 4 * channels, 1, bias=False),
                nn.GroupNorm(4, 4 * channels),
                nn.ReLU(),
                nn.Conv2d(4 * channels, channels, 1, bias=False),
            )
            if pooled
            else None
        )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


def build_encoder() -> nn.Sequential:
    """RGB in [0, 1] -> 32-channel latent at 1/8 scale."""
    c = 64
    return nn.Sequential(
        _conv(3, c), Block(c),
        _conv(c, c, stride=2, bias=False), Block(c), Block(c), Block(c),
        _conv(c, c, stride=2, bias=False), Block(c), Block(c), Block(c),
        _conv(c, c, stride=2, bias=False), Block(c, True), Block(c, True), Block(c, True),
        _conv(c, LATENT_CHANNELS),
    )  # fmt: skip


def build_decoder() -> nn.Sequential:
    """32-channel latent -> RGB, roughly in [0, 1] (callers clamp)."""
    c = 64
    return nn.Sequential(
        Clamp(), _conv(LATENT_CHANNELS, c), nn.ReLU(),
        Block(c, True), Block(c, True), Block(c, True), nn.Upsample(scale_factor=2), _conv(c, c, bias=False),
        Block(c), Block(c), Block(c), nn.Upsample(scale_factor=2), _conv(c, c, bias=False),
        Block(c), Block(c), Block(c), nn.Upsample(scale_factor=2), _conv(c, c, bias=False),
        Block(c), _conv(c, 3),
    )  # fmt: skip


def resolve_weights_dir(path: str | os.PathLike | None = None) -> Path:
    """The TAEF2 weights directory: the argument, else ``$RESULIC_TAEF2_DIR``, else the default."""
    return Path(path or os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS_DIR)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class TAEF2(nn.Module):
    """Encoder and decoder pair; ``weights_sha256`` identifies the exact files loaded."""

    latent_channels = LATENT_CHANNELS
    scale_factor = SCALE_FACTOR

    def __init__(self) -> None:
        super().__init__()
        self.encoder = build_encoder()
        self.decoder = build_decoder()
        self.weights_sha256 = ""

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None) -> "TAEF2":
        folder = resolve_weights_dir(path)
        files = [folder / ENCODER_FILE, folder / DECODER_FILE]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"TAEF2 weights not found: {', '.join(missing)}. Set {WEIGHTS_ENV} or --weights-dir, "
                "or run `resulic weights fetch`."
            )
        model = cls()
        model.encoder.load_state_dict(torch.load(files[0], map_location="cpu", weights_only=True))
        model.decoder.load_state_dict(torch.load(files[1], map_location="cpu", weights_only=True))
        digest = hashlib.sha256()
        for f in files:
            digest.update(bytes.fromhex(file_sha256(f)))
        model.weights_sha256 = digest.hexdigest()
        return model.eval().requires_grad_(False)

    def with_decoder(self, path: str | os.PathLike) -> "TAEF2":
        """This autoencoder's encoder (shared) with another decoder of the same network, from a
        safetensors file: one fine-tuned on decoded latents (``training.decoder``).
        ``weights_sha256`` becomes that file's SHA-256."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"decoder weights not found: {path}")
        return self._with_decoder_state(load_file(str(path)), file_sha256(path))

    def _with_decoder_state(self, state: dict[str, torch.Tensor], weights_sha256: str) -> "TAEF2":
        """A TAEF2 sharing this one's encoder, with a decoder loaded strictly (the same network,
        key for key) from ``state``, on this one's device."""
        other = TAEF2()
        other.encoder = self.encoder
        other.decoder.load_state_dict(state)
        other.weights_sha256 = weights_sha256
        return other.to(next(self.decoder.parameters()).device).eval().requires_grad_(False)

    def blended(self, other: "TAEF2", alpha: float) -> "TAEF2":
        """The encoder (shared) with decoder weights W + alpha·(W_other − W), in float32: a point
        on the line from this decoder to a fine-tune of it. alpha 0 and 1 return the two
        autoencoders themselves."""
        if alpha == 0:
            return self
        if alpha == 1:
            return other
        mine, theirs = self.decoder.state_dict(), other.decoder.state_dict()
        return self._with_decoder_state({k: mine[k] + alpha * (theirs[k] - mine[k]) for k in mine}, other.weights_sha256)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``image``: (B, 3, H, W) in [0, 1], H and W multiples of 8; its full-resolution layers
        run in tiles (``codec.tiling``: the same latent, with bounded memory)."""
        local = lambda x: (self.encoder[:ENCODER_LOCAL](x),)
        return self.encoder[ENCODER_LOCAL:](tiled(local, [image], scale_in=SCALE_FACTOR, scale_out=1)[0])

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        tail = lambda h: (self.decode_from_features(self.decode_features(h)).clamp(0, 1),)
        return tiled(tail, [self.decode_head(latent)], scale_in=1, scale_out=SCALE_FACTOR)[0]

    def decode_head(self, latent: torch.Tensor) -> torch.Tensor:
        """The decoder's layers that see the whole latent (its GroupNorms): run untiled."""
        return self.decoder[:DECODER_HEAD](latent)

    def decode_features(self, head: torch.Tensor) -> torch.Tensor:
        """``decode_head``'s output (or a tile of it) -> features at half the image's resolution."""
        return self.decoder[DECODER_HEAD:LAST_STAGE](head)

    def decode_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """The last stage on ``decode_features``' output: the full decode, unclamped."""
        return self.decoder[LAST_STAGE:](features)

    def decode_preview(self, features: torch.Tensor) -> torch.Tensor:
        """The last stage's convolutions run on the half-resolution features without the
        upsampling: a half-size image, unclamped, for about a quarter of that stage's cost.
        Its detail is not the full decode's, but its low frequencies match it closely (CDM's
        detail transfer uses them as the plain decode's; ``codec.cdm.detail``)."""
        return self.decoder[LAST_STAGE + 1 :](features)
