"""The job's failure policy: one bad asset is a row failure; a faulty job stops, non-zero.

Two ways a job stops early:

- a **systemic** error (a CUDA fault, an endpoint that refuses connections or credentials, a
  missing file the model needs): the operator that meets it raises :class:`SystemicError`
  instead of failing the row, and Ray Data stops the job at once;
- the **failure rate**: after each processed batch, :func:`check_failures` reports its counts
  to one :class:`FailureMonitor` actor; once at least ``min_failures`` assets have failed and
  failures pass ``max_rate`` of the assets processed, the job stops (:class:`JobAborted`), with
  the first distinct reasons.

Rows already committed stay in the archive, and the stopped job commits the failures the
monitor was told of (the sink had not yet written them): the next run counts those as still
failed and goes on past them, where it would otherwise meet them first again and stop again,
night after night. The rest are picked up by the next run.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from schemas.archive import STATUS_FAILED, STATUS_SHARD, STATUS_SKIPPED

MAX_FAILURE_RATE = 0.25  # --max-failure-rate default
MIN_FAILURES = 8  # failures before the rate is judged (a first bad file is no trend)
FIRST_REASONS = 5
KEPT_FAILURES = 10_000  # failed rows the monitor keeps for a stopped job to commit (the rest: the next run's)
# what a kept failure carries to its archived row (no pixels, no stream)
FAILURE_COLUMNS = ("key", "source_uri", "source_fingerprint", "source_sha256", "source_size", "caption",
                   "caption_source", "status", "error")  # fmt: skip
SYSTEMIC_MARKERS = ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error", "NCCL error",
                    "device-side assert")  # fmt: skip


class SystemicError(RuntimeError):
    """A fault of the job (device, endpoint, environment), not of one asset: stops the job."""


class JobAborted(RuntimeError):
    """The job's failure rate passed ``--max-failure-rate``."""


def systemic_reason(exc: BaseException) -> str | None:
    """Why ``exc`` is a fault of the job rather than of the asset it met (None: the asset's).

    Errors of the GPU runtime and of the process's environment (a file or module the model
    needs) fail every asset alike; a bad image, a too-large image or a value out of range is
    the asset's own."""
    text = f"{type(exc).__name__}: {exc}".split("\n")[0][:300]
    if isinstance(exc, (SystemicError, ImportError, PermissionError, FileNotFoundError)):
        return text
    if isinstance(exc, RuntimeError) and any(m in str(exc) for m in SYSTEMIC_MARKERS):
        return text
    return None


class FailureMonitor:
    """Ray actor: the running counts of every batch, and whether the job must stop. The
    counts are also the job's progress (``state``, polled by the driver for its progress bar)."""

    def __init__(self, max_rate: float, min_failures: int = MIN_FAILURES) -> None:
        self.max_rate, self.min_failures = max_rate, min_failures
        self.processed = self.failed = self.unchanged = self.listed = 0
        self.reasons: list[str] = []
        self.failures: list[dict] = []
        self.verdict: str | None = None

    def add_listed(self, n: int) -> None:
        """Assets found by the listing so far (the progress bar's total)."""
        self.listed += n

    def record(self, processed: int, failed: int, reasons: list[str], unchanged: int = 0,
               failures: list[dict] | None = None) -> str | None:  # fmt: skip
        """Add one batch's counts (and its failed rows, kept up to ``KEPT_FAILURES``); returns the
        reason to stop, once there is one."""
        self.failures += (failures or [])[: max(0, KEPT_FAILURES - len(self.failures))]
        self.unchanged += unchanged
        self.processed += processed
        self.failed += failed
        for r in reasons:
            if r not in self.reasons and len(self.reasons) < FIRST_REASONS:
                self.reasons.append(r)
        if self.verdict is None and self.failed >= self.min_failures and self.failed > self.max_rate * self.processed:
            self.verdict = (f"{self.failed} of {self.processed} assets failed (more than --max-failure-rate "
                            f"{self.max_rate:g}); first reasons: " + "; ".join(self.reasons))  # fmt: skip
        return self.verdict

    def stop(self, reason: str) -> None:
        """Stop the job for a reason of the driver's (the archive's lease was lost)."""
        self.verdict = self.verdict or reason

    def kept_failures(self) -> list[dict]:
        return list(self.failures)

    def state(self) -> dict:
        return {"listed": self.listed, "processed": self.processed, "failed": self.failed, "unchanged": self.unchanged,
                "reasons": list(self.reasons), "verdict": self.verdict}  # fmt: skip


def check_failures(batch: pa.Table, monitor) -> pa.Table:
    """Ray Data map_batches step (after the last operator that can fail a row): report this
    batch to ``monitor`` and stop the job when it says so; rows pass unchanged."""
    import ray

    status = batch.column("status")
    skipped = pc.sum(pc.is_in(status, pa.array(STATUS_SKIPPED))).as_py() or 0
    markers = pc.sum(pc.equal(status, STATUS_SHARD)).as_py() or 0  # a shard read to its end: not an asset
    failed_mask = pc.fill_null(pc.equal(status, STATUS_FAILED), False)
    failed = batch.filter(failed_mask)
    reasons = [_reason(r) for r in failed.column("error").to_pylist()]
    rows = failed.select([c for c in FAILURE_COLUMNS if c in failed.column_names]).to_pylist()
    verdict = ray.get(monitor.record.remote(batch.num_rows - skipped - markers, len(reasons), reasons, skipped, rows))
    if verdict:
        raise JobAborted(verdict)
    return batch


def count_listed(batch: pa.Table, monitor) -> pa.Table:
    """Ray Data map_batches step (where rows are assets): tell ``monitor`` how many there are."""
    monitor.add_listed.remote(batch.num_rows - (pc.sum(pc.equal(batch.column("status"), STATUS_SHARD)).as_py() or 0))
    return batch


def _reason(error: str | None) -> str:
    """A row's error without what names the asset (so that equal faults read as one reason)."""
    text = error or "unknown"
    return text.split(": ", 1)[1] if text.startswith(("/", "s3://", "gs://", "file://")) and ": " in text else text


_STOP_IN_TEXT = re.compile(r"operators\.failures\.(JobAborted|SystemicError): ([^\n]*)")


def stop_reason(exc: BaseException) -> str | None:
    """The policy's own reason when ``exc`` (as Ray re-raises it on the driver) is a stop.

    Ray Data re-raises a task's exception as a ``RayTaskError(UserCodeException)`` that carries
    the original only as text (unless ``raise_original_map_exception`` is set, which changes
    every job's errors): the chain is walked, then its text searched."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (JobAborted, SystemicError)):
            return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        if (m := _STOP_IN_TEXT.search(str(exc))) is not None:
            return f"{m[1]}: {m[2].strip()}"
        exc = exc.__cause__ or exc.__context__
    return None
