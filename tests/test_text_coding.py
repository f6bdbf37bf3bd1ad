"""The text section's coder: exact round trips for any string, and a cost that follows the model."""

import pytest

from codec.bitstream import BitstreamError
from codec.presets import load_text_model, releases
from codec.text_coding import decode_text, encode_text

MODEL = load_text_model()
EVERY_MODEL = {e["text_model"]: e["model_id"] for e in releases("taef2")}  # text file -> one model using it

CASES = [
    "a",
    "A stone building with red shutters.",
    "The image shows a weathered red wooden door; its knob is white, round and slightly dirty.",
    "I'm sorry, I can't help with that!",
    "iPhone McDONALD ABc A B café naïve 12.5% “Bahamas.” — ok…",
    "tabs\tand\nnew lines  and  double spaces ",
    "zzqxv qqqq xylophonist",  # out-of-vocabulary letter runs are spelled
    "日本語のテキスト 🙂 \x00 \ud800",  # any code point, even a lone surrogate
    " leading space",
    "9876543210",
]


@pytest.mark.parametrize("model_id", sorted(EVERY_MODEL.values()))
@pytest.mark.parametrize("text", CASES)
def test_round_trip_is_exact(text, model_id):
    model = load_text_model(model_id=model_id)
    assert decode_text(encode_text(text, model), model) == text


def test_empty_text_costs_nothing():
    assert encode_text("", MODEL) == b""
    assert decode_text(b"", MODEL) == ""


def test_common_words_cost_less_than_rare_ones_and_than_spelling():
    common = len(encode_text("a red door in the house", MODEL))
    rare = len(encode_text("a vermilion portcullis in the casemate", MODEL))
    spelled = len(encode_text("a qzxvb wqzzk in the xqvzt", MODEL))
    assert common < rare < spelled


def test_a_forty_word_caption_beats_zlib_by_far():
    import zlib

    caption = ("A stone building features red shutters on all windows. It has eight windows, four on each "
               "level, with rectangular shapes and white frames. A central red door on the lower level is "
               "flanked by a narrow stone pathway.")  # fmt: skip
    bits = 8 * len(encode_text(caption, MODEL))
    assert bits < 700 < 8 * len(zlib.compress(caption.encode(), 9))


def test_corrupted_payload_is_refused_or_decodes_without_hanging():
    payload = bytearray(encode_text("A quiet harbour at dusk with boats.", MODEL))
    for i in range(len(payload)):
        damaged = bytearray(payload)
        damaged[i] ^= 0x5A
        try:
            decode_text(bytes(damaged), MODEL)  # may decode to other text: the CRC catches damage first
        except BitstreamError:
            pass


def _payload(symbols: list[int], tables: list) -> bytes:
    """A payload coded from given symbols (what a crafted stream could hold)."""
    from codec.arithmetic_coding import ArithmeticEncoder

    enc = ArithmeticEncoder()
    for s, t in zip(symbols, tables):
        enc.encode(MODEL.cdfs[t] if isinstance(t, int) else t, s)
    return enc.finish()


def test_two_case_marks_in_a_row_are_refused():
    """Spec section 7: a case mark is followed by a word; the encoder never writes two."""
    from codec.text_coding import _symbols
    from codec.text_model import C, K, TextModel

    assert MODEL.version >= 2
    symbols, tables = _symbols("Harbour", MODEL)
    assert decode_text(_payload(symbols, tables), MODEL) == "Harbour"
    symbols.insert(1, K["upper"])
    tables.insert(1, TextModel.kind_table(C["cap"]))
    with pytest.raises(BitstreamError, match="case mark not followed by a word"):
        decode_text(_payload(symbols, tables), MODEL)
