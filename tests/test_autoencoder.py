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
