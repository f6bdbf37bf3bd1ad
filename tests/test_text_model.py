"""The static text model: integer tables in CompressAI's layout, a stable file, a build from frequencies."""

import random
import string

import pytest

from codec.presets import WEIGHTS_DIR, load_text_model
from codec.text_model import CONTEXTS, KINDS, TOTAL, VOCAB_SIZE, TextModel, quantise


def test_quantise_gives_a_valid_cdf_with_every_symbol_codable():
    cdf = quantise([1000.0, 1.0, 0.0001, 5.0])
    assert cdf[0] == 0 and cdf[-1] == TOTAL and len(cdf) == 6  # 4 symbols + escape + leading 0
    assert all(b > a for a, b in zip(cdf, cdf[1:]))


def test_shipped_model_loads_with_its_tables():
    m = load_text_model()
    assert len(m.vocab) == VOCAB_SIZE and m.vocab[0] == "the"
    assert len(m.cdfs) == TextModel.UNIFORM + 8
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
    assert back.vocab == words and back.cdfs == m.cdfs
    with pytest.raises(ValueError, match="distinct words"):
        TextModel.build(words[:10], freqs[:10])


def test_shipped_file_is_where_the_preset_expects_it():
    path = WEIGHTS_DIR / "text_en_v1.safetensors"
    assert path.is_file() and path.stat().st_size < 2_000_000
