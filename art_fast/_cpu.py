"""CPU load readings and the adaptive intra-op thread count of CPU training.

Why: on a machine shared with other work, an OpenMP pool as wide as the machine is the worst
choice. Every parallel region waits for its slowest thread, a descheduled thread stalls the
whole region, and the default wait policy spins the rest while they wait. Measured with
``benchmarks/bench_load.py`` on 2 cores beside a 2-thread matmul job: the demo-sized step
with 2 threads slows down 2.6-3.3x, with 1 thread 1.1x (and 1 thread idle costs ~1.5x).
So the trainer (``train.adapt_threads``) watches how much of the machine other processes
use and sets ``torch.set_num_threads`` to the cores that are left.

:class:`ThreadGovernor` is that loop: it reads ``/proc/stat`` (machine-wide busy time) and
this process's CPU time every ``interval`` seconds, estimates the cores other work used
(``busy - own``), and proposes ``round(cores - others)`` threads, clamped to
``[1, max_threads]``. A change needs the same proposal in two windows in a row, so one
burst does not flip the pool. The data loader's worker processes count as other work: the
compute threads leave them room.

Off Linux (no ``/proc/stat``) it does nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["cpu_times", "choose_threads", "ThreadGovernor"]


def cpu_times() -> tuple[int, int] | None:
    """``(busy, total)`` jiffies over all CPUs of the machine from ``/proc/stat`` (idle and
    iowait count as not busy), or None where it cannot be read (not Linux)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def choose_threads(cores: float, others: float, max_threads: int) -> int:
    """Threads for the cores other work leaves: ``round(cores - others)`` clamped to
    ``[1, max_threads]``.

    Args:
        cores: the cores this process may run on (its affinity).
        others: cores' worth of CPU time the rest of the machine used (>= 0).
        max_threads: the configured ceiling (>= 1).
    """
    if max_threads < 1:
        raise ValueError(f"choose_threads: max_threads must be >= 1, got {max_threads}")
    free = cores - max(0.0, others)
    return max(1, min(max_threads, int(free + 0.5)))


class ThreadGovernor:
    """Keeps ``torch.set_num_threads`` at the cores other work leaves (module docstring).

    Call :meth:`tick` after each training step; it reads the counters only once ``interval``
    seconds have passed, so a tick is a clock read otherwise.

    Args:
        max_threads: the ceiling (the configured ``train.threads``, or torch's default).
        interval: seconds per measurement window.
        set_threads: the setter (default ``torch.set_num_threads``; tests pass a recorder).
        on_change: called with ``(old, new, others)`` when the thread count changes (the
            trainer logs it).
        read_times / read_own / clock / cores: the readers (tests pass fakes): machine
            ``(busy, total)`` jiffies, this process's CPU seconds, wall seconds, usable cores.
    """

    def __init__(
        self,
        max_threads: int,
        interval: float = 2.0,
        set_threads: Callable[[int], None] | None = None,
        on_change: Callable[[int, int, float], None] | None = None,
        read_times: Callable[[], tuple[int, int] | None] = cpu_times,
        read_own: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.perf_counter,
        cores: int | None = None,
    ) -> None:
        if isinstance(max_threads, bool) or not isinstance(max_threads, int) or max_threads < 1:
            raise ValueError(f"ThreadGovernor: max_threads must be an int >= 1, got "
                             f"{max_threads!r}")
        if not interval > 0:
            raise ValueError(f"ThreadGovernor: interval must be > 0 seconds, got {interval!r}")
        if set_threads is None:
            import torch

            set_threads = torch.set_num_threads
        self.max_threads = max_threads
        self.threads = max_threads
        self.interval = float(interval)
        self.changes = 0
        self.last_others: float | None = None
        self._set, self._on_change = set_threads, on_change
        self._read_times, self._read_own, self._clock = read_times, read_own, clock
        self._cores = cores if cores is not None else _usable_cores()
        self._ncpu = os.cpu_count() or self._cores
        self._pending: int | None = None
        self._start = self._snapshot()

    def _snapshot(self) -> tuple[float, float, tuple[int, int] | None]:
        return self._clock(), self._read_own(), self._read_times()

    def tick(self) -> int:
        """End of a step: measure if a window has passed, maybe change the thread count.
        Returns the thread count in force."""
        t0, own0, jif0 = self._start
        now = self._clock()
        if now - t0 < self.interval:
            return self.threads
        snap = self._snapshot()
        self._start = snap
        _, own1, jif1 = snap
        if jif0 is None or jif1 is None or jif1[1] <= jif0[1]:
            return self.threads
        busy_cores = (jif1[0] - jif0[0]) / (jif1[1] - jif0[1]) * self._ncpu
        own_cores = (own1 - own0) / (now - t0)
        others = max(0.0, busy_cores - own_cores)
        self.last_others = others
        want = choose_threads(self._cores, others, self.max_threads)
        if want == self.threads:
            self._pending = None
        elif self._pending == want:  # the same proposal twice in a row
            old, self.threads, self._pending = self.threads, want, None
            self.changes += 1
            self._set(want)
            if self._on_change is not None:
                self._on_change(old, want, others)
        else:
            self._pending = want
        return self.threads
