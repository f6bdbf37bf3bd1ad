"""The arithmetic coder round-trips any symbols over any valid tables, costs what the
probabilities say plus a few bits, and is deterministic (a fixed vector pins its output)."""

from __future__ import annotations

import math
import random

import pytest

from codec.arithmetic_coding import ArithmeticDecoder, ArithmeticEncoder


def random_cdf(rng: random.Random, n: int) -> list[int]:
    counts = [rng.choice([0, 1, 1, 5, 300, 1000]) for _ in range(n)]
    counts[rng.randrange(n)] += 1
    counts[rng.randrange(n)] += (1 << 16) - sum(counts) if rng.random() < 0.5 else 0  # often a full 2^16 total
    cdf = [0]
    for c in counts:
        cdf.append(cdf[-1] + c)
    return cdf


def test_round_trip_and_cost():
    rng = random.Random(0)
    for trial in range(200):
        tables = [random_cdf(rng, rng.randint(2, 40)) for _ in range(5)]
        msg = []
        for _ in range(rng.randint(0, 300)):
            t = rng.randrange(5)
            cdf = tables[t]
            s = rng.choice([i for i in range(len(cdf) - 1) if cdf[i + 1] > cdf[i]])
            msg.append((t, s))
        enc = ArithmeticEncoder()
        ideal = 0.0
        for t, s in msg:
            enc.encode(tables[t], s)
            ideal += -math.log2((tables[t][s + 1] - tables[t][s]) / tables[t][-1])
        data = enc.finish()
        assert 8 * len(data) <= ideal + 2 + 8 + 1e-6 * len(msg) + 1  # a few bits over the information
        dec = ArithmeticDecoder(data)
        assert [dec.decode(tables[t]) for t, _ in msg] == [s for _, s in msg], trial


def test_a_zero_probability_symbol_is_refused():
    with pytest.raises(ValueError, match="no probability"):
        ArithmeticEncoder().encode([0, 10, 10, 20], 1)


def test_fixed_vector():
    """Pins the exact bytes: any change to the arithmetic breaks old streams."""
    cdf = [0, 30000, 50000, 65000, 65536]
    enc = ArithmeticEncoder()
    for s in [0, 1, 2, 3, 0, 0, 2, 1, 3, 3]:
        enc.encode(cdf, s)
    assert enc.finish().hex() == "590f88b480"
