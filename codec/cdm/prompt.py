"""A text-conditioned CDM seen as a :class:`~codec.semantic.pfo.PromptDecoder`, so the encoder can
refine a residual's tokens against the very decoder that will read them (PFO).

The prompt being optimised sits between the text encoder's start and end tokens, as the
tokenizer would place it; the rest of the sequence is padding. Rendering runs the whole CDM
decode (noise from the stream's seed, the DDIM chain with guidance, the autoencoder decoder)
with gradients flowing back to the prompt's token embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from codec.cdm.detail import decode_restored
from codec.cdm.process import n_r_for_level
from codec.cdm.sampler import DEFAULT_STEPS, denoise, stream_noise
from codec.parsing import parse
from codec.presets import Preset
from codec.sd21.diffusion import SD21Diffusion


@dataclass
class CDMCondition:
    z_hat: torch.Tensor  # (1, C, h, w) decoded latent
    level: int
    seed: int
    width: int
    height: int


class CDMPromptDecoder:
    def __init__(self, preset: Preset, steps: int = DEFAULT_STEPS) -> None:
        cdm = preset.cdm
        if cdm is None or not cdm.text_conditioned:
            raise ValueError("prompt optimisation needs a text-conditioned CDM")
        self.preset, self.cdm, self.enc, self.steps = preset, cdm, cdm.text_encoder, steps
        tok = self.enc.tokenizer
        self.bos, self.eos = tok.bos_token_id, tok.eos_token_id
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else self.eos
        self.uncond = self.enc.embed([getattr(cdm.config, "negative_prompt", "")])  # sd21 may name a negative prompt
        self.special_token_ids = sorted(set(tok.all_special_ids))

    @property
    def vocab_embeddings(self) -> torch.Tensor:
        return self.enc.token_embeddings

    def text_to_ids(self, text: str) -> list[int]:
        return self.enc.tokenizer(text, add_special_tokens=False).input_ids[: self.enc.length - 2]

    def ids_to_text(self, ids: list[int]) -> str:
        return self.enc.tokenizer.decode(ids, skip_special_tokens=True)

    def condition(self, stream: bytes) -> CDMCondition:
        """Everything but the prompt, from a freshly made stream."""
        s, p = parse(stream, self.preset)
        h = s.header
        w, ht = h.coded_size  # rendered at the coded size (the stream's scale)
        z_hat = p.latent_codec.decompress([s.latent], [s.hyper_latent], p.z_shape(w, ht), h.rate_level)
        return CDMCondition(z_hat, h.rate_level, h.diffusion_seed, w, ht)

    def render(self, condition: CDMCondition, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        e = self.vocab_embeddings
        n = prompt_embeddings.shape[1]
        pad = self.enc.length - n - 2
        seq = torch.cat([e[[self.bos]][None], prompt_embeddings, e[[self.eos]][None], e[[self.pad] * pad][None]], dim=1)
        text = self.enc.embed_tokens(seq)
        c = condition
        n_r = n_r_for_level(c.level, self.preset.num_levels)
        noise = stream_noise(tuple(c.z_hat.shape[1:]), [c.seed])
        if isinstance(self.cdm, SD21Diffusion):  # the paper's model: its VAE decodes the restored latent
            x = self.preset.autoencoder.decode(self.cdm.denoise(c.z_hat, n_r, noise, self.steps, text, self.uncond))
            return x[:, :, : c.height, : c.width]
        latent = denoise(self.cdm, c.z_hat, c.level, n_r, noise, self.steps, text, self.uncond, self.cdm.config.guidance_scale)
        x = decode_restored(self.preset.restored_decoder(c.level), self.preset.plain(c.level), c.z_hat, latent, self.cdm.config.detail_sigma)
        return x[:, :, : c.height, : c.width]
