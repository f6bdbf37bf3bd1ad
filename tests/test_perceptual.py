"""Perceptual metrics in `resulic eval`: LPIPS and DISTS from the published weights (../shared
and the session's fetch-metrics cache); for FID and KID the checks before the Inception file is
used, the not-computed reasons, its fetch over a loopback HTTP server, and the whole path through
`resulic eval` with a stand-in Inception (random weights under the published name, admitted only
by replacing the SHA-256 prefix check for this test: the real file is not on the package index)."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import pickle
import threading
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from codec.weights_fetch import FetchError
from pipelines import perceptual
from pipelines.evaluate import evaluate
from tests.conftest import photo

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "weights" / "perceptual"
pytestmark = pytest.mark.timeout(600)


def sha_prefix(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> Path:
    """The published LPIPS files beside a randomly initialised Inception under its published name
    (in ``checkpoints/``, a torch.hub layout)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    d = tmp_path_factory.mktemp("metric-weights")
    (d / "checkpoints").mkdir()
    (d / "lpips_v0.1").mkdir()
    for name in ("alexnet.ckpt", "lpips_v0.1/alex.pth"):
        (d / name).symlink_to(SHARED / name)
    torch.manual_seed(0)
    torch.save({}, d / "empty.pth")
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"):  # build it without weights
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(d / "empty.pth"))
    torch.save(net.state_dict(), d / "checkpoints" / perceptual.INCEPTION.name)
    return d


@pytest.fixture
def admit_stand_ins(monkeypatch):
    """The SHA-256 prefix check compares against each file's own digest instead of the published one."""
    real = perceptual._verify.__wrapped__
    monkeypatch.setattr(perceptual, "_verify", lambda path, prefix: real(path, sha_prefix(Path(path))))


def test_reasons_when_a_metric_cannot_be_computed(stand_ins, tmp_path):
    assert "no DISTS weights in" in perceptual.unavailable("dists", tmp_path)
    assert "weights-inception-2015-12-05-6726825d.pth not found" in perceptual.unavailable("kid", tmp_path)
    assert perceptual.unavailable("lpips", stand_ins) is None
    # random weights under the published name: refused, the digest differs
    assert "is not the published file" in perceptual.unavailable("fid", stand_ins)


def test_a_checkpoint_that_is_not_plain_tensors_is_refused(tmp_path):
    p = tmp_path / "evil.pth"
    p.write_bytes(pickle.dumps(functools.partial(print, "a pickled callable")))
    assert "does not load as plain tensors" in perceptual._verify.__wrapped__(str(p), sha_prefix(p))


def test_pair_metrics_against_one_reference(metric_weights):
    ref, other = photo(96, 64, "kodim03.png"), photo(96, 64, "kodim23.png")
    for m in ("lpips", "dists"):
        same, diff = perceptual.pair_metrics(m, str(metric_weights), ref, [ref, other])
        assert abs(same) < 1e-5 and diff > 0.1, m
        assert perceptual.pair_metrics(m, str(metric_weights), other, [ref]) == pytest.approx([diff], abs=1e-6)


def test_set_metric_features_with_stand_ins(stand_ins, admit_stand_ins):
    assert all(perceptual.unavailable(m, stand_ins) is None for m in ("lpips", "fid", "kid"))
    ref = photo(96, 64, "kodim03.png")
    big = photo(768, 512, "kodim03.png")
    assert len(perceptual.patches(big)) == 3 * 2 + 2 * 1 and len(perceptual.patches(ref)) == 1
    f_ref = perceptual.inception_features(str(stand_ins), big)
    f_other = perceptual.inception_features(str(stand_ins), photo(768, 512, "kodim23.png"))
    assert f_ref.shape == f_other.shape == (8, 2048) and np.isfinite(f_ref).all() and not np.array_equal(f_ref, f_other)


def test_fid_and_kid_against_hand_computed_cases():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((200, 2048))
    # a shift by 1 in every dimension, same covariance: FID is the squared mean difference, 2048
    assert perceptual.set_metric("fid", real, real + 1) == pytest.approx(2048, rel=1e-3)
    assert perceptual.set_metric("fid", real, real) == pytest.approx(0, abs=1e-3)
    other = rng.standard_normal((200, 2048))  # a second draw from the same distribution
    same, shifted = perceptual.set_metric("kid", real, other), perceptual.set_metric("kid", real, other + 1)
    assert abs(same) < 0.01 * shifted  # an unbiased estimate: near 0 for one distribution
    assert perceptual.set_metric("fid", real[:1], real[:1]) is None


def test_eval_computes_what_the_weights_allow(stand_ins, admit_stand_ins, tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    for i, name in enumerate(["kodim03.png", "kodim23.png"]):
        photo(256, 256, name).save(ds / f"img{i}.png")
    res = evaluate(str(ds), str(tmp_path / "out"), codecs=["resulic"], rates=[0, 9], progress=False,
                   metrics=["psnr", "lpips", "fid", "kid"], metric_weights=str(stand_ins))  # fmt: skip
    with (tmp_path / "out" / "summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert all(float(s["lpips"]) >= 0 and s["fid"] and s["kid"] for s in summary)
    assert all(s["dists"] == "" for s in summary)  # not asked for
    assert not any("not computed" in n for n in res.notes)


@pytest.fixture
def mirror(stand_ins):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(stand_ins / "checkpoints"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_fetch_inception_checks_the_file(mirror, tmp_path):
    with pytest.raises(FetchError, match="is not the published file"):
        perceptual.fetch_inception(tmp_path / "a", base_url=mirror)
    assert not [p for p in (tmp_path / "a").iterdir()]  # nothing half-fetched or unchecked is kept


def test_fetch_inception_then_use(mirror, admit_stand_ins, tmp_path):
    assert perceptual.fetch_inception(tmp_path / "b", base_url=mirror).name == perceptual.INCEPTION.name
    assert perceptual.unavailable("fid", tmp_path / "b") is None
