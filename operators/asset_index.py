"""An archive's asset index held in memory by a long-running reader (the restore service).

Exact lookups and paged listings by key come from a sorted key list (bisect), with no storage
request. ``refresh`` lists the data files and reads only those it has not seen; when files went
away (a compaction replaced them) it starts again from the stored index. It never writes.
"""

from __future__ import annotations

import bisect
import threading

import pyarrow as pa
import pyarrow.compute as pc

from operators.archive import Archive, latest_per_key

MAX_PAGE = 1000  # keys in one listing page


class AssetIndex:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.files: frozenset[str] = frozenset()
        self._rows = archive.read_rows([])  # every row, shard markers included (refresh merges them)
        # (sorted keys, their asset rows): replaced as one object, so that a reader on another
        # thread sees the old index or the new one, never keys of one and rows of the other
        self._view: tuple[list[str], pa.Table] = ([], self._rows)
        self._lock = threading.Lock()  # one refresh at a time

    def __len__(self) -> int:
        return len(self._view[0])

    def refresh(self) -> bool:
        """Take in data files committed since the last refresh; True when anything changed."""
        with self._lock:
            present = frozenset(self.archive.data_files())
            if present == self.files:
                return False
            if not self.files or self.files - present:
                rows = self.archive.refresh_index(write=False)  # first load, or after a compaction
            else:
                new = self.archive.read_rows(sorted(present - self.files))
                rows = latest_per_key(pa.concat_tables([self._rows, new]))
            assets = rows.filter(pc.invert(pc.ends_with(rows.column("key"), "/")))  # a shard's row, marker or failure
            self._rows, self.files = rows, present
            self._view = (assets.column("key").to_pylist(), assets)  # sorted: latest_per_key sorts by key
            return True

    def get(self, key: str) -> dict | None:
        """The index row of exactly this key, or None."""
        keys, assets = self._view
        i = bisect.bisect_left(keys, key)
        if i == len(keys) or keys[i] != key:
            return None
        return assets.slice(i, 1).to_pylist()[0]

    def page(self, prefix: str = "", after: str | None = None, limit: int = 100) -> tuple[list[dict], str | None]:
        """Up to ``limit`` assets whose keys start with ``prefix``, in key order, after key
        ``after``; and the key to pass as ``after`` for the next page (None: no more)."""
        if not 0 < limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1 … {MAX_PAGE}, got {limit}")
        keys, assets = self._view
        start = bisect.bisect_left(keys, prefix)
        if after is not None:
            start = max(start, bisect.bisect_right(keys, after))
        stop = start
        while stop < len(keys) and stop - start < limit and keys[stop].startswith(prefix):
            stop += 1
        rows = assets.slice(start, stop - start).select(["key", "status", "bpp"]).to_pylist()
        more = stop < len(keys) and keys[stop].startswith(prefix)
        return rows, (keys[stop - 1] if more and rows else None)


__all__ = ["AssetIndex", "MAX_PAGE"]
