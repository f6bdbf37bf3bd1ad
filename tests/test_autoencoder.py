import pytest
import torch

from codec.autoencoder import TAEF2, resolve_weights_dir
from codec.images import to_tensor
from tests.conftest import photo


def test_loads_published_weights_strictly_and_reconstructs():
    ae = TAEF2.from_pretrained()
    x = to_tensor(photo(128, 128))
    with torch.no_grad():
        z = ae.encode(x)
        y = ae.decode(z)
    assert z.shape == (1, 32, 16, 16)
    mse = float(((x - y) ** 2).mean())
    assert 10 * torch.log10(torch.tensor(1 / mse)) > 24  # TAEF2 alone: about 30 dB on Kodak
    assert len(ae.weights_sha256) == 64


def test_missing_weights_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights fetch"):
        TAEF2.from_pretrained(tmp_path)


def test_weights_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RESULIC_TAEF2_DIR", str(tmp_path))
    assert resolve_weights_dir() == tmp_path
    assert resolve_weights_dir("/x") == type(tmp_path)("/x")


def test_with_decoder_swaps_only_the_decoder(tmp_path):
    from safetensors.torch import save_file

    ae = TAEF2.from_pretrained()
    state = {k: v.clone() for k, v in ae.decoder.state_dict().items()}
    state["1.bias"] += 0.1  # the first conv's bias: a visibly different decoder
    save_file(state, str(tmp_path / "d.safetensors"))
    other = ae.with_decoder(tmp_path / "d.safetensors")
    assert other.encoder is ae.encoder and other.weights_sha256 != ae.weights_sha256
    z = ae.encode(to_tensor(photo(64, 64)))
    assert not torch.equal(other.decode(z), ae.decode(z))
    with pytest.raises(FileNotFoundError, match="decoder weights not found"):
        ae.with_decoder(tmp_path / "none.safetensors")
    save_file({"1.bias": state["1.bias"]}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(RuntimeError, match="Missing key"):
        ae.with_decoder(tmp_path / "bad.safetensors")  # not this network: refused, not half-loaded


def test_blended_decoder_is_on_the_line_between_the_two():
    ae = TAEF2.from_pretrained()
    other = TAEF2()
    other.encoder = ae.encoder
    other.decoder.load_state_dict({k: v + 1.0 for k, v in ae.decoder.state_dict().items()})
    assert ae.blended(other, 0.0) is ae and ae.blended(other, 1.0) is other
    half = ae.blended(other, 0.25)
    assert half.encoder is ae.encoder
    w0, w = ae.decoder[1].weight, half.decoder[1].weight
    assert torch.allclose(w, w0 + 0.25, atol=1e-6)
