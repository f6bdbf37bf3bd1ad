"""Sources: what a SOURCE argument names, listed as rows of assets, and the bytes behind them.

A source is a local folder or glob, any fsspec URL (``s3://``, ``gs://``, ...), WebDataset
tar shards (``.tar`` paths, globs or ``{000..099}`` braces), or a Parquet/CSV manifest with a
``uri`` column. Listing runs inside Ray read tasks, one per top-level subfolder group, each
yielding blocks of at most ``LIST_BLOCK_ROWS`` rows as it walks: the first images are read
while the rest is still being listed, and a million files make a few dozen tasks, not a
million.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import random
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import fsspec
import pyarrow as pa
from braceexpand import braceexpand
from fsspec.core import url_to_fs
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from schemas.archive import STATUS_FAILED, STATUS_UNCHANGED

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm")
LIST_BLOCK_ROWS = 1000
MANIFEST_SUFFIXES = (".parquet", ".csv")

# Listing rows: one per asset (or per shard, for WebDataset sources, expanded later).
LISTING_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source_uri", pa.string()),
        ("source_fingerprint", pa.string()),
        ("caption", pa.string()),
        ("status", pa.string()),  # null: to do; "unchanged"; "failed"
        ("error", pa.string()),
    ]
)


@dataclass
class Source:
    """A parsed SOURCE argument. ``storage_options`` go to fsspec (e.g. an S3 endpoint)."""

    url: str
    kind: str  # "files" | "webdataset" | "manifest"
    storage_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str, storage_options: dict[str, Any] | None = None) -> "Source":
        path = url.split("?")[0].rstrip("/")
        if path.lower().endswith(MANIFEST_SUFFIXES):
            kind = "manifest"
        elif path.lower().endswith(".tar") or path.lower().endswith(".tar}"):
            kind = "webdataset"
        else:
            kind = "files"
        return cls(url, kind, dict(storage_options or {}))

    def filesystem(self) -> tuple[fsspec.AbstractFileSystem, str]:
        return url_to_fs(self.url, **self.storage_options)

    def check(self) -> None:
        """Fail before any work when a folder, file or manifest source does not exist (shards
        and glob matches are accounted for one by one instead)."""
        if self.kind == "webdataset":
            return
        fs, path = self.filesystem()
        if not any(c in path for c in "*?[") and not _retry(lambda: fs.exists(path)):
            raise FileNotFoundError(f"source not found: {self.url}")


def fingerprint(info: dict) -> str:
    """What says a file changed, from listing metadata alone: size plus ETag or mtime."""
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or info.get("updated")
    if hasattr(tag, "isoformat"):
        tag = tag.isoformat()
    return f"{info.get('size')}:{str(tag).strip(chr(34))}"


def _full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path)


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def _rows(entries: list[tuple[str, str, str]]) -> pa.Table:
    n = len(entries)
    return pa.table(
        {"key": [e[0] for e in entries], "source_uri": [e[1] for e in entries],
         "source_fingerprint": [e[2] for e in entries], "caption": [None] * n, "status": [None] * n,
         "error": [None] * n},
        schema=LISTING_SCHEMA,
    )  # fmt: skip


def _walk_files(source: Source, root: str, tops: list[str]) -> Iterator[pa.Table]:
    """Walk some top-level entries of ``root`` and yield listing blocks as they fill."""
    fs, _ = source.filesystem()
    batch: list[tuple[str, str, str]] = []
    for top in tops:
        info = _retry(lambda: fs.info(top))
        if info["type"] == "directory":
            walked = (
                (posixpath.join(d, name), meta)
                for d, _, files in fs.walk(top, detail=True)
                for name, meta in sorted(files.items())
            )
        else:
            walked = iter([(top, info)])
        for path, meta in walked:
            if not _is_image(path):
                continue
            key = posixpath.relpath(path, root) if root else posixpath.basename(path)
            batch.append((key, _full_uri(fs, path), fingerprint(meta)))
            if len(batch) >= LIST_BLOCK_ROWS:
                yield _rows(batch)
                batch = []
    if batch:
        yield _rows(batch)


def _glob_files(source: Source, pattern: str) -> Iterator[pa.Table]:
    fs, _ = source.filesystem()
    root = pattern.split("*")[0].rsplit("/", 1)[0]
    found = sorted(_retry(lambda: fs.glob(pattern, detail=True)).items())
    entries = [(posixpath.relpath(p, root), _full_uri(fs, p), fingerprint(m)) for p, m in found if _is_image(p)]
    for i in range(0, len(entries), LIST_BLOCK_ROWS):
        yield _rows(entries[i : i + LIST_BLOCK_ROWS])


def _shards(source: Source) -> Iterator[pa.Table]:
    entries = []
    for url in braceexpand(source.url):
        sfs, path = url_to_fs(url, **source.storage_options)
        paths = sorted(sfs.glob(path)) if any(c in path for c in "*?[") else [path]
        for p in paths:
            try:
                meta = _retry(lambda: sfs.info(p))
                entries.append((posixpath.basename(p)[: -len(".tar")], _full_uri(sfs, p), fingerprint(meta), None))
            except FileNotFoundError:
                entries.append((posixpath.basename(p), _full_uri(sfs, p), None, f"shard not found: {url}"))
    table = _rows([e[:3] for e in entries])
    errors = pa.array([e[3] for e in entries], pa.string())
    status = pa.array([STATUS_FAILED if e[3] else None for e in entries], pa.string())
    yield table.set_column(4, "status", status).set_column(5, "error", errors)


def read_manifest(source: Source) -> pa.Table:
    """A manifest's rows as listing rows: ``uri`` (required), optional ``key`` and ``caption``."""
    fs, path = source.filesystem()
    with fs.open(path, "rb") as f:
        if path.lower().endswith(".csv"):
            from pyarrow import csv

            # every column as text, empty cells as null (a missing caption is not "")
            table = csv.read_csv(f, convert_options=csv.ConvertOptions(strings_can_be_null=True))
            table = table.cast(pa.schema([pa.field(n, pa.string()) for n in table.column_names]))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(f)
    if "uri" not in table.column_names:
        raise ValueError(f"{source.url}: a manifest needs a 'uri' column (has: {', '.join(table.column_names)})")
    uris = [str(u) for u in table.column("uri").to_pylist()]
    keys = table.column("key").to_pylist() if "key" in table.column_names else [_manifest_key(u) for u in uris]
    captions = table.column("caption").cast(pa.string()).to_pylist() if "caption" in table.column_names else [None] * len(uris)
    n = len(uris)
    return pa.table(
        {"key": [str(k) for k in keys], "source_uri": uris, "source_fingerprint": [None] * n, "caption": captions,
         "status": [None] * n, "error": [None] * n},
        schema=LISTING_SCHEMA,
    )  # fmt: skip


def _manifest_key(uri: str) -> str:
    """A manifest row without a key is keyed by its URI's path (bucket and folders included)."""
    path = uri.split("://", 1)[-1]
    return path.lstrip("/")


def list_tasks(source: Source, parallelism: int) -> list[Callable[[], Iterator[pa.Table]]]:
    """Functions that each list a part of the source (what Ray read tasks run)."""
    if source.kind == "webdataset":
        return [lambda: _shards(source)]
    if source.kind == "manifest":
        return [lambda: iter([read_manifest(source)])]
    fs, path = source.filesystem()
    if any(c in path for c in "*?["):
        return [lambda: _glob_files(source, path)]
    source.check()
    if _retry(lambda: fs.isfile(path)):
        return [lambda: _walk_files(source, posixpath.dirname(path), [path])]
    tops = sorted(e["name"] for e in _retry(lambda: fs.ls(path, detail=True)))
    groups = [tops[i :: max(1, parallelism)] for i in range(min(len(tops), max(1, parallelism)))]
    return [lambda g=g: _walk_files(source, path, g) for g in groups if g]


# ----- bytes -------------------------------------------------------------------------------
TRANSIENT = (ConnectionError, TimeoutError)


def _is_transient(e: BaseException) -> bool:
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    return isinstance(e, TRANSIENT) or (isinstance(e, OSError) and e.errno is None)


def _retry(fn: Callable[[], Any], attempts: int = 5, base: float = 0.2) -> Any:
    """Retry transient object-store errors with jittered exponential backoff."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below
            if i == attempts - 1 or not _is_transient(e):
                raise
            time.sleep(base * 2**i * (1 + random.random()))
    raise AssertionError("unreachable")


def read_bytes(uri: str, storage_options: dict[str, Any]) -> bytes:
    def read() -> bytes:
        with fsspec.open(uri, "rb", **storage_options) as f:
            return f.read()

    return _retry(read)


def io_reason(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return "I/O error: file not found"
    if isinstance(e, PermissionError):
        return "I/O error: permission denied"
    return f"I/O error: {type(e).__name__}: {e}".split("\n")[0]


def fetch(batch: pa.Table, storage_options: dict[str, Any]) -> pa.Table:
    """Read each pending asset's bytes (columns ``data``, ``source_size``, ``source_sha256``)."""
    data, sizes, digests, seconds, status, error = [], [], [], [], [], []
    for row in batch.select(["source_uri", "status", "error"]).to_pylist():
        st, err, blob, t = row["status"], row["error"], None, None
        if st is None:
            t0 = time.perf_counter()
            try:
                blob = read_bytes(row["source_uri"], storage_options)
            except Exception as e:  # noqa: BLE001 - every failure is recorded per row
                st, err = STATUS_FAILED, io_reason(e)
            t = time.perf_counter() - t0
        data.append(blob)
        sizes.append(None if blob is None else len(blob))
        digests.append(None if blob is None else hashlib.sha256(blob).hexdigest())
        seconds.append(t)
        status.append(st)
        error.append(err)
    return _with(batch, status=status, error=error, data=pa.array(data, pa.large_binary()), source_size=pa.array(sizes, pa.int64()),
                 source_sha256=digests, seconds_read=pa.array(seconds, pa.float64()))  # fmt: skip


def expand_shards(batch: pa.Table, storage_options: dict[str, Any]) -> pa.Table:
    """WebDataset shard rows -> one row per image member (key ``<shard>/<member>``), with bytes.

    A shard that cannot be read becomes one failed row; a shard cut short keeps the members
    before the damage and adds one failed row for the rest.
    """
    out: list[dict] = []
    for row in batch.to_pylist():
        shard = row["key"]
        if row["status"] is not None:
            out.append({**row, "data": None})
            continue
        t0 = time.perf_counter()
        try:
            with fsspec.open(row["source_uri"], "rb", **storage_options) as f:
                blob = f.read()
        except Exception as e:  # noqa: BLE001
            out.append({**row, "status": STATUS_FAILED, "error": io_reason(e), "data": None})
            continue
        seconds = time.perf_counter() - t0
        try:
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
                for member in tar:
                    if not member.isfile() or not _is_image(member.name):
                        continue
                    payload = tar.extractfile(member).read()  # type: ignore[union-attr]
                    out.append({"key": f"{shard}/{member.name}", "source_uri": f"{row['source_uri']}#{member.name}",
                                "source_fingerprint": row["source_fingerprint"], "caption": None, "status": None,
                                "error": None, "data": payload, "seconds_read": seconds})  # fmt: skip
        except (tarfile.TarError, EOFError, OSError) as e:
            out.append({**row, "key": f"{shard}/", "status": STATUS_FAILED, "data": None,
                        "error": f"truncated or damaged shard: {e}".split("\n")[0]})  # fmt: skip
    table = pa.Table.from_pylist(
        [{k: r.get(k) for k in [*LISTING_SCHEMA.names, "data", "seconds_read"]} for r in out],
        schema=LISTING_SCHEMA.append(pa.field("data", pa.large_binary())).append(pa.field("seconds_read", pa.float64())),
    )
    blobs = table.column("data").to_pylist()
    return _with(table, source_size=pa.array([None if b is None else len(b) for b in blobs], pa.int64()),
                 source_sha256=[None if b is None else hashlib.sha256(b).hexdigest() for b in blobs])  # fmt: skip


def mark_unchanged(batch: pa.Table, archived: pa.Table, by: str) -> pa.Table:
    """Set ``status`` to unchanged where the archive already holds this key from the same source
    (compared ``by`` the listing fingerprint, before reading, or by content sha256, after)."""
    import pyarrow.compute as pc

    if archived.num_rows == 0 or batch.num_rows == 0:
        return batch
    idx = pc.index_in(batch.column("key"), value_set=archived.column("key"))
    theirs = pc.take(archived.column(by), idx)
    same = pc.and_(pc.is_valid(idx), pc.fill_null(pc.equal(theirs, batch.column(by)), False))
    pending = pc.is_null(batch.column("status"))
    status = pc.if_else(pc.and_(same, pending), pa.scalar(STATUS_UNCHANGED), batch.column("status"))
    out = batch.set_column(batch.column_names.index("status"), "status", status)
    if "data" in out.column_names:  # unchanged bytes go no further
        data = pc.if_else(pc.and_(same, pending), pa.scalar(None, pa.large_binary()), out.column("data"))
        out = out.set_column(out.column_names.index("data"), "data", data)
    return out


def _with(table: pa.Table, **columns: Any) -> pa.Table:
    for name, values in columns.items():
        arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, pa.string())
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    return table


class ListingDatasource(Datasource):
    """Ray Data reader of a source's listing: one read task per group of top-level entries."""

    def __init__(self, source: Source) -> None:
        super().__init__()
        self.source = source

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None) -> list[ReadTask]:
        return [
            ReadTask(fn, BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None),
                     schema=LISTING_SCHEMA, per_task_row_limit=per_task_row_limit)  # fmt: skip
            for fn in list_tasks(self.source, parallelism)
        ]
