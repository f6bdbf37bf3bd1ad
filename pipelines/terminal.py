"""What a person sees while a job runs: one progress bar, and Ray's own logs in a file.

Ray Data prints an execution plan, per-operator bars and memory warnings on the driver's
terminal, hundreds of lines for a demo job. Unless ``--verbose``, they go to a log file whose
path the CLI prints; the job's progress bar and summary stay on the terminal.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator, TextIO

from tqdm import tqdm


@contextlib.contextmanager
def stdout_for_results(reserve: bool) -> Iterator[TextIO]:
    """Yields the stream a command's result goes to. With ``reserve`` (``--json``) stdout
    carries the result alone: Python's other writes to ``sys.stdout`` meanwhile go to stderr
    (Ray's driver prints its nodes' error messages there, e.g. a raylet's death). Ray keeps
    printing until it is shut down, so a reserved stdout ends the command's Ray connection
    before it is handed back."""
    results = sys.stdout
    if reserve:
        sys.stdout = sys.stderr
    try:
        yield results
    finally:
        ray = sys.modules.get("ray")
        if reserve and ray is not None and ray.is_initialized():
            ray.shutdown()
        sys.stdout = results


def ray_logs_to_file(directory: str | None = None) -> Path:
    """Send the driver's Ray and Ray Data logging to a file (returned); silence Ray Data's own
    progress bars and plan printout. Call before the job starts."""
    from ray.data import DataContext

    root = Path(directory or os.environ.get("RESULIC_LOG_DIR") or Path(tempfile.gettempdir()) / "resulic-logs")
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{dt.datetime.now():%Y%m%dT%H%M%S}-{os.getpid()}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ray", "ray.data", "ray.serve"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return path


class JobProgress:
    """A progress bar for ``compress(progress=...)``: assets done of those listed so far,
    throughput, failures. Drawn on stderr only when it is a terminal."""

    def __init__(self, enabled: bool | None = None, file: TextIO | None = None) -> None:
        file = file or sys.stderr
        enabled = file.isatty() if enabled is None else enabled
        self.bar = tqdm(desc="assets", unit="img", disable=not enabled, file=file, dynamic_ncols=True)

    def __call__(self, state: dict) -> None:
        done = state["processed"] + state["unchanged"]
        self.bar.total = max(state["listed"], done)
        self.bar.set_postfix_str(f"written {state['processed'] - state['failed']}, unchanged {state['unchanged']}, "
                                 f"failed {state['failed']}", refresh=False)  # fmt: skip
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()
