"""The residual operator codes the text into each stream, verified, within a bpp budget."""

from __future__ import annotations

import pyarrow as pa
from PIL import Image

import codec
from operators.residual import attach_residual
from tests.test_caption_operator import encoded


def captioned(**cols) -> pa.Table:
    t = encoded({"a.png": Image.new("RGB", (64, 64), (200, 100, 50)), "b.png": Image.new("RGB", (64, 64), (20, 100, 50))},
                captions={"a.png": "A wooden door with a brass knob and a white frame."})  # fmt: skip
    t = t.drop_columns(["pixels", "recon_pixels"])
    for k, v in cols.items():
        t = t.append_column(k, pa.array(v, pa.string()))
    return t


def test_known_caption_becomes_its_content_words_in_the_stream():
    rows = {r["key"]: r for r in attach_residual(captioned(), "taef2").to_pylist()}
    a, b = rows["a.png"], rows["b.png"]
    assert a["residual_text"] == "wooden door brass knob white frame"
    assert codec.read_text(a["bitstream"]) == a["residual_text"]
    assert a["bits_text"] > 0 and a["bits_header"] + a["bits_hyper"] + a["bits_latent"] + a["bits_text"] == 8 * len(a["bitstream"])
    assert a["bpp"] == 8 * len(a["bitstream"]) / 64**2
    assert b["residual_text"] == "" and b["bits_text"] == 0 and codec.read_text(b["bitstream"]) == ""


def test_word_residual_between_two_captions_and_model_answers_win():
    t = captioned(caption_original=["A wooden door with a brass knob.", "Green hills under a grey sky."],
                  caption_reconstruction=["A brown door.", "Green hills."], residual_text=[None, "grey sky"])  # fmt: skip
    rows = {r["key"]: r for r in attach_residual(t, "taef2").to_pylist()}
    assert rows["a.png"]["residual_text"] == "wooden brass knob"
    assert rows["b.png"]["residual_text"] == "grey sky"
    assert codec.read_text(rows["b.png"]["bitstream"]) == "grey sky"


def test_words_are_dropped_to_fit_the_target_bpp():
    t = captioned()
    latent_only = 8 * len(t.column("bitstream")[0].as_py()) / 64**2
    target = latent_only + 120 / 64**2  # room for 120 bits of text section: not the whole residual
    row = attach_residual(t, "taef2", target_bpp=target).to_pylist()[0]
    assert row["bpp"] <= target and 1 <= len(row["residual_text"].split()) < 6
    assert "wooden door brass knob white frame".startswith(row["residual_text"])
    assert codec.read_text(row["bitstream"]) == row["residual_text"]
