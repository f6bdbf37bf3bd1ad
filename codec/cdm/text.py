"""The text encoder of a text-conditioned CDM: a CLIP text model (transformers), loaded with
``from_pretrained`` from a local path or hub id (Stable Diffusion 2.1's is OpenCLIP-H's text
tower in CLIP format). It embeds the residual text read from the stream; for prompt
optimisation it also runs from token embeddings, so gradients reach them.
"""

from __future__ import annotations

import torch

MAX_TOKENS = 77


class TextEncoder(torch.nn.Module):
    def __init__(self, model, tokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.length = min(MAX_TOKENS, self.model.config.max_position_embeddings)

    @classmethod
    def from_pretrained(cls, path: str) -> "TextEncoder":
        """Model and tokenizer from one folder or hub id (a Stable Diffusion folder keeps them in
        two: pass the parts to the constructor)."""
        from transformers import AutoTokenizer, CLIPTextModel

        return cls(CLIPTextModel.from_pretrained(path), AutoTokenizer.from_pretrained(path))

    @property
    def token_embeddings(self) -> torch.Tensor:
        return self.model.embeddings.token_embedding.weight

    def ids(self, texts: list[str]) -> torch.Tensor:
        """Token ids with the tokenizer's special tokens, padded or cut to the model's length."""
        return self.tokenizer(texts, padding="max_length", max_length=self.length, truncation=True,
                              return_tensors="pt").input_ids  # fmt: skip

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """(B, T, D) conditioning for the denoiser's cross-attention."""
        device = self.token_embeddings.device
        return self.model(input_ids=self.ids(texts).to(device)).last_hidden_state

    def embed_tokens(self, token_embeddings: torch.Tensor) -> torch.Tensor:
        """The same from (B, T, D) token embeddings (differentiable): CLIPTextModel's forward, which
        takes only ids, spelled out from its embeddings, causal encoder and final norm."""
        from transformers.masking_utils import create_causal_mask

        hidden = self.model.embeddings(inputs_embeds=token_embeddings)
        mask = create_causal_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=None, cache=None)
        out = self.model.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        return self.model.final_layer_norm(out)
