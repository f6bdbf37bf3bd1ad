"""The word bigram of version-3 text models: counting, tables that always code, and what it saves."""

from collections import Counter

import numpy as np
import pytest

from codec.presets import load_text_model
from codec.text_bigram import (
    BUDGET, START, WordBigram, bound_words, build_bigram, count_bigrams, mixed_word_cdf, wordnet_glosses,
)  # fmt: skip
from codec.text_coding import decode_text, encode_text
from codec.text_model import DIRECT_WORDS, TextModel, quantise


def test_clauses_split_at_punctuation_and_unknown_words():
    rank = {"a": 0, "red": 1, "door": 2, "the": 3}
    counts, ends = count_bigrams(["A red door; the red door.", "a qzx door"], rank)
    assert counts[START] == Counter({0: 2, 3: 1, 2: 1})  # "door" after an unknown word starts a clause
    assert counts[0] == Counter({1: 1}) and counts[1] == Counter({2: 2}) and counts[3] == Counter({1: 1})
    assert ends == Counter({2: 3})


def test_bound_words_almost_never_end_a_clause():
    counts = {0: Counter({1: 99}), 1: Counter({0: 10})}
    assert bound_words(counts, Counter({0: 1, 1: 90}), max_end_rate=0.1) == [0]


def _bigram() -> WordBigram:
    counts = {START: Counter({5: 30, 4000: 10}), 7: Counter({3: 5, 2000: 5, 9000: 1})}
    return build_bigram(counts, Counter(), escape=8.0, min_count=1, max_end_rate=0.1)


def test_mixed_table_is_a_valid_cdf_that_favours_followers():
    unigram = quantise([1.0 / (i + 1) for i in range(DIRECT_WORDS + 7)])
    b = _bigram()
    cdf, extra = mixed_word_cdf(unigram, DIRECT_WORDS, b, 7)
    assert extra == [2000, 9000] and len(cdf) == DIRECT_WORDS + 7 + 2 + 1
    assert cdf[0] == 0 and cdf[-1] <= 1 << 16 and all(y > x for x, y in zip(cdf, cdf[1:]))
    width = np.diff(cdf)
    assert width[3] > width[2] and width[DIRECT_WORDS + 7] > width[DIRECT_WORDS + 8] > 1
    assert mixed_word_cdf(unigram, DIRECT_WORDS, b, 8) is None  # no followers: the static table
    assert 0 < b.mix[b.history.tolist().index(7)] < BUDGET


def test_tables_round_trip_and_bad_tables_are_refused():
    b = _bigram()
    back = WordBigram.from_tensors(b.tensors())
    assert all(np.array_equal(getattr(b, k), getattr(back, k)) for k in ("history", "offset", "mix", "word", "freq"))
    t = b.tensors()
    t["bigram.offset"][-1] += 1
    with pytest.raises(ValueError, match="not a valid"):
        WordBigram.from_tensors(t)


def test_wordnet_gloss_lines_are_read(tmp_path):
    line = "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived; \"an entity\"  \n"
    (tmp_path / "data.noun").write_text("  1 This software and database is being provided\n" + line)
    for part in ("verb", "adj", "adv"):
        (tmp_path / f"data.{part}").write_text("")
    assert list(wordnet_glosses(tmp_path)) == ['that which is perceived; "an entity"']


def test_shipped_v3_model_saves_bits_over_v2_and_round_trips():
    v3, v2 = load_text_model(), load_text_model(model_id="68208e03b803049b")
    assert v3.version == 3 and v2.version == 2 and v3.vocab == v2.vocab
    text = "A stone building with red shutters on all of the windows, and a narrow path in front of it."
    p3, p2 = encode_text(text, v3), encode_text(text, v2)
    assert decode_text(p3, v3) == text and len(p3) < len(p2)


def test_a_v3_model_needs_its_bigram(tmp_path):
    m = load_text_model()
    with pytest.raises(ValueError, match="bigram"):
        TextModel(m.vocab, m.cdfs, version=3)
