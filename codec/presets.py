"""Named presets: an autoencoder and a latent codec, with the hash that identifies both.

A bitstream names its preset and carries the first bytes of this hash, so a decoder can
refuse a stream made with weights it does not have instead of decoding garbage.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from codec.autoencoder import TAEF2, file_sha256
from codec.bitstream import MODEL_ID_BYTES
from codec.latent_codec import LatentCodec, LatentCodecConfig
from codec.text_model import TextModel

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
LATENT_CODEC_ENV = "RESULIC_LATENT_CODEC"
TEXT_MODEL_FILE = WEIGHTS_DIR / "text_en_v1.safetensors"
DEFAULT_PRESET = "taef2"


def load_latent_codec(path: str | os.PathLike) -> LatentCodec:
    """Float16 weights plus frozen integer tables, as written by ``save_weights`` in training."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    config = LatentCodecConfig(**json.loads(meta["config"]))
    tensors = load_file(str(path))
    model = LatentCodec(config)
    state = {k: v.float() for k, v in tensors.items() if not k.startswith("frozen.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("gaussian.", "entropy_bottleneck._"))]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the latent codec (missing {missing}, unexpected {unexpected})")
    model.load_frozen({k: v for k, v in tensors.items() if k.startswith("frozen.")})
    return model.eval().requires_grad_(False)


@dataclass
class Preset:
    name: str
    autoencoder: TAEF2
    latent_codec: LatentCodec
    text_model: TextModel
    weights_sha256: str
    default_rate: float

    @property
    def model_id(self) -> bytes:
        return bytes.fromhex(self.weights_sha256)[:MODEL_ID_BYTES]

    @property
    def pad_multiple(self) -> int:
        """Image sides are padded to this (the autoencoder's 8 times the latent codec's stride)."""
        return 8 * self.latent_codec.stride

    def z_shape(self, width: int, height: int) -> tuple[int, int]:
        """The hyper-latent's (rows, columns) for an image of this size: all a decoder needs."""
        m = self.pad_multiple
        return -(-height // m), -(-width // m)

    @property
    def num_levels(self) -> int:
        return self.latent_codec.num_levels

    def to(self, device: str | torch.device) -> "Preset":
        self.autoencoder.to(device)
        self.latent_codec.to(device)
        return self


def _load_taef2(weights_dir: str | None, latent_codec_path: str | None) -> Preset:
    ae = TAEF2.from_pretrained(weights_dir)
    path = Path(latent_codec_path or os.environ.get(LATENT_CODEC_ENV) or WEIGHTS_DIR / "latent_codec_taef2.safetensors")
    if not path.is_file():
        raise FileNotFoundError(f"latent codec weights not found: {path}")
    text = load_text_model("taef2")
    parts = (ae.weights_sha256, file_sha256(path), text.sha256)
    digest = hashlib.sha256(b"".join(bytes.fromhex(h) for h in parts)).hexdigest()
    return Preset("taef2", ae, load_latent_codec(path), text, digest, default_rate=3.0)


REGISTRY = {"taef2": _load_taef2}
TEXT_MODELS = {"taef2": TEXT_MODEL_FILE}


@functools.lru_cache(maxsize=None)
def load_text_model(name: str = DEFAULT_PRESET) -> TextModel:
    """Only the preset's text tables (what text coding needs), without its networks."""
    if name not in TEXT_MODELS:
        raise KeyError(f"unknown preset {name!r} (known: {', '.join(sorted(TEXT_MODELS))})")
    return TextModel.load(TEXT_MODELS[name])
_cache: dict[tuple, Preset] = {}
_lock = threading.Lock()


def load_preset(name: str = DEFAULT_PRESET, weights_dir: str | None = None, latent_codec_path: str | None = None) -> Preset:
    """Load (once per process) the named preset."""
    if name not in REGISTRY:
        raise KeyError(f"unknown preset {name!r} (known: {', '.join(sorted(REGISTRY))})")
    key = (name, str(weights_dir or os.environ.get("RESULIC_TAEF2_DIR", "")),
           str(latent_codec_path or os.environ.get(LATENT_CODEC_ENV, "")))  # fmt: skip
    with _lock:
        if key not in _cache:
            _cache[key] = REGISTRY[name](weights_dir, latent_codec_path)
        return _cache[key]
