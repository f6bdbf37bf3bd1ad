"""`resulic text measure`: what the text coder spends on a set of captions.

Tokens are counted with CLIP's byte-pair encoding (the tokenizer of the CLIP and OpenCLIP text
encoders that Stable Diffusion conditions on, from ``open_clip``), so "bits per token" compares
with the paper's figures (its reference code spends about 15.5 bits per CLIP token, without
counting its per-message frequency table).
"""

from __future__ import annotations

import json
import zlib
from functools import lru_cache
from pathlib import Path

from codec.text_coding import decode_text, encode_text
from codec.text_model import TextModel


@lru_cache(maxsize=1)
def _clip_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def clip_token_count(text: str) -> int:
    """CLIP BPE tokens in ``text``, without the start and end tokens."""
    return len(_clip_tokenizer().encode(text))


def read_captions(path: str | Path) -> list[str]:
    """A JSON list (of strings, or of objects with ``original_caption``) or plain text lines."""
    raw = Path(path).read_text(encoding="utf-8")
    try:
        items = json.loads(raw)
    except json.JSONDecodeError:
        return [line for line in raw.splitlines() if line.strip()]
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of captions")
    out = []
    for i, item in enumerate(items):
        text = item.get("original_caption") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise ValueError(f"{path}: item {i} has no 'original_caption' string")
        out.append(text)
    return out


def measure(captions: list[str], model: TextModel) -> dict:
    """Totals over ``captions``: payload bits (everything needed to decode, end mark and coder
    flush included), the container's framing on top, tokens, words and a zlib baseline."""
    payloads = [encode_text(c, model) for c in captions]
    bits = sum(8 * len(p) for p in payloads)
    # the container frames a non-empty text section with a tag, a varint length and a CRC-32
    framing = sum(8 * (1 + (1 if len(p) < 128 else 2) + 4) for p in payloads if p)
    tokens = sum(clip_token_count(c) for c in captions)
    words = sum(len(c.split()) for c in captions)
    return {
        "captions": len(captions), "tokens": tokens, "words": words, "bits": bits,
        "bits_per_token": round(bits / tokens, 3) if tokens else None,
        "bits_per_word": round(bits / words, 3) if words else None,
        "bits_per_caption": round(bits / len(captions), 1) if captions else None,
        "section_bits_with_framing": bits + framing,
        "zlib_bits": sum(8 * len(zlib.compress(c.encode(), 9)) for c in captions),
        "roundtrip_ok": all(decode_text(p, model) == c for p, c in zip(payloads, captions)),
        "text_model": model.sha256[:16],
    }  # fmt: skip
