"""The encoder operator on real images: verified streams per row, failed rows passed through,
and an actor whose weights are not the job's model stops the job before writing anything."""

from __future__ import annotations

import pyarrow as pa
import pytest
from PIL import Image

from codec.parsing import info
from codec.presets import load_preset
from codec.settings import EncodeSettings
from conftest import png_bytes
from operators.decode import decode_images
from operators.encode import Encoder
from operators.failures import SystemicError


def decoded() -> pa.Table:
    """Two images and a row that failed upstream (its status and reason must survive)."""
    batch = pa.table({"key": ["a.png", "b.png", "bad.png"],
                      "status": pa.array([None, None, None], pa.string()),
                      "error": pa.array([None, None, None], pa.string()),
                      "data": pa.array([png_bytes(Image.new("RGB", (64, 48), (200, 30, 30))),
                                        png_bytes(Image.new("RGB", (64, 48), (20, 30, 220))), b"not an image"],
                                       pa.large_binary())})  # fmt: skip
    return decode_images(batch)


def test_streams_name_the_jobs_model_and_failed_rows_keep_their_reason():
    job_model = load_preset().model_id.hex()
    out = Encoder(settings=EncodeSettings(rate=1), model_id=job_model)(decoded()).to_pylist()
    assert [r["model_id"] for r in out[:2]] == [job_model, job_model]
    assert all(info(r["bitstream"])["width"] == 64 for r in out[:2])
    assert out[2]["status"] == "failed" and out[2]["bitstream"] is None and "image" in out[2]["error"]


def test_an_actor_with_other_weights_stops_the_job():
    enc = Encoder(settings=EncodeSettings(rate=1), model_id="00" * 8)
    with pytest.raises(SystemicError, match="its weights are model [0-9a-f]{16}, the job's 0000000000000000"):
        enc(decoded())


def test_running_out_of_memory_fails_the_row_and_forgets_its_source(monkeypatch):
    """A GPU another process fills, or a worker short of memory: not the image's fault, retried next job."""
    import torch

    enc = Encoder(settings=EncodeSettings(rate=1))
    batch = decoded().append_column("source_fingerprint", pa.array(["1:a", "2:b", "3:c"])).append_column(
        "source_sha256", pa.array(["a" * 64, "b" * 64, "c" * 64]))  # fmt: skip

    def short(images):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(enc, "_encode", short)
    out = enc(batch).to_pylist()
    assert [r["status"] for r in out] == ["failed"] * 3 and "OutOfMemoryError" in out[0]["error"]
    assert [r["source_fingerprint"] for r in out] == [None, None, "3:c"]  # bad.png failed as an image: its own
    assert [r["source_sha256"] for r in out] == [None, None, "c" * 64]
