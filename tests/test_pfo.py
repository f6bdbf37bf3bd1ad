"""PFO against a tiny text-conditioned decoder built from a config, with a tokenizer trained on the fly."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from codec.semantic.pfo import PromptDecoder, nearest_tokens, optimise_prompt

WORDS = "red green blue white black sky sea grass door boat house tree sun cloud stone wood".split()


class TinyTextDecoder(torch.nn.Module):
    """Renders condition + a colour field steered by the prompt (mean of a text encoder's outputs)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
        self.tokenizer = tok
        self.embed = torch.nn.Embedding(tok.get_vocab_size(), 16)
        self.text_encoder = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
        self.requires_grad_(False)

    @property
    def vocab_embeddings(self) -> torch.Tensor:
        return self.embed.weight

    def text_to_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def ids_to_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def render(self, condition: torch.Tensor, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        colour = self.text_encoder(prompt_embeddings).mean(dim=1)  # (1, 3)
        return (condition + 0.5 * torch.tanh(colour)[:, :, None, None]).clamp(0, 1)


@pytest.fixture(scope="module")
def decoder() -> TinyTextDecoder:
    return TinyTextDecoder()


def test_interface(decoder):
    assert isinstance(decoder, PromptDecoder)
    assert nearest_tokens(decoder.vocab_embeddings[[3, 5]] * 2.0, decoder.vocab_embeddings).tolist() == [3, 5]


def test_pfo_finds_a_better_hard_prompt_than_the_start(decoder):
    condition = torch.full((1, 3, 8, 8), 0.5)
    true_ids = decoder.text_to_ids("blue sea sky")
    target = decoder.render(condition, decoder.vocab_embeddings[true_ids][None]).detach()
    result = optimise_prompt(decoder, condition, target, "red stone house", steps=80, lr=0.2, eval_every=4)
    assert result.score < 0.5 * result.initial_score  # a real improvement, at hard tokens
    assert len(result.ids) == 3 and all(0 <= i < decoder.vocab_embeddings.shape[0] for i in result.ids)
    assert decoder.text_to_ids(result.text) == result.ids  # the text codes exactly these tokens
    rendered = decoder.render(condition, decoder.vocab_embeddings[result.ids][None])
    assert float(torch.nn.functional.mse_loss(rendered, target)) == pytest.approx(result.score)
    assert [s for _, s in result.history][0] == result.initial_score


def test_pfo_never_returns_worse_and_respects_budgets(decoder):
    condition = torch.full((1, 3, 8, 8), 0.5)
    target = decoder.render(condition, decoder.vocab_embeddings[decoder.text_to_ids("green grass")][None]).detach()
    result = optimise_prompt(decoder, condition, target, "green grass", steps=20, eval_every=5)
    assert result.score <= result.initial_score == pytest.approx(0.0)
    assert result.ids == decoder.text_to_ids("green grass")  # already perfect: kept
    timed = optimise_prompt(decoder, condition, target, "red door", steps=10_000, time_budget_s=0.3)
    assert timed.steps < 10_000 and timed.seconds < 5
    with pytest.raises(ValueError, match="non-empty"):
        optimise_prompt(decoder, condition, target, "", steps=1)
