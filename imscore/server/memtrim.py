"""Give a serving process's memory back to the system once a burst of transactions is over.

A flood of requests leaves each of its server transactions alive for Timer J (32 s over UDP) after
its answer; tens of thousands of them take the resident size up by tens of MiB. When they end, the
allocators hold on to what was freed:

* glibc keeps freed blocks in its heap; ``malloc_trim(0)`` hands its free pages back, wherever they
  are in the heap;
* CPython's small-object allocator (pymalloc, objects up to 512 octets) gives a 1 MiB arena back
  only once every block in it is free, and nothing can trim it. A few blocks allocated during the
  flood that outlive it, scattered over its arenas, keep them all resident (measured after a flood:
  17.3 MB of live blocks in 66 arenas, 41.8 MB of them in wholly free pools, against 16.8 MB in 18
  arenas when idle). Such survivors are the state a flood legitimately updates (failure counters,
  the failure log, caches), the free lists of tuples, floats and dicts, and the retransmission
  cache's entries of ended transactions (it drops them lazily and leaves a few hundred).

So what this module does returns memory only as far as glibc holds it: all of it when the process
runs with ``PYTHONMALLOC=malloc`` (every object from glibc; about 7 % more instructions per
registration), the heap's share otherwise. See :doc:`/benchmarks` ("Memory at scale").

:class:`MemoryReturn` decides when to act from the number of live transactions the server reports
after its timers fired (a few comparisons; nothing runs per request):

* each time the live count has halved since a peak of at least ``peak`` transactions, it trims
  glibc's heap (a few milliseconds, a handful of times per flood);
* once the burst is over — the live count down to 1/:data:`QUIET_SHARE` of the highest it reached,
  or to zero — it *settles*: it runs the release callbacks the server gave (dropping every cache
  entry of an ended transaction), collects, and trims. It settles once when the count falls that
  low and once more if it then reaches zero, so that the flood's last transactions are given back
  too (trimming only on halvings from 2,048 or more, as before, stopped at about 1,000 live ones).
  Settling with transactions still live, it collects the two younger garbage-collector
  generations only (the flood's cycles, without scanning the long-lived heap). Settling at zero,
  it makes a full collection: that also empties the interpreter's free lists (up to 2,000 freed
  tuples of each size, and floats, dicts and lists, each kept in the arena it was allocated in),
  which were what still pinned most of the flood's arenas. Measured after a flood of 40,000
  REGISTERs (``bench/flood_rss_bench.py``, CPython's allocator): 63 MiB 60 s after it with the
  young collection, 51 MiB with a full one, against 47 MiB idle. A full collection costs about
  0.1 µs per tracked object here (113 ms for a million slotted objects, 12 ms for 100,000); it
  runs at most once per burst, when no transaction is left.

Everything it calls degrades to a no-op where glibc is absent (musl, macOS): :func:`malloc_trim`
is then ``None`` and only the release callbacks and the collection run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Final

__all__ = ["QUIET_SHARE", "TRIM_PEAK", "Action", "MemoryReturn", "malloc_trim"]

#: live transactions a peak must reach before memory is given back as they end
TRIM_PEAK: Final = 2048
#: a burst is over once the live transactions are down to this fraction (1/n) of its highest count
QUIET_SHARE: Final = 64


class Action(Enum):
    """What :meth:`MemoryReturn.observe` did."""

    NONE = "none"
    #: glibc's free heap pages given back (the live count halved)
    TRIM = "trim"
    #: the burst is over: caches released, garbage collected (all of it at zero), heap trimmed
    SETTLE = "settle"


def malloc_trim() -> Callable[[], object] | None:
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


def _collect_young() -> object:
    """Collect generations 0 and 1: the flood's cycles, without scanning the long-lived heap."""
    return gc.collect(1)


def _collect_all() -> object:
    """A full collection, which also empties the interpreter's free lists."""
    return gc.collect()


class MemoryReturn:
    """Decides, from the live transaction count after timers fired, when to give memory back.

    :param peak: live transactions a burst must reach before anything is done as they end.
    :param trim: gives glibc's free pages back (default: none; the server passes
        :func:`malloc_trim`'s result).
    :param collect: the garbage collection run when settling with transactions still live
        (default: generations 0 and 1).
    :param collect_all: the one run when settling at zero live transactions (default: a full
        collection).
    :param quiet: the burst is over at ``highest / quiet`` live transactions.
    """

    def __init__(
        self,
        peak: int = TRIM_PEAK,
        trim: Callable[[], object] | None = None,
        collect: Callable[[], object] | None = _collect_young,
        quiet: int = QUIET_SHARE,
        collect_all: Callable[[], object] | None = _collect_all,
    ) -> None:
        if peak < 1 or quiet < 2:
            raise ValueError(f"peak must be >= 1 and quiet >= 2, not {peak} and {quiet}")
        self.minimum = peak
        self.quiet = quiet
        #: the count the next halving is measured from
        self.peak = 0
        #: the highest count since the last settling (0: nothing to settle)
        self.highest = 0
        #: settled above zero: settle once more when the count reaches zero
        self.tail = False
        self.trims = 0
        self.settlements = 0
        self._trim = trim
        self._collect = collect
        self._collect_all = collect_all

    def observe(self, live: int, release: Iterable[Callable[[], object]] = ()) -> Action:
        """Told how many transactions live; ``release`` are run when settling. What it did."""
        if live > self.peak:
            self.peak = live
            if live > self.highest:
                self.highest = live
            return Action.NONE
        if self.highest >= self.minimum and live * self.quiet <= self.highest:
            self._settle(release, live == 0)
            self.tail = live > 0
            self.highest = self.peak = live
            return Action.SETTLE
        if self.tail and live == 0:
            self._settle(release, True)
            self.tail = False
            self.highest = self.peak = 0
            return Action.SETTLE
        if self.peak < self.minimum or 2 * live > self.peak or self._trim is None:
            return Action.NONE
        self._trim()
        self.trims += 1
        self.peak = live
        return Action.TRIM

    def _settle(self, release: Iterable[Callable[[], object]], over: bool) -> None:
        """Release, collect (all of it when ``over``: no transaction left) and trim."""
        for callback in release:
            callback()
        collect = self._collect_all if over else self._collect
        if collect is not None:
            collect()
        if self._trim is not None:
            self._trim()
            self.trims += 1
        self.settlements += 1
