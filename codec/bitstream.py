"""Bitstream v1: the archival container. The normative spec is ``schemas/bitstream_v1.md``.

Compact on purpose: at 0.005 bpp a Kodak image has about 245 bytes in all, so the framing
uses varints and one-byte section tags, and sections that are empty are left out.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

MAGIC = b"RSL"
VERSION = 1
TAG_HEAD, TAG_HYPER, TAG_LATENT, TAG_TEXT = b"H", b"Z", b"Y", b"T"
SECTION_NAMES = {TAG_HEAD: "head", TAG_HYPER: "hyper_latent", TAG_LATENT: "latent", TAG_TEXT: "text"}
REQUIRED = (TAG_HEAD, TAG_HYPER, TAG_LATENT)
MODEL_ID_BYTES = 8
MAX_SIDE = 1 << 20
MAX_DETAIL_GAIN = 127  # the largest detail gain code (codec.cdm.detail.gain_of): one varint byte
UNIT_DETAIL_GAIN = 64  # the gain code a stream without the field means (gain 1)
MAX_SCALE = 8  # the largest coded-size factor (codec.resample)


def coded_size(width: int, height: int, scale: int) -> tuple[int, int]:
    """The size an image of ``width`` × ``height`` is coded at for a factor ``scale`` (spec section 3)."""
    return -(-width // scale), -(-height // scale)


class BitstreamError(ValueError):
    """A stream that cannot be decoded: truncated, corrupted, of an unknown version or foreign."""


class PixelLimitError(BitstreamError):
    """A stream whose image is larger than the decoder's pixel cap: well formed, perhaps, but
    more than this decoder will allocate for."""


def write_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise BitstreamError("bitstream is truncated (inside a number)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and shift:  # a zero last group: another writing of a shorter number
                raise BitstreamError("bitstream is corrupted (number not written in its shortest form)")
            return value, pos
        shift += 7
        if shift >= 63:  # nine bytes hold 63 bits; a ninth with its high bit set is too long
            raise BitstreamError("bitstream is corrupted (number too long)")


def frame(sections: list[tuple[bytes, bytes]]) -> bytes:
    """The container around (tag, payload) sections, each with its length and CRC (spec
    section 1), whatever the payloads hold."""
    out = bytearray(MAGIC + bytes([VERSION, len(sections)]))
    for tag, payload in sections:
        framed = tag + write_varint(len(payload)) + payload
        out += framed + zlib.crc32(framed).to_bytes(4, "little")
    return bytes(out)


@dataclass
class Header:
    preset: str
    model_id: bytes  # first 8 bytes of the preset's weights hash
    width: int
    height: int
    rate_level: int
    diffusion_start_step: int = 0  # reserved for CDM decoding: 0 means plain decoding
    diffusion_seed: int = 0  # reserved for CDM decoding
    # CDM detail gain code (spec section 8, step 6; codec.cdm.detail.gain_of), chosen per image
    # by the encoder; None: the field is absent (models without detail transfer), read as 64 (gain 1).
    detail_gain: int | None = None
    # the image was coded at ceil(width / scale) × ceil(height / scale) and is upsampled back
    # (spec section 3.1; codec.resample); 1: the field is absent
    scale: int = 1

    @property
    def coded_size(self) -> tuple[int, int]:
        """(width, height) of the image the latent codes: the original's divided by the scale, rounded up."""
        return coded_size(self.width, self.height, self.scale)

    def encode(self) -> bytes:
        name = self.preset.encode("ascii")
        if not 0 < len(name) < 128 or len(self.model_id) != MODEL_ID_BYTES:
            raise ValueError("bad preset name or model id")
        if self.detail_gain is not None and not 0 <= self.detail_gain <= MAX_DETAIL_GAIN:
            raise ValueError(f"detail gain {self.detail_gain} is outside 0 … {MAX_DETAIL_GAIN}")
        if not 1 <= self.scale <= MAX_SCALE:
            raise ValueError(f"scale {self.scale} is outside 1 … {MAX_SCALE}")
        values = [self.width, self.height, self.rate_level, self.diffusion_start_step, self.diffusion_seed]
        if self.scale != 1:  # the seventh field needs the sixth before it: gain 1 when the model has none
            values += [UNIT_DETAIL_GAIN if self.detail_gain is None else self.detail_gain, self.scale]
        elif self.detail_gain is not None:
            values.append(self.detail_gain)
        return b"".join([bytes([len(name)]), name, self.model_id] + [write_varint(v) for v in values])

    @classmethod
    def decode(cls, data: bytes) -> "Header":
        if not data:
            raise BitstreamError("bitstream header is empty")
        n = data[0]
        if not 0 < n < 128:
            raise BitstreamError(f"bitstream header is corrupted (preset name of {n} bytes)")
        pos = id_end = 1 + n + MODEL_ID_BYTES
        if len(data) < pos:
            raise BitstreamError("bitstream header is truncated")
        try:
            name = data[1 : 1 + n].decode("ascii")
        except UnicodeDecodeError as e:
            raise BitstreamError("bitstream header is corrupted (preset name)") from e
        values = []
        for _ in range(5):
            v, pos = read_varint(data, pos)
            values.append(v)
        gain, scale = None, 1
        if pos < len(data):  # the optional sixth field
            gain, pos = read_varint(data, pos)
            if gain > MAX_DETAIL_GAIN:
                raise BitstreamError(f"bitstream header has an impossible detail gain {gain}")
        if pos < len(data):  # the optional seventh field
            scale, pos = read_varint(data, pos)
            if not 2 <= scale <= MAX_SCALE:  # 1 is written by leaving the field out
                raise BitstreamError(f"bitstream header has an impossible scale {scale}")
        if pos != len(data):
            raise BitstreamError("bitstream header has trailing bytes")
        w, h = values[0], values[1]
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            raise BitstreamError(f"bitstream header has an impossible size {w}x{h}")
        return cls(name, data[1 + n : id_end], *values, detail_gain=gain, scale=scale)


@dataclass
class Bitstream:
    header: Header
    hyper_latent: bytes
    latent: bytes
    text: bytes = b""
    section_bytes: dict[str, int] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        sections = [(TAG_HEAD, self.header.encode()), (TAG_HYPER, self.hyper_latent), (TAG_LATENT, self.latent)]
        if self.text:
            sections.append((TAG_TEXT, self.text))
        return frame(sections)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Bitstream":
        if data[: len(MAGIC)] != MAGIC[: len(data)] or not data:
            raise BitstreamError("not a resulic bitstream (bad magic)")
        if len(data) < len(MAGIC) + 2:
            raise BitstreamError("bitstream is truncated")
        version = data[3]
        if version != VERSION:
            raise BitstreamError(f"unsupported bitstream version {version} (this decoder reads version {VERSION})")
        count = data[4]
        pos = 5
        sections: dict[bytes, bytes] = {}
        sizes: dict[str, int] = {"container": 5}
        for _ in range(count):
            start = pos
            if pos >= len(data):
                raise BitstreamError("bitstream is truncated (missing sections)")
            tag = data[pos : pos + 1]
            length, pos = read_varint(data, pos + 1)
            end = pos + length
            if end + 4 > len(data):
                raise BitstreamError("bitstream is truncated")
            crc = int.from_bytes(data[end : end + 4], "little")
            if zlib.crc32(data[start:end]) != crc:
                name = SECTION_NAMES.get(tag, repr(tag))
                raise BitstreamError(f"bitstream is corrupted (CRC mismatch in section {name})")
            if tag not in SECTION_NAMES:
                raise BitstreamError(f"bitstream has an unknown section {tag!r}")
            if tag in sections:
                raise BitstreamError(f"bitstream repeats section {SECTION_NAMES[tag]}")
            sections[tag] = data[pos:end]
            sizes[SECTION_NAMES[tag]] = end + 4 - start
            pos = end + 4
        if pos != len(data):
            raise BitstreamError("bitstream has trailing bytes after its last section")
        missing = [SECTION_NAMES[t] for t in REQUIRED if t not in sections]
        if missing:
            raise BitstreamError(f"bitstream lacks required sections: {', '.join(missing)}")
        return cls(
            Header.decode(sections[TAG_HEAD]), sections[TAG_HYPER], sections[TAG_LATENT],
            sections.get(TAG_TEXT, b""), sizes,
        )  # fmt: skip
