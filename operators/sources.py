"""Sources: what a SOURCE argument names, listed as rows of assets, and the bytes behind them.

A source is a local folder or glob, any fsspec URL (``s3://``, ``gs://``, ...), WebDataset
shards (``.tar``, ``.tar.gz`` or ``.tgz`` paths, globs or ``{000..099}`` braces), or a
Parquet/CSV manifest with a ``uri`` column. Listing runs inside a Ray read task that yields
blocks of at most ``LIST_BLOCK_ROWS`` rows as the store answers: the first images are read
while the rest is still being listed. Every listed row carries a fingerprint from listing
metadata alone (``operators.incremental`` skips unchanged sources with it before reading).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import random
import re
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import fsspec
import pyarrow as pa
from braceexpand import braceexpand
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from schemas.archive import STATUS_FAILED, STATUS_SHARD

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm")
LIST_BLOCK_ROWS = 1000
MANIFEST_SUFFIXES = (".parquet", ".csv")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
SHARD_BLOCK_ROWS = 16  # members per block while a shard streams: memory per shard stays constant
# A manifest's own fingerprint: a "fingerprint" column, else built from these (ETag or mtime, and size)
MANIFEST_FINGERPRINT_COLUMNS = ("etag", "mtime")

# Fingerprints of sources that failed before their bytes could say anything, so that the next
# job knows the failure for the same one (still_failed) instead of committing it again:
MISSING = "missing"  # listed (a manifest row, a named shard) but not in the store, or no uri at all
UNLISTABLE = "unlistable"  # a folder the listing could not open (its failed row, keyed <folder>/)
DUPLICATE = "duplicate"  # a key listed again for another source: the first one listed is the key's

# Listing rows: one per asset (or per shard, for WebDataset sources, expanded later).
LISTING_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source_uri", pa.string()),
        ("source_fingerprint", pa.string()),
        ("caption", pa.string()),
        ("caption_source", pa.string()),  # where a caption the source had came from (manifest, webdataset)
        ("status", pa.string()),  # null: to do; "unchanged"; "still_failed"; "failed"; "shard" (a marker)
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
        elif path.lower().rstrip("}").endswith(SHARD_SUFFIXES):
            kind = "webdataset"
        else:
            kind = "files"
        return cls(url, kind, dict(storage_options or {}))

    def filesystem(self) -> tuple[fsspec.AbstractFileSystem, str]:
        return url_to_fs(self.url, **self.storage_options)

    def check(self) -> None:
        """Fail before any work when a folder, file or manifest source does not exist, or a
        glob matches nothing (a nightly job pointed at a wrong path must not stay green). Named
        shards that are missing are accounted for one by one instead."""
        if self.kind == "webdataset":
            for url in braceexpand(self.url):
                sfs, path = url_to_fs(url, **self.storage_options)
                if is_glob(sfs, path) and not _retry(lambda: sfs.glob(path)):
                    raise FileNotFoundError(f"no shard matches {url}")
            return
        fs, path = self.filesystem()
        if is_glob(fs, path):
            if next((p for p, _ in _glob_matches(fs, path) if _is_image(p)), None) is None:  # stops at the first
                raise FileNotFoundError(f"no image matches {self.url}")
        elif not _retry(lambda: fs.exists(path)):
            raise FileNotFoundError(f"source not found: {self.url}")


def is_glob(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """A path with wildcards that does not exist as written: ``photos [2024]/`` is a folder."""
    return any(c in path for c in "*?[") and not _retry(lambda: fs.exists(path))


# what fsspec's filesystems call a version or a modification time: S3, GCS, Azure, local, HTTP,
# FTP, Hugging Face, memory
TAG_KEYS = ("ETag", "etag", "mtime", "LastModified", "last_modified", "Last-Modified", "updated", "modify",
            "blob_id", "created")  # fmt: skip


def fingerprint(info: dict) -> str | None:
    """What says a file changed, from listing metadata alone: size plus ETag or mtime. None when
    the store gives neither (then every job reads the file and compares its bytes): a size alone
    would let a same-size rewrite pass for unchanged."""
    tags = (info.get(k) for k in TAG_KEYS)
    tag = next((t for t in tags if t is not None and t != ""), None)  # an mtime of 0 is a time
    if tag is None:
        return None
    if hasattr(tag, "isoformat"):
        tag = tag.isoformat()
    return f"{info.get('size')}:{str(tag).strip(chr(34))}"


def _full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path)


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def _rows(entries: list[tuple]) -> pa.Table:
    """Listing rows from (key, uri, fingerprint[, error]) entries; one with an error has failed."""
    n = len(entries)
    errors = [e[3] if len(e) > 3 else None for e in entries]
    return pa.table(
        {"key": [e[0] for e in entries], "source_uri": [e[1] for e in entries],
         "source_fingerprint": [e[2] for e in entries], "caption": [None] * n, "caption_source": [None] * n,
         "status": [None if err is None else STATUS_FAILED for err in errors], "error": errors},
        schema=LISTING_SCHEMA,
    )  # fmt: skip


UNKEYABLE = ("object name with an empty, '.' or '..' folder: its key would be another object's "
             "(photos//a.jpg and photos/a.jpg are both a.jpg); rename it")  # fmt: skip


def _file_key(path: str, root: str) -> tuple[str, str | None]:
    """A listed file's key (its path under ``root``) and, for an object name that a path cannot
    spell apart from another's (an empty, '.' or '..' segment: S3 allows them), why it fails:
    its key is then its name as written, kept apart from every other."""
    if not root:
        return posixpath.basename(path), None
    key = posixpath.relpath(path, root)
    raw = path[len(root.rstrip("/")) + 1 :] if path.startswith(root.rstrip("/") + "/") else key
    return (key, None) if raw == key else (raw, UNKEYABLE)


def _stream_files(fs: fsspec.AbstractFileSystem, path: str, maxdepth: int | None = None) -> Iterator[tuple[str, dict]]:
    """Every file under ``path`` with its listing metadata, as the store hands them out.

    On S3 the prefix is listed page by page without a delimiter (s3fs's ``_iterdir``: 1,000
    keys a request), so a flat prefix of a million objects yields its first file after one
    request, not after a million; fsspec's ``walk``/``find``/``glob`` list a whole folder (or
    the whole prefix) before returning. Elsewhere (local, GCS) folder by folder (``fs.walk``)."""
    iterdir = getattr(fs, "_iterdir", None)
    if iterdir is not None and maxdepth is None and hasattr(fs, "split_path"):
        from fsspec.asyn import sync

        bucket, key, _ = fs.split_path(path)
        prefix = key.rstrip("/") + "/" if key else ""
        listing: dict[str, Any] = {"pages": iterdir(bucket, delimiter="", prefix=prefix), "last": None}

        def next_page() -> list[dict]:
            try:
                return sync(fs.loop, _take, listing["pages"], LIST_BLOCK_ROWS, listing["last"])
            except Exception:
                # a listing that raised is closed (it would yield nothing more, as if it had
                # ended): the retry lists again from the start, past the last key yielded
                listing["pages"] = iterdir(bucket, delimiter="", prefix=prefix)
                raise

        while page := _retry(next_page):
            listing["last"] = page[-1]["name"]
            for info in page:
                if info.get("type") == "file":
                    yield info["name"], info
        return
    if isinstance(fs, LocalFileSystem):
        yield from _walk_local(fs, path, maxdepth)
        return
    # a folder that cannot be listed is a failed row (fsspec's default leaves it out without a word)
    unlisted: list[tuple[str, OSError]] = []
    for d, _, files in fs.walk(path, maxdepth=maxdepth, detail=True, on_error=_collect(unlisted, path)):
        yield from _unlisted(unlisted)
        for name, meta in sorted(files.items()):
            yield posixpath.join(d, name), meta
    yield from _unlisted(unlisted)


def _walk_local(fs: LocalFileSystem, path: str, maxdepth: int | None) -> Iterator[tuple[str, dict]]:
    """A local folder's files, symlinked folders included (fsspec's walk lists a link to a
    folder as a file of type "other", and its photos were left out), each real folder once: the
    tree itself first, so that a folder inside it keeps its own path as its key, then the
    folders its links reach that it does not hold (in name order), so that a link loop ends.
    ``maxdepth`` as ``fs.walk``'s: 1 is the folder's own files."""
    seen: set[str] = set()
    pending: list[tuple[str, int | None]] = [(path, maxdepth)]
    unlisted: list[tuple[str, OSError]] = []
    while pending:
        top, depth = pending.pop(0)
        for d, dirs, files in os.walk(top, onerror=_collect(unlisted, top)):  # links wait in ``pending``
            yield from _unlisted(unlisted)
            real = os.path.realpath(d)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            level = 0 if d == top else d[len(top) :].strip("/").count("/") + 1
            dirs.sort()
            links = [x for x in dirs if os.path.islink(os.path.join(d, x))]
            deeper = depth is None or level + 1 < depth
            pending += [(posixpath.join(d, x), None if depth is None else depth - level - 1) for x in links if deeper]
            dirs[:] = [x for x in dirs if x not in links] if deeper else []
            for name in sorted(files):
                full = posixpath.join(d, name)
                try:
                    meta = fs.info(full)
                except OSError:  # a dangling link: a failed row, the same one each job
                    meta = {"name": full, "failed": "I/O error: file not found (a link to nothing)"}
                yield full, meta
        yield from _unlisted(unlisted)


def _collect(unlisted: list[tuple[str, OSError]], top: str) -> Callable[[OSError], None]:
    """A walk's error handler: a folder that cannot be listed is kept, to become a failed row
    (``os.walk`` and fsspec's walk skip it without a word, and its photos would be no job's
    inputs); one that is gone holds nothing."""

    def keep(e: OSError) -> None:
        if not isinstance(e, FileNotFoundError):
            unlisted.append((getattr(e, "filename", None) or top, e))

    return keep


def _unlisted(unlisted: list[tuple[str, OSError]]) -> Iterator[tuple[str, dict]]:
    """The folders a walk could not list so far, as listing entries that fail (emptied)."""
    while unlisted:
        folder, e = unlisted.pop(0)
        yield str(folder).rstrip("/"), {"failed": f"cannot list this folder: {e.strerror or e}", "folder": True}


async def _take(pages: Any, n: int, after: str | None = None) -> list[dict]:
    """Up to ``n`` more entries of an async listing (the next call goes on where this one
    stopped), leaving out names up to ``after`` (S3 lists in key order)."""
    out: list[dict] = []
    async for info in pages:
        if after is not None and info["name"] <= after:
            continue
        out.append(info)
        if len(out) >= n:
            break
    return out


def _list_files(source: Source, root: str, found: Iterator[tuple[str, dict]]) -> Iterator[pa.Table]:
    """Listing blocks of the images among ``found``, keyed relative to ``root``, as they come."""
    fs, _ = source.filesystem()
    batch: list[tuple[str, str, str]] = []
    for path, meta in found:
        if meta.get("folder"):  # a folder that could not be listed: keyed <folder>/, as no photo is
            key = _file_key(path, root)[0] if root else ""
            if key in ("", "."):  # the source itself: nothing of it can be accounted for
                raise OSError(f"cannot list {path}: {meta['failed'].split(': ', 1)[1]}")
            batch.append((key + "/", _full_uri(fs, path), UNLISTABLE, meta["failed"]))
        elif not _is_image(path):
            continue
        elif "failed" in meta:  # listed, but nothing is there: the same failure each job
            batch.append((_file_key(path, root)[0], _full_uri(fs, path), MISSING, meta["failed"]))
        else:
            key, error = _file_key(path, root)
            batch.append((key, _full_uri(fs, path), fingerprint(meta), error))
        if len(batch) >= LIST_BLOCK_ROWS:
            yield _rows(batch)
            batch = []
    if batch:
        yield _rows(batch)


def _glob_files(source: Source, pattern: str) -> Iterator[pa.Table]:
    """A glob's matches, streamed: the folder above its first wildcard is walked (as deep as the
    pattern reaches; any depth for ``**``) and each file matched with fsspec's glob rules."""
    fs, _ = source.filesystem()
    yield from _list_files(source, _glob_root(pattern), _glob_matches(fs, pattern))


def _glob_root(pattern: str) -> str:
    return re.split(r"[*?\[]", pattern, maxsplit=1)[0].rsplit("/", 1)[0]


def _glob_matches(fs: fsspec.AbstractFileSystem, pattern: str) -> Iterator[tuple[str, dict]]:
    """The files a glob matches, with their listing metadata, as the walk finds them."""
    from fsspec.utils import glob_translate

    root = _glob_root(pattern)
    depth = None if "**" in pattern else pattern[len(root) :].strip("/").count("/") + 1
    match = re.compile(glob_translate(pattern)).match
    return ((p, m) for p, m in _stream_files(fs, root, depth) if match(p))


def shard_name(path: str, base: str) -> str:
    """A shard's key: its path under ``base`` (the folder above the source's first brace or
    wildcard) without the suffix, then "/" (its members are keyed under it). So
    ``{train,val}/shard-0.tar`` gives ``train/shard-0/`` and ``val/shard-0/``: two shards never
    share a key, and a flat ``shards/shard-{0..9}.tar`` gives ``shard-0/`` ... ``shard-9/``.
    Without a base (a brace or wildcard in the first folder: ``s3://{b1,b2}/s.tar``), or for a
    shard outside it, the whole path is the key (``b1/s/``)."""
    name = posixpath.relpath(path, base) if base else ".."
    if name == ".." or name.startswith("../"):
        name = path.lstrip("/")
    for suffix in SHARD_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] + "/"
    return name + "/"


def _shard_base(source: Source) -> str:
    """The folder shard keys are relative to: above the URL's first brace or wildcard, or the
    shard's own folder when it names one shard."""
    head = re.split(r"[{*?\[]", source.url, maxsplit=1)[0]
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", head)
    rest = head[scheme.end() :] if scheme else head
    if "/" not in rest:
        if scheme or any(u.startswith("/") for u in braceexpand(source.url)):  # in the bucket's name, or whole paths
            return ""
        folder = "."  # a relative local path: under the working folder
    else:
        folder = head.rsplit("/", 1)[0]
    if not folder.split("://")[-1]:  # the root
        return ""
    return url_to_fs(folder, **source.storage_options)[1].rstrip("/")


def _shards(source: Source) -> Iterator[pa.Table]:
    entries = []
    base = _shard_base(source)
    for url in braceexpand(source.url):
        sfs, path = url_to_fs(url, **source.storage_options)
        paths = sorted(sfs.glob(path)) if is_glob(sfs, path) else [path]
        for p in paths:
            try:
                meta = _retry(lambda: sfs.info(p))
                entries.append((shard_name(p, base), _full_uri(sfs, p), fingerprint(meta), None))
            except FileNotFoundError:
                entries.append((shard_name(p, base), _full_uri(sfs, p), MISSING, f"shard not found: {url}"))
    table = _rows([e[:3] for e in entries])
    errors = pa.array([e[3] for e in entries], pa.string())
    status = pa.array([STATUS_FAILED if e[3] else None for e in entries], pa.string())
    yield _with(table, status=status, error=errors)


def read_manifest(source: Source) -> Iterator[pa.Table]:
    """A manifest's rows as listing rows, streamed in blocks: ``uri`` (required), optional ``key``,
    ``caption`` and the source's fingerprint (a ``fingerprint`` column, else ``size`` with ``etag``
    or ``mtime``; else the job asks the store, :func:`stat_sources`)."""
    fs, path = source.filesystem()
    with fs.open(path, "rb") as f:
        if path.lower().endswith(".csv"):
            from pyarrow import csv

            names = csv.open_csv(f).schema.names
            f.seek(0)
            # every column as text, empty cells as null (a missing caption is not "")
            convert = csv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True)
            batches: Iterator[pa.RecordBatch] = csv.open_csv(f, convert_options=convert)
        else:
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(f)
            names, batches = pf.schema_arrow.names, pf.iter_batches(batch_size=LIST_BLOCK_ROWS)
        if "uri" not in names:
            raise ValueError(f"{source.url}: a manifest needs a 'uri' column (has: {', '.join(names)})")
        seen: dict[str, str] = {}  # key -> the uri first listed for it
        start = 0
        for batch in batches:
            yield _manifest_rows(pa.Table.from_batches([batch]), seen, start)
            start += batch.num_rows


def _manifest_rows(table: pa.Table, seen: dict[str, str], start: int) -> pa.Table:
    """Listing rows of a block of manifest rows (``start``: the first one's row number). A row
    without a uri fails; a key listed again for another uri fails (the first uri listed keeps
    the key); the same key and uri listed again is the same asset, listed once."""

    def text(name: str) -> list:
        return table.column(name).cast(pa.string()).to_pylist() if name in table.column_names else [None] * table.num_rows

    captions = text("caption")
    tags = [e or m for e, m in zip(*(text(c) for c in MANIFEST_FINGERPRINT_COLUMNS))]
    fps = [f if f is not None else (f"{s}:{t}" if s is not None and t is not None else None)
           for f, s, t in zip(text("fingerprint"), text("size"), tags)]  # fmt: skip
    rows = []
    for i, (uri, key, caption, fp) in enumerate(zip(text("uri"), text("key"), captions, fps)):
        row = {"key": key, "source_uri": uri, "source_fingerprint": fp, "caption": caption,
               "caption_source": "manifest" if caption else None, "status": None, "error": None}  # fmt: skip
        if not uri:
            row.update(key=key or f"manifest row {start + i}", source_uri="", source_fingerprint=MISSING,
                       status=STATUS_FAILED, error="no uri in the manifest row")  # fmt: skip
        else:
            row["key"] = key = key if key is not None else _manifest_key(uri)
            if key not in seen:
                seen[key] = uri
            elif seen[key] == uri:  # listed before: the same asset
                continue
            else:
                row.update(source_fingerprint=DUPLICATE, status=STATUS_FAILED,
                           error=f"duplicate key: {key!r} is listed for {seen[key]} first")  # fmt: skip
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=LISTING_SCHEMA)


def stat_sources(batch: pa.Table, storage_options: dict[str, Any], missing: frozenset[str] = frozenset()) -> pa.Table:
    """Fill a pending row's missing fingerprint from the store's metadata (a HEAD request, not a
    read), so that an unchanged manifest asset is skipped before its bytes are read. A missing
    one gets ``MISSING`` (its failure is remembered as such); a row the store cannot describe
    otherwise keeps a null fingerprint; reading it reports why. Rows of ``missing`` keys (their
    last job found no object) are asked again whatever fingerprint the manifest gives: still
    missing, they stay the same failure; uploaded since, they are read."""
    fps = batch.column("source_fingerprint").to_pylist()
    for i, row in enumerate(batch.select(["key", "source_uri", "status"]).to_pylist()):
        if (fps[i] is None or row["key"] in missing) and row["status"] is None:
            try:
                fs, path = url_to_fs(row["source_uri"], **storage_options)
                fps[i] = fingerprint(_retry(lambda: fs.info(path)))
            except FileNotFoundError:
                fps[i] = MISSING  # the read fails with why; the next job knows this failure
            except Exception:  # noqa: BLE001 - the read that follows reports the reason
                pass
    return _with(batch, source_fingerprint=fps)


def _manifest_key(uri: str) -> str:
    """A manifest row without a key is keyed by its URI's path (bucket and folders included)."""
    path = uri.split("://", 1)[-1]
    return path.lstrip("/")


def list_tasks(source: Source) -> list[Callable[[], Iterator[pa.Table]]]:
    """The functions that list the source (what Ray read tasks run): one, streaming. Listing is
    thousands of entries a second against an encoder's few images a second, so one task keeps
    up, and it yields its first block after the store's first page."""
    if source.kind == "webdataset":
        return [lambda: _shards(source)]
    if source.kind == "manifest":
        return [lambda: read_manifest(source)]
    fs, path = source.filesystem()
    if is_glob(fs, path):
        return [lambda: _glob_files(source, path)]
    source.check()
    info = _retry(lambda: fs.info(path))
    if info["type"] != "directory":
        return [lambda: _list_files(source, posixpath.dirname(path), iter([(path, info)]))]
    return [lambda: _list_files(source, path, _stream_files(fs, path))]


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


def _not_the_source(e: BaseException) -> bool:
    """A read that failed for a reason outside the source (access refused, the store or the
    network failing, whatever the client library raises: botocore's and aiohttp's errors are
    not OSErrors), not a missing file, a folder or a bad uri (the source's own)."""
    return not isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError))


def fetch(batch: pa.Table, storage_options: dict[str, Any]) -> pa.Table:
    """Read each pending asset's bytes (columns ``data``, ``source_size``, ``source_sha256``).
    A read that fails for a reason outside the source (access, the store, the network) drops
    the row's fingerprint: the failure is not the source's, and the next job tries again."""
    data, sizes, digests, seconds, status, error = [], [], [], [], [], []
    fps = batch.column("source_fingerprint").to_pylist()
    for i, row in enumerate(batch.select(["source_uri", "status", "error"]).to_pylist()):
        st, err, blob, t = row["status"], row["error"], None, None
        if st is None:
            t0 = time.perf_counter()
            try:
                blob = read_bytes(row["source_uri"], storage_options)
            except Exception as e:  # noqa: BLE001 - every failure is recorded per row
                st, err = STATUS_FAILED, io_reason(e)
                if _not_the_source(e):  # access, the store or the network: retried next time
                    fps[i] = None
                elif isinstance(e, FileNotFoundError):  # whatever a manifest said: not there (yet)
                    fps[i] = MISSING
            t = time.perf_counter() - t0
        data.append(blob)
        sizes.append(None if blob is None else len(blob))
        digests.append(None if blob is None else hashlib.sha256(blob).hexdigest())
        seconds.append(t)
        status.append(st)
        error.append(err)
    return _with(batch, status=status, error=error, source_fingerprint=fps, data=pa.array(data, pa.large_binary()), source_size=pa.array(sizes, pa.int64()),
                 source_sha256=digests, seconds_read=pa.array(seconds, pa.float64()))  # fmt: skip


def expand_shards(batch: pa.Table, storage_options: dict[str, Any]) -> Iterator[pa.Table]:
    """WebDataset shard rows -> one row per image member (key ``<shard>/<member>``), with bytes,
    in blocks of ``SHARD_BLOCK_ROWS`` as the shard streams (webdataset's tar iterator, ``.tar``
    or gzipped): memory per shard stays constant. A sample's caption is its ``.txt`` member, or
    the ``caption`` (else ``text``) of its ``.json`` one.

    A shard read to its end adds its marker row (status ``shard``, ``operators.incremental``);
    one that cannot be opened becomes one failed row; one cut short keeps the members before the
    damage and adds a failed row of its own for the rest.
    """
    for row in batch.to_pylist():
        if row["status"] is not None:
            yield _member_table([row])
        else:
            yield from _stream_shard(row, storage_options)


def _stream_shard(row: dict, storage_options: dict[str, Any]) -> Iterator[pa.Table]:
    from webdataset.tariterators import group_by_keys, tar_file_expander

    shard, uri, block = row["key"], row["source_uri"], []
    seen: set[str] = set()
    t0 = time.perf_counter()
    try:
        f = _retry(lambda: fsspec.open(uri, "rb", **storage_options).open())
    except Exception as e:  # noqa: BLE001
        fp = MISSING if isinstance(e, FileNotFoundError) else None  # None: not the shard's fault, read it next time
        yield _member_table([{**row, "source_fingerprint": fp, "status": STATUS_FAILED, "error": io_reason(e)}])
        return
    try:
        with f:
            # lcase=False: member names stay as written (they are the assets' keys)
            for sample in group_by_keys(tar_file_expander([{"url": uri, "stream": f}]), lcase=False):
                caption = _sample_caption(sample)
                for ext, payload in sample.items():
                    name = f"{sample['__key__']}.{ext}"
                    if ext.startswith("__") or not _is_image(name):
                        continue
                    member = {"key": shard + name, "source_uri": f"{uri}#{name}",
                              "source_fingerprint": row["source_fingerprint"], "caption": caption,
                              "caption_source": "webdataset" if caption else None, "data": payload,
                              "seconds_read": time.perf_counter() - t0}  # fmt: skip
                    if name in seen:  # a tar may hold a name twice: the first one is the key's
                        member.update(data=None, source_fingerprint=DUPLICATE, status=STATUS_FAILED,
                                      error=f"duplicate key: {name!r} is in the shard twice; the first is kept")  # fmt: skip
                    seen.add(name)
                    block.append(member)
                    t0 = time.perf_counter()
                    if len(block) >= SHARD_BLOCK_ROWS:
                        yield _member_table(block)
                        block = []
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - the bytes (damaged) or the store/network (client errors of any type)
        # webdataset appends the stream and URL to the exception's arguments: the first says why
        reason = str(e.args[0] if e.args else "").split(" @ ")[0].split("\n")[0]
        if _io_failure(e):  # the connection or access, not the bytes: read it again next time
            block.append({**row, "source_fingerprint": None, "status": STATUS_FAILED,
                          "error": f"I/O error while reading the shard: {type(e).__name__}: {getattr(e, 'strerror', None) or reason}"})  # fmt: skip
        else:
            block.append({**row, "status": STATUS_FAILED, "error": f"truncated or damaged shard: {type(e).__name__}: {reason}"})
    else:
        block.append({**row, "status": STATUS_SHARD})
    yield _member_table(block)


def _io_failure(e: BaseException) -> bool:
    """An error of the store, the network or access (retried by a later job), not of the bytes
    read (a tar, gzip or zlib error, or a stream that ends early: the shard is damaged)."""
    if isinstance(e, (ConnectionError, TimeoutError, PermissionError)):
        return True
    if isinstance(e, (tarfile.TarError, EOFError, zlib.error, ValueError)):
        return False
    return not isinstance(e, OSError) or e.errno is not None  # gzip's BadGzipFile: an OSError without errno


def _sample_caption(sample: dict) -> str | None:
    """A sample's caption: its ``.txt`` member, else its ``.json`` member's caption or text."""
    text = None
    if isinstance(sample.get("txt"), bytes):
        text = sample["txt"].decode("utf-8", "replace")
    elif isinstance(sample.get("json"), bytes):
        try:
            meta = json.loads(sample["json"])
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            text = meta.get("caption") or meta.get("text")
    return text.strip() or None if isinstance(text, str) else None


MEMBER_SCHEMA = LISTING_SCHEMA.append(pa.field("data", pa.large_binary())).append(pa.field("seconds_read", pa.float64()))


def _member_table(rows: list[dict]) -> pa.Table:
    table = pa.Table.from_pylist([{k: r.get(k) for k in MEMBER_SCHEMA.names} for r in rows], schema=MEMBER_SCHEMA)
    blobs = table.column("data").to_pylist()
    return _with(table, source_size=pa.array([None if b is None else len(b) for b in blobs], pa.int64()),
                 source_sha256=[None if b is None else hashlib.sha256(b).hexdigest() for b in blobs])  # fmt: skip


def forget_sources(table: pa.Table, rows: set[int]) -> pa.Table:
    """``table`` with the listing fingerprint and content hash of ``rows`` cleared: rows that
    failed for a reason not their source's own (memory, a caption endpoint). Matched by either,
    the next job would count such a row still failed and never try it again."""
    for column in ("source_fingerprint", "source_sha256"):
        if rows and column in table.column_names:
            known = table.column(column).to_pylist()
            table = _with(table, **{column: [None if i in rows else v for i, v in enumerate(known)]})
    return table


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
            for fn in list_tasks(self.source)
        ]
