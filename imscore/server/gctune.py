"""Garbage-collector and allocator settings for a serving process (``imscore serve``).

A server holds a large, long-lived heap — the subscriber directory, and under load tens of thousands
of live transactions (a non-INVITE server transaction lives 32 s over UDP after its answer) with their
messages. CPython's collector, with its default thresholds (700, 10, 10), collects the youngest
generation every 700 allocations and the whole heap whenever it grew by a quarter; measured on the
REGISTER benchmark, full collections alone took a fifth of the CPU time. Freezing what exists at
start-up (the subscribers, the profile, the plugins) takes it out of every collection, and larger
thresholds make collections rarer. Reference counting frees almost everything anyway: the collector
is only needed for cycles, which the message path does not make in bulk.

Memory freed after a burst is not always given back to the system (glibc keeps free pages in its heap,
CPython keeps an arena while any block in it lives): :func:`return_freed_memory`, which the server
calls after its timers fire, hands the live transaction count to :class:`~.memtrim.MemoryReturn`,
which trims glibc's heap as a flood's transactions end and, once the flood is over, releases the
server's caches of ended transactions, collects (in full once no transaction is left) and trims (see
:mod:`imscore.server.memtrim`; measured with ``bench/flood_rss_bench.py``, see :doc:`/benchmarks`).

Only the ``serve`` command calls :func:`tune_for_serving`; a library user's process (tests, the lab)
keeps its own settings, and :func:`return_freed_memory` does nothing there.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from typing import Final

from .memtrim import TRIM_PEAK, MemoryReturn, malloc_trim

__all__ = ["SERVING_THRESHOLDS", "TRIM_PEAK", "MemoryReturn", "return_freed_memory", "tune_for_serving"]

#: (youngest, middle, oldest) collection thresholds while serving
SERVING_THRESHOLDS: Final = (20_000, 50, 50)

_serving: MemoryReturn | None = None


def tune_for_serving() -> None:
    """Collect once, freeze the survivors (they are never scanned again), raise the thresholds, and
    let :func:`return_freed_memory` give memory back."""
    global _serving
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVING_THRESHOLDS)
    _serving = MemoryReturn(trim=malloc_trim())


def return_freed_memory(live: int, release: Iterable[Callable[[], object]] = ()) -> None:
    """Told the number of live transactions after timers fired: trims as a burst ends, and once it is
    over runs ``release`` (callbacks dropping what the server keeps of ended transactions), collects
    and trims (only in a process tuned by :func:`tune_for_serving`)."""
    if _serving is not None:
        _serving.observe(live, release)
