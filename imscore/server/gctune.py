"""Garbage-collector settings for a serving process (``imscore serve``).

A server holds a large, long-lived heap — the subscriber directory, and under load tens of thousands
of live transactions (a non-INVITE server transaction lives 32 s over UDP after its answer) with their
messages. CPython's collector, with its default thresholds (700, 10, 10), collects the youngest
generation every 700 allocations and the whole heap whenever it grew by a quarter; measured on the
REGISTER benchmark, full collections alone took a fifth of the CPU time. Freezing what exists at
start-up (the subscribers, the profile, the plugins) takes it out of every collection, and larger
thresholds make collections rarer. Reference counting frees almost everything anyway: the collector
is only needed for cycles, which the message path does not make in bulk.

Only the ``serve`` command calls :func:`tune_for_serving`; a library user's process (tests, the lab)
keeps its own settings.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["SERVING_THRESHOLDS", "tune_for_serving"]

#: (youngest, middle, oldest) collection thresholds while serving
SERVING_THRESHOLDS: Final = (20_000, 50, 50)


def tune_for_serving() -> None:
    """Collect once, freeze the survivors (they are never scanned again), raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVING_THRESHOLDS)
