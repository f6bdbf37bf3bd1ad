"""A bit-exact binary arithmetic coder over integer CDF tables, for very short messages.

Why not CompressAI's rANS here: its encoder flushes a 64-bit state into 32-bit words, which
costs about 49 bits per message whatever the message. The text section is a few hundred bits,
so that is a tenth of it. This coder (the classic integer coder of Witten, Neal and Cleary,
with 32-bit registers and the E3 "pending bits" rule) ends a message in 2 bits plus the
padding to a whole byte; the decoder reads zeros past the end. It is pure Python on integers,
so it runs identically everywhere; messages of a hundred symbols take well under a millisecond.

Tables are CompressAI-layout CDFs (a leading 0, non-decreasing, ending at the total, at most
2¹⁶): symbol s occupies [cdf[s], cdf[s+1]).
"""

from __future__ import annotations

from bisect import bisect_right

BITS = 32
FULL = (1 << BITS) - 1
HALF = 1 << (BITS - 1)
QUARTER = 1 << (BITS - 2)
MAX_TOTAL = 1 << 16  # keeps every interval non-empty: the range never falls below a quarter


class ArithmeticEncoder:
    def __init__(self) -> None:
        self.low, self.high, self.pending = 0, FULL, 0
        self.bits: list[int] = []

    def _emit(self, bit: int) -> None:
        self.bits.append(bit)
        self.bits.extend([bit ^ 1] * self.pending)
        self.pending = 0

    def encode(self, cdf: list[int], symbol: int) -> None:
        lo, hi, total = cdf[symbol], cdf[symbol + 1], cdf[-1]
        if not 0 <= lo < hi <= total <= MAX_TOTAL:
            raise ValueError(f"symbol {symbol} has no probability in this table")
        span = self.high - self.low + 1
        self.high = self.low + span * hi // total - 1
        self.low = self.low + span * lo // total
        while True:
            if self.high < HALF:
                self._emit(0)
            elif self.low >= HALF:
                self._emit(1)
                self.low -= HALF
                self.high -= HALF
            elif self.low >= QUARTER and self.high < HALF + QUARTER:
                self.pending += 1
                self.low -= QUARTER
                self.high -= QUARTER
            else:
                break
            self.low, self.high = 2 * self.low, 2 * self.high + 1

    def finish(self) -> bytes:
        """Two bits pick a point inside the final interval; zeros pad the last byte."""
        self.pending += 1
        self._emit(0 if self.low < QUARTER else 1)
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


class ArithmeticDecoder:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0
        self.low, self.high, self.value = 0, FULL, 0
        for _ in range(BITS):
            self.value = (self.value << 1) | self._bit()

    def _bit(self) -> int:
        i = self.pos
        self.pos += 1
        return (self.data[i >> 3] >> (7 - (i & 7))) & 1 if i >> 3 < len(self.data) else 0

    def decode(self, cdf: list[int]) -> int:
        total = cdf[-1]
        span = self.high - self.low + 1
        target = ((self.value - self.low + 1) * total - 1) // span
        symbol = bisect_right(cdf, target) - 1
        symbol = min(symbol, len(cdf) - 2)
        lo, hi = cdf[symbol], cdf[symbol + 1]
        self.high = self.low + span * hi // total - 1
        self.low = self.low + span * lo // total
        while True:
            if self.high < HALF:
                pass
            elif self.low >= HALF:
                self.low -= HALF
                self.high -= HALF
                self.value -= HALF
            elif self.low >= QUARTER and self.high < HALF + QUARTER:
                self.low -= QUARTER
                self.high -= QUARTER
                self.value -= QUARTER
            else:
                break
            self.low, self.high = 2 * self.low, 2 * self.high + 1
            self.value = (self.value << 1) | self._bit()
        return symbol

    @property
    def exhausted(self) -> bool:
        """True once the decoder reads more than a register's width past the data (a corrupt stream)."""
        return self.pos > 8 * len(self.data) + BITS
