"""Timing helpers shared by the CPU benchmarks (recurrence_cpu.py, train_cpu.py).

``tune_malloc`` and ``default_threads`` prepare the process; a ``Timer`` times callables
under a wall-clock budget per measurement and turns the results into notes about noisy or
cut-short measurements.
"""
import ctypes
import ctypes.util
import os
import statistics
import time


def tune_malloc() -> bool:
    """Make glibc keep freed multi-MB buffers for reuse instead of returning them to the kernel.

    By default glibc serves large blocks with mmap and gives freed heap tops back to the OS, so
    code that allocates many multi-MB temporaries (autograd of a Python time loop) may touch
    fresh pages on every call; on some (virtualised) machines that made single calls 10-100x
    slower and timings erratic. A fixed 32 MB mmap threshold and a 1 GB trim threshold keep
    such buffers on the heap. Applied to both implementations alike; returns False where it
    could not be applied (not glibc).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 << 20) == 1
        return libc.mallopt(m_trim_threshold, 1 << 30) == 1 and ok
    except (OSError, AttributeError):
        return False


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Timer:
    """Times callables with a wall-clock cap per measurement and remembers which were cut short.

    ``budget_s`` caps each timed measurement (warm-up included), normally set from
    --time-budget: on a slow or busy machine fewer repeats are taken (never fewer than 3)
    instead of running long.
    """

    def __init__(self, budget_s=float("inf")):
        self.budget_s = budget_s
        self.cut_short = []  # (done, asked) of measurements that hit the cap

    def time_fn(self, fn, warmup, repeats):
        """(median, min) seconds of ``repeats`` timed calls after ``warmup`` untimed ones."""
        start = time.perf_counter()
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            if len(times) >= 3 and time.perf_counter() - start > self.budget_s and len(times) < repeats:
                self.cut_short.append((len(times), repeats))
                break
        return statistics.median(times), min(times)

    def notes(self, rows, limit=1.5):
        """Lines flagging timings whose median is far above their minimum (a noisy machine),
        and measurements that ``time_fn`` stopped early because of the budget."""
        return [
            "note: {} varied a lot (median/min = {:.1f}); the machine may be busy, consider rerunning".format(
                name, med / mn)
            for name, med, mn in rows
            if med > limit * mn
        ] + [
            "note: a measurement stopped after {} of {} repeats (--time-budget)".format(done, asked)
            for done, asked in self.cut_short
        ]
