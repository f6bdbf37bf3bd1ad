"""Caption backends against the real things that run here: a local HTTP chat server on loopback
and a tiny vision-language model loaded through ``from_pretrained``."""

import time

import pytest
from PIL import Image

from codec.semantic.captioners import CaptionConfig, CaptionError, ChatCaptioner, TransformersCaptioner
from tests.chat_server import API_KEY, REFUSAL, ChatServer
from tests.tiny_vlm import make_tiny_vlm

RED, BLUE = Image.new("RGB", (64, 48), (220, 30, 30)), Image.new("RGB", (40, 40), (10, 10, 230))


def chat(server: ChatServer, **kw) -> ChatCaptioner:
    return ChatCaptioner(CaptionConfig(backend="openai", endpoint=server.url, model="m", backoff=0.01, **kw))


def test_chat_captions_send_the_key_and_the_image(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with ChatServer() as server:
        out = chat(server).caption([RED, BLUE])
        assert out[0].endswith("A bright red square with a small white lighthouse.")
        assert out[1] == REFUSAL
        assert {r["auth"] for r in server.requests} == {f"Bearer {API_KEY}"}
        assert server.requests[0]["body"]["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/jpeg")
        assert chat(server).complete(["what is missing?"]) == ["lighthouse"]


def test_chat_retries_busy_answers_then_succeeds(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with ChatServer(fail_first=2, fail_status=503) as server:
        assert "red square" in chat(server, concurrency=1).caption([RED])[0]
        assert len(server.requests) == 3


def test_chat_gives_up_with_a_reason_that_holds_no_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with ChatServer(fail_first=100, fail_status=429) as server:
        (err,) = chat(server, retries=2).caption([RED])
        assert isinstance(err, CaptionError) and "after 3 attempts (HTTP 429)" in str(err)
        assert API_KEY not in str(err)
    monkeypatch.setenv("OPENAI_API_KEY", "wrong")
    with ChatServer() as server:
        (err,) = chat(server).caption([RED])
        assert str(err) == "caption endpoint answered HTTP 401" and len(server.requests) == 1  # no retry


def test_chat_unreachable_endpoint_is_an_error_not_a_hang():
    cfg = CaptionConfig(backend="openai", endpoint="http://127.0.0.1:9/v1", model="m", retries=1, backoff=0.01, timeout=2)
    (err,) = ChatCaptioner(cfg).caption([RED])
    assert isinstance(err, CaptionError) and "ConnectionError" in str(err)


def test_chat_concurrency_is_bounded(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with ChatServer(delay=0.2) as server:
        t0 = time.perf_counter()
        out = chat(server, concurrency=3).caption([RED] * 9)
        assert len(out) == 9 and server.max_in_flight == 3
        assert time.perf_counter() - t0 < 9 * 0.2  # requests overlapped


def test_config_is_checked():
    with pytest.raises(ValueError, match="unknown captioner"):
        CaptionConfig(backend="gpt")
    with pytest.raises(ValueError, match="caption-model"):
        CaptionConfig(backend="transformers")
    with pytest.raises(ValueError, match="caption-endpoint"):
        CaptionConfig(backend="openai", model="m")
    with pytest.raises(ValueError, match="model residual"):
        CaptionConfig(backend="known", residual="model")


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return make_tiny_vlm(tmp_path_factory.mktemp("vlm"))


def test_transformers_captioner_loads_from_a_path_and_is_batch_consistent(tiny_vlm):
    cap = TransformersCaptioner(CaptionConfig(backend="transformers", model=str(tiny_vlm), max_new_tokens=6))
    batch = cap.caption([RED, BLUE])
    assert len(batch) == 2 and all(isinstance(t, str) and t for t in batch)
    assert cap.caption([RED]) + cap.caption([BLUE]) == batch  # greedy, left-padded: same as one by one
    assert len(cap.complete(["a red door", "what is missing"])) == 2
