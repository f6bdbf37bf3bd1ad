"""The CDM denoiser: a small diffusers UNet on the autoencoder's latent, conditioned on the
decoded latent ẑ (concatenated to its input, the role the paper's control branch plays) and
on the rate level (a class embedding added to the timestep embedding).

With ``text_dim`` set it is a ``UNet2DConditionModel`` that cross-attends to text embeddings
(the residual text, with classifier-free guidance at decode time); the offline preset's model
has none, since its training photos have no captions.

The UNet outputs a correction to ẑ: the model's clean-latent estimate is ẑ + UNet(z_t, ẑ), and
the UNet's last convolution starts at zero, so an untrained model decodes exactly as the plain
decoder does and training can only move it from there (see ``codec.cdm.process`` for why the
model predicts z₀ rather than the noise).

Weights live in a directory: ``config.json`` and ``model.safetensors`` (float16), plus the
latent normalisation the model was trained with (``latent_mean``/``latent_std`` per channel).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from codec.autoencoder import file_sha256


@dataclass
class CDMConfig:
    latent_channels: int = 32
    num_levels: int = 73  # one embedding per rate level of the latent codec
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    norm_num_groups: int = 16
    text_dim: int | None = None  # cross-attention width when text-conditioned
    text_encoder: str | None = None  # CLIP text model: a folder beside the weights, a path or a hub id
    guidance_scale: float = 2.5  # classifier-free guidance with the residual text (the reference code's default)
    latent_mean: list[float] = field(default_factory=list)  # per channel; empty: 0
    latent_std: list[float] = field(default_factory=list)  # per channel; empty: 1
    prediction_type: str = "sample"  # the clean latent, as ẑ + correction (the only kind this code runs)
    # Per rate level: how much of the restoration is kept, ẑ + s·(restored − ẑ) (empty: s = 1).
    # Set by ``resulic train cdm-calibrate`` on training photos, so that what the added texture
    # costs in PSNR stays within a budget at every rate (training.cdm_calibrate says why).
    blend: list[float] = field(default_factory=list)
    # Gaussian σ in pixels: keep only the restoration's detail above it, on the plain decode's
    # lower frequencies (``codec.cdm.detail``); None: decode the restored latent as it is (v1).
    detail_sigma: float | None = None
    # What decodes the restored latent: "autoencoder", TAEF2's own decoder (a restored latent is
    # near a clean one; the v1 CDMs), or "plain", the model's plain decoder of the stream's level,
    # for a CDM trained through the decoder its latent codec was trained with
    # (``training.cdm_perceptual``).
    decoder: str = "autoencoder"

    @classmethod
    def from_dict(cls, d: dict) -> "CDMConfig":
        d = dict(d)
        d["block_out_channels"] = tuple(d["block_out_channels"])
        if d.get("prediction_type", "epsilon") != "sample":
            raise ValueError(f"CDM prediction_type {d.get('prediction_type', 'epsilon')!r} is not supported: this code "
                             "runs denoisers that predict the clean latent ('sample')")  # fmt: skip
        if d.get("decoder", "autoencoder") not in ("autoencoder", "plain"):
            raise ValueError(f"CDM decoder {d['decoder']!r} is not one of: autoencoder, plain")
        return cls(**d)


class CDMDenoiser(torch.nn.Module):
    def __init__(self, config: CDMConfig) -> None:
        super().__init__()
        self.config = config
        c, n = config.latent_channels, len(config.block_out_channels)
        common = dict(sample_size=None, in_channels=2 * c, out_channels=c, block_out_channels=config.block_out_channels,
                      layers_per_block=config.layers_per_block, norm_num_groups=config.norm_num_groups,
                      class_embed_type=None, num_class_embeds=config.num_levels)  # fmt: skip
        if config.text_dim:
            from diffusers import UNet2DConditionModel

            self.unet = UNet2DConditionModel(
                **common, cross_attention_dim=config.text_dim,
                down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
                up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
            )  # fmt: skip
        else:
            from diffusers import UNet2DModel

            self.unet = UNet2DModel(**common, down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
                                    add_attention=False)  # fmt: skip
        torch.nn.init.zeros_(self.unet.conv_out.weight)
        torch.nn.init.zeros_(self.unet.conv_out.bias)
        mean = torch.tensor(config.latent_mean or [0.0] * c).reshape(1, c, 1, 1)
        std = torch.tensor(config.latent_std or [1.0] * c).reshape(1, c, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.weights_sha256 = ""
        self.text_encoder = None  # set by from_pretrained when the config names one

    def blend_for(self, level: int) -> float:
        return float(self.config.blend[level]) if self.config.blend else 1.0

    @property
    def text_conditioned(self) -> bool:
        return bool(self.config.text_dim)

    @property
    def stride(self) -> int:
        """Latent sides must be multiples of this (the UNet's downsampling)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) / self.std

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, z_hat: torch.Tensor, level: torch.Tensor,
                text: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """The clean-latent estimate ẑ + correction, all latents normalised. ``text``: (B, T, text_dim) or None."""
        x = torch.cat([z_t, z_hat], dim=1)
        if self.text_conditioned:
            if text is None:
                raise ValueError("this CDM is text-conditioned: pass text embeddings (an empty prompt's for none)")
            return z_hat + self.unet(x, t, encoder_hidden_states=text, class_labels=level).sample
        if text is not None:
            raise ValueError("this CDM has no text conditioning")
        return z_hat + self.unet(x, t, class_labels=level).sample

    def save_pretrained(self, directory: str | Path, meta: dict | None = None) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().half().contiguous() for k, v in self.unet.state_dict().items()}
        # each file written beside and renamed: a training run killed mid-export leaves whole files
        save_file(state, str(d / ".model.safetensors.tmp"), metadata={k: str(v) for k, v in (meta or {}).items()})
        (d / ".config.json.tmp").write_text(json.dumps(asdict(self.config), indent=1) + "\n")
        (d / ".model.safetensors.tmp").replace(d / "model.safetensors")
        (d / ".config.json.tmp").replace(d / "config.json")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "CDMDenoiser":
        d = Path(directory)
        if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
            raise FileNotFoundError(f"CDM weights not found in {d} (need config.json and model.safetensors)")
        model = cls(CDMConfig.from_dict(json.loads((d / "config.json").read_text())))
        state = {k: v.float() for k, v in load_file(str(d / "model.safetensors")).items()}
        model.unet.load_state_dict(state)
        # the config is part of what decodes (normalisation, guidance, blends): it is hashed too
        digests = [file_sha256(d / "model.safetensors"), file_sha256(d / "config.json")]
        if model.config.text_encoder:
            from codec.cdm.text import TextEncoder

            where = d / model.config.text_encoder
            model.text_encoder = TextEncoder.from_pretrained(str(where) if where.exists() else model.config.text_encoder)
            if (where / "model.safetensors").is_file():  # a local encoder is part of what the model id pins
                digests.append(file_sha256(where / "model.safetensors"))
        model.weights_sha256 = hashlib.sha256(b"".join(bytes.fromhex(x) for x in digests)).hexdigest()
        return model.eval().requires_grad_(False)
