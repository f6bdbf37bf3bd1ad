"""The archive on storage: layout, atomic data files, the key index, and one-row reads.

Commit protocol (our own, not Ray Data's job checkpointing): locally a data file is written
under ``_staging/``, flushed to disk, renamed into ``data/`` and the folder flushed; on an
object store it is PUT into ``data/`` directly (a PUT is all or nothing). A file in ``data/``
is committed, whole and immutable, so a job killed (or a machine losing power) at any moment
leaves only committed files and staging debris. A committed file that cannot be read anyway
(a disk fault, older software) is moved to ``_quarantine/`` with a note of why by the next
writer, and its assets are encoded again; readers skip it. The
index is derived data: every job first indexes any committed file the index lacks, so a
file committed by a job that died before updating the index is found, and its assets count
as unchanged on the rerun. Ray Data's checkpointing (alpha in 2.60) filters on an ID column
it keeps in files of its own; it cannot tell a changed source file from an unchanged one,
and the archive would then have two sources of truth.

One writer at a time per archive: concurrent jobs would each clean the other's staging files,
so ``compress`` holds the archive's lease (``operators.lease``) while it writes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import posixpath
import uuid
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from schemas.archive import (
    ARCHIVE_FORMAT,
    ARCHIVE_VERSION,
    ASSET_SCHEMA,
    DATA_DIR,
    INDEX_FILE,
    INDEX_SCHEMA,
    INDEX_SOURCE_COLUMNS,
    INDEXED_FILES_META,
    JOBS_DIR,
    LAST_COLUMNS,
    META_FILE,
    QUARANTINE_DIR,
    ROW_GROUP_ROWS,
    ROW_STATUSES,
    STAGING_DIR,
    STATUS_FAILED,
)

# What reading a file that is not a data file (or not an index) of this layout raises: bad
# bytes (ArrowInvalid is a ValueError), a column missing (KeyError), a null in a required
# column (ValueError), a type that cannot be cast (ArrowTypeError, ArrowNotImplementedError).
# Storage errors (OSError) are not here: a file is never judged by a failed request.
UNREADABLE = (ValueError, TypeError, KeyError, pa.ArrowTypeError, pa.ArrowNotImplementedError)


def new_job_id() -> str:
    """A writer's id: UTC time to the second, then 6 random hex digits; data files are named
    after it, so they sort by when their job started."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


class ArchiveError(ValueError):
    """An archive that is missing, foreign or of an unknown version."""


class Archive:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None,
                 fs: fsspec.AbstractFileSystem | None = None) -> None:  # fmt: skip
        self.url = url
        self.storage_options = dict(storage_options or {})
        if fs is None:
            fs, root = url_to_fs(url, **self.storage_options)
        else:
            root = url
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = root.rstrip("/")
        self.quarantined: list[dict] = []  # data files this object moved aside, with why

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    # ----- metadata ------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.fs.exists(self.path(META_FILE))

    def meta(self) -> dict:
        try:
            with self.fs.open(self.path(META_FILE), "rb") as f:
                meta = json.loads(f.read())
        except FileNotFoundError as e:
            raise ArchiveError(f"{self.url}: not a resulic archive (no {META_FILE})") from e
        if meta.get("format") != ARCHIVE_FORMAT:
            raise ArchiveError(f"{self.url}: not a resulic archive")
        if meta.get("version") != ARCHIVE_VERSION:
            raise ArchiveError(f"{self.url}: archive version {meta.get('version')} is not supported (this is {ARCHIVE_VERSION})")
        return meta

    def create(self, meta: dict) -> dict:
        """Write the archive metadata once; an existing archive keeps its own."""
        if self.exists():
            return self.meta()
        self.fs.makedirs(self.root, exist_ok=True)
        meta = {"format": ARCHIVE_FORMAT, "version": ARCHIVE_VERSION, **meta}
        self.write_json(META_FILE, meta)
        return meta

    def _put(self, rel: str, data: bytes) -> None:
        """Write whole-or-nothing, and durably once it returns (:func:`write_whole`, staged locally
        under ``_staging/``)."""
        write_whole(self.fs, self.path(rel), data, staging=self.path(STAGING_DIR))

    def write_json(self, rel: str, obj: dict) -> None:
        """A control file (metadata, job summary, compaction plan, quarantine note), written as
        a data file is: whole-or-nothing and durable."""
        self._put(rel, json.dumps(obj, indent=2).encode())

    def write_job_summary(self, job_id: str, summary: dict) -> str:
        rel = f"{JOBS_DIR}/{job_id}.json"
        self.write_json(rel, summary)
        return rel

    def clean_staging(self) -> None:
        if self.fs.exists(self.path(STAGING_DIR)):
            self.fs.rm(self.path(STAGING_DIR), recursive=True)

    # ----- data files --------------------------------------------------------------------
    def write_data_file(self, table: pa.Table, name: str, metadata: dict[str, str]) -> str:
        """Commit one sorted Parquet file of asset rows; returns its path relative to the root."""
        table = table.select(ASSET_SCHEMA.names).cast(ASSET_SCHEMA).sort_by("key")
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS, compression="zstd",
                       use_dictionary=["preset", "model_id", "status", "job_id"])  # fmt: skip
        rel = f"{DATA_DIR}/{name}.parquet"
        self._put(rel, sink.getvalue().to_pybytes())
        return rel

    def data_files(self) -> list[str]:
        """The committed data files as storage lists them now. fsspec keeps listings (s3fs, until
        told otherwise): a long-running reader would never see another process's commits, nor
        the files a compaction removed."""
        base = self.path(DATA_DIR)
        self.fs.invalidate_cache(base)
        if not self.fs.exists(base):
            return []
        return sorted(posixpath.relpath(p, self.root) for p in self.fs.glob(f"{base}/*.parquet"))

    def quarantine(self, rel: str, reason: str) -> None:
        """Move a data file that cannot be read out of ``data/``, with a JSON of why beside it:
        kept for inspection, no longer read by any job (its assets are encoded again)."""
        name = posixpath.basename(rel)
        note = {"file": rel, "reason": reason, "quarantined_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        self.write_json(f"{QUARANTINE_DIR}/{name}.json", note)
        self.fs.makedirs(self.path(QUARANTINE_DIR), exist_ok=True)
        self.fs.mv(self.path(rel), self.path(f"{QUARANTINE_DIR}/{name}"))
        self.quarantined.append({"file": rel, "reason": reason})

    def _readable_rows(self, files: list[str], quarantine: bool) -> list[pa.Table]:
        """The index rows of ``files``; a file that is not a readable data file (a truncated
        or empty file, another schema) is quarantined, or with ``quarantine=False`` (readers)
        skipped. Storage errors propagate: a file is never moved for a failed request."""
        tables = []
        for rel in files:
            try:
                tables.append(self._index_rows(rel))
            except UNREADABLE as e:
                if quarantine:
                    self.quarantine(rel, f"not a readable data file: {type(e).__name__}: {e}")
        return tables

    def read_rows(self, files: list[str]) -> pa.Table:
        """The index rows of ``files`` for a reader: unreadable ones skipped, nothing moved."""
        return pa.concat_tables([INDEX_SCHEMA.empty_table(), *self._readable_rows(files, quarantine=False)])

    def _index_rows(self, rel: str) -> pa.Table:
        with self.fs.open(self.path(rel), "rb") as f:
            pf = pq.ParquetFile(f)
            table = pf.read(columns=INDEX_SOURCE_COLUMNS)
            sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
        groups = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
        rows = np.concatenate([np.arange(n, dtype=np.int32) for n in sizes]) if sizes else np.zeros(0, np.int32)
        table = table.append_column("file", pa.array([rel] * table.num_rows, pa.string()))
        table = table.append_column("row_group", pa.array(groups, pa.int32()))
        table = table.append_column("row", pa.array(rows, pa.int32()))
        for last, own in LAST_COLUMNS.items():  # a single row is its key's newest one
            table = table.append_column(last, table.column(own))
        # A row of a status this version does not know (a later version's) is not a v1 row: it
        # is left out, so that it can neither hide an archived asset nor stand for one.
        table = table.filter(pc.is_in(table.column("status"), value_set=pa.array(ROW_STATUSES)))
        return table.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)

    # ----- index -------------------------------------------------------------------------
    def _read_index(self) -> tuple[pa.Table, set[str]]:
        """The stored index and the data files it has read (its metadata lists them: a file whose
        rows are all superseded is in no index row, and must not be read again on every refresh).
        Empty when there is none, when it cannot be read, or when it has an older layout: it is
        derived data, and the refresh then rebuilds it from the data files."""
        try:
            with self.fs.open(self.path(INDEX_FILE), "rb") as f:
                table = pq.read_table(f)
            if table.schema.names != INDEX_SCHEMA.names:
                return INDEX_SCHEMA.empty_table(), set()
            files = _indexed_files(table.schema)
            return table.cast(INDEX_SCHEMA), files if files is not None else set(table.column("file").to_pylist())
        except (FileNotFoundError, *UNREADABLE):
            return INDEX_SCHEMA.empty_table(), set()

    def load_index(self) -> pa.Table:
        return self._read_index()[0]

    def refresh_index(self, write: bool = True) -> pa.Table:
        """Index every committed data file the index has not read; per key, the newest written
        row wins (``latest_per_key``). Only new files are read: the index lists every file it
        has read. An unreadable data file is quarantined (``self.quarantined`` says which and why).

        With ``write=False`` the refreshed index is returned but not stored, and nothing is
        moved (read-only use)."""
        index, indexed = self._read_index()
        present = self.data_files()
        if indexed - set(present):  # data files gone (not by a compaction, which updates the index first)
            if write:
                return self._rebuild()[0]  # from what is there: their assets are no longer archived
            # a reader: the same, in memory (a key whose newest row is gone may have an older one)
            return latest_per_key(self.read_rows(present))
        new = [rel for rel in present if rel not in indexed]
        if not new:
            return index
        rows = self._readable_rows(new, write)
        moved = {q["file"] for q in self.quarantined}
        files = (indexed & set(present) | set(new)) - moved
        return self._store_index(latest_per_key(pa.concat_tables([index, *rows])), files, write)

    def replace_files(self, removed: list[str], added: list[str]) -> pa.Table:
        """Index after a compaction: rows of ``removed`` files leave, rows of ``added`` ones come in
        (stored; the lease holder only). A key's ``last_*`` columns may come from a file the
        compaction did not touch (a newer failure in a full file): they are kept from the old
        index unless the new rows hold a newer row (compaction keeps each key's newest row)."""
        index, indexed = self._read_index()
        gone = pa.array(removed, pa.string())
        kept = index.filter(pc.invert(pc.is_in(index.column("file"), value_set=gone)))
        rows = [self._index_rows(rel) for rel in added if rel not in indexed]
        new = latest_per_key(pa.concat_tables([kept, *rows]))
        return self._store_index(_newest_last(new, index), (indexed - set(removed)) | set(added), True)

    def repair(self) -> dict:
        """Rebuild the index from every data file, quarantining those that cannot be read; a report."""
        return self._rebuild()[1]

    def _rebuild(self) -> tuple[pa.Table, dict]:
        files = self.data_files()
        before = len(self.quarantined)
        tables = self._readable_rows(files, quarantine=True)
        read = set(files) - {q["file"] for q in self.quarantined[before:]}
        table = self._store_index(latest_per_key(pa.concat_tables([INDEX_SCHEMA.empty_table(), *tables])), read, True)
        return table, {"archive": self.url, "data_files": len(read), "rows": sum(t.num_rows for t in tables),
                       "keys": table.num_rows, "quarantined": self.quarantined[before:]}  # fmt: skip

    def _store_index(self, table: pa.Table, files: set[str], write: bool) -> pa.Table:
        if not write:
            return table
        sink = pa.BufferOutputStream()
        listed = table.replace_schema_metadata({INDEXED_FILES_META: "\n".join(sorted(files)).encode()})
        # sorted by key with small row groups: a lookup reads only the groups whose key range fits
        pq.write_table(listed, sink, row_group_size=4096, compression="zstd")
        self._put(INDEX_FILE, sink.getvalue().to_pybytes())
        return table

    def assets(self) -> pa.Table:
        """The index's asset rows, refreshed without writing (not the markers of WebDataset shards
        read to their end): what readers list and restore."""
        index = self.refresh_index(write=False)
        return index.filter(pc.invert(pc.ends_with(index.column("key"), "/")))  # a shard's row, marker or failure

    def lookup(self, keys: list[str]) -> pa.Table:
        """Index rows of these keys, reading only the index row groups whose key range holds them,
        and the rows of committed data files the index has not read (a job killed before its
        index update): as the spec says, readers index unlisted files themselves. Never writes
        (read-only credentials suffice)."""
        wanted = pa.array(keys, pa.string())
        indexed, table = set(), INDEX_SCHEMA.empty_table()
        try:
            with self.fs.open(self.path(INDEX_FILE), "rb") as f:
                schema = pq.ParquetFile(f).schema_arrow
                if schema.names == INDEX_SCHEMA.names and (listed := _indexed_files(schema)) is not None:
                    indexed = listed
                    table = pq.read_table(f, filters=[("key", "in", list(keys))]).cast(INDEX_SCHEMA)
        except (FileNotFoundError, *UNREADABLE):  # no index, or one that cannot be read: the files alone
            indexed, table = set(), INDEX_SCHEMA.empty_table()
        table = table.filter(pc.is_in(table.column("key"), value_set=wanted))
        unlisted = [rel for rel in self.data_files() if rel not in indexed]
        if unlisted:
            rows = self.read_rows(unlisted)
            table = latest_per_key(pa.concat_tables([table, rows.filter(pc.is_in(rows.column("key"), value_set=wanted))]))
        return table

    def read_asset(self, entry: dict, columns: list[str] | None = None) -> dict:
        """One asset row, reading the file's footer and one row group."""
        row = self.read_assets([entry], columns)[0]
        if isinstance(row, Exception):
            raise row
        return row

    def read_assets(self, entries: list[dict], columns: list[str] | None = None) -> list[dict | Exception]:
        """The rows index ``entries`` point at (``file``, ``row_group``, ``row``, ``key``), in
        order, reading each row group once (``columns`` of it, ``key`` always). An entry gets the
        error instead of its row when its row group cannot be read or lacks one of ``columns``
        (a damaged, foreign or missing file fails its own rows only), or when its row holds
        another key (a stale index: that entry only)."""
        wanted = None if columns is None else list(dict.fromkeys(["key", *columns]))
        out: list[dict | Exception] = [ArchiveError("unread")] * len(entries)
        groups: dict[tuple[str, int], list[int]] = {}
        for i, e in enumerate(entries):
            groups.setdefault((e["file"], e["row_group"]), []).append(i)
        for (file, group), idx in groups.items():
            try:
                # no read-ahead: s3fs's default would fetch 50 MB past the row group for one asset
                with self.fs.open(self.path(file), "rb", cache_type="none") as f:
                    table = pq.ParquetFile(f).read_row_group(group, columns=wanted)
                missing = [c for c in wanted or ["key"] if c not in table.column_names]  # pyarrow skips them silently
                if missing:
                    raise ArchiveError(f"{file} has no column {', '.join(missing)}")
            except Exception as e:  # noqa: BLE001 - any failure to read is this group's rows' failure
                for i in idx:
                    out[i] = e
                continue
            for i in idx:
                row = entries[i]["row"]
                found = table.slice(row, 1).to_pylist()[0] if isinstance(row, int) and 0 <= row < table.num_rows else {}
                out[i] = found if found.get("key") == entries[i]["key"] else ArchiveError(
                    f"{self.url}: index is stale for key {entries[i]['key']!r}")  # fmt: skip
        return out


def _indexed_files(schema: pa.Schema) -> set[str] | None:
    """The data files an index lists in its metadata as read (None: an index without the list)."""
    listed = (schema.metadata or {}).get(INDEXED_FILES_META)
    return None if listed is None else set(listed.decode().split("\n")) - {""}


def write_whole(fs: fsspec.AbstractFileSystem, path: str, data: bytes, staging: str | None = None) -> None:
    """Write ``data`` so that ``path`` holds its old content or all of ``data``, never a part,
    and durably once this returns.

    Locally: a temporary file (in ``staging``, else beside ``path``) flushed to disk, renamed
    over ``path``, and the folder's entry flushed too, so a power cut never leaves an empty or
    partial file. On an object store a PUT is already all or nothing, and durable when it
    returns."""
    if not isinstance(fs, LocalFileSystem):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    tmp = posixpath.join(staging, uuid.uuid4().hex) if staging else f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    os.makedirs(posixpath.dirname(tmp), exist_ok=True)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.makedirs(posixpath.dirname(path), exist_ok=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fd = os.open(posixpath.dirname(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_local(path: str | os.PathLike, data: bytes) -> None:
    """:func:`write_whole` on the local disk: a command's output file, a trainer's checkpoint or
    export, an evaluation's CSVs and plots (a full disk leaves the old file, never a cut one that
    a resume or ``--from-csv`` would trust). The error names the file."""
    try:
        write_whole(LocalFileSystem(), os.path.abspath(path), data)
    except OSError as e:
        named = type(e)(f"{path}: cannot write ({e.strerror or e})")  # the same kind (PermissionError, ...)
        named.errno = e.errno  # ENOSPC stays ENOSPC
        raise named from e


def latest_per_key(table: pa.Table) -> pa.Table:
    """One row per key, sorted by key: the newest written row, else the newest failed one; its
    ``last_*`` columns from the key's newest row whatever its status.

    A source that turns unreadable after it was archived must not hide the asset already
    archived; its failure is still recorded (``last_*``), so that the next job does not retry
    the same unchanged source."""
    # of rows of one time (one job listed a key twice, the second failing as a duplicate), the
    # failure is the newer: the next job then knows it
    by_time = table.append_column("_failed", pc.equal(table.column("last_status"), STATUS_FAILED))
    by_time = by_time.sort_by([("key", "ascending"), ("last_written_at", "descending"), ("_failed", "descending"),
                               ("file", "descending")]).drop_columns(["_failed"])  # fmt: skip
    last = first_per_key(by_time)
    failed = pc.equal(table.column("status"), STATUS_FAILED)
    ranked = table.append_column("_failed", failed)
    ranked = ranked.sort_by([("key", "ascending"), ("_failed", "ascending"), ("written_at", "descending"),
                             ("file", "descending")]).drop_columns(["_failed"])  # fmt: skip
    chosen = first_per_key(ranked)
    for name in LAST_COLUMNS:  # both are sorted by key, one row per key
        chosen = chosen.set_column(chosen.column_names.index(name), name, last.column(name))
    return chosen.cast(table.schema)


def _newest_last(index: pa.Table, old: pa.Table) -> pa.Table:
    """``index`` with each key's ``last_*`` columns taken from ``old`` where ``old``'s are newer."""
    at = pc.index_in(index.column("key"), value_set=old.column("key"))
    old_time = pc.take(old.column("last_written_at"), at)
    older = pc.fill_null(pc.greater(old_time, index.column("last_written_at")), False)
    for name in LAST_COLUMNS:
        column = pc.if_else(older, pc.take(old.column(name), at), index.column(name))
        index = index.set_column(index.column_names.index(name), name, column)
    return index.cast(INDEX_SCHEMA)


def first_per_key(table: pa.Table) -> pa.Table:
    """The first row of each run of one key (``table`` sorted by key first)."""
    keys = table.column("key").to_numpy(zero_copy_only=False)
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return table.filter(pa.array(first))
