"""The codec's Python API: ``encode(image) -> bytes`` and ``decode(bytes) -> image``.

Where each part lives: ``codec.settings`` (the encoder's choices, one ``EncodeSettings``),
``codec.encoder`` (images -> streams), ``codec.decoding`` (how a stream is decoded),
``codec.parsing`` (a stream's container checked against the weights it names, ``info``).
"""

from codec.bitstream import BitstreamError
from codec.decoding import decode, decode_batch
from codec.encoder import VerifyError, encode, encode_batch, verify
from codec.images import ImageError
from codec.parsing import info, parse, read_text
from codec.settings import EncodeSettings

__all__ = ["encode", "encode_batch", "decode", "decode_batch", "info", "read_text", "parse", "verify", "EncodeSettings",
           "ImageError", "BitstreamError", "VerifyError"]  # fmt: skip
