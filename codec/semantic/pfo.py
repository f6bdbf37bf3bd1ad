"""Perceptual fidelity optimisation (PFO): refine the residual's tokens against the decoder.

ResULIC's encoder-side refinement, done the PEZ way (Wen et al., 2023, "Hard Prompts Made Easy"):
keep continuous token embeddings, project them onto the nearest vocabulary embeddings at every
step, compute the loss through the decoder *at the projected (hard) tokens* and apply its
gradient to the continuous ones (a straight-through step). Every few steps the hard prompt is
scored with the fidelity measure and the best one so far is kept, so the result is never worse
than the starting text. Iterations and wall time are both bounded.

The decoder is anything that implements :class:`PromptDecoder`: a text-conditioned decoder
that renders an image from its condition (for CDM: the decoded latent) and a prompt given as
input token embeddings. Nothing here runs at decode time: the decoder reads the chosen text
from the bitstream like any other residual.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F


@runtime_checkable
class PromptDecoder(Protocol):
    vocab_embeddings: torch.Tensor  # (V, D): the text encoder's input embedding table

    def text_to_ids(self, text: str) -> list[int]: ...

    def ids_to_text(self, ids: list[int]) -> str: ...

    def render(self, condition: Any, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """(1, T, D) prompt embeddings -> (1, 3, H, W) image in [0, 1], differentiable in the prompt."""
        ...


def mse(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(image, target)


@dataclass
class PFOResult:
    text: str
    ids: list[int]
    score: float  # the fidelity loss of ``ids`` (lower is better)
    initial_score: float
    steps: int
    seconds: float
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, score) at each evaluation


def nearest_tokens(embeddings: torch.Tensor, vocab: torch.Tensor, excluded: list[int] | tuple = ()) -> torch.Tensor:
    """Index of the vocabulary embedding nearest (by cosine similarity) to each row, never an
    excluded one (special tokens: they would decode to no text)."""
    sim = F.normalize(embeddings, dim=-1) @ F.normalize(vocab, dim=-1).T
    if excluded:
        sim[..., list(excluded)] = -torch.inf
    return sim.argmax(dim=-1)


def optimise_prompt(
    decoder: PromptDecoder,
    condition: Any,
    target: torch.Tensor,
    init_text: str,
    *,
    steps: int = 50,
    lr: float = 0.1,
    weight_decay: float = 0.1,
    eval_every: int = 5,
    time_budget_s: float | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = mse,
) -> PFOResult:
    """PEZ over the tokens of ``init_text``; returns the best hard prompt found within the budget.
    A decoder may list ``special_token_ids`` that the projection must never pick."""
    t0 = time.perf_counter()
    vocab = decoder.vocab_embeddings.detach()
    excluded = tuple(getattr(decoder, "special_token_ids", ()))
    ids = torch.tensor(decoder.text_to_ids(init_text), dtype=torch.long, device=vocab.device)
    if ids.numel() == 0:
        raise ValueError("PFO needs a non-empty starting text (its tokens are what it optimises)")

    def score(token_ids: torch.Tensor) -> float:
        with torch.no_grad():
            return float(loss(decoder.render(condition, vocab[token_ids][None]), target))

    best_ids, best = ids.clone(), score(ids)
    initial, history = best, [(0, best)]
    soft = vocab[ids].clone().requires_grad_(True)
    opt = torch.optim.AdamW([soft], lr=lr, weight_decay=weight_decay)
    step = 0
    for step in range(1, steps + 1):
        hard_ids = nearest_tokens(soft.detach(), vocab, excluded)
        hard = vocab[hard_ids]
        straight_through = soft + (hard - soft).detach()  # forward at the hard tokens, gradient to the soft
        opt.zero_grad()
        loss(decoder.render(condition, straight_through[None]), target).backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            candidate = nearest_tokens(soft.detach(), vocab, excluded)
            s = score(candidate)
            history.append((step, s))
            if s < best:
                best, best_ids = s, candidate.clone()
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            break
    ids_list = best_ids.tolist()
    return PFOResult(decoder.ids_to_text(ids_list), ids_list, best, initial, step, time.perf_counter() - t0, history)
