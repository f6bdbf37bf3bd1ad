"""resulic's codec: pure PyTorch, no Ray. Pixels to an archival bitstream and back.

The public names load on first use (PEP 562): ``import codec.bitstream`` then costs no torch
import, which keeps commands that only read archives (``resulic ls``, ``info ARCHIVE``) fast.
"""

import importlib
import warnings

# compressai 1.2.8 calls torch.jit.script at import, which torch 2.14 flags as deprecated on every
# run; the message says nothing to our users and would break one-line error output.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

_PUBLIC = {
    "encode": "codec.api", "encode_batch": "codec.api", "decode": "codec.api", "decode_batch": "codec.api",
    "info": "codec.api", "read_text": "codec.api", "EncodeSettings": "codec.api", "load_preset": "codec.presets",
    "BitstreamError": "codec.bitstream", "ImageError": "codec.images",
}  # fmt: skip
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'codec' has no attribute {name!r}")
