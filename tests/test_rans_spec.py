"""The rANS coder as schemas/bitstream_v1.md section 4 writes it out, implemented here from that
text alone, against CompressAI's: the same bytes from the same values, and the same values
back, escapes included. If this fails, the spec no longer describes the streams."""

from __future__ import annotations

import random

from compressai.ans import RansDecoder, RansEncoder

L, PRECISION, WORD = 2**31, 16, 2**32


def spec_decode(data: bytes, indexes: list[int], cdfs: list[list[int]], lengths: list[int], offsets: list[int]) -> list[int]:
    words = [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]
    x, pos = words[0] + words[1] * WORD, 2

    def renorm(x: int) -> int:
        nonlocal pos
        if x < L:
            x, pos = x * WORD + words[pos], pos + 1
        return x

    def bits4() -> int:
        nonlocal x
        g, x = x % 16, renorm(x // 16)
        return g

    out = []
    for i in indexes:
        cdf, m = cdfs[i], lengths[i] - 2
        c = x % 2**PRECISION
        v = max(j for j in range(lengths[i]) if cdf[j] <= c)
        x = renorm((cdf[v + 1] - cdf[v]) * (x // 2**PRECISION) + c - cdf[v])
        if v == m:
            n = g = bits4()
            while g == 15:
                g = bits4()
                n += g
            raw = sum(bits4() << (4 * j) for j in range(n))
            v = -(raw >> 1) - 1 if raw & 1 else (raw >> 1) + m
        out.append(v + offsets[i])
    return out


def spec_encode(values: list[int], indexes: list[int], cdfs: list[list[int]], lengths: list[int], offsets: list[int]) -> bytes:
    x, emitted = L, []

    def put(start: int, freq: int, scale_bits: int) -> None:
        nonlocal x
        if x >= 2 ** (31 - scale_bits + 32) * freq:
            emitted.append(x % WORD)
            x //= WORD
        x = (x // freq) * 2**scale_bits + x % freq + start

    for value, i in zip(reversed(values), reversed(indexes)):
        cdf, m = cdfs[i], lengths[i] - 2
        v = value - offsets[i]
        if v < 0 or v >= m:
            raw = -2 * v - 1 if v < 0 else 2 * (v - m)
            n = 0
            while raw >> (4 * n):
                n += 1
            for j in reversed(range(n)):
                put((raw >> (4 * j)) & 15, 1, 4)
            count = n
            while count >= 15:
                count -= 15
                put(15, 1, 4)
            put(count, 1, 4)
            v = m
        put(cdf[v], cdf[v + 1] - cdf[v], PRECISION)
    head = [x % WORD, x // WORD]
    return b"".join(w.to_bytes(4, "little") for w in head + emitted[::-1])


def _tables(rng: random.Random) -> tuple[list[list[int]], list[int], list[int]]:
    cdfs, lengths, offsets = [], [], []
    for _ in range(6):
        n = rng.randint(1, 40)  # symbols before the escape slot
        cuts = sorted(rng.sample(range(1, 2**PRECISION), n))
        cdfs.append([0, *cuts, 2**PRECISION])
        lengths.append(n + 2)
        offsets.append(rng.randint(-20, 0))
    width = max(lengths)
    return [c + [0] * (width - len(c)) for c in cdfs], lengths, offsets


def _value(rng: random.Random, m: int) -> int:
    """Mostly a table's own symbols; escapes below and above it, a few far out (several groups).
    CompressAI's encoder has room for one 32-bit word per value, so the mix stays well within."""
    r = rng.random()
    if r < 0.85:
        return rng.randrange(m)
    if r < 0.98:
        return -rng.randint(1, 70) if r < 0.915 else m + rng.randint(0, 70)
    return rng.choice([-1, 1]) * rng.randint(2**12, 2**20)


def test_the_spec_coder_writes_compressai_bytes_and_reads_them_back():
    rng = random.Random(7)
    for _ in range(20):
        cdfs, lengths, offsets = _tables(rng)
        indexes = [rng.randrange(len(cdfs)) for _ in range(rng.randint(1, 400))]
        values = [offsets[i] + _value(rng, lengths[i] - 2) for i in indexes]
        ours = spec_encode(values, indexes, cdfs, lengths, offsets)
        theirs = RansEncoder().encode_with_indexes(values, indexes, cdfs, lengths, offsets)
        assert ours == theirs
        assert spec_decode(theirs, indexes, cdfs, lengths, offsets) == values
        dec = RansDecoder()
        dec.set_stream(theirs)
        assert dec.decode_stream(indexes, cdfs, lengths, offsets) == values
