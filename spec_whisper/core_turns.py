"""Serving stages in separate processes take turns on a CPU's cores.

Triton runs each model of the ensemble in its own process, and each process's torch keeps an
OpenMP team as wide as the machine. When one request's encoder and another's decoder run at once,
two teams share the cores, and every parallel region of either ends at a barrier that waits for a
team mate the scheduler has put aside: measured on 2 cores, a decoder beside a running encoder was
4-5x slower than alone, and the pair took longer than running one after the other. Taking turns
(an exclusive lock on a file both processes open) runs one stage's work at a time on every core,
which is what a GPU does with two processes' kernels anyway. The turns are short so that neither
stage waits long: an encoder layer, or one decoder pass (drafts and verification).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["CoreTurns"]


class CoreTurns:
    """`with turns():` runs its block while no other process holding a `CoreTurns` on the same
    `path` runs one. Without a path every turn is granted at once (a GPU, or one process alone). A
    turn taken inside another is part of it: the cores stay this process's until the outer one ends."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._fd = None if self.path is None else os.open(self.path, os.O_CREAT | os.O_RDWR, 0o666)
        self.taken = 0  # turns taken by this process
        self.waited_s = 0.0  # time spent waiting for them
        self._depth = 0  # turns open now, the outermost holding the lock

    @contextmanager
    def __call__(self) -> Iterator[None]:
        self._acquire()
        try:
            yield
        finally:
            self._release()

    def _acquire(self) -> None:
        self._depth += 1
        if self._fd is None or self._depth > 1:
            return
        began = time.perf_counter()
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.waited_s += time.perf_counter() - began
        self.taken += 1

    def _release(self) -> None:
        self._depth -= 1
        if self._fd is not None and self._depth == 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
