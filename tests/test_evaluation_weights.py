"""The checks before any metric weights are used: the numpy-only unpickler, the SHA-256 of every
raw file, the tensor digest of a cache file, and where the weights are looked for."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.perceptual import LPIPS
from evaluation.weights import (
    LPIPS_CACHE,
    SHARED_DIR,
    NumpyUnpickler,
    WeightsError,
    default_weights_dir,
    load_numpy_pickle,
    read_cache,
)

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "weights" / "perceptual"


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_the_unpickler_refuses_any_global_but_numpys_arrays(tmp_path):
    marker = tmp_path / "ran"
    evil = pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": _Exploit(marker)}}})
    with pytest.raises(pickle.UnpicklingError, match=r"refused global (posix|nt|os)\.system"):
        load_numpy_pickle(evil)
    assert not marker.exists()  # refused before it could run
    with pytest.raises(pickle.UnpicklingError, match="refused global builtins.eval"):
        load_numpy_pickle(pickle.dumps(eval))
    arrays = {"a": {"kernel": np.ones((2, 3), np.float32)}}
    assert np.array_equal(load_numpy_pickle(pickle.dumps(arrays))["a"]["kernel"], arrays["a"]["kernel"])
    assert NumpyUnpickler.ALLOWED >= {("numpy", "ndarray"), ("numpy", "dtype")}


def test_only_float32_arrays_pass():
    with pytest.raises(WeightsError, match="/a: expected a float32 array, found str"):
        load_numpy_pickle(pickle.dumps({"a": "text"}))
    with pytest.raises(WeightsError, match="expected a float32 array"):
        load_numpy_pickle(pickle.dumps({"a": np.arange(3)}))


def test_a_file_with_the_wrong_sha256_is_refused(tmp_path):
    for name in ("alexnet.ckpt", "lpips_v0.1/alex.pth"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED / name, tmp_path / name)
    heads = torch.load(tmp_path / "lpips_v0.1" / "alex.pth", weights_only=True, map_location="cpu")
    heads["lin0.model.1.weight"][0, 0] += 1e-3  # a published-looking file, one weight changed
    torch.save(heads, tmp_path / "lpips_v0.1" / "alex.pth")
    with pytest.raises(WeightsError, match=r"alex\.pth: SHA-256 [0-9a-f]{64} is not the published df73285e.*refusing"):
        LPIPS.from_dir(tmp_path)


def test_a_cache_file_must_hold_the_published_tensors(tmp_path):
    from safetensors.torch import save_file

    state = LPIPS.raw_state(SHARED)
    save_file(state, str(tmp_path / LPIPS_CACHE))
    assert torch.equal(read_cache(tmp_path / LPIPS_CACHE, LPIPS.DIGEST)["convs.0.weight"], state["convs.0.weight"])
    state["heads.4.weight"] = state["heads.4.weight"] * 1.01
    save_file(state, str(tmp_path / LPIPS_CACHE))
    with pytest.raises(WeightsError, match="are not the published weights"):
        LPIPS.from_dir(tmp_path)


def test_where_the_weights_are_looked_for(tmp_path, monkeypatch):
    monkeypatch.delenv("RESULIC_METRIC_WEIGHTS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_weights_dir() == SHARED_DIR  # an empty cache
    cache = tmp_path / "resulic" / "metrics"
    cache.mkdir(parents=True)
    (cache / "lpips_alex.safetensors").touch()
    (cache / "dists_vgg16.safetensors").touch()
    assert default_weights_dir() == cache
    monkeypatch.setenv("RESULIC_METRIC_WEIGHTS", "/somewhere")
    assert default_weights_dir() == Path("/somewhere")


def test_a_damaged_cache_file_is_a_weights_error(tmp_path):
    """Not safetensors' own exception: eval reports the metric as not computed, and
    fetch-metrics fetches it again (``cached`` is False)."""
    from safetensors.torch import save_file

    from evaluation.fetch import cached

    save_file(LPIPS.raw_state(SHARED), str(tmp_path / LPIPS_CACHE))
    data = (tmp_path / LPIPS_CACHE).read_bytes()
    (tmp_path / LPIPS_CACHE).write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="unreadable"):
        read_cache(tmp_path / LPIPS_CACHE, LPIPS.DIGEST)
    assert not cached(tmp_path)
