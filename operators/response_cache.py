"""A bounded LRU of encoded restorations, so that a replica never decodes the same asset twice
while it is kept. Bounded by bytes, not entries: a restored photo is tens of kilobytes to
megabytes. Data files are immutable, so a key of (data file, row group, row, format, decoder)
names one restoration for as long as the file exists."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable


@dataclass(frozen=True)
class CachedResponse:
    body: bytes
    media_type: str
    etag: str


class ResponseCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.hits = self.misses = 0
        self._items: OrderedDict[Hashable, CachedResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> CachedResponse | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item

    def put(self, key: Hashable, item: CachedResponse) -> None:
        """Keep ``item``, dropping the least recently used ones to stay within ``max_bytes``; one
        larger than the whole cache is not kept."""
        if len(item.body) > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.size -= len(old.body)
        self._items[key] = item
        self.size += len(item.body)
        while self.size > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.size -= len(dropped.body)


__all__ = ["CachedResponse", "ResponseCache"]
