"""LPIPS and DISTS against the official scores of the five TID2013 calibration pairs, from the
published weights: the raw files in ../shared/weights/perceptual and the fetch-metrics cache (the
only source of DISTS's VGG16 here); and what a training loss needs of them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.perceptual import DISTS, LPIPS, _unit
from evaluation.weights import WeightsError

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "weights" / "perceptual"
CALIBRATION = SHARED / "calibration"
COLUMN = {LPIPS: "lpips_alex_v0.1", DISTS: "dists"}


def _tensor(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def pairs() -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """The official scores, and the reference and distorted images as two batches."""
    with (CALIBRATION / "official_scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    ref = torch.cat([_tensor(CALIBRATION / "ref" / f"{r['image']}.png") for r in rows])
    dist = torch.cat([_tensor(CALIBRATION / "dist" / f"{r['image']}.png") for r in rows])
    return rows, ref, dist


def _check_official(model: torch.nn.Module, pairs, column: str) -> list[float]:
    rows, ref, dist = pairs
    with torch.no_grad():
        got = model(ref, dist).tolist()
    for r, g in zip(rows, got):
        assert g == pytest.approx(float(r[column]), abs=1e-3), (r["image"], g, r[column])
    return got


def test_lpips_reproduces_the_official_scores_from_the_raw_files(pairs):
    _check_official(LPIPS.from_dir(SHARED), pairs, COLUMN[LPIPS])


@pytest.mark.parametrize("cls", [LPIPS, DISTS])
def test_the_fetched_cache_reproduces_the_official_scores(cls, pairs, metric_weights):
    got = _check_official(cls.from_dir(metric_weights), pairs, COLUMN[cls])
    if cls is LPIPS:  # the same tensors as the raw files: the same values, to the bit
        with torch.no_grad():
            assert LPIPS.from_dir(SHARED)(pairs[1], pairs[2]).tolist() == got


@pytest.mark.parametrize("cls", [LPIPS, DISTS])
def test_as_a_training_loss(cls, metric_weights):
    """Frozen, zero on identical images, and differentiable in its inputs."""
    model = cls.from_dir(metric_weights)
    assert not any(p.requires_grad for p in model.parameters())
    x = _tensor(CALIBRATION / "ref" / "I04.png")[..., :96, :128]
    y = _tensor(CALIBRATION / "dist" / "I04.png")[..., :96, :128].requires_grad_(True)
    assert float(model(x, x).abs().max()) < 1e-5
    loss = model(x, y)
    assert loss.shape == (1,) and float(loss.detach()) > 0
    loss.sum().backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0


def test_unit_scaling_keeps_the_gradient_finite_where_every_channel_is_zero():
    f = torch.zeros(1, 4, 2, 2, requires_grad=True)
    _unit(f).pow(2).sum().backward()
    assert torch.isfinite(f.grad).all()


def test_a_folder_without_the_weights_says_what_it_needs(tmp_path):
    with pytest.raises(WeightsError, match=r"no DISTS weights in .*vgg16\.ckpt.*fetch-metrics"):
        DISTS.from_dir(tmp_path)
