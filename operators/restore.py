"""Restore: bitstream -> pixels -> image file under DEST, per row, never outside DEST."""

from __future__ import annotations

import os
import posixpath
import time
from typing import Any

import pyarrow as pa
import torch
from fsspec.core import url_to_fs

from operators.archive import Archive, write_whole
from operators.formats import FORMATS, encode_image, too_large_for
from operators.sources import _retry
from schemas.archive import STATUS_FAILED, STATUS_WRITTEN

class UnsafeKeyError(ValueError):
    """A key that would write outside the destination."""


def dest_relpath(key: str, fmt: str) -> str:
    """The file a key restores to, relative to DEST.

    Keys come from archives, which may come from anyone: absolute paths, ``..`` segments,
    backslashes, drive letters and control characters are refused rather than cleaned.
    """
    if not key or "\x00" in key or "\\" in key or any(ord(c) < 32 for c in key):
        raise UnsafeKeyError(f"unsafe key {key!r}: empty or with control characters or backslashes")
    if key.startswith("/") or (os.name == "nt" and len(key) > 1 and key[1] == ":"):  # "a:b.png" is a POSIX name
        raise UnsafeKeyError(f"unsafe key {key!r}: absolute path")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafeKeyError(f"unsafe key {key!r}: empty, '.' or '..' path segment")
    suffix = FORMATS[fmt][1]
    # Appending (photo.jpg -> photo.jpg.png) keeps two keys that differ only in their
    # extension apart; a key that already has the format's suffix keeps its name.
    return key if key.lower().endswith(suffix) else key + suffix


def claim_paths(keys: list[str], fmt: str, fold_case: bool = False) -> dict[str, str]:
    """The keys among ``keys`` that cannot have a file of their own, each with its reason.

    Two keys can name one file: ``photo`` and ``photo.png`` both restore to ``photo.png``; with
    ``fold_case`` (a destination on a case-insensitive disk) so do ``A.png`` and ``a.png``. Of
    such keys one restores: the key that is its file's name unchanged, else the first in key
    order; the others fail, so that no restored file is silently overwritten by another asset."""
    rels = {key: _safe_relpath(key, fmt) for key in keys}  # unsafe keys fail on their own, later
    name = (lambda rel: rel.lower()) if fold_case else (lambda rel: rel)
    owner: dict[str, str] = {}
    for key in sorted(keys, key=lambda k: (rels[k] != k, k)):
        if rels[key] is not None:
            owner.setdefault(name(rels[key]), key)
    clashes = {}
    for key, rel in rels.items():
        if rel is not None and owner[name(rel)] != key:
            clashes[key] = (f"{key}: restores to the file {rel}, as {owner[name(rel)]!r} does; "
                            "restore it with --key into another folder")  # fmt: skip
    return clashes


def case_insensitive(dest: str) -> bool:
    """Whether ``dest`` is a local folder on a disk that folds case (macOS's and Windows' by
    default): probed with a file, since the platform alone does not say."""
    import tempfile

    if "://" in dest and not dest.startswith("file://"):
        return False  # object stores keep case
    folder = dest.removeprefix("file://")
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(prefix="resulic-Case-", dir=folder) as probe:
        other = os.path.join(folder, os.path.basename(probe.name).swapcase())
        return os.path.exists(other)


def _safe_relpath(key: str, fmt: str) -> str | None:
    try:
        return dest_relpath(key, fmt)
    except UnsafeKeyError:
        return None


def load_bitstreams(batch: pa.Table, archive_url: str, storage_options: dict[str, Any]) -> pa.Table:
    """Index rows -> the bitstreams they point at, reading each needed row group once. A row
    group that cannot be read, or a row the index no longer describes, fails its own rows
    (``load_error``), not the batch."""
    rows = batch.to_pylist()
    found = Archive(archive_url, storage_options).read_assets(rows, columns=["key", "bitstream"])
    streams = [None if isinstance(f, Exception) else f["bitstream"] for f in found]
    errors = [f"{r['key']}: cannot read {r['file']}: {type(f).__name__}: {f}" if isinstance(f, Exception) else None
              for r, f in zip(rows, found)]  # fmt: skip
    return batch.append_column("bitstream", pa.array(streams, pa.large_binary())).append_column(
        "load_error", pa.array(errors, pa.string()))


class Restorer:
    """Decodes streams on ``device`` (the models each stream names, loaded there once) and writes
    image files under ``dest``."""

    def __init__(self, dest: str, fmt: str, storage_options: dict[str, Any] | None = None,
                 threads: int | None = None, env: dict[str, str] | None = None,
                 decoder: str = "auto", steps: int | None = None, device: str = "auto") -> None:  # fmt: skip
        os.environ.update(env or {})
        if threads:
            torch.set_num_threads(threads)
        self.fs, self.root = url_to_fs(dest, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.dest, self.fmt = dest, fmt
        from codec.device import resolve_device

        # resolved once: "cuda" on a machine without one fails here, before any asset
        self.decode_args = {"decoder": decoder, "device": resolve_device(device), **({"steps": steps} if steps else {})}

    def restore_one(self, key: str, status: str, stream: bytes | None) -> tuple[str | None, str | None]:
        """Returns (written path, error). Whatever goes wrong with one key (a damaged stream, a
        write refused, a disk full, a key that clashes with a folder) is that key's error."""
        import codec

        try:
            rel = dest_relpath(key, self.fmt)
        except UnsafeKeyError as e:
            return None, str(e)
        if status != STATUS_WRITTEN or stream is None:
            return None, f"{key}: not restorable (archived with status {status})"
        try:
            head = codec.info(stream)
            refused = too_large_for(self.fmt, head["width"], head["height"])
            if refused:
                return None, f"{key}: {refused}"
            image = codec.decode(stream, **self.decode_args)
        except codec.BitstreamError as e:
            return None, f"{key}: {e}"
        except Exception as e:  # noqa: BLE001 - an unexpected decoder error is this key's, named by its type
            return None, f"{key}: decoding failed: {type(e).__name__}: {e}"
        path = posixpath.join(self.root, rel)
        try:
            data = encode_image(image, self.fmt)
            _retry(lambda: write_whole(self.fs, path, data))
        except Exception as e:  # noqa: BLE001 - as above, for the write
            return None, f"{key}: cannot write {path}: {type(e).__name__}: {e}"
        return self.fs.unstrip_protocol(path) if "://" in self.dest else path, None

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths, errors, seconds = [], [], []
        load_errors = batch.column("load_error").to_pylist() if "load_error" in batch.column_names else [None] * batch.num_rows
        for r, load_error in zip(batch.select(["key", "status", "bitstream"]).to_pylist(), load_errors):
            t0 = time.perf_counter()
            path, err = (None, load_error) if load_error else self.restore_one(r["key"], r["status"], r["bitstream"])
            paths.append(path)
            errors.append(err)
            seconds.append(time.perf_counter() - t0)
        out = batch.select(["key", "source_uri"])
        return out.append_column("path", pa.array(paths, pa.string())).append_column(
            "restore_status", pa.array([STATUS_FAILED if e else "restored" for e in errors], pa.string())
        ).append_column("error", pa.array(errors, pa.string())).append_column("seconds", pa.array(seconds, pa.float64()))


__all__ = ["Restorer", "load_bitstreams", "dest_relpath", "claim_paths", "case_insensitive", "UnsafeKeyError"]
