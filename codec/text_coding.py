"""Lossless coding of the residual text with the static :class:`TextModel`: CompressAI's rANS for
version-1 models, the project's arithmetic coder (``codec.arithmetic_coding``, about 45 bits
less per message) from version 2 on; from version 3 on, a word is coded with the word table
its predecessor selects (``codec.text_bigram``).

Any Python string round-trips exactly: words in the vocabulary cost their rank's probability,
other letter runs are spelled, and any other character is coded as its code point. The stream
ends with an explicit end symbol, so nothing outside the payload (such as a length or a
frequency table) is needed to decode it; the payload's bytes are all the text costs, beside
the section framing the container adds.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator

from compressai.ans import RansDecoder, RansEncoder

from codec.arithmetic_coding import ArithmeticDecoder, ArithmeticEncoder
from codec.bitstream import BitstreamError
from codec.rans_guard import room_after
from codec.text_bigram import START
from codec.text_model import (
    BOUND, BUCKETS, C, DIRECT_WORDS, K, OPENERS, PUNCT, QUOTES, SPELL_ALPHABET, STOPS, TextModel,
)  # fmt: skip

_RUN = re.compile(r"[A-Za-z]+|.", re.S)
_PIECE = re.compile(r"[A-Z]+(?![a-z])|[A-Z][a-z]*|[a-z]+")
_PUNCT_INDEX = {p: i for i, p in enumerate(PUNCT)}
_AFTER_WORD_CONTEXTS = {C["word"], BOUND, C["digit"], C["close"], C["stop"], C["quote"]}
MAX_CODE_POINT_BITS = 21


def _tokens(text: str) -> Iterator[tuple[str, object]]:
    """(kind, value) pairs: letter runs split into case pieces, then one token per character."""
    for m in _RUN.finditer(text):
        run = m.group()
        if run[0].isascii() and run[0].isalpha():
            for piece in _PIECE.findall(run):
                if piece.isupper():
                    yield ("cap" if len(piece) == 1 else "upper"), None
                elif piece[0].isupper():
                    yield "cap", None
                yield "word", piece.lower()
        elif run == " ":
            yield "space", None
        elif run == "\n":
            yield "newline", None
        elif run.isascii() and run.isdigit():
            yield "digit", int(run)
        elif run in _PUNCT_INDEX:
            yield "punct", run
        else:
            yield "other", ord(run)


def _next_context(ctx: int, kind: str, value: object, model: TextModel, rank: int | None = None) -> int:
    if kind == "word" and model.bigram is not None and rank in model.bigram.bound_set:
        return BOUND
    if kind in ("word", "spell"):
        return C["word"]
    if kind in ("cap", "upper"):
        return C["cap"]
    if kind == "space":
        return C["sentence"] if ctx in (C["stop"], C["sentence"]) else C["space"]
    if kind == "newline":
        return C["sentence"]
    if kind == "digit":
        return C["digit"]
    if kind == "punct":
        if value in STOPS:
            return C["stop"]
        return C["open"] if value in OPENERS else C["quote"] if value in QUOTES else C["close"]
    return C["other"]


def _punct_table(ctx: int) -> int:
    return TextModel.PUNCT_AFTER_WORD if ctx in _AFTER_WORD_CONTEXTS else TextModel.PUNCT_ELSEWHERE


def _bits(value: int, bits: int) -> Iterator[tuple[int, int]]:
    """A uniform value as (table, symbol) chunks of at most 8 bits, most significant first."""
    while bits > 0:
        c = min(8, bits)
        bits -= c
        yield TextModel.UNIFORM + c - 1, (value >> bits) & ((1 << c) - 1)


def _next_history(history: int, kind: str, rank: int | None) -> int:
    """The bigram's history: the last word, kept across spaces and case marks, reset by anything else."""
    if kind == "word":
        return rank
    return history if kind in ("space", "cap", "upper") else START


def _symbols(text: str, model: TextModel) -> tuple[list[int], list[int | list[int]]]:
    """The symbols and their tables: a table number, or a word table built for its history."""
    symbols: list[int] = []
    tables: list[int | list[int]] = []

    def put(table: int | list[int], symbol: int) -> None:
        tables.append(table)
        symbols.append(symbol)

    ctx, history = C["start"], START
    for kind, value in _tokens(text):
        if kind == "word" and value not in model.rank:
            kind = "spell"
        put(TextModel.kind_table(ctx), K[kind])
        rank = model.rank[value] if kind == "word" else None
        if kind == "word":
            mixed = model.word_table(history)
            word_table: int | list[int] = TextModel.WORD if mixed is None else mixed[0]
            extra = [] if mixed is None else mixed[1]
            i = bisect_left(extra, rank)
            if i < len(extra) and extra[i] == rank:
                put(word_table, DIRECT_WORDS + BUCKETS + i)
            elif rank < DIRECT_WORDS:
                put(word_table, rank)
            else:
                b = (rank // DIRECT_WORDS).bit_length() - 1
                put(word_table, DIRECT_WORDS + b)
                for t, s in _bits(rank - (DIRECT_WORDS << b), 10 + b):
                    put(t, s)
        elif kind == "spell":
            for ch in value:
                put(TextModel.LETTER, ord(ch) - 97)
            put(TextModel.LETTER, len(SPELL_ALPHABET))
        elif kind == "digit":
            put(TextModel.DIGIT, value)
        elif kind == "punct":
            put(_punct_table(ctx), _PUNCT_INDEX[value])
        elif kind == "other":
            for t, s in _bits(value, MAX_CODE_POINT_BITS):
                put(t, s)
        ctx = _next_context(ctx, kind, value, model, rank)
        history = _next_history(history, kind, rank)
    put(TextModel.kind_table(ctx), K["end"])
    return symbols, tables


def encode_text(text: str, model: TextModel) -> bytes:
    """The text section's payload; empty text gives ``b""`` (the section is then left out)."""
    if not text:
        return b""
    symbols, tables = _symbols(text, model)
    if model.version == 1:
        return RansEncoder().encode_with_indexes(symbols, tables, model.cdfs, model.lengths, [0] * len(model.cdfs))
    enc = ArithmeticEncoder()
    for s, t in zip(symbols, tables):
        enc.encode(model.cdfs[t] if isinstance(t, int) else t, s)
    return enc.finish()


class _Reader:
    def __init__(self, data: bytes, model: TextModel) -> None:
        self.budget = 64 * len(data) + 64  # a corrupted stream cannot decode forever
        if model.version == 1:
            self.rans = RansDecoder()
            self.rans.set_stream(room_after(data, self.budget))
        else:
            self.arith = ArithmeticDecoder(data)
        self.model = model

    def __call__(self, table: int | list[int]) -> int:
        """A symbol of table number ``table``, or of a word table built for its history (a CDF
        list, version 3), as ``encode_text`` wrote it."""
        self.budget -= 1
        if self.budget < 0:
            raise BitstreamError("text section is corrupted (no end symbol)")
        m = self.model
        if isinstance(table, list):  # a mixed word table has no escape slot
            symbol, limit = self.arith.decode(table), len(table) - 1
        elif m.version == 1:
            symbol = self.rans.decode_stream([0], [m.cdfs[table]], [m.lengths[table]], [0])[0]
            limit = m.lengths[table] - 2
        else:
            symbol, limit = self.arith.decode(m.cdfs[table]), m.lengths[table] - 2
        if not 0 <= symbol < limit:  # CompressAI's escape slot is never written
            raise BitstreamError("text section is corrupted (symbol out of range)")
        return symbol

    def bits(self, bits: int) -> int:
        value = 0
        for table, _ in _bits(0, bits):
            c = table - TextModel.UNIFORM + 1
            value = (value << c) | self(table)
        return value


def decode_text(data: bytes, model: TextModel) -> str:
    """Inverse of :func:`encode_text`."""
    if not data:
        return ""
    read = _Reader(data, model)
    out: list[str] = []
    ctx, case, history = C["start"], None, START
    while True:
        kind = _KIND_NAMES[read(TextModel.kind_table(ctx))]
        value: object = None
        rank = None
        if kind == "end":
            return "".join(out)
        if kind in ("word", "spell"):
            if kind == "word":
                mixed = model.word_table(history)
                s = read(TextModel.WORD if mixed is None else mixed[0])
                if s >= DIRECT_WORDS + BUCKETS:  # only a mixed table has slots past the buckets
                    rank = mixed[1][s - DIRECT_WORDS - BUCKETS]
                elif s >= DIRECT_WORDS:
                    b = s - DIRECT_WORDS
                    rank = (DIRECT_WORDS << b) + read.bits(10 + b)
                else:
                    rank = s
                word = model.vocab[rank]
            else:
                letters = []
                while (s := read(TextModel.LETTER)) != len(SPELL_ALPHABET):
                    letters.append(SPELL_ALPHABET[s])
                word = "".join(letters)
                if not word:
                    raise BitstreamError("text section is corrupted (empty spelled word)")
            out.append(word.capitalize() if case == "cap" else word.upper() if case == "upper" else word)
            case = None
        elif kind in ("cap", "upper"):
            if case is not None:  # the encoder writes one mark before a word, never two
                raise BitstreamError("text section is corrupted (a case mark not followed by a word)")
            case = kind
        elif kind == "space":
            out.append(" ")
        elif kind == "newline":
            out.append("\n")
        elif kind == "digit":
            value = read(TextModel.DIGIT)
            out.append(str(value))
        elif kind == "punct":
            value = PUNCT[read(_punct_table(ctx))]
            out.append(value)
        else:
            point = read.bits(MAX_CODE_POINT_BITS)
            if point > 0x10FFFF:
                raise BitstreamError("text section is corrupted (bad code point)")
            out.append(chr(point))
        if case is not None and kind not in ("cap", "upper"):
            raise BitstreamError("text section is corrupted (a case mark not followed by a word)")
        ctx = _next_context(ctx, kind, value, model, rank)
        history = _next_history(history, kind, rank)


_KIND_NAMES = {i: name for name, i in K.items()}
