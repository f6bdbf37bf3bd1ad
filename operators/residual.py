"""Residual: choose each asset's residual text and code it into its bitstream's text section.

Stateless and CPU-only (a Ray task): it needs only the preset's text tables. The residual is
the model's answer when the caption stage asked one, else the deterministic word residual
between the two captions (or, with only a known caption, that caption's content words). The
new stream is parsed back and its text decoded and compared before the row moves on; with a
bits-per-pixel target, words are dropped from the end until the whole stream fits.
"""

from __future__ import annotations

import pyarrow as pa

from codec.bitstream import Bitstream
from codec.presets import load_text_model
from codec.semantic.captions import clean_caption
from codec.semantic.residual import word_residual
from codec.text_coding import decode_text, encode_text
from operators.encode import section_columns
from operators.sources import _with
from schemas.archive import STATUS_FAILED


def _fit(stream: Bitstream, text: str, model, pixels: int, target_bpp: float | None) -> tuple[bytes, str]:
    words = text.split(" ") if text else []
    while True:
        text = " ".join(words)
        stream.text = encode_text(text, model)
        data = stream.to_bytes()
        if target_bpp is None or not words or len(data) * 8 / pixels <= target_bpp:
            return data, text
        words.pop()


def attach_residual(batch: pa.Table, preset: str, max_words: int = 12, target_bpp: float | None = None) -> pa.Table:
    model = load_text_model(preset)
    wanted = ["status", "error", "bitstream", "width", "height", "caption", "caption_original",
              "caption_reconstruction", "residual_text"]  # the last three only after a caption stage
    rows = batch.select([c for c in wanted if c in batch.column_names]).to_pylist()
    cols: dict[str, list] = {k: [] for k in ("status", "error", "bitstream", "caption_original", "residual_text")}
    sections: dict[str, list] = {}
    for r in rows:
        orig = r.get("caption_original", clean_caption(r["caption"]) or None)
        text, data = r.get("residual_text"), r["bitstream"]
        status, error = r["status"], r["error"]
        if status is None:
            if text is None:
                text = word_residual(orig, r.get("caption_reconstruction") or "", max_words) if orig else ""
            data, text = _fit(Bitstream.from_bytes(data), text, model, r["width"] * r["height"], target_bpp)
            if decode_text(Bitstream.from_bytes(data).text, model) != text:
                status, error, data = STATUS_FAILED, "text verify failed: the section does not decode to the residual", None
        for k, v in (("status", status), ("error", error), ("bitstream", data), ("caption_original", orig),
                     ("residual_text", text if status is None else None)):  # fmt: skip
            cols[k].append(v)
        for k, v in section_columns(data).items():
            sections.setdefault(k, []).append(v)
    types = {"bitstream": pa.large_binary(), "bpp": pa.float64(),
             **{k: pa.int64() for k in ("bits_header", "bits_hyper", "bits_latent", "bits_text")}}  # fmt: skip
    return _with(batch, **{k: pa.array(v, types.get(k, pa.string())) for k, v in {**cols, **sections}.items()})
