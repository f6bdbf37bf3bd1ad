"""Which device the codec's networks run on: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

Streams do not depend on it. The entropy parameters are exact integers on every device
(``codec.fixed_point``), so a stream encoded on a GPU decodes to the same symbols on a CPU and
the reverse; only the pixels around them (the autoencoder, the CDM) carry float rounding.
"""

from __future__ import annotations

import torch

from codec.usage import UsageError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` and "cpu" -> the CPU; "auto" -> the first GPU when there is one, else the CPU;
    "cuda" or "cuda:N" -> that GPU, or an error that says there is none (never a silent CPU run)."""
    if isinstance(device, torch.device):
        device = str(device)
    if device is None or device == "cpu":
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r}: this machine has no CUDA device (use --device cpu or auto)")
        d = torch.device(device)
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise UsageError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        return d
    raise UsageError(f"unknown device {device!r} (one of {', '.join(DEVICES)}, or cuda:N)")
