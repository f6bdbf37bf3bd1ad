"""`resulic repair`: rebuild an archive's index from its data files.

The index is derived data (``operators.archive``); repair reads every committed data file,
moves those that cannot be read to ``_quarantine/`` with a note of why, and writes the index
again. It holds the archive's writer lease, as a compress job does.
"""

from __future__ import annotations

from typing import Any

from operators.archive import Archive, new_job_id
from operators.lease import ArchiveLease
from pipelines.compact import recover


def repair(archive: str, storage_options: dict[str, Any] | None = None, break_lease: bool = False) -> dict:
    """Returns what it found: data files, rows, keys, and the files it quarantined."""
    arc = Archive(archive, storage_options)
    arc.meta()  # refuses foreign archives and unknown versions
    lease = ArchiveLease(arc, "repair-" + new_job_id())
    lease.acquire(force=break_lease)
    try:
        recover(arc)  # a compaction killed half-way is finished or undone first
        return arc.repair()
    finally:
        lease.release()


__all__ = ["repair"]
