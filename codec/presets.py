"""Named presets: an autoencoder, a latent codec and a text model, with the hash that identifies them.

A bitstream names its preset and carries the first bytes of this hash (the model id). Every
model a release could write with stays addressable by its id (``weights/releases.json``), so
a stream made years ago is decoded with the weights it was made with, and a stream made with
weights this build does not have is refused instead of decoded into garbage.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from codec.autoencoder import TAEF2, file_sha256
from codec.bitstream import MODEL_ID_BYTES
from codec.cdm.model import CDMDenoiser
from codec.device import resolve_device
from codec.latent_codec import LatentCodec, LatentCodecConfig
from codec.text_model import TextModel

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
LATENT_CODEC_ENV = "RESULIC_LATENT_CODEC"
CDM_ENV = "RESULIC_CDM"  # a CDM weights directory to use instead of the release's (a new model id)
DECODER_ENV = "RESULIC_DECODER"  # a plain-path decoder file to use instead of the release's (a new model id)
RELEASES_FILE = WEIGHTS_DIR / "releases.json"
DEFAULT_PRESET = "taef2"
PLAIN_DECODERS_KEPT = 8  # blended plain decoders cached per preset (one per distinct blend)


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


def decoder_blend(path: str | os.PathLike) -> tuple[float, ...] | None:
    """A fine-tuned decoder file's per-level blend (its metadata ``blend``, a JSON list), if set."""
    with safe_open(str(path), "pt") as f:
        raw = (f.metadata() or {}).get("blend")
    return None if raw is None else tuple(float(a) for a in json.loads(raw))


@dataclass
class Preset:
    name: str
    autoencoder: TAEF2
    latent_codec: LatentCodec
    text_model: TextModel
    weights_sha256: str
    default_rate: float
    cdm: CDMDenoiser | None = None  # the compression-aware diffusion decoder, when the model has one
    decoder_finetune: TAEF2 | None = None  # the autoencoder with a decoder fine-tuned on ẑ, when the model has one
    decoder_blend: tuple[float, ...] | None = None  # per level: how far toward the fine-tune (None: all the way)
    detail_gains: dict[int, tuple[int, ...]] | None = None  # per scale, per level: the detail gain code without a search
    scale_below_bpp: dict[int, float] | None = None  # coded-size factor -> the stream size it is used below
    _plain: dict = field(default_factory=dict, repr=False, compare=False)

    def plain(self, level: int) -> TAEF2:
        """The autoencoder that decodes ẑ of this rate level on the plain path (the plain decode,
        the caption's latent-only reconstruction, the low frequencies of a CDM decode).

        With a fine-tuned decoder its weights are TAEF2's moved ``decoder_blend[level]`` of the
        way toward the fine-tune's: the fine-tune gains about a decibel at low rates, where ẑ is
        far from any clean latent, but on held-out photos it lost up to 0.9 dB at the highest
        rates, where TAEF2's own decoder is already right (``codec.train_decoder``). CDM's
        restored latent is near a clean latent, so it is decoded by ``autoencoder`` itself."""
        if self.decoder_finetune is None:
            return self.autoencoder
        alpha = 1.0 if self.decoder_blend is None else self.decoder_blend[level]
        if alpha not in self._plain:
            if len(self._plain) >= PLAIN_DECODERS_KEPT:  # 5 MB each; a job uses a few levels
                self._plain.pop(next(iter(self._plain)))
            self._plain[alpha] = self.autoencoder.blended(self.decoder_finetune, alpha)
        return self._plain[alpha]

    def restored_decoder(self, level: int) -> TAEF2:
        """The autoencoder that decodes the CDM's restored latent at this level: TAEF2's own, or
        the plain decoder for a CDM trained through it (its config's ``decoder``)."""
        return self.plain(level) if self.cdm is not None and self.cdm.config.decoder == "plain" else self.autoencoder

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
        for part in (self.cdm, self.decoder_finetune):
            if part is not None:
                part.to(device)
        self._plain.clear()
        return self


def releases(name: str) -> list[dict]:
    """The released models of a preset, oldest first (the last one writes new streams)."""
    table = json.loads(RELEASES_FILE.read_text())
    if name not in table:
        raise KeyError(f"unknown preset {name!r} (known: {', '.join(sorted(k for k in table if k[0] != '_'))})")
    return table[name]


def release(name: str, model_id: str | None = None) -> dict:
    """One released model of a preset: by its model id (hex), else the newest."""
    entries = releases(name)
    if model_id is None:
        return entries[-1]
    for e in entries:
        if e["model_id"] == model_id:
            return e
    raise KeyError(f"{name} has no released model {model_id} (known: {', '.join(e['model_id'] for e in entries)})")


def model_digest(*sha256_hex: str) -> str:
    return hashlib.sha256(b"".join(bytes.fromhex(h) for h in sha256_hex)).hexdigest()


def _load_taef2(weights_dir: str | None, latent_codec_path: str | None, model_id: str | None) -> Preset:
    ae = TAEF2.from_pretrained(weights_dir)
    entry = release("taef2", model_id)
    override = None if model_id else latent_codec_path or os.environ.get(LATENT_CODEC_ENV)
    path = Path(override or WEIGHTS_DIR / entry["latent_codec"])
    if not path.is_file():
        raise FileNotFoundError(f"latent codec weights not found: {path}")
    text = _text_model(entry["text_model"])
    cdm_dir = (None if model_id else os.environ.get(CDM_ENV)) or (WEIGHTS_DIR / entry["cdm"] if entry.get("cdm") else None)
    cdm = CDMDenoiser.from_pretrained(cdm_dir) if cdm_dir else None
    dec_file = (None if model_id else os.environ.get(DECODER_ENV)) or (WEIGHTS_DIR / entry["decoder"] if entry.get("decoder") else None)
    finetune = ae.with_decoder(dec_file) if dec_file else None
    blend = decoder_blend(dec_file) if dec_file else None
    parts = [ae.weights_sha256, file_sha256(path), text.sha256] + ([cdm.weights_sha256] if cdm else [])
    digest = model_digest(*parts, *([finetune.weights_sha256] if finetune else []))
    if model_id and digest[: 2 * MODEL_ID_BYTES] != model_id:
        raise ValueError(f"the files of taef2 model {model_id} do not hash to it (changed in place?)")
    lc = load_latent_codec(path)
    if blend is not None and len(blend) != lc.num_levels:
        raise ValueError(f"{dec_file}: its blend has {len(blend)} levels, the latent codec {lc.num_levels}")
    # the encoder's rules were measured with the release's own files; an override is a new model
    own = digest[: 2 * MODEL_ID_BYTES] == entry["model_id"]
    gains = detail_gain_table(entry, lc.num_levels) if own else None
    scales = {int(k): float(v) for k, v in entry["scale_below_bpp"].items()} if own and "scale_below_bpp" in entry else None
    return Preset("taef2", ae, lc, text, digest, default_rate=3.0, cdm=cdm, decoder_finetune=finetune, decoder_blend=blend,
                  detail_gains=gains, scale_below_bpp=scales)  # fmt: skip


def detail_gain_table(entry: dict, num_levels: int) -> dict[int, tuple[int, ...]] | None:
    """A release's detail gain codes per coded-size factor and level (built by ``training/detail_gains.py``),
    if it has a table. Only for the release's own files: the table was measured with those
    weights, and an override (another CDM, decoder or latent codec) is a new model that has none."""
    if "detail_gains" not in entry:
        return None
    table = json.loads((WEIGHTS_DIR / entry["detail_gains"]).read_text())["codes"]
    for scale, codes in table.items():
        if len(codes) != num_levels:
            raise ValueError(f"{entry['detail_gains']}: scale {scale} has {len(codes)} levels, the latent codec {num_levels}")
    return {int(scale): tuple(int(c) for c in codes) for scale, codes in table.items()}


def _load_sd21(weights_dir: str | None, latent_codec_path: str | None, model_id: str | None) -> Preset:
    from codec.sd21.preset import load_sd21  # diffusers and transformers: only for this preset

    return load_sd21(weights_dir, latent_codec_path, model_id)


REGISTRY = {"taef2": _load_taef2, "sd21": _load_sd21}
# what a loaded preset depends on besides load_preset's arguments (the cache key holds them)
PRESET_ENV = ("RESULIC_TAEF2_DIR", LATENT_CODEC_ENV, CDM_ENV, DECODER_ENV, "RESULIC_SD_MODEL", "RESULIC_CONTROLNET")


@functools.lru_cache(maxsize=None)
def _text_model(file: str) -> TextModel:
    return TextModel.load(WEIGHTS_DIR / file)


def load_text_model(name: str = DEFAULT_PRESET, model_id: str | None = None) -> TextModel:
    """Only a preset's text tables (what text coding needs), without its networks."""
    return _text_model(release(name, model_id)["text_model"])


_cache: dict[tuple, Preset] = {}
_lock = threading.Lock()


def load_preset(
    name: str = DEFAULT_PRESET,
    weights_dir: str | None = None,
    latent_codec_path: str | None = None,
    model_id: str | None = None,
    device: str | torch.device | None = None,
) -> Preset:
    """Load (once per process and device) the named preset: its newest release (or the latent
    codec file given, or in ``$RESULIC_LATENT_CODEC``), or with ``model_id`` (hex) that released
    model; on ``device`` (``codec.device.resolve_device``: the CPU by default)."""
    dev = resolve_device(device)
    if name not in REGISTRY:
        raise KeyError(f"unknown preset {name!r} (known: {', '.join(sorted(REGISTRY))})")
    env = tuple("" if model_id and var != "RESULIC_TAEF2_DIR" else os.environ.get(var, "") for var in PRESET_ENV)
    key = (name, str(weights_dir or ""), str(latent_codec_path or ""), *env, model_id or "", str(dev))
    with _lock:
        if key not in _cache:
            p = REGISTRY[name](weights_dir, latent_codec_path, model_id)
            _cache[key] = p if dev.type == "cpu" else p.to(dev)
        return _cache[key]
