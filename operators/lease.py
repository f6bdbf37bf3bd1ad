"""One writer per archive: a lease object in the archive itself, taken by ``compress``.

A job that writes an archive also clears its staging area and rewrites its index, so two
writers at once destroy each other's work; a scheduler's concurrency setting only guards the
submitting pod, not the archive. The lease lives where the data lives.

Leases are numbered files ``_lease/<n>.json``; the highest number is the current lease. A
writer takes the lease by **creating** the next number, a create that fails when the object
exists: ``os.link`` of a written temporary file on local disks (atomic, and the lease is never
seen half-written), a conditional put (``If-None-Match: *``) on S3. Of two writers racing for
the same number exactly one wins. A live lease is renewed by its holder (its expiry moved on)
every ``ttl / 3``; an expired one (a killed job), or one whose holder process is gone from this
host, is taken over by creating the next number, so
a stalled holder that wakes up sees a higher number on its next renewal and knows it lost the
archive (``on_lost`` is called; ``compress`` then stops the job). Numbers are never reused: a
holder that is done marks its lease released (expired at once) instead of deleting it, so the
highest number stays in ``_lease/`` and the next writer takes the one above; were numbers
reused, a stalled holder could wake up to find "its" number held by a later writer and both
would write. Each lease also carries a random token its holder checks on renewal, which
covers a ``_lease/`` folder deleted by hand. Only atomic create, overwrite, list and delete
are needed. On stores whose create is not atomic (fsspec's generic fallback:
exists-then-write) the lease still refuses a second writer that starts while the first runs,
but not two that start within the same instant.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import posixpath
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Callable

from operators.archive import write_whole

LEASE_DIR = "_lease"
LEASE_TTL = 600.0  # seconds a lease lives without renewal; a killed job frees its archive after it


class LeaseHeld(RuntimeError):
    """Another job holds the archive's lease."""


@dataclass(frozen=True)
class LeaseInfo:
    number: int
    job_id: str
    host: str
    pid: int
    expires: dt.datetime
    token: str | None = None  # the holder's random token (None in a lease written before tokens)
    released: bool = False  # its holder is done: free whatever the clocks say

    def describe(self) -> str:
        return f"job {self.job_id} on {self.host} (pid {self.pid}), lease valid until {self.expires:%Y-%m-%d %H:%M:%S} UTC"


def _dead_here(info: LeaseInfo) -> bool:
    """The holder ran on this host and its process is gone (a killed job, here): its lease is
    void at once. Another host's holder is only judged by its expiry."""
    if info.host != socket.gethostname():
        return False
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class ArchiveLease:
    """The archive's writer lease: ``acquire``, then ``release`` (or use as a context manager)."""

    def __init__(self, archive, job_id: str, ttl: float = LEASE_TTL, on_lost: Callable[[str], None] | None = None) -> None:
        self.archive, self.job_id, self.ttl, self.on_lost = archive, job_id, ttl, on_lost
        self.number: int | None = None
        self.token = uuid.uuid4().hex
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----- storage -----------------------------------------------------------------------
    def _path(self, n: int) -> str:
        return self.archive.path(f"{LEASE_DIR}/{n:012d}.json")

    def _numbers(self) -> list[int]:
        fs, base = self.archive.fs, self.archive.path(LEASE_DIR)
        fs.invalidate_cache(base)
        if not fs.exists(base):
            return []
        names = [posixpath.basename(p) for p in fs.ls(base, detail=False)]
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def _read(self, n: int) -> LeaseInfo | None:
        try:
            doc = json.loads(self.archive.fs.cat_file(self._path(n)))
            return LeaseInfo(n, doc["job_id"], doc["host"], int(doc["pid"]), dt.datetime.fromisoformat(doc["expires"]),
                             doc.get("token"), bool(doc.get("released")))  # fmt: skip
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):  # not a lease (an older writer's cut file): no holder's
            return LeaseInfo(n, "unknown", "unknown", 0, dt.datetime.min.replace(tzinfo=dt.timezone.utc), released=True)

    def _body(self, released: bool = False) -> bytes:
        expires = _now() if released else _now() + dt.timedelta(seconds=self.ttl)
        return json.dumps({"job_id": self.job_id, "host": socket.gethostname(), "pid": os.getpid(),
                           "expires": expires.isoformat(), "token": self.token,
                           **({"released": True} if released else {})}).encode()  # fmt: skip

    def _create(self, n: int) -> bool:
        """Create lease ``n`` if no such object exists; False when another writer has it."""
        fs, path = self.archive.fs, self._path(n)
        body = self._body()
        if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # fails if the name exists: an atomic create of a whole file
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        try:
            fs.pipe_file(path, body, mode="create")  # S3: a put with If-None-Match: *
            return True
        except FileExistsError:
            return False

    # ----- the lease ---------------------------------------------------------------------
    def holder(self) -> LeaseInfo | None:
        """The current lease, if one is live."""
        info = self._top()
        return info if info is not None and not info.released and info.expires > _now() else None

    def acquire(self, force: bool = False) -> None:
        """Take the lease or raise :class:`LeaseHeld` naming its holder; ``force`` takes it even
        from a live holder (an operator who knows that job is dead)."""
        numbers = self._numbers()
        top = numbers[-1] if numbers else 0
        current = self._read(top) if numbers else None
        if current is not None and not current.released and current.expires > _now() and not force and not _dead_here(current):
            raise LeaseHeld(f"{self.archive.url}: another job writes this archive: {current.describe()}. "
                            "Wait for it, or if it is dead, let the lease expire or pass --break-lease")  # fmt: skip
        if not self._create(top + 1):
            winner = self._read(top + 1)
            raise LeaseHeld(f"{self.archive.url}: another job took this archive's lease just now"
                            + (f": {winner.describe()}" if winner else ""))  # fmt: skip
        self.number = top + 1
        for n in numbers:  # older leases are history
            self.archive.fs.rm(self._path(n))
        self._thread = threading.Thread(target=self._renew_loop, name="archive-lease", daemon=True)
        self._thread.start()

    def _top(self) -> LeaseInfo | None:
        numbers = self._numbers()
        return self._read(numbers[-1]) if numbers else None

    def renew(self) -> bool:
        """Move the expiry on; False (and ``on_lost``) when another writer has taken over."""
        top = self._top()
        if top is None or top.number != self.number or top.token != self.token:
            self.lost = "the archive's lease was taken over" + (f" by {top.describe()}" if top else " or removed")
            if self.on_lost:
                self.on_lost(self.lost)
            return False
        write_whole(self.archive.fs, self._path(self.number), self._body())  # never a cut lease, even locally
        return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            if not self.renew():
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        top = self._top() if self.number is not None and self.lost is None else None
        if top is not None and top.number == self.number and top.token == self.token:
            # marked released, not deleted: the number stays taken (see the module's docstring)
            write_whole(self.archive.fs, self._path(self.number), self._body(released=True))
        self.number = None

    def __enter__(self) -> "ArchiveLease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
