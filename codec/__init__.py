"""resulic's codec: pure PyTorch, no Ray. Pixels to an archival bitstream and back."""

import warnings

# compressai 1.2.8 calls torch.jit.script at import, which torch 2.14 flags as deprecated on every
# run; the message says nothing to our users and would break one-line error output.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

from codec.api import decode, decode_batch, encode, encode_batch, info, read_text
from codec.bitstream import BitstreamError
from codec.images import ImageError
from codec.presets import load_preset

__all__ = ["encode", "encode_batch", "decode", "decode_batch", "info", "read_text", "load_preset", "BitstreamError", "ImageError"]
