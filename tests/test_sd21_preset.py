"""The ``sd21`` preset from tiny components built from configs and loaded back through the same
``from_pretrained`` paths a user's Stable Diffusion, adapter and latent codec take."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import codec
from codec.presets import load_preset
from codec.sd21.preset import CONTROLNET_ENV, SD_MODEL_ENV, module_sha256
from conftest import photo
from tests.tiny_sd21 import make_tiny_sd21


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return make_tiny_sd21(tmp_path_factory.mktemp("sd21"))


def _use(monkeypatch, sd, controlnet, latent_codec) -> None:
    monkeypatch.setenv(SD_MODEL_ENV, str(sd))
    monkeypatch.setenv(CONTROLNET_ENV, str(controlnet))
    monkeypatch.setenv("RESULIC_LATENT_CODEC", str(latent_codec))


def test_encode_decode_end_to_end(parts, monkeypatch):
    _use(monkeypatch, parts["sd"], parts["controlnet"], parts["latent_codec"])
    p = load_preset("sd21")
    img = photo(64, 64)
    stream = codec.encode(img, rate=2, preset=p, text="red wooden door")
    info = codec.info(stream)
    assert info["preset"] == "sd21" and info["model_id"] == p.model_id.hex() and info["diffusion"]["start_step"] > 0
    assert codec.read_text(stream) == "red wooden door"
    a = np.asarray(codec.decode(stream))
    assert a.shape == (64, 64, 3) and np.array_equal(a, np.asarray(codec.decode(stream)))  # deterministic
    plain = np.asarray(codec.decode(stream, decoder="plain"))
    assert not np.array_equal(a, plain)  # the diffusion decoder ran
    other = np.asarray(codec.decode(codec.encode(img, rate=2, preset=p, text="blue sea sky")))
    assert not np.array_equal(a, other)  # the residual text is the prompt


def test_the_model_id_names_every_component(parts, monkeypatch, tmp_path):
    _use(monkeypatch, parts["sd"], parts["controlnet"], parts["latent_codec"])
    stream = codec.encode(photo(64, 64), rate=2, preset=load_preset("sd21"))
    other = make_tiny_sd21(tmp_path / "other", seed=1)
    _use(monkeypatch, parts["sd"], other["controlnet"], parts["latent_codec"])  # another adapter only
    p = load_preset("sd21")
    assert p.model_id.hex() != codec.info(stream)["model_id"]
    with pytest.raises(codec.BitstreamError, match="no released model has that id"):
        codec.decode(stream)


def test_weights_hash_the_same_from_either_file_format(parts, tmp_path):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(parts["sd"] / "unet")
    unet.save_pretrained(tmp_path / "bin", safe_serialization=False)
    again = UNet2DConditionModel.from_pretrained(tmp_path / "bin")
    assert not list((tmp_path / "bin").glob("*.safetensors")) and module_sha256(again) == module_sha256(unet)


def test_wrong_components_are_refused_clearly(parts, monkeypatch, tmp_path):
    monkeypatch.delenv(SD_MODEL_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=SD_MODEL_ENV):
        load_preset("sd21")
    _use(monkeypatch, parts["controlnet"], parts["controlnet"], parts["latent_codec"])
    with pytest.raises(FileNotFoundError, match="not a Stable Diffusion folder"):
        load_preset("sd21")
    _use(monkeypatch, parts["sd"], parts["sd"] / "unet", parts["latent_codec"])
    with pytest.raises(FileNotFoundError, match="not a ControlNet-XS adapter"):
        load_preset("sd21")
    _use(monkeypatch, parts["sd"], tmp_path / "absent", parts["latent_codec"])
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_preset("sd21")
    vpred = tmp_path / "vpred"
    shutil.copytree(parts["sd"], vpred)
    cfg = json.loads((vpred / "scheduler" / "scheduler_config.json").read_text())
    (vpred / "scheduler" / "scheduler_config.json").write_text(json.dumps({**cfg, "prediction_type": "v_prediction"}))
    _use(monkeypatch, vpred, parts["controlnet"], parts["latent_codec"])
    with pytest.raises(ValueError, match="v-prediction"):
        load_preset("sd21")
    from codec.presets import WEIGHTS_DIR

    _use(monkeypatch, parts["sd"], parts["controlnet"], WEIGHTS_DIR / "latent_codec_taef2.safetensors")
    with pytest.raises(ValueError, match="codes 32 channels"):
        load_preset("sd21")


def test_pfo_refines_the_residual_against_this_decoder(parts, monkeypatch):
    from tests.tiny_sd21 import WORDS

    _use(monkeypatch, parts["sd"], parts["controlnet"], parts["latent_codec"])
    p = load_preset("sd21")
    img = photo(64, 64)
    stream = codec.encode(img, rate=2, preset=p, text="red wooden door", pfo_steps=2, pfo_seconds=60)
    text = codec.read_text(stream)
    assert len(text.split()) == 3 and all(w in WORDS for w in text.split())
    assert stream == codec.encode(img, rate=2, preset=p, text=text)  # the same stream a plain encode of that text makes


@pytest.mark.slow  # about 28 s of subprocesses; the same components in process: test_encode_decode_end_to_end
def test_cli_encodes_and_decodes_with_the_components_named(parts, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT, png_bytes

    src = tmp_path / "in.png"
    src.write_bytes(png_bytes(photo(64, 64)))
    env = {k: v for k, v in os.environ.items() if k not in (SD_MODEL_ENV, CONTROLNET_ENV, "RESULIC_LATENT_CODEC")}
    names = ["--sd-model", str(parts["sd"]), "--controlnet", str(parts["controlnet"]), "--latent-codec", str(parts["latent_codec"])]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    r = cli("encode", str(src), str(tmp_path / "s.rsl"), "--preset", "sd21", "--rate", "2", "--text", "red door", *names)
    assert r.returncode == 0, r.stderr
    outs = {}
    for g in ("2.5", "1"):
        r = cli("decode", str(tmp_path / "s.rsl"), str(tmp_path / f"g{g}.png"), "--guidance", g, *names)
        assert r.returncode == 0, r.stderr
        outs[g] = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / f"g{g}.png"))
    assert not np.array_equal(outs["2.5"], outs["1"])  # guidance between the residual text and the negative prompt
    r = cli("decode", str(tmp_path / "s.rsl"), str(tmp_path / "x.png"))  # without its components: a clear refusal
    assert r.returncode == 1 and SD_MODEL_ENV in r.stderr


def test_the_eps_chain_retraces_the_forward_process_with_an_oracle(parts, monkeypatch):
    """With the true effective noise at every step (what a perfect UNet predicts), the DDIM chain
    from ẑ noised to N_r ends at the clean latent z0, and guidance between two equal predictions
    changes nothing: the ε-to-z0 conversion and the steps are the paper's formulas."""
    import torch

    from codec.cdm.process import alphas_cumprod, ddim_timesteps, forward_process

    _use(monkeypatch, parts["sd"], parts["controlnet"], parts["latent_codec"])
    diffusion = load_preset("sd21").cdm
    torch.manual_seed(0)
    z0, z_hat, noise = torch.randn(3, 1, 4, 8, 8, dtype=torch.float64).unbind(0)
    ac = alphas_cumprod()

    seen: list[tuple[int, torch.Tensor]] = []

    def oracle(z_t, t, text, cond):
        seen.append((t, z_t))
        a = ac[t]
        return (z_t - a.sqrt() * z0) / (1 - a).sqrt()

    monkeypatch.setattr(diffusion, "noise", oracle)
    for n_r, steps in [(400, 4), (800, 3), (50, 1)]:
        seen.clear()
        out = diffusion.denoise(z_hat, n_r, noise, steps, text=None, uncond=None, guidance=2.5)
        assert torch.allclose(out, z0, atol=1e-9)
        for t, z_t in seen:  # every point visited is the forward process's for the same noise
            want, _ = forward_process(z0, z_hat, torch.tensor([t]), torch.tensor([n_r]), noise, ac)
            assert torch.allclose(z_t, want, atol=1e-9), (n_r, t)
        assert {t for t, _ in seen} == set(ddim_timesteps(n_r, steps))
