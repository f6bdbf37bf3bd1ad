"""The caption operator on real encoder output: both captions, refusals, failures kept per row."""

from __future__ import annotations

import pyarrow as pa
import pytest
from PIL import Image

from codec.semantic.captioners import CaptionConfig
from codec.settings import EncodeSettings
from conftest import png_bytes
from operators.caption import Captioner
from operators.decode import decode_images
from operators.encode import Encoder
from operators.failures import SystemicError
from tests.chat_server import API_KEY, ChatServer


def encoded(images: dict[str, Image.Image], captions: dict[str, str] | None = None) -> pa.Table:
    captions = captions or {}
    batch = pa.table({"key": list(images), "status": pa.array([None] * len(images), pa.string()),
                      "error": pa.array([None] * len(images), pa.string()),
                      "caption": pa.array([captions.get(k) for k in images], pa.string()),
                      "data": pa.array([png_bytes(im) for im in images.values()], pa.large_binary())})  # fmt: skip
    return Encoder(settings=EncodeSettings(rate=2), reconstruct=True)(decode_images(batch))


@pytest.fixture(scope="module")
def batch():
    return encoded({"red.png": Image.new("RGB", (64, 64), (220, 40, 30)), "blue.png": Image.new("RGB", (64, 64), (0, 0, 240)),
                    "known.png": Image.new("RGB", (64, 64), (30, 200, 30))},
                   captions={"known.png": "A green meadow with one white horse."})  # fmt: skip


def test_encoder_keeps_pixels_and_adds_the_reconstruction(batch):
    r = batch.to_pylist()[0]
    assert len(r["pixels"]) == len(r["recon_pixels"]) == 64 * 64 * 3 and r["bitstream"]


def test_captions_both_and_records_refusals(batch, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with ChatServer() as server:
        out = Captioner(CaptionConfig(backend="openai", endpoint=server.url, model="m").to_dict())(batch)
        sent = len(server.requests)
    rows = {r["key"]: r for r in out.to_pylist()}
    assert sent == 5  # two originals (the known caption is reused) and three reconstructions
    red = rows["red.png"]
    assert red["caption_original"] == "A bright red square with a small white lighthouse." and red["caption_source"] == "model"
    assert red["caption_reconstruction"] and red["status"] is None
    assert rows["blue.png"]["caption_source"] == "refused" and rows["blue.png"]["caption_original"] == ""
    assert rows["known.png"]["caption_original"] == "A green meadow with one white horse."
    assert rows["known.png"]["caption_source"] == "manifest"
    assert "pixels" not in out.column_names and "recon_pixels" not in out.column_names


def test_model_residual_asks_the_model(batch, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with ChatServer() as server:
        cfg = CaptionConfig(backend="openai", endpoint=server.url, model="m", residual="model")
        rows = {r["key"]: r for r in Captioner(cfg.to_dict())(batch).to_pylist()}
        prompts = [r["body"]["messages"][0]["content"][0]["text"] for r in server.requests[5:]]
    assert rows["red.png"]["residual_text"] == "lighthouse"
    assert len(prompts) == 2 and all("Original:" in p for p in prompts)  # not for the refused one


def test_an_unreachable_endpoint_stops_the_job(batch):
    """Refused connections fail every image alike: a systemic error, not a row failure each."""
    cfg = CaptionConfig(backend="openai", endpoint="http://127.0.0.1:9/v1", model="m", retries=0, timeout=2)
    with pytest.raises(SystemicError, match=r"captioning: caption endpoint failed after 1 attempts \(ConnectionError\)"):
        Captioner(cfg.to_dict())(batch)


def test_a_refused_key_stops_the_job_a_failing_server_fails_rows(batch, monkeypatch):
    """401 answers every image alike (systemic); a 503 that outlasts the retries is the rows'."""
    monkeypatch.setenv("OPENAI_API_KEY", "not-the-key")
    with ChatServer() as server:
        with pytest.raises(SystemicError, match="HTTP 401"):
            Captioner(CaptionConfig(backend="openai", endpoint=server.url, model="m").to_dict())(batch)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with ChatServer(fail_first=100, fail_status=503) as server:
        cfg = CaptionConfig(backend="openai", endpoint=server.url, model="m", retries=0)
        rows = Captioner(cfg.to_dict())(batch).to_pylist()
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed and all("HTTP 503" in r["error"] for r in failed)


def test_a_row_failed_by_the_endpoint_s_passing_trouble_forgets_its_source_so_the_next_job_retries_it(batch, monkeypatch):
    """Matched by its fingerprint or its content hash, the next job would count it still failed."""
    listed = batch.append_column("source_fingerprint", pa.array(["10:1", "11:1", "12:1"])).append_column(
        "source_sha256", pa.array(["a" * 64, "b" * 64, "c" * 64]))  # fmt: skip
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with ChatServer(fail_first=100, fail_status=503) as server:
        cfg = CaptionConfig(backend="openai", endpoint=server.url, model="m", retries=0)
        rows = Captioner(cfg.to_dict())(listed).to_pylist()
    assert all(r["status"] == "failed" for r in rows)
    assert all(r["source_fingerprint"] is None and r["source_sha256"] is None for r in rows)
    with ChatServer(fail_first=100, fail_status=400) as server:  # the endpoint refuses these images: theirs
        cfg = CaptionConfig(backend="openai", endpoint=server.url, model="m", retries=0)
        rows = Captioner(cfg.to_dict())(listed).to_pylist()
    assert all(r["status"] == "failed" and "HTTP 400" in r["error"] for r in rows)
    assert [r["source_fingerprint"] for r in rows] == ["10:1", "11:1", "12:1"]  # remembered: one row, not one a night
