"""LPIPS and DISTS against the official scores of the five TID2013 calibration pairs, from the
published weights (../shared/weights/perceptual; DISTS's VGG16 through a real fetch-metrics)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.perceptual import LPIPS

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "weights" / "perceptual"
CALIBRATION = SHARED / "calibration"


def _tensor(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def pairs() -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
    with (CALIBRATION / "official_scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    return [(r, _tensor(CALIBRATION / "ref" / f"{r['image']}.png"), _tensor(CALIBRATION / "dist" / f"{r['image']}.png"))
            for r in rows]  # fmt: skip


def test_lpips_reproduces_the_official_scores(pairs):
    model = LPIPS.from_dir(SHARED)
    with torch.no_grad():
        for row, ref, dist in pairs:
            assert float(model(ref, dist)[0]) == pytest.approx(float(row["lpips_alex_v0.1"]), abs=1e-3), row["image"]
