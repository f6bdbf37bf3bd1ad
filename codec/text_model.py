"""The static text model behind the bitstream's text section: integer CDF tables for rANS.

Why a static model: the residual text is a few dozen words, far too short for an adaptive
coder to learn anything (zlib spends about 1,300 bits on a 40-word caption), so all the
knowledge sits in tables shipped with the preset. The tables are integers, stored as they
are used (16-bit CDFs in CompressAI's layout, with its final escape slot): a decoder never
recomputes them from floats, which keeps decoding exact on any machine.

The text is a sequence of *kinds* (a word, a spelled word, a capitalisation mark, a space,
a digit, a punctuation mark, any other code point, the end); the kind is coded with a table
chosen by the previous kind's context, then its value with the kind's own table. Words come
from a 131,072-word vocabulary ranked by frequency: the first 1,024 have a probability each,
the rest are coded as a rank bucket (by its total probability) plus a uniform offset.

Word frequencies come from ``wordfreq`` (English, its "large" list; data CC BY-SA 4.0) at
build time: ``python -m codec.text_model --out codec/weights/text_en_v1.safetensors``. The
structural probabilities (how often a space follows a word, and so on) are set below by hand,
from general English usage, not fitted to any evaluation set.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from codec.text_bigram import WordBigram, mixed_word_cdf

PRECISION = 16
TOTAL = 1 << PRECISION
DIRECT_WORDS = 1024
BUCKETS = 7  # ranks [1024*2^k, 1024*2^(k+1)), k = 0..6: a 131,072-word vocabulary
VOCAB_SIZE = DIRECT_WORDS << BUCKETS
WORD_TABLE_CACHE = 256  # version 3: mixed word tables kept per model

KINDS = ("word", "spell", "cap", "upper", "space", "newline", "digit", "punct", "other", "end")
K = {name: i for i, name in enumerate(KINDS)}
# Contexts: what came just before, as far as it changes what comes next.
CONTEXTS = ("start", "sentence", "space", "word", "cap", "stop", "close", "open", "quote", "digit", "other")
C = {name: i for i, name in enumerate(CONTEXTS)}
BOUND = len(CONTEXTS)  # version 3: after a word a clause almost never ends on (its own kind table)

STOPS = ".!?"
OPENERS = "([{“‘"
QUOTES = "\"'"
# Punctuation coded as one symbol; anything else goes through the "other" kind (a code point).
PUNCT = ".,;:!?'\"()[]{}-/&%$#@*+=<>_~^|\\`“”‘’–—…"
SPELL_ALPHABET = "abcdefghijklmnopqrstuvwxyz"

# Relative weights of each kind per context (normalised when quantised). Hand-set: a caption
# is mostly "Word word word, word word. Word ..." with spaces between words.
_KIND_WEIGHTS: dict[str, dict[str, float]] = {
    "start": {"word": 25, "spell": 1, "cap": 65, "upper": 2, "digit": 3, "punct": 2, "other": 0.5, "end": 0.5},
    "sentence": {"word": 8, "spell": 0.5, "cap": 85, "upper": 2, "digit": 2, "punct": 2, "other": 0.5, "end": 0.5},
    "space": {"word": 85, "spell": 2, "cap": 6, "upper": 0.5, "digit": 2.5, "punct": 2.5, "other": 0.4, "end": 0.5},
    "word": {"space": 78, "punct": 18, "end": 2, "newline": 0.5, "digit": 0.3, "cap": 0.3, "other": 0.6},
    "cap": {"word": 95, "spell": 5},
    "stop": {"space": 70, "end": 20, "newline": 3, "punct": 5, "other": 1, "digit": 0.5},
    "close": {"space": 85, "end": 4, "punct": 5, "word": 2, "digit": 1, "newline": 1, "cap": 1, "other": 1},
    "open": {"word": 50, "cap": 30, "digit": 5, "spell": 3, "upper": 2, "punct": 5, "other": 1},
    "quote": {"word": 35, "space": 30, "cap": 12, "punct": 6, "end": 4, "digit": 2, "spell": 2, "other": 1},
    "digit": {"digit": 55, "punct": 20, "space": 20, "word": 3, "end": 2},
    "other": {"space": 30, "word": 20, "punct": 10, "cap": 10, "end": 5, "digit": 5, "other": 10, "spell": 2},
}
_FLOOR = 0.02  # every kind stays codable in every context (a weight, relative to the above)

# Punctuation after a word, a digit or another mark ("closing"), and elsewhere ("opening").
_PUNCT_AFTER_WORD = {",": 40, ".": 35, "-": 4, "'": 4, ")": 3, ":": 2, ";": 1, "!": 1, "?": 1, "”": 2, '"': 2,
                     "/": 1, "%": 1, "’": 2}  # fmt: skip
_PUNCT_ELSEWHERE = {"(": 20, "“": 15, '"': 15, "-": 15, "$": 5, "&": 5, "‘": 3, "'": 5, "[": 2, "#": 2, "—": 2,
                    "–": 2, "…": 1}  # fmt: skip
_PUNCT_FLOOR = 0.1


def quantise(weights: list[float]) -> list[int]:
    """Weights -> a CompressAI-layout CDF (leading 0, one escape slot, ending at 2^16)."""
    slots = len(weights) + 1  # the last is CompressAI's escape symbol, never used here
    budget = TOTAL - slots  # every slot gets one count first
    total = sum(weights)
    counts = [1 + int(w / total * budget) for w in weights] + [1]
    counts[max(range(len(weights)), key=lambda i: weights[i])] += TOTAL - sum(counts)
    cdf = [0]
    for c in counts:
        cdf.append(cdf[-1] + c)
    return cdf


def uniform(bits: int) -> list[int]:
    return quantise([1.0] * (1 << bits))


@dataclass
class TextModel:
    """Vocabulary and CDF tables; ``sha256`` identifies the file (part of the preset's model id)."""

    vocab: list[str]
    cdfs: list[list[int]]  # every table, in a fixed order (see ``table``)
    sha256: str = ""
    version: int = 2  # 1: coded with CompressAI's rANS; 2: with codec.arithmetic_coding (same tables);
    # 3: as 2, with words coded by the word bigram mixed into the word table (codec.text_bigram)
    bigram: "WordBigram | None" = None

    def __post_init__(self) -> None:
        self.rank = {w: i for i, w in enumerate(self.vocab)}
        self.lengths = [len(c) for c in self.cdfs]
        if (self.version >= 3) != (self.bigram is not None):
            raise ValueError("a version-3 text model has a word bigram, and only version 3 has one")
        self._word_tables: OrderedDict[int, tuple[list[int], list[int]] | None] = OrderedDict()

    def word_table(self, history: int) -> tuple[list[int], list[int]] | None:
        """The word table after ``history`` (a rank, or ``text_bigram.START``) and the ranks of its
        extra slots; None: the static word table (no bigram, or no followers)."""
        if self.bigram is None:
            return None
        cache = self._word_tables  # the most recent tables (each is a few thousand integers)
        if history in cache:
            cache.move_to_end(history)
        else:
            cache[history] = mixed_word_cdf(self.cdfs[self.WORD], DIRECT_WORDS, self.bigram, history)
            if len(cache) > WORD_TABLE_CACHE:
                cache.popitem(last=False)
        return cache[history]

    # table numbers, in the order ``build`` writes them
    @classmethod
    def kind_table(cls, context: int) -> int:
        return context if context < len(CONTEXTS) else cls.BOUND_KIND

    WORD = len(CONTEXTS)
    LETTER = WORD + 1
    DIGIT = WORD + 2
    PUNCT_AFTER_WORD = WORD + 3
    PUNCT_ELSEWHERE = WORD + 4
    UNIFORM = WORD + 5  # uniform tables for 1..8 bits follow: UNIFORM + bits - 1
    BOUND_KIND = UNIFORM + 8  # version 3: the kinds after a bound word (codec.text_bigram)

    @classmethod
    def build(cls, words: list[str], freqs: list[float], version: int = 2) -> "TextModel":
        if len(words) != VOCAB_SIZE or len(set(words)) != VOCAB_SIZE:
            raise ValueError(f"need {VOCAB_SIZE} distinct words, ranked by frequency")
        if not all(re.fullmatch("[a-z]+", w) for w in words):
            raise ValueError("vocabulary words must be lower-case a-z")
        cdfs = []
        for ctx in CONTEXTS:
            w = _KIND_WEIGHTS[ctx]
            cdfs.append(quantise([w.get(k, _FLOOR) for k in KINDS]))
        buckets = [sum(freqs[DIRECT_WORDS << b : DIRECT_WORDS << (b + 1)]) for b in range(BUCKETS)]
        cdfs.append(quantise(list(freqs[:DIRECT_WORDS]) + buckets))
        letters = [0.0] * (len(SPELL_ALPHABET) + 1)
        for word, f in zip(words[DIRECT_WORDS:], freqs[DIRECT_WORDS:]):  # spelled words are rare ones
            for ch in word:
                letters[ord(ch) - 97] += f
            letters[-1] += f  # the end of a spelled word
        cdfs.append(quantise(letters))
        cdfs.append(quantise([1.0] * 10))
        cdfs.append(quantise([_PUNCT_AFTER_WORD.get(p, _PUNCT_FLOOR) for p in PUNCT]))
        cdfs.append(quantise([_PUNCT_ELSEWHERE.get(p, _PUNCT_FLOOR) for p in PUNCT]))
        cdfs += [uniform(b) for b in range(1, 9)]
        return cls(list(words), cdfs, version=version)

    def save(self, path: str | Path) -> None:
        tensors = {f"cdf.{i:02d}": torch.tensor(c, dtype=torch.int32) for i, c in enumerate(self.cdfs)}
        tensors["vocab_utf8"] = torch.tensor(list("\n".join(self.vocab).encode()), dtype=torch.uint8)
        if self.bigram is not None:
            tensors.update(self.bigram.tensors())
        save_file(tensors, str(path), metadata={"format": "resulic-text-model", "version": str(self.version),
                                                "tables": str(len(self.cdfs)), "punct": PUNCT, "kinds": json.dumps(KINDS),
                                                "contexts": json.dumps(CONTEXTS)})  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> "TextModel":
        path = Path(path)
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            version = int((f.metadata() or {}).get("version", "0"))
        if version not in (1, 2, 3):
            raise ValueError(f"{path}: text model version {version} is not one this build reads (1, 2, 3)")
        n = sum(1 for k in tensors if k.startswith("cdf."))
        cdfs = [tensors[f"cdf.{i:02d}"].tolist() for i in range(n)]
        vocab = bytes(tensors["vocab_utf8"].tolist()).decode().split("\n")
        if len(vocab) != VOCAB_SIZE or n != cls.UNIFORM + 8 + (version >= 3):
            raise ValueError(f"{path}: not a valid text model ({len(vocab)} words, {n} tables)")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        bigram = WordBigram.from_tensors(tensors) if version >= 3 else None
        if bigram is not None and len(bigram.word) and (bigram.word.max() >= VOCAB_SIZE or bigram.history.max() >= VOCAB_SIZE):
            raise ValueError(f"{path}: its word bigram names words outside the vocabulary")
        return cls(vocab, cdfs, digest, version, bigram)


def wordfreq_vocabulary(lang: str = "en", size: int = VOCAB_SIZE) -> tuple[list[str], list[float]]:
    """The ``size`` most frequent a-z words and their frequencies (needs ``wordfreq``)."""
    import wordfreq

    table = wordfreq.get_frequency_dict(lang, wordlist="large")
    ranked = sorted(((f, w) for w, f in table.items() if re.fullmatch("[a-z]+", w)), key=lambda t: (-t[0], t[1]))
    if len(ranked) < VOCAB_SIZE:
        raise ValueError(f"wordfreq has fewer than {VOCAB_SIZE} a-z words for {lang!r}")
    return [w for _, w in ranked[:size]], [f for f, _ in ranked[:size]]


def caption_mixture(words: list[str], freqs: list[float], captions: list[str], weight: float,
                    size: int = VOCAB_SIZE) -> tuple[list[str], list[float]]:  # fmt: skip
    """Re-rank the vocabulary by (1 - weight)·P_general + weight·P_captions, P_captions being the
    word frequencies of ``captions`` (words it has that the list lacks join it): general English
    frequencies price the words of image descriptions ("sky", "blue", "background") 3-5 bits too
    high."""
    total = sum(freqs)
    counts: dict[str, int] = {}
    for c in captions:
        for w in re.findall("[a-z]+", c.lower()):
            counts[w] = counts.get(w, 0) + 1
    n = sum(counts.values()) or 1
    p = {w: (1 - weight) * f / total for w, f in zip(words, freqs)}
    for w, k in counts.items():
        p[w] = p.get(w, 0.0) + weight * k / n
    ranked = sorted(p.items(), key=lambda t: (-t[1], t[0]))[:size]
    return [w for w, _ in ranked], [f for _, f in ranked]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build the static text model from wordfreq's English frequencies, "
                                             "optionally mixed with the word frequencies of a caption corpus.")  # fmt: skip
    ap.add_argument("--out", default=str(Path(__file__).parent / "weights" / "text_en_v2.safetensors"))
    ap.add_argument("--version", type=int, default=2, choices=(1, 2), help="1: rANS-coded (text_en_v1); 2: arithmetic")
    ap.add_argument("--captions", help="JSON list of {original_caption} objects (the project's own caption corpus)")
    ap.add_argument("--caption-weight", type=float, default=0.3)
    args = ap.parse_args(argv)
    words, freqs = wordfreq_vocabulary()
    if args.captions:
        from codec.text_measure import read_captions

        words, freqs = caption_mixture(*wordfreq_vocabulary(size=4 * VOCAB_SIZE), read_captions(args.captions),
                                       args.caption_weight)  # fmt: skip
    TextModel.build(words, freqs, args.version).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
