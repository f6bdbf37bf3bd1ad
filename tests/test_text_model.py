"""The static text model: integer tables in CompressAI's layout, a stable file, a build from frequencies."""

import random
import string

import pytest

from codec.presets import WEIGHTS_DIR, load_text_model
from codec.text_model import CONTEXTS, KINDS, TOTAL, VOCAB_SIZE, TextModel, caption_mixture, quantise


def test_quantise_gives_a_valid_cdf_with_every_symbol_codable():
    cdf = quantise([1000.0, 1.0, 0.0001, 5.0])
    assert cdf[0] == 0 and cdf[-1] == TOTAL and len(cdf) == 6  # 4 symbols + escape + leading 0
    assert all(b > a for a, b in zip(cdf, cdf[1:]))


def test_shipped_model_loads_with_its_tables():
    m = load_text_model()
    assert len(m.vocab) == VOCAB_SIZE and m.vocab[:2] == ["a", "the"] and m.version == 3
    assert m.rank["sky"] < 100  # the caption corpus moved the words of descriptions up
    assert len(m.cdfs) == TextModel.UNIFORM + 9 and m.bigram is not None
    assert all(c[0] == 0 and c[-1] == TOTAL for c in m.cdfs)
    assert [len(m.cdfs[i]) for i in range(len(CONTEXTS))] == [len(KINDS) + 2] * len(CONTEXTS)
    assert len(m.sha256) == 64


def test_build_save_load_round_trip(tmp_path):
    rng = random.Random(0)
    words = set()
    while len(words) < VOCAB_SIZE:
        words.add("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9))))
    words = sorted(words)
    freqs = [1.0 / (i + 1) for i in range(VOCAB_SIZE)]
    m = TextModel.build(words, freqs)
    m.save(tmp_path / "t.safetensors")
    back = TextModel.load(tmp_path / "t.safetensors")
    assert back.vocab == words and back.cdfs == m.cdfs and back.version == 2
    TextModel.build(words, freqs, version=1).save(tmp_path / "v1.safetensors")
    assert TextModel.load(tmp_path / "v1.safetensors").version == 1
    with pytest.raises(ValueError, match="distinct words"):
        TextModel.build(words[:10], freqs[:10])


def test_shipped_files_are_where_the_preset_expects_them():
    for name in ("text_en_v1.safetensors", "text_en_v2.safetensors", "text_en_v3.safetensors"):  # older ones
        path = WEIGHTS_DIR / name  # still decode older streams
        assert path.is_file() and path.stat().st_size < 5_000_000
    assert load_text_model(model_id="52ea4cb00a9e9573").version == 1
    assert load_text_model(model_id="68208e03b803049b").version == 2


def test_caption_mixture_reranks_and_keeps_the_size():
    words = [f"w{c}" for c in string.ascii_lowercase]
    words = ["".join(ch for ch in w if ch.isalpha()) + "x" * i for i, w in enumerate(words)]
    freqs = [1.0 / (i + 1) for i in range(len(words))]
    out, f = caption_mixture(words, freqs, ["Zebra zebra, and wx."], 0.5, size=len(words))
    assert out[0] == "zebra" and len(out) == len(words) and f == sorted(f, reverse=True)
