"""art_fast._cpu: the thread choice, the governor's windows and hysteresis (fake clocks and
counters, so every case is exact), the real /proc/stat reader, and bad arguments."""

from __future__ import annotations

import sys

import pytest

from art_fast._cpu import ThreadGovernor, choose_threads, cpu_times


@pytest.mark.parametrize("cores, others, max_threads, want", [
    (2, 0.0, 2, 2),     # idle machine: every core
    (2, 0.3, 2, 2),     # a light decoder worker: still both
    (2, 0.6, 2, 1),     # more than half a core taken: leave it
    (2, 1.0, 2, 1),
    (2, 2.0, 2, 1),     # never below 1
    (2, -0.5, 2, 2),    # a negative estimate (counter skew) counts as 0
    (16, 3.2, 8, 8),    # never above the configured ceiling
    (16, 9.6, 8, 6),
    (4, 1.49, 4, 3),
    (4, 1.51, 4, 2),
])
def test_choose_threads(cores, others, max_threads, want):
    assert choose_threads(cores, others, max_threads) == want


def test_choose_threads_rejects_zero_ceiling():
    with pytest.raises(ValueError, match="max_threads"):
        choose_threads(2, 0.0, 0)


class _Machine:
    """A fake machine of ``ncpu`` cores: each ``advance(dt, own, others)`` moves the wall
    clock by dt seconds, this process's CPU time by own*dt and the machine's busy jiffies by
    (own + others)*dt*100 (USER_HZ 100)."""

    def __init__(self, ncpu: int):
        self.ncpu, self.t, self.own, self.busy, self.total = ncpu, 0.0, 0.0, 0, 0

    def advance(self, dt: float, own: float, others: float) -> None:
        self.t += dt
        self.own += own * dt
        self.busy += round((own + others) * dt * 100)
        self.total += round(self.ncpu * dt * 100)

    def governor(self, max_threads: int, calls: list, **kw) -> ThreadGovernor:
        gov = ThreadGovernor(max_threads, interval=1.0, set_threads=calls.append,
                             read_times=lambda: (self.busy, self.total),
                             read_own=lambda: self.own, clock=lambda: self.t,
                             cores=self.ncpu, **kw)
        gov._ncpu = self.ncpu
        return gov


def test_governor_lowers_after_two_windows_and_raises_again():
    m, calls, changes = _Machine(2), [], []
    gov = m.governor(2, calls, on_change=lambda *a: changes.append(a))
    m.advance(0.5, own=2.0, others=0.0)
    assert gov.tick() == 2 and calls == []          # inside the first window: no reading
    m.advance(0.75, own=1.0, others=1.0)            # a competitor takes a core
    assert gov.tick() == 2 and calls == []          # first proposal of 1: pending
    # the window is [0, 1.25] s: 2 cores busy throughout, own (1.0 + 0.75) / 1.25 = 1.4
    assert gov.last_others == pytest.approx(0.6)
    m.advance(1.0, own=1.0, others=1.0)
    assert gov.tick() == 1 and calls == [1]         # the same proposal twice: applied
    assert changes[0][:2] == (2, 1) and gov.changes == 1
    m.advance(1.0, own=1.0, others=0.0)             # the competitor stops
    assert gov.tick() == 1
    m.advance(1.0, own=1.0, others=0.0)
    assert gov.tick() == 2 and calls == [1, 2]


def test_governor_ignores_one_burst():
    m, calls = _Machine(2), []
    gov = m.governor(2, calls)
    m.advance(1.0, own=1.0, others=1.0)             # one busy window
    gov.tick()
    m.advance(1.0, own=2.0, others=0.0)             # then idle again
    gov.tick()
    m.advance(1.0, own=1.0, others=1.0)
    gov.tick()
    assert calls == [] and gov.threads == 2


def test_governor_never_exceeds_its_ceiling():
    m, calls = _Machine(8), []
    gov = m.governor(3, calls)
    for _ in range(4):
        m.advance(1.0, own=3.0, others=0.0)
        gov.tick()
    assert calls == [] and gov.threads == 3


def test_governor_without_counters_does_nothing():
    calls: list[int] = []
    clock = iter(range(100))
    gov = ThreadGovernor(2, interval=1.0, set_threads=calls.append, read_times=lambda: None,
                         read_own=lambda: 0.0, clock=lambda: float(next(clock)), cores=2)
    for _ in range(5):
        assert gov.tick() == 2
    assert calls == [] and gov.last_others is None


@pytest.mark.parametrize("kw, match", [
    (dict(max_threads=0), "max_threads"),
    (dict(max_threads=True), "max_threads"),
    (dict(max_threads=2.0), "max_threads"),
    (dict(max_threads=2, interval=0), "interval"),
    (dict(max_threads=2, interval=float("nan")), "interval"),
])
def test_governor_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        ThreadGovernor(**kw, set_threads=lambda n: None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_cpu_times_reads_proc_stat():
    a = cpu_times()
    b = cpu_times()
    assert a is not None and b is not None
    assert all(isinstance(x, int) for x in a + b)
    assert 0 <= a[0] <= a[1] and b[1] >= a[1] and b[0] >= a[0]
