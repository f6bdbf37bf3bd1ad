"""Device-correct codec: every run-time tensor moves with ``.to()``; ``--device`` choices;
cross-device symbols (``gpu`` tests, skipped without CUDA)."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image
from torch import nn

import codec
from codec.device import resolve_device
from codec.encoder import encode_with_symbols
from codec.parsing import parse
from codec.presets import load_preset
from pipelines.ray_runtime import gpus_for
from tests.conftest import photo as crop

HAS_CUDA = torch.cuda.is_available()


def stray_tensors(root: nn.Module) -> list[str]:
    """Attributes of ``root``'s modules that hold tensors (directly or in a list, tuple or dict)
    without being parameters or buffers: what ``.to(device)`` would leave behind."""
    found = []
    for name, module in root.named_modules(remove_duplicate=False):
        for attr, value in vars(module).items():
            if attr in ("_parameters", "_buffers", "_modules"):
                continue
            values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, torch.Tensor) for v in values):
                found.append(f"{name or '<root>'}.{attr}")
    return found


def _parts(p):
    return {k: getattr(p, k) for k in ("autoencoder", "latent_codec", "cdm", "decoder_finetune") if getattr(p, k) is not None}


def test_the_walk_finds_a_stray_tensor():
    class Leaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = {"gain": torch.ones(3)}  # what the latent codec's tables once were
            self.register_buffer("ok", torch.ones(1))

    assert stray_tensors(nn.Sequential(Leaky())) == ["0.table"]


@pytest.mark.parametrize("which", ["default", "cdm"])
def test_no_stray_tensors_in_released_models(which, request):
    p = load_preset() if which == "default" else request.getfixturevalue("cdm_preset")
    for part, module in _parts(p).items():
        assert stray_tensors(module) == [], part
    assert p.latent_codec.coding is not None and len(list(p.latent_codec.coding.buffers())) > 0


def test_fixed_point_refuses_a_cast_model(photo):
    lc = load_preset().latent_codec
    stream = codec.encode(photo, rate=0)
    s, p = parse(stream)
    twin = copy.deepcopy(lc)
    twin.half()  # a whole-model cast must not silently make the integer networks inexact
    with pytest.raises(TypeError, match="float64"):
        twin.decompress_symbols([s.latent], [s.hyper_latent], p.z_shape(*s.header.coded_size), 0)


def test_resolve_device():
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if HAS_CUDA else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_an_error_not_a_cpu_run(photo):
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="no CUDA device"):
        codec.encode(photo, rate=0, device="cuda")


def test_cpu_device_gives_the_default_stream(photo):
    assert codec.encode(photo, rate=2, device="cpu") == codec.encode(photo, rate=2)


def test_gpus_for_device():
    assert gpus_for("cpu", None) == 0.0
    assert gpus_for("cuda", None) == 1.0
    assert gpus_for("cuda", 0.5) == 0.5
    assert gpus_for("auto", None) is None  # the plan's own choice from the cluster
    with pytest.raises(ValueError, match="choose one"):
        gpus_for("cpu", 1)


@pytest.fixture
def photo() -> Image.Image:
    return crop(128, 96)


def _cross_device(photo: Image.Image, preset, encode_on: str, decode_on: str) -> None:
    on = load_preset(preset.name, model_id=preset.model_id.hex(), device=encode_on)
    ((stream, y_hat),) = encode_with_symbols([photo], codec.EncodeSettings(rate=3), preset=on)
    s, p = parse(stream, device=decode_on)
    decoded = p.latent_codec.decompress_symbols([s.latent], [s.hyper_latent], p.z_shape(*s.header.coded_size),
                                                s.header.rate_level)  # fmt: skip
    assert torch.equal(decoded.cpu(), y_hat.cpu())
    assert codec.decode(stream, device=decode_on).size == photo.size


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("encode_on,decode_on", [("cuda", "cpu"), ("cpu", "cuda")])
@pytest.mark.parametrize("which", ["default", "cdm"])
def test_symbols_identical_across_devices(photo, encode_on, decode_on, which, request):
    preset = load_preset() if which == "default" else request.getfixturevalue("cdm_preset")
    _cross_device(photo, preset, encode_on, decode_on)
