"""The word bigram of version-3 text models: which words tend to follow which.

A caption's words are far from independent ("a stone building", "on the left"), and the
unigram table prices every word as if they were. The bigram keeps, for each history word (or
the start of a clause), the words seen after it in a corpus with integer frequencies, and
mixes them into the unigram word table in integer arithmetic at coding time (Witten-Bell
style: a history seen with many distinct followers trusts its list less). Everything a coder
reads is an integer stored in the file, and the mixture is integer arithmetic, so encoder and
decoder build the same table on any machine.

Built from the glosses of WordNet 3.0 (Princeton University; Debian's ``wordnet-base``): 1.5 M
words of plain English definitions and usage examples, the one sizeable body of English
sentences installable here. ``python -m codec.text_bigram`` builds it onto a v2 model.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

START = -1  # the history at the start of a clause (after punctuation, a digit, a spelled word...)
BUDGET = (1 << 16) - 4096  # the mixture's share of a table's total; the rest are the 1-count floors
MAX_FOLLOWERS = 2048  # per history, so that a table never outgrows 2^16 (floors included)
_FIELDS = ("history", "offset", "mix", "word", "freq", "bound")

_CLAUSE = re.compile(r"[^a-z\s]+")


@dataclass
class WordBigram:
    """Per history rank (``START`` first), its followers' ranks, their integer frequencies
    (summing to at most 2^16) and the mixture weight (of ``BUDGET``); and the *bound* words,
    those a clause almost never ends on ("a", "the", "of"): after one, what follows is coded with
    its own kind table, where a space is nearly certain."""

    history: np.ndarray  # int64 (H,), ascending; START is -1 so it comes first
    offset: np.ndarray  # int64 (H + 1,)
    mix: np.ndarray  # int64 (H,)
    word: np.ndarray  # int64 (N,), ascending within each history
    freq: np.ndarray  # int64 (N,)
    bound: np.ndarray  # int64 (B,), ascending ranks
    _index: dict[int, int] = field(default_factory=dict, repr=False)
    bound_set: frozenset[int] = field(default_factory=frozenset, repr=False)

    def __post_init__(self) -> None:
        self._index = {int(h): i for i, h in enumerate(self.history)}
        self.bound_set = frozenset(int(r) for r in self.bound)

    def followers(self, history: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        i = self._index.get(history)
        if i is None:
            return None
        a, b = int(self.offset[i]), int(self.offset[i + 1])
        return self.word[a:b], self.freq[a:b], int(self.mix[i])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"bigram.{k}": torch.from_numpy(getattr(self, k).astype(np.int32)) for k in
                _FIELDS}  # fmt: skip

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> "WordBigram":
        arrays = {k: t[f"bigram.{k}"].numpy().astype(np.int64) for k in _FIELDS}
        b = cls(**arrays)
        ok = (len(b.offset) == len(b.history) + 1 and b.offset[0] == 0 and b.offset[-1] == len(b.word) == len(b.freq)
              and np.all(np.diff(b.offset) > 0) and np.all(np.diff(b.offset) <= MAX_FOLLOWERS)
              and np.all((b.mix >= 0) & (b.mix <= BUDGET)) and np.all(b.freq >= 0))  # fmt: skip
        if not ok:
            raise ValueError("not a valid word bigram table")
        return b


def mixed_word_cdf(unigram_cdf: list[int], direct: int, bigram: WordBigram, history: int,
                   ) -> tuple[list[int], list[int]] | None:  # fmt: skip
    """The word table after ``history``: the unigram's slots (``direct`` words, then the rank
    buckets; its escape slot dropped), then one slot per follower outside the direct words.
    Returns (cdf, ranks of the extra slots), or None where the history has no followers.

    Every slot's frequency is 1 + ((BUDGET - A)·u + A·b) // 2^16 (u: unigram, b: bigram,
    A: the history's weight), so the total stays at most slots + BUDGET <= 2^16."""
    entry = bigram.followers(history)
    if entry is None:
        return None
    words, freqs, mix = entry
    u = np.diff(np.asarray(unigram_cdf[:-1], dtype=np.int64))  # without the escape slot
    extra = words[words >= direct]
    b = np.zeros(len(u) + len(extra), dtype=np.int64)
    inside = words < direct
    b[words[inside]] = freqs[inside]
    b[len(u) :] = freqs[~inside]
    u = np.concatenate([u, np.zeros(len(extra), dtype=np.int64)])
    f = 1 + ((BUDGET - mix) * u + mix * b) // (1 << 16)
    return [0, *np.cumsum(f).tolist()], extra.tolist()


def wordnet_glosses(folder: str | Path) -> Iterator[str]:
    """The gloss (definition and examples) of every synset in WordNet's data.* files."""
    for part in ("noun", "verb", "adj", "adv"):
        with open(Path(folder) / f"data.{part}", encoding="latin-1") as f:
            for line in f:
                if not line.startswith(" ") and " | " in line:
                    yield line.split(" | ", 1)[1].strip()


def count_bigrams(texts: Iterable[str], rank: dict[str, int]) -> tuple[dict[int, Counter], Counter]:
    """Follower counts per history, splitting clauses where the coder resets its history: at
    anything that is not a letter or white space, and after a word outside the vocabulary; and
    how often each word ends a clause."""
    counts: dict[int, Counter] = defaultdict(Counter)
    ends: Counter = Counter()
    for text in texts:
        for clause in _CLAUSE.split(text.lower()):
            prev = START
            for w in clause.split():
                r = rank.get(w)
                if r is None:
                    prev = START
                    continue
                counts[prev][r] += 1
                prev = r
            if prev != START:
                ends[prev] += 1
    return counts, ends


def bound_words(counts: dict[int, Counter], ends: Counter, max_end_rate: float, min_seen: int = 50) -> list[int]:
    """Words seen at least ``min_seen`` times that end at most ``max_end_rate`` of their clauses."""
    out = []
    for h, c in counts.items():
        n = sum(c.values()) + ends[h]
        if h != START and n >= min_seen and ends[h] <= max_end_rate * n:
            out.append(h)
    return sorted(out)


def build_bigram(counts: dict[int, Counter], ends: Counter, escape: float, min_count: int,
                 max_end_rate: float) -> WordBigram:  # fmt: skip
    """Keep followers seen at least ``min_count`` times (at most MAX_FOLLOWERS, the most frequent);
    the weight of a history is C / (C + escape·T): C kept occurrences, T distinct followers seen."""
    history, offset, mix, word, freq = [], [0], [], [], []
    for h in sorted(counts):
        c = counts[h]
        kept = sorted((r for r, n in c.most_common(MAX_FOLLOWERS) if n >= min_count))
        if not kept:
            continue
        total = sum(c[r] for r in kept)
        history.append(h)
        mix.append(int(BUDGET * total / (total + escape * len(c))))
        word += kept
        freq += [c[r] * (1 << 16) // total for r in kept]
        offset.append(len(word))
    arr = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return WordBigram(arr(history), arr(offset), arr(mix), arr(word), arr(freq),
                      arr(bound_words(counts, ends, max_end_rate)))  # fmt: skip


def bound_kind_cdf() -> list[int]:
    """The kind table after a bound word: hand-set like the other structure tables."""
    from codec.text_model import _FLOOR, KINDS, quantise

    weights = {"space": 99.0, "punct": 0.4, "end": 0.2, "newline": 0.1}
    return quantise([weights.get(k, _FLOOR) for k in KINDS])


def main(argv: list[str] | None = None) -> None:
    from codec.text_model import TextModel

    ap = argparse.ArgumentParser(description="Add a WordNet-gloss word bigram to a v2 text model (-> version 3).")
    ap.add_argument("--base", default=str(Path(__file__).parent / "weights" / "text_en_v2.safetensors"))
    ap.add_argument("--wordnet", default="/usr/share/wordnet", help="WordNet 3.0 dict folder (data.noun ...)")
    ap.add_argument("--escape", type=float, default=8.0)
    ap.add_argument("--min-count", type=int, default=1)
    ap.add_argument("--max-end-rate", type=float, default=0.1, help="bound words end at most this share of clauses")
    ap.add_argument("--out", default=str(Path(__file__).parent / "weights" / "text_en_v3.safetensors"))
    args = ap.parse_args(argv)
    base = TextModel.load(args.base)
    counts, ends = count_bigrams(wordnet_glosses(args.wordnet), base.rank)
    bigram = build_bigram(counts, ends, args.escape, args.min_count, args.max_end_rate)
    TextModel(base.vocab, base.cdfs + [bound_kind_cdf()], version=3, bigram=bigram).save(args.out)
    print(f"wrote {args.out}: {len(bigram.history)} histories, {len(bigram.word)} followers, "
          f"{len(bigram.bound)} bound words")  # fmt: skip


if __name__ == "__main__":
    main()
