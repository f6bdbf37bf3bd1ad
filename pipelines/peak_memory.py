"""Peak memory of a block of work, sampled in a thread (benchmarks and `resulic eval`)."""

from __future__ import annotations

import threading

import psutil


class PeakMemory:
    """The highest memory use while the block runs: this process's RSS, or with ``tree`` the
    summed USS of this process and its descendants (shared pages such as Ray's object store
    counted once; reading USS walks every process's smaps, so sample it sparingly)."""

    def __init__(self, every: float = 0.02, tree: bool = False) -> None:
        self.every, self.tree, self.peak = every, tree, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        if not self.tree:
            return me.memory_info().rss
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_full_info().uss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakMemory":
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
