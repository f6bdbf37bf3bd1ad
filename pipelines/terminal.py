"""What a person sees while a job runs: one progress bar, and Ray's own output in a file.

Ray Data prints an execution plan, per-operator bars and memory warnings on the driver's
terminal, hundreds of lines for a demo job. Unless ``--verbose``, they go to a log file whose
path the CLI prints; the job's progress bar and summary stay on the terminal, and ``--json``
results alone on stdout.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Iterator, TextIO

from tqdm import tqdm


def log_file(suffix: str, directory: str | None = None) -> Path:
    """A new file (created, private) for this command's Ray output (``.log``) or error traceback:
    under ``$RESULIC_LOG_DIR``, by default ``resulic-logs-<uid>`` in the temporary folder, named
    by the time and the process id and made unique. The default folder is this user's alone
    (mode 700, not a link): in a shared /tmp a predictable name could be another user's link."""
    if directory or os.environ.get("RESULIC_LOG_DIR"):
        root = Path(directory or os.environ["RESULIC_LOG_DIR"])
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.gettempdir()) / f"resulic-logs-{os.getuid()}"
        root.mkdir(mode=0o700, exist_ok=True)
        info = root.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            root = Path(tempfile.mkdtemp(prefix="resulic-logs-"))  # someone else's, or open to others
    fd, name = tempfile.mkstemp(prefix=f"{dt.datetime.now():%Y%m%dT%H%M%S}-{os.getpid()}-", suffix=suffix, dir=root)
    os.close(fd)
    return Path(name)


def end_ray() -> None:
    """Disconnect from Ray, if connected: its driver prints its nodes' messages until then, and
    a command whose output is redirected only until it ends must not hand Ray the terminal."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def stdout_for_results(reserve: bool) -> Iterator[TextIO]:
    """Yields the stream a command's result goes to. With ``reserve`` (``--json``) stdout
    carries the result alone: Python's other writes to ``sys.stdout`` meanwhile go to stderr
    (Ray's driver prints its nodes' error messages there, e.g. a raylet's death), until the
    command's Ray connection ends with it."""
    results = sys.stdout
    if reserve:
        sys.stdout = sys.stderr
    try:
        yield results
    finally:
        if reserve:
            end_ray()
        sys.stdout = results


@contextlib.contextmanager
def ray_output_to_file(directory: str | None = None) -> Iterator[tuple[Path, TextIO]]:
    """While the job runs, everything Ray says goes to a log file; yields its path and a
    stream on the terminal's stderr (for the progress bar).

    Ray speaks through several channels: Python logging (which ``ray.init`` resets, so a
    handler alone loses its warnings to logging's last-resort stderr handler), prints of its
    nodes' messages, and its C++ core worker writing to file descriptor 2 (e.g. Ray Data's
    "constructor arguments in the object store" error, ray-project/ray#57733). So file
    descriptor 2 itself, and ``sys.stderr``, point at the log while the job runs; Ray Data's
    own progress bars and plan printout are switched off."""
    from ray.data import DataContext

    path = log_file(".log", directory)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    sys.stderr.flush()
    saved_fd, saved_stream = os.dup(2), sys.stderr
    log = open(path, "a", buffering=1)
    os.dup2(log.fileno(), 2)
    sys.stderr = log
    terminal = os.fdopen(os.dup(saved_fd), "w", buffering=1)
    try:
        yield path, terminal
    finally:
        end_ray()
        sys.stderr = saved_stream
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        log.close()
        terminal.close()


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
