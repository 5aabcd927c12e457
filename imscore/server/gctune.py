"""Garbage-collector and allocator settings for a serving process (``imscore serve``).

A server holds a large, long-lived heap — the subscriber directory, and under load tens of thousands
of live transactions (a non-INVITE server transaction lives 32 s over UDP after its answer) with their
messages. CPython's collector, with its default thresholds (700, 10, 10), collects the youngest
generation every 700 allocations and the whole heap whenever it grew by a quarter; measured on the
REGISTER benchmark, full collections alone took a fifth of the CPU time. Freezing what exists at
start-up (the subscribers, the profile, the plugins) takes it out of every collection, and larger
thresholds make collections rarer. Reference counting frees almost everything anyway: the collector
is only needed for cycles, which the message path does not make in bulk.

Memory freed after a burst is not always given back to the system: glibc keeps freed blocks in its
heap unless they are at its top, so a flood's transactions, once ended, leave the resident size where
the flood took it. :func:`return_freed_memory`, which the server calls after its timers fire, asks
glibc (``malloc_trim``) to give back its free pages each time the number of live transactions has
halved since a peak of at least :data:`TRIM_PEAK` (a few milliseconds each time, a handful of times
per flood). Measured with ``bench/flood_rss_bench.py``, see :doc:`/benchmarks`.

Only the ``serve`` command calls :func:`tune_for_serving`; a library user's process (tests, the lab)
keeps its own settings, and :func:`return_freed_memory` does nothing there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from typing import Final

__all__ = ["SERVING_THRESHOLDS", "TRIM_PEAK", "MemoryReturn", "return_freed_memory", "tune_for_serving"]

#: (youngest, middle, oldest) collection thresholds while serving
SERVING_THRESHOLDS: Final = (20_000, 50, 50)
#: live transactions a peak must reach before memory is given back as they end
TRIM_PEAK: Final = 2048


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or ``None`` where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class MemoryReturn:
    """Gives freed heap memory back after bursts: :meth:`observe` is told how many transactions
    live; once they have halved since a peak of at least ``peak`` it trims (and the halved count is
    the next peak). ``trim`` is what gives memory back (default: glibc's ``malloc_trim``)."""

    def __init__(self, peak: int = TRIM_PEAK, trim: Callable[[], object] | None = None) -> None:
        self.minimum = peak
        self.peak = 0
        self.trims = 0
        self._trim = trim

    def observe(self, live: int) -> bool:
        """Whether this call trimmed."""
        if live > self.peak:
            self.peak = live
            return False
        if self.peak < self.minimum or 2 * live > self.peak or self._trim is None:
            return False
        self._trim()
        self.trims += 1
        self.peak = live
        return True


_serving: MemoryReturn | None = None


def tune_for_serving() -> None:
    """Collect once, freeze the survivors (they are never scanned again), raise the thresholds, and
    let :func:`return_freed_memory` give memory back."""
    global _serving
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVING_THRESHOLDS)
    _serving = MemoryReturn(trim=_malloc_trim())


def return_freed_memory(live: int) -> None:
    """Told the number of live transactions after timers fired: trims after a burst ended (only in a
    process tuned by :func:`tune_for_serving`)."""
    if _serving is not None:
        _serving.observe(live)
