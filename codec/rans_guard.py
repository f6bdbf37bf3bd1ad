"""Room after an rANS string, so that CompressAI's decoder never reads past its input.

CompressAI's rANS decoder (``compressai.ans``, also behind ``EntropyBottleneck.decompress``)
does no bounds checking (CompressAI issue #300): a crafted string makes it read past its end
into whatever memory follows, which can crash the process or copy that memory into decoded
symbols (and so into a restored image). Rather than keep our own copy of the C++ decoder, each
string is handed over with enough zero bytes after it that no string can make the decoder
read beyond them. The bound, from the decoder's code (``rans_interface.cpp``, 32-bit words):

- each symbol renormalises at most once: one word;
- a bypass-coded symbol first sums 4-bit counts while they read 15, then reads that many
  4-bit values. The counts come from the string (2 per byte) or from the state's 64 bits,
  so at most 15·(2·n + 16) values follow, 8 per word: under 4·n + 64 words for n bytes;
- past the string the decoder reads zeros, which decode as the first symbol of any table,
  never as a bypass escape: one word per symbol.

So 16·n + 4·symbols + 256 zero bytes suffice (the state's initial two words included). A
stream whose sections are longer than the geometry allows is refused before this
(``codec.parsing``), which bounds the room too.
"""

from __future__ import annotations

WORD = 4


def room_after(data: bytes, symbols: int) -> bytes:
    """``data`` followed by the zeros that keep decoding ``symbols`` symbols from it in bounds."""
    return data + bytes(16 * len(data) + WORD * symbols + 256)
