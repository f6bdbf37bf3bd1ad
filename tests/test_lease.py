"""One writer per archive: the lease is created atomically (a local hard link, a conditional put
on the moto S3 server), refused to a second writer with its holder named, taken over once
expired, lost to a takeover (the holder is told), and refused by a second `resulic compress`."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from conftest import ROOT, photo_folder
from operators.archive import Archive
from operators.lease import ArchiveLease, LeaseHeld


@pytest.fixture(params=["local", "s3"])
def archive(request, tmp_path):
    if request.param == "local":
        return Archive(str(tmp_path / "arc"))
    request.getfixturevalue("s3_server")
    import s3fs

    bucket = f"lease-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem().mkdir(bucket)
    return Archive(f"s3://{bucket}/arc")


def test_second_writer_is_refused_naming_the_holder(archive):
    first = ArchiveLease(archive, "job-a")
    first.acquire()
    try:
        with pytest.raises(LeaseHeld, match=r"another job writes this archive: job job-a on .* \(pid \d+\)"):
            ArchiveLease(archive, "job-b").acquire()
        assert archive_holder(archive) == "job-a"
    finally:
        first.release()
    with ArchiveLease(archive, "job-b"):  # released: the next job takes it
        assert archive_holder(archive) == "job-b"
    assert ArchiveLease(archive, "x").holder() is None


def test_the_create_is_atomic(archive):
    """Writers racing for the same lease number: exactly one create succeeds."""
    lease = ArchiveLease(archive, "probe")
    wins: list[bool] = []
    barrier = threading.Barrier(6)

    def race(i: int) -> None:
        barrier.wait()
        wins.append(ArchiveLease(archive, f"racer-{i}")._create(7))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 5 + [True]
    assert lease._read(7).job_id.startswith("racer-")


def test_an_expired_lease_is_taken_over_and_its_holder_learns_it(archive):
    lost: list[str] = []
    stale = ArchiveLease(archive, "stale", ttl=0.5, on_lost=lost.append)
    stale.acquire()
    stale._stop.set()  # the holder stalls: no renewal
    stale._thread.join()
    time.sleep(0.6)
    with ArchiveLease(archive, "fresh") as fresh:
        assert fresh.number == stale.number + 1
        assert stale.renew() is False  # it wakes up: a higher lease exists
        assert lost and "taken over by job fresh" in lost[0]
        stale.release()  # does not remove the new holder's lease
        assert archive_holder(archive) == "fresh"


def test_lease_numbers_are_never_reused(archive):
    """A stalls past its expiry; B takes over and finishes; C starts. Were B's lease deleted,
    C would take A's number again and A, waking up, would renew it: two writers."""
    stale = ArchiveLease(archive, "a", ttl=0.5)
    stale.acquire()
    stale._stop.set()
    stale._thread.join()
    time.sleep(0.6)
    with ArchiveLease(archive, "b"):
        pass
    assert archive_holder(archive) is None  # released: nobody holds it
    with ArchiveLease(archive, "c") as third:
        assert third.number == stale.number + 2
        assert stale.renew() is False and "by job c" in stale.lost
        assert third.renew() and archive_holder(archive) == "c"


def test_a_released_lease_is_free_whatever_the_clocks_say(archive, monkeypatch):
    with ArchiveLease(archive, "done"):
        pass
    import operators.lease as lease_module

    real = lease_module._now
    monkeypatch.setattr(lease_module, "_now", lambda: real() - dt.timedelta(minutes=5))  # a host whose clock is behind
    with ArchiveLease(archive, "next") as later:
        assert archive_holder(archive) == "next" and later.number == 2


def test_a_lease_folder_removed_by_hand_does_not_make_two_holders(archive):
    first = ArchiveLease(archive, "first", ttl=30)
    first.acquire()
    first._stop.set()
    first._thread.join()
    archive.fs.rm(archive.path("_lease"), recursive=True)
    with ArchiveLease(archive, "second") as second:
        assert second.number == first.number  # numbering started again, but the token differs
        assert first.renew() is False and "by job second" in first.lost
        first.release()  # lost: leaves the new holder's lease alone
        assert archive_holder(archive) == "second"


def test_a_lease_whose_process_died_on_this_host_is_void(archive):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = ArchiveLease(archive, "killed")
    killed._body = lambda: json.dumps({"job_id": "killed", "host": socket.gethostname(), "pid": dead.pid,
                                       "expires": "2999-01-01T00:00:00+00:00"}).encode()  # fmt: skip
    assert killed._create(1)
    elsewhere = ArchiveLease(archive, "elsewhere")  # the same pid on another host: judged by expiry
    elsewhere._body = lambda: json.dumps({"job_id": "elsewhere", "host": "another-host", "pid": dead.pid,
                                          "expires": "2999-01-01T00:00:00+00:00"}).encode()  # fmt: skip
    with ArchiveLease(archive, "rerun") as rerun:
        assert rerun.number == 2
        assert elsewhere._create(3)
    with pytest.raises(LeaseHeld, match="job elsewhere on another-host"):
        ArchiveLease(archive, "third").acquire()


def test_a_live_lease_is_renewed_and_can_be_broken(archive):
    holder = ArchiveLease(archive, "long", ttl=30)
    holder.acquire()
    before = holder._read(holder.number).expires
    assert holder.renew() and holder._read(holder.number).expires >= before
    breaker = ArchiveLease(archive, "operator")
    breaker.acquire(force=True)  # --break-lease
    assert archive_holder(archive) == "operator" and holder.renew() is False
    breaker.release()
    holder.release()


def archive_holder(archive) -> str | None:
    info = ArchiveLease(archive, "reader").holder()
    return info.job_id if info else None


def test_compress_refuses_an_archive_another_job_writes(tmp_path):
    src = photo_folder(tmp_path / "src", {"a.png": (64, 48)})
    arc = Archive(str(tmp_path / "arc"))
    other = ArchiveLease(arc, "nightly-elsewhere")
    other.acquire()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    try:
        res = subprocess.run([sys.executable, "-m", "pipelines.cli", "compress", str(src), str(tmp_path / "arc")],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert res.returncode != 0
        assert "another job writes this archive: job nightly-elsewhere" in res.stderr
        assert not (tmp_path / "arc" / "data").exists()  # nothing written, staging untouched
    finally:
        other.release()
    assert other.holder() is None


def test_a_job_whose_lease_was_taken_over_writes_nothing_more(ray_local, tmp_path, monkeypatch):
    """Taken over after the last batch (no renewal yet): the job checks before its own last writes."""
    from operators.sink import ArchiveDatasink
    from pipelines.compress import compress

    src = photo_folder(tmp_path / "src", {"a.png": (64, 48), "b.png": (64, 48)})
    arc = Archive(str(tmp_path / "arc"))
    breaker = ArchiveLease(arc, "operator")
    written = ArchiveDatasink.on_write_complete

    def then_taken_over(self, result):
        written(self, result)
        breaker.acquire(force=True)  # --break-lease by another job, while this one finishes

    monkeypatch.setattr(ArchiveDatasink, "on_write_complete", then_taken_over)
    try:
        summary = compress(str(src), str(tmp_path / "arc"), batch_size=1)
        assert summary["aborted"].startswith("LeaseLost: the archive's lease was taken over by job operator")
        assert not (tmp_path / "arc" / "_index").exists()  # the new holder's to write
        assert archive_holder(arc) == "operator"
    finally:
        breaker.release()


def test_a_cut_lease_file_does_not_lock_the_archive(tmp_path):
    arc = Archive(str(tmp_path / "arc"))
    os.makedirs(tmp_path / "arc" / "_lease")
    (tmp_path / "arc" / "_lease" / "000000000001.json").write_text('{"job_id": "old", "ho')  # a writer killed mid-write
    lease = ArchiveLease(arc, "next")
    lease.acquire()
    assert lease.number == 2 and archive_holder(arc) == "next"
    lease.release()
