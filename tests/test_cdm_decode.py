"""CDM decoding through the codec API with a tiny denoiser built from a config (random weights):
the stream carries N_r and its seed, decoding is deterministic for a seed (also in a fresh
process), and a model without a CDM refuses an explicit CDM decode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import codec
from codec.bitstream import Bitstream
from codec.cdm.model import CDMConfig, CDMDenoiser
from codec.cdm.process import n_r_for_level
from codec.presets import CDM_ENV, load_preset
from tests.conftest import photo

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_cdm(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = CDMDenoiser(CDMConfig(block_out_channels=(32, 32), norm_num_groups=8))
    for prm in model.parameters():  # small random weights: a gentle, deterministic denoiser
        prm.data.mul_(0.1)
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.01)  # a fresh model's is zero (it decodes as plain)
    d = tmp_path_factory.mktemp("cdm")
    model.save_pretrained(d)
    return d


def test_save_load_round_trip(tiny_cdm):
    m = CDMDenoiser.from_pretrained(tiny_cdm)
    assert m.config.block_out_channels == (32, 32) and len(m.weights_sha256) == 64 and not m.text_conditioned
    with pytest.raises(FileNotFoundError, match="CDM weights not found"):
        CDMDenoiser.from_pretrained(tiny_cdm / "nope")


def test_an_untrained_cdm_returns_the_decoded_latent():
    """The UNet's output convolution starts at zero: before training, CDM decoding is the plain decode."""
    from codec.cdm.sampler import cdm_decode_latent

    torch.manual_seed(1)
    model = CDMDenoiser(CDMConfig(block_out_channels=(32, 32), norm_num_groups=8)).eval()
    z_hat = torch.randn(2, 32, 8, 8)
    out = cdm_decode_latent(model, z_hat, level=0, n_r=800, seeds=[1, 2])
    assert torch.allclose(out, z_hat, atol=1e-4)


def test_an_epsilon_model_config_is_refused():
    with pytest.raises(ValueError, match="prediction_type 'epsilon' is not supported"):
        CDMConfig.from_dict({"block_out_channels": [32, 32], "prediction_type": "epsilon"})


def test_a_cdm_config_names_a_known_decoder():
    with pytest.raises(ValueError, match="CDM decoder 'vae' is not one of"):
        CDMConfig.from_dict({"block_out_channels": [32, 32], "prediction_type": "sample", "decoder": "vae"})


@pytest.mark.parametrize("decoder", ["plain", "autoencoder"])
def test_the_restored_latent_goes_to_the_decoder_the_config_names(tmp_path, monkeypatch, decoder):
    """A CDM trained through the model's own decoder ("plain") hands its restored latent to that
    decoder; a v1 CDM's goes to TAEF2's own. An untrained CDM restores ẑ itself, so with "plain"
    it decodes as the plain path does, and with "autoencoder" (the release's decoder being a
    fine-tune) it does not."""
    CDMDenoiser(CDMConfig(block_out_channels=(32, 32), norm_num_groups=8, decoder=decoder)).save_pretrained(tmp_path)
    monkeypatch.setenv(CDM_ENV, str(tmp_path))
    assert load_preset().decoder_finetune is not None
    stream = codec.encode(photo(64, 48), rate=1)
    cdm, plain = (np.asarray(codec.decode(stream, decoder=d)).astype(int) for d in ("cdm", "plain"))
    gap = np.abs(cdm - plain).max()
    assert gap <= 1 if decoder == "plain" else gap > 8


def test_stream_fields_and_deterministic_cdm_decode(tiny_cdm, monkeypatch):
    shipped = load_preset()
    monkeypatch.setenv(CDM_ENV, str(tiny_cdm))
    p = load_preset()
    assert p.cdm is not None and p.model_id != shipped.model_id  # the CDM is part of the model id
    img = photo(64, 48)
    stream = codec.encode(img, rate=1)
    h = Bitstream.from_bytes(stream).header
    assert h.diffusion_start_step == n_r_for_level(8, p.num_levels) and 0 < h.diffusion_seed < 2**16
    assert codec.encode(img, rate=1) == stream  # the seed comes from the content: same image, same stream
    a, b = codec.decode(stream), codec.decode(stream, decoder="cdm")
    assert np.array_equal(np.asarray(a), np.asarray(b))  # auto picks CDM; same seed, same pixels
    plain = codec.decode(stream, decoder="plain")
    assert not np.array_equal(np.asarray(a), np.asarray(plain))
    assert a.size == img.size
    two = codec.decode(stream, steps=2)
    assert not np.array_equal(np.asarray(a), np.asarray(two))
    code = ("import sys, numpy as np, codec;"
            "print(np.asarray(codec.decode(open(sys.argv[1], 'rb').read())).astype(np.int64).sum())")  # fmt: skip
    path = Path(str(tiny_cdm)) / "s.rsl"
    path.write_bytes(stream)
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, CDM_ENV: str(tiny_cdm)}, timeout=300)  # fmt: skip
    assert res.stdout.strip() == str(np.asarray(a).astype(np.int64).sum()), res.stderr


def test_plain_models_refuse_an_explicit_cdm_decode():
    stream = (ROOT / "tests" / "data" / "golden_taef2_e102cc3de58bc279.rsl").read_bytes()  # a release with no CDM
    assert Bitstream.from_bytes(stream).header.diffusion_start_step == 0
    with pytest.raises(ValueError, match="has no CDM decoder"):
        codec.decode(stream, decoder="cdm")
    with pytest.raises(ValueError, match="unknown decoder"):
        codec.decode(stream, decoder="gan")
