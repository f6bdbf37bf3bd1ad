"""A text-conditioned CDM: the residual text read from the stream guides decoding, and PFO
refines a residual against this decoder (tiny models built from configs)."""

from __future__ import annotations

import numpy as np
import pytest

import codec
from codec.cdm.prompt import CDMPromptDecoder
from codec.presets import CDM_ENV, load_preset, releases
from codec.semantic.pfo import PromptDecoder, optimise_prompt
from codec.images import to_tensor
from tests.conftest import photo
from tests.tiny_text_cdm import WORDS, make_tiny_text_cdm


@pytest.fixture()
def text_preset(tmp_path_factory, monkeypatch):
    d = make_tiny_text_cdm(tmp_path_factory.mktemp("tcdm"))
    monkeypatch.setenv(CDM_ENV, str(d))
    p = load_preset()
    assert p.cdm is not None and p.cdm.text_conditioned and p.cdm.text_encoder is not None
    return p


def test_the_residual_text_guides_the_decoder(text_preset):
    img = photo(64, 64)
    a = codec.encode(img, rate=1, text="red wooden door")
    b = codec.encode(img, rate=1, text="blue sea sky")
    da, db = np.asarray(codec.decode(a)), np.asarray(codec.decode(b))
    assert not np.array_equal(da, db)  # same latent, different text: different pixels
    assert np.array_equal(da, np.asarray(codec.decode(a)))  # deterministic


def test_pfo_against_the_cdm(text_preset):
    img = photo(64, 64)
    stream = codec.encode(img, rate=1, text="red wooden door")
    dec = CDMPromptDecoder(text_preset, steps=2)
    assert isinstance(dec, PromptDecoder)
    cond = dec.condition(stream)
    target = to_tensor(img)
    result = optimise_prompt(dec, cond, target, "red wooden door", steps=4, eval_every=2, lr=0.5)
    assert result.score <= result.initial_score and len(result.ids) == 3
    assert dec.text_to_ids(result.text) == result.ids
    refined = codec.encode(img, rate=1, text=result.text)
    assert codec.read_text(refined) == result.text


def test_encode_with_pfo(text_preset):
    img = photo(64, 64)
    stream = codec.encode(img, rate=1, text="red wooden door", pfo_steps=2, pfo_seconds=60)
    text = codec.read_text(stream)
    assert len(text.split()) == 3 and all(w in WORDS for w in text.split())  # refined, still vocabulary words
    assert stream == codec.encode(img, rate=1, text=text)  # the latent coded once, as a plain encode of that text codes it
    released = load_preset(model_id=releases("taef2")[-1]["model_id"])  # the shipped model: no text-conditioned CDM
    with pytest.raises(ValueError, match="text-conditioned CDM"):
        codec.encode(img, rate=1, text="red door", pfo_steps=2, preset=released)
