import zlib

import pytest

from codec.bitstream import Bitstream, BitstreamError, Header, read_varint, write_varint


def _stream(text: bytes = b"") -> Bitstream:
    return Bitstream(Header("taef2", bytes(range(8)), 768, 512, 24, 0, 0), b"zz" * 5, b"y" * 300, text)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**63 - 1])
def test_varint_roundtrip(value):
    data = write_varint(value)
    assert read_varint(data + b"tail", 0) == (value, len(data))


def test_roundtrip_and_sizes():
    s = _stream(b"a red door")
    data = s.to_bytes()
    back = Bitstream.from_bytes(data)
    assert back.header == s.header and back.latent == s.latent and back.hyper_latent == s.hyper_latent
    assert back.text == b"a red door"
    assert sum(back.section_bytes.values()) == len(data)
    assert set(back.section_bytes) == {"container", "head", "hyper_latent", "latent", "text"}


def test_framing_is_compact():
    data = _stream().to_bytes()
    assert len(data) - 10 - 300 <= 50  # magic, version, tags, lengths, CRCs and the header


def test_every_truncation_is_refused():
    data = _stream().to_bytes()
    for n in range(len(data)):
        with pytest.raises(BitstreamError):
            Bitstream.from_bytes(data[:n])


def test_every_single_byte_corruption_is_refused():
    data = _stream().to_bytes()
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x10
        with pytest.raises(BitstreamError):
            Bitstream.from_bytes(bytes(bad))


def test_unknown_version_and_foreign_data():
    data = bytearray(_stream().to_bytes())
    data[3] = 2
    with pytest.raises(BitstreamError, match="unsupported bitstream version 2"):
        Bitstream.from_bytes(bytes(data))
    with pytest.raises(BitstreamError, match="not a resulic bitstream"):
        Bitstream.from_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(BitstreamError, match="not a resulic bitstream"):
        Bitstream.from_bytes(b"")


def test_trailing_bytes_and_missing_sections():
    data = _stream().to_bytes()
    with pytest.raises(BitstreamError, match="trailing"):
        Bitstream.from_bytes(data + b"\0")
    framed = b"H" + write_varint(3) + b"abc"
    only_head = b"RSL\x01\x01" + framed + zlib.crc32(framed).to_bytes(4, "little")
    with pytest.raises(BitstreamError):
        Bitstream.from_bytes(only_head)


def test_detail_gain_field_is_optional_and_checked():
    """Streams before detail transfer have five head numbers; later ones a sixth (one byte)."""
    old = Header("taef2", bytes(range(8)), 768, 512, 24, 350, 1234)
    new = Header("taef2", bytes(range(8)), 768, 512, 24, 350, 1234, detail_gain=71)
    assert Header.decode(old.encode()).detail_gain is None
    assert Header.decode(new.encode()) == new and len(new.encode()) == len(old.encode()) + 1
    with pytest.raises(ValueError, match="detail gain"):
        Header("taef2", bytes(range(8)), 768, 512, 24, 350, 1234, detail_gain=128).encode()
    with pytest.raises(BitstreamError, match="impossible detail gain"):
        Header.decode(old.encode() + write_varint(128))
    with pytest.raises(BitstreamError, match="impossible scale 0"):
        Header.decode(new.encode() + b"\x00")


def test_scale_field_is_optional_and_checked():
    """A stream coded at 1/s of its size has a seventh number; the sixth (the gain) comes with it."""
    full = Header("taef2", bytes(range(8)), 767, 511, 24, 350, 1234, detail_gain=71)
    half = Header("taef2", bytes(range(8)), 767, 511, 24, 350, 1234, detail_gain=71, scale=2)
    assert Header.decode(full.encode()).scale == 1 and full.coded_size == (767, 511)
    assert Header.decode(half.encode()) == half and len(half.encode()) == len(full.encode()) + 1
    assert half.coded_size == (384, 256)
    plain_model = Header("taef2", bytes(range(8)), 64, 64, 3, scale=4)  # no CDM: the gain field reads 64
    back = Header.decode(plain_model.encode())
    assert (back.scale, back.detail_gain, back.coded_size) == (4, 64, (16, 16))
    with pytest.raises(ValueError, match="scale 9"):
        Header("taef2", bytes(range(8)), 64, 64, 3, scale=9).encode()
    with pytest.raises(BitstreamError, match="impossible scale 9"):
        Header.decode(full.encode() + write_varint(9))
    with pytest.raises(BitstreamError, match="trailing"):
        Header.decode(half.encode() + b"\x00")


def test_numbers_have_one_writing_of_at_most_nine_bytes():
    """Spec section 1: a varint is at most 9 bytes (63 bits) and written in its shortest form,
    so that a stream has one byte string (no second writing of the same numbers)."""
    assert read_varint(b"\xff" * 8 + b"\x7f", 0) == (2**63 - 1, 9)
    with pytest.raises(BitstreamError, match="too long"):
        read_varint(b"\x80" * 9 + b"\x7f", 0)
    for padded in (b"\x80\x00", b"\x81\x80\x00", b"\xff\x00"):
        with pytest.raises(BitstreamError, match="shortest form"):
            read_varint(padded, 0)
    assert read_varint(b"\x00", 0) == (0, 1)


def test_head_refuses_a_bad_preset_length_and_an_explicit_scale_of_one():
    good = Header("taef2", bytes(range(8)), 64, 64, 3, detail_gain=64).encode()
    for n in (0, 128, 200):
        with pytest.raises(BitstreamError, match=f"preset name of {n} bytes"):
            Header.decode(bytes([n]) + good[1:])
    with pytest.raises(BitstreamError, match="impossible scale 1"):
        Header.decode(good + write_varint(1))
