"""The service's response cache: least recently used first out, bounded by bytes."""

from __future__ import annotations

from operators.response_cache import CachedResponse, ResponseCache


def _item(n: int, tag: str = "x") -> CachedResponse:
    return CachedResponse(b"\0" * n, "image/png", f'"{tag}"')


def test_bounded_by_bytes_least_recently_used_first():
    c = ResponseCache(max_bytes=100)
    c.put("a", _item(40))
    c.put("b", _item(40))
    assert c.get("a") is not None  # a is now the most recent
    c.put("c", _item(40))  # 120 bytes: b, the least recently used, goes
    assert c.get("b") is None and c.get("a") is not None and c.get("c") is not None
    assert c.size == 80 and len(c) == 2 and (c.hits, c.misses) == (3, 1)


def test_replacing_and_oversized_items():
    c = ResponseCache(max_bytes=100)
    c.put("a", _item(40, "1"))
    c.put("a", _item(60, "2"))
    assert c.size == 60 and c.get("a").etag == '"2"'
    c.put("big", _item(101))  # larger than the whole cache: not kept, nothing evicted for it
    assert c.get("big") is None and c.get("a") is not None and c.size == 60
