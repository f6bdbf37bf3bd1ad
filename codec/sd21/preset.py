"""Assembling the ``sd21`` preset from the components a user supplies.

- ``$RESULIC_SD_MODEL``: a Stable Diffusion 2.1-base folder in diffusers' layout (``vae/``,
  ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) or its hub id
  (``stabilityai/stable-diffusion-2-1-base``), fetched into the Hugging Face cache;
- ``$RESULIC_CONTROLNET``: a ``ControlNetXSAdapter`` folder (``save_pretrained``) or hub id;
- ``$RESULIC_LATENT_CODEC``: the latent codec file for SD's 4-channel latent.

The model id hashes every component as loaded (each network's parameters, the tokenizer's files,
the latent codec and text model files): a stream names exactly the weights that decode it, and
a stream made with other weights is refused. There are no released ``sd21`` models.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from codec.autoencoder import file_sha256

SD_MODEL_ENV = "RESULIC_SD_MODEL"
CONTROLNET_ENV = "RESULIC_CONTROLNET"
SD_PARTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
HUB_PATTERNS = [f"{p}/*" for p in SD_PARTS] + ["model_index.json", "config.json", "*.safetensors"]


def module_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of a network's parameters and buffers as loaded (names, dtypes, shapes, bytes):
    the same for the same weights whatever file format or layout they came in."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def folder_sha256(folder: Path) -> str:
    """SHA-256 over a folder's files (relative names and contents), for the tokenizer."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(f"{f.relative_to(folder).as_posix()}|{file_sha256(f)}|".encode())
    return h.hexdigest()


def component_folder(where: str | None, env: str, what: str) -> Path:
    """A local folder for a path or a hub id (``huggingface_hub.snapshot_download``)."""
    if not where:
        raise FileNotFoundError(f"the sd21 preset needs {what}: set ${env} to a local folder or a hub id")
    p = Path(where).expanduser()
    if p.is_dir():
        return p
    if p.exists() or where.startswith((".", "/", "~")) or where.count("/") != 1:
        raise FileNotFoundError(f"{what}: {where} is not a folder (${env})")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(where, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # noqa: BLE001 - offline, unknown id, no access: one clear error
        raise FileNotFoundError(f"{what}: {where} is neither a local folder nor a hub model this machine can "
                                f"fetch ({type(e).__name__}: {e})") from None  # fmt: skip


def load_sd_parts(sd_folder: Path):
    """(vae, unet, text encoder, tokenizer) from a diffusers-layout folder, checked against what
    the decoder assumes (SD's noise schedule, ε-prediction, a 4-channel latent)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    missing = [p for p in SD_PARTS if not (sd_folder / p).is_dir()]
    if missing:
        raise FileNotFoundError(f"{sd_folder} is not a Stable Diffusion folder in diffusers' layout "
                                f"(no {', '.join(missing)}/)")  # fmt: skip
    sched = json.loads((sd_folder / "scheduler" / "scheduler_config.json").read_text())
    expected = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "prediction_type": "epsilon"}  # fmt: skip
    wrong = {k: sched.get(k, "epsilon" if k == "prediction_type" else None) for k in expected}
    wrong = {k: v for k, v in wrong.items() if v != expected[k]}
    if wrong:
        raise ValueError(f"{sd_folder}: the scheduler differs from SD 2.1-base's ({wrong}); a v-prediction model "
                         "(SD 2.1 at 768 px) is not the paper's backbone")  # fmt: skip
    vae = AutoencoderKL.from_pretrained(sd_folder / "vae")
    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet")
    text = CLIPTextModel.from_pretrained(sd_folder / "text_encoder")
    tokenizer = AutoTokenizer.from_pretrained(sd_folder / "tokenizer")
    if vae.config.latent_channels != unet.config.in_channels:
        raise ValueError(f"{sd_folder}: the VAE's latent has {vae.config.latent_channels} channels, "
                         f"the UNet takes {unet.config.in_channels}")  # fmt: skip
    return vae, unet, text, tokenizer


def load_sd21(weights_dir: str | None, latent_codec_path: str | None, model_id: str | None):
    """The preset from ``$RESULIC_SD_MODEL``, ``$RESULIC_CONTROLNET`` and the latent codec file
    (``latent_codec_path`` or ``$RESULIC_LATENT_CODEC``). ``weights_dir`` is TAEF2's, unused."""
    from diffusers import ControlNetXSAdapter

    from codec.presets import LATENT_CODEC_ENV, Preset, _text_model, load_latent_codec, model_digest, release
    from codec.sd21.autoencoder import SDAutoencoder
    from codec.sd21.diffusion import SD21Diffusion

    if model_id is not None:
        raise KeyError(f"sd21 has no released models (a stream of model {model_id} decodes only with the "
                       "components that made it)")  # fmt: skip
    sd = component_folder(os.environ.get(SD_MODEL_ENV), SD_MODEL_ENV, "Stable Diffusion 2.1-base")
    ctrl = component_folder(os.environ.get(CONTROLNET_ENV), CONTROLNET_ENV, "a ControlNet-XS adapter")
    codec_file = latent_codec_path or os.environ.get(LATENT_CODEC_ENV)
    if not codec_file or not Path(codec_file).is_file():
        raise FileNotFoundError(f"the sd21 preset needs its latent codec file: set ${LATENT_CODEC_ENV} (got {codec_file!r})")
    vae, unet, text_encoder, tokenizer = load_sd_parts(sd)
    config = ctrl / "config.json"
    kind = json.loads(config.read_text()).get("_class_name") if config.is_file() else None
    if kind != ControlNetXSAdapter.__name__:
        raise FileNotFoundError(f"{ctrl} is not a ControlNet-XS adapter folder (its config.json names {kind!r})")
    adapter = ControlNetXSAdapter.from_pretrained(ctrl)
    lc = load_latent_codec(codec_file)
    if lc.config.latent_channels != vae.config.latent_channels:
        raise ValueError(f"{codec_file}: the latent codec codes {lc.config.latent_channels} channels, SD's latent "
                         f"has {vae.config.latent_channels}")  # fmt: skip
    text_model = _text_model(release("taef2")["text_model"])  # the residual text's coder: the project's own
    parts = [module_sha256(vae), module_sha256(unet), module_sha256(text_encoder), folder_sha256(sd / "tokenizer"),
             module_sha256(adapter), file_sha256(codec_file), text_model.sha256]  # fmt: skip
    diffusion = SD21Diffusion(unet, adapter, text_encoder, tokenizer)
    return Preset("sd21", SDAutoencoder(vae, parts[0]), lc, text_model, model_digest(*parts), default_rate=3.0,
                  cdm=diffusion)  # fmt: skip


__all__ = ["load_sd21", "module_sha256", "folder_sha256", "component_folder", "SD_MODEL_ENV", "CONTROLNET_ENV"]
