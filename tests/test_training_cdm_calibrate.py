"""Per-rate blends of the CDM restoration: the budget rule, the blend at decode, the calibration run."""

from __future__ import annotations

import json

import pytest
import torch

from codec.cdm.model import CDMConfig, CDMDenoiser
from codec.cdm.sampler import cdm_decode_latent
from training.cdm_calibrate import GRID, largest_within, main


def test_largest_blend_within_the_limits():
    grid = (0.0, 0.25, 0.5, 0.75, 1.0)
    within = lambda cost, tex=(0, 0, 0, 0, 0): largest_within(grid, [(cost, 0.9), (tex, 1.0)])  # noqa: E731
    assert within([0, 0.2, 0.4, 0.6, 0.8]) == 1.0
    assert within([0, 0.4, 0.8, 1.2, 1.6]) == pytest.approx(0.5 + 0.25 * 0.1 / 0.4, abs=0.006)
    assert within([0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(0.25 * 0.9 / 2.0, abs=0.006)
    assert within([0, -0.3, 0.2, 1.5, 0.1]) == pytest.approx(0.5 + 0.25 * 0.7 / 1.3, abs=0.006)  # first crossing
    assert within([0, 0, 0, 0, 0], [0.2, 0.6, 1.0, 1.4, 1.8]) == pytest.approx(0.5, abs=0.006)  # the texture cap
    assert largest_within((0.0, 1.0, 2.0, 3.0), [([0, 0.4, 0.8, 1.2], 0.9)]) == pytest.approx(2.25, abs=0.01)


def _tiny(blend: list[float] | None = None) -> CDMDenoiser:
    torch.manual_seed(0)
    model = CDMDenoiser(CDMConfig(block_out_channels=(32, 32), norm_num_groups=8, num_levels=4, blend=blend or []))
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.05)
    return model.eval()


def test_blend_scales_the_restoration_per_level():
    z_hat = torch.randn(1, 32, 8, 8)
    full = cdm_decode_latent(_tiny(), z_hat, level=2, n_r=400, seeds=[3])
    half = cdm_decode_latent(_tiny([1.0, 1.0, 0.5, 1.0]), z_hat, level=2, n_r=400, seeds=[3])
    none = cdm_decode_latent(_tiny([1.0, 1.0, 0.0, 1.0]), z_hat, level=2, n_r=400, seeds=[3])
    assert torch.allclose(none, z_hat, atol=1e-6)
    assert torch.allclose(half - z_hat, 0.5 * (full - z_hat), atol=1e-5)


@pytest.mark.timeout(600)
def test_calibration_writes_blends_and_changes_the_model_id(tmp_path):
    from tests.conftest import photo

    photos = tmp_path / "photos"
    photos.mkdir()
    photo(320, 256, "kodim03.png").save(photos / "a.png")  # a test fixture crop, not training data
    d = tmp_path / "cdm"
    model = CDMDenoiser(CDMConfig(block_out_channels=(32, 32), norm_num_groups=8))
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.05)
    model.save_pretrained(d)
    before = CDMDenoiser.from_pretrained(d).weights_sha256
    main([str(d), "--data", f"{photos}:1.0", "--cache", str(tmp_path / "cache"), "--crops", "2", "--crop", "16",
          "--every", "36", "--threads", str(torch.get_num_threads())])  # fmt: skip (keeps this process's threads)
    cal = json.loads((d / "calibration.json").read_text())
    assert [r["level"] for r in cal["levels"]] == [0, 36, 72]
    after = CDMDenoiser.from_pretrained(d)
    assert len(after.config.blend) == 73 and all(0 <= s <= GRID[-1] for s in after.config.blend)
    assert after.config.blend[0] == pytest.approx(cal["levels"][0]["blend"], abs=1e-3)
    assert after.weights_sha256 != before  # the config is part of what the model id pins
