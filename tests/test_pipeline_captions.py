"""Semantic residual text through the compress pipeline on real Ray: captions the files carry, a
chat endpoint on loopback and a tiny local vision-language model; the text lands in the archive
rows and in the bitstreams, and restores read it back without any language model."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

import codec
from codec.semantic.captioners import CaptionConfig
from codec.settings import EncodeSettings
from conftest import photo
from pipelines.compress import compress
from tests.chat_server import API_KEY, ChatServer
from tests.test_pipeline_compress import _archived
from tests.test_semantic_embedded import XMP, jpeg_with_exif, png_with_xmp
from tests.tiny_vlm import make_tiny_vlm

pytestmark = pytest.mark.timeout(420)


def folder(root):
    root.mkdir()
    photo(96, 64, "kodim21.png").save(root / "lighthouse.png")  # no caption of its own
    (root / "exif.jpg").write_bytes(jpeg_with_exif("A harbour at dusk with three fishing boats"))
    (root / "xmp.png").write_bytes(png_with_xmp(XMP))
    Image.new("RGB", (64, 64), (0, 0, 240)).save(root / "blue.png")  # the chat server refuses blue images
    return root


def check_streams(rows):
    for r in rows.values():
        assert r["status"] == "written"
        assert codec.read_text(r["bitstream"]) == r["residual_text"]
        assert (r["bits_text"] > 0) == bool(r["residual_text"])


def test_known_captions_from_xmp_and_exif(ray_local, tmp_path):
    src, arc = folder(tmp_path / "src"), str(tmp_path / "arc")
    s = compress(str(src), arc, settings=EncodeSettings(rate=2), batch_size=2, captions=CaptionConfig(backend="known"))
    assert (s["written"], s["failed"], s["captioner"]) == (4, 0, "known") and s["text_bits"] > 0
    rows = _archived(arc)
    check_streams(rows)
    assert rows["exif.jpg"]["caption_source"] == "exif"
    assert rows["exif.jpg"]["residual_text"] == "harbour dusk three fishing boats"
    assert rows["xmp.png"]["caption_source"] == "xmp" and rows["xmp.png"]["caption"] == "A white lighthouse & a red boat"
    assert rows["lighthouse.png"]["residual_text"] == "" and rows["lighthouse.png"]["caption_source"] is None


def test_chat_endpoint_captions_in_their_own_actor_pool(ray_local, tmp_path, monkeypatch):
    monkeypatch.setenv("RESULIC_TEST_KEY", API_KEY)
    src, arc = folder(tmp_path / "src"), str(tmp_path / "arc")
    with ChatServer() as server:
        cfg = CaptionConfig(backend="openai", endpoint=server.url, model="m", api_key_env="RESULIC_TEST_KEY")
        s = compress(str(src), arc, settings=EncodeSettings(rate=2), batch_size=2, captions=cfg)
        auth = {r["auth"] for r in server.requests}
    assert (s["written"], s["failed"]) == (4, 0)
    assert auth == {f"Bearer {API_KEY}"}  # the key reached the actors
    rows = _archived(arc)
    check_streams(rows)
    light = rows["lighthouse.png"]
    assert light["caption_source"] == "model" and "lighthouse" in light["caption_original"]
    assert light["caption_reconstruction"] and light["seconds_caption"] > 0
    assert rows["exif.jpg"]["caption_source"] == "exif"  # a caption the file had is not asked for again
    assert rows["blue.png"]["caption_source"] == "refused" and rows["blue.png"]["residual_text"] == ""
    for root, _, files in os.walk(arc):  # the key is in no archive file
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                assert API_KEY.encode() not in fh.read()
    assert API_KEY not in json.dumps(s)


def test_endpoint_down_stops_the_job_and_the_rerun_does_the_rest(ray_local, tmp_path):
    src, arc = folder(tmp_path / "src"), str(tmp_path / "arc")
    down = CaptionConfig(backend="openai", endpoint="http://127.0.0.1:9/v1", model="m", retries=0, timeout=2)
    s = compress(str(src), arc, settings=EncodeSettings(rate=2), batch_size=2, captions=down)
    # a refused endpoint fails every image alike: a systemic stop, not four row failures
    assert s["aborted"].startswith("SystemicError: captioning: caption endpoint failed") and "ConnectionError" in s["aborted"]
    assert s["written"] == 0
    s = compress(str(src), arc, settings=EncodeSettings(rate=2), batch_size=2, captions=CaptionConfig(backend="known"))
    assert (s["written"], s["failed"]) == (4, 0)


def test_local_vision_language_model(ray_local, tmp_path):
    vlm = make_tiny_vlm(tmp_path / "vlm")
    src, arc = folder(tmp_path / "src"), str(tmp_path / "arc")
    cfg = CaptionConfig(backend="transformers", model=str(vlm), max_new_tokens=8)
    s = compress(str(src), arc, settings=EncodeSettings(rate=2), batch_size=2, captions=cfg)
    assert (s["written"], s["failed"]) == (4, 0)
    rows = _archived(arc)
    check_streams(rows)
    assert rows["lighthouse.png"]["caption_reconstruction"] is not None
