"""The failure policy: row failures vs systemic stops, the failure-rate monitor, and a real job
(Ray, real files, the CLI) that stops non-zero with its first reasons."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest
import ray

from conftest import ROOT, photo_folder
from operators.failures import (FailureMonitor, JobAborted, SystemicError, check_failures, stop_reason,
                                systemic_reason)  # fmt: skip
from pipelines.compress import compress

pytestmark = pytest.mark.timeout(420)


def test_systemic_or_the_assets_own():
    assert systemic_reason(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert systemic_reason(FileNotFoundError("weights/latent_codec.safetensors"))
    assert systemic_reason(ImportError("no module named compressai"))
    assert systemic_reason(ValueError("image too small")) is None
    assert systemic_reason(RuntimeError("shape mismatch")) is None
    assert systemic_reason(MemoryError()) is None  # one huge image


def test_monitor_waits_for_a_trend_then_stops_with_distinct_reasons():
    m = FailureMonitor(0.25, min_failures=4)
    assert m.record(10, 3, ["a: bad", "a: bad", "b: truncated"]) is None  # 3 < min_failures
    assert m.record(2, 0, []) is None
    verdict = m.record(2, 2, ["a: bad", "c"])  # 5 of 14 > 25 %
    assert verdict.startswith("5 of 14 assets failed") and verdict.endswith("a: bad; b: truncated; c")
    assert m.record(100, 0, []) == verdict  # a stop is final
    assert FailureMonitor(1.0, 1).record(5, 5, ["x"]) is None  # rate 1: never stops


def test_stop_reason_walks_the_chain():
    try:
        try:
            raise JobAborted("9 of 10 assets failed")
        except JobAborted as e:
            raise RuntimeError("ray data execution failed") from e
    except RuntimeError as outer:
        assert stop_reason(outer) == "JobAborted: 9 of 10 assets failed"
    assert stop_reason(SystemicError("encoder: CUDA error")) == "SystemicError: encoder: CUDA error"
    assert stop_reason(ValueError("other")) is None
    as_ray_raises = RuntimeError("ray::MapBatches(check_failures)\noperators.failures.JobAborted: 9 of 10 assets failed\n")
    assert stop_reason(as_ray_raises) == "JobAborted: 9 of 10 assets failed"


def test_check_failures_counts_processed_rows_only(ray_local):
    monitor = ray.remote(num_cpus=0)(FailureMonitor).remote(0.5, 2)
    batch = pa.table({"status": ["unchanged", None, "failed", "failed"], "error": [None, None, "/a.png: bad", "/b.png: bad"]})
    with pytest.raises(JobAborted, match=r"2 of 3 assets failed .* first reasons: bad$"):
        check_failures(batch, monitor)


def _broken_folder(root, bad: int, good: int):
    photo_folder(root, {f"good{i}.png": (64, 48) for i in range(good)})
    for i in range(bad):
        (root / f"bad{i:02d}.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


def test_a_mostly_broken_collection_stops_with_reasons(ray_local, tmp_path):
    src = _broken_folder(tmp_path / "src", bad=12, good=2)
    s = compress(str(src), str(tmp_path / "arc"), batch_size=1, rows_per_file=1, max_failure_rate=0.5)
    assert s["aborted"].startswith("JobAborted: ") and "not an image" in s["aborted"]
    assert s["first_reasons"] and all("not an image" in r for r in s["first_reasons"])
    # the rows committed before the stop are counted from the archive (the rest: the next run)
    assert 0 < s["failed"] <= 12 and s["written"] <= 2
    assert len(s["failures"]) == s["failed"] and all("not an image" in f["reason"] for f in s["failures"])
    # the same collection with the policy off: every asset accounted for
    s = compress(str(src), str(tmp_path / "arc2"), batch_size=1, max_failure_rate=1.0)
    assert s["aborted"] is None and (s["written"], s["failed"]) == (2, 12)


def test_a_stopped_job_commits_the_failures_it_met_and_the_rerun_goes_past_them(ray_local, tmp_path):
    """The first photos in listing order are broken and nothing reaches a data file before the
    stop (rows_per_file 64): without the stopped job's failures committed, every rerun met them
    first again and stopped again."""
    src = _broken_folder(tmp_path / "src", bad=10, good=6)  # bad00..bad09 sort first
    arc = str(tmp_path / "arc")
    first = compress(src_str := str(src), arc, batch_size=1, rows_per_file=64, max_failure_rate=0.5)
    assert first["aborted"].startswith("JobAborted: ") and first["written"] == 0
    assert first["failed"] >= 8 and len(first["failures"]) == first["failed"]  # committed, with their reasons
    assert [f.rsplit("-", 1)[1] for f in first["files"]] == ["stopped.parquet"]  # the driver's data file, listed
    again = compress(src_str, arc, batch_size=1, rows_per_file=64, max_failure_rate=0.5)
    assert again["aborted"] is None and again["written"] == 6, again
    assert again["still_failed"] == first["failed"] and again["still_failed"] + again["failed"] == 10


def test_cli_exits_non_zero_when_the_job_stops(tmp_path):
    src = _broken_folder(tmp_path / "src", bad=10, good=1)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", "compress", str(src), str(tmp_path / "arc"),
                          "--batch-size", "1", "--max-failure-rate", "0.3", "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 1, res.stderr[-2000:]
    summary = json.loads(res.stdout)  # stdout holds the summary alone
    assert summary["aborted"].startswith("JobAborted") and summary["first_reasons"]
