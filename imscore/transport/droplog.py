"""Rate-limited logging of what the transports refuse: bad input, dropped datagrams, refused and
closed connections.

Anyone can send broken datagrams or open connections, so one log line per event lets anyone fill
the disk (150,000 broken datagrams in 30 s made 150,000 INFO lines). Each event is logged at DEBUG
with its detail; at INFO there is at most one summary line per interval (10 s by default) that
had events: how many of each kind, with the first event of each kind in that interval as a sample.
The kinds are a small fixed vocabulary (``answered 400``, ``dropped: a response in error``,
``connection refused: per-source limit`` ...), never text taken from the input, so an attacker
cannot make the summary itself grow; past :data:`MAX_KINDS` kinds the rest count as ``other``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Final

__all__ = ["DEFAULT_INTERVAL", "MAX_KINDS", "DropLog"]

#: seconds between two summary lines, by default
DEFAULT_INTERVAL: Final = 10.0
#: distinct kinds in one summary at most (more are counted as ``other``)
MAX_KINDS: Final = 32
#: a sample is cut to this many characters
SAMPLE_LENGTH: Final = 240


class DropLog:
    """Counts events by kind and logs them as one INFO summary per interval (details at DEBUG).

    :param logger: where the lines go.
    :param interval: seconds a summary covers; the summary of an interval is written when it ends
        (a timer on the running event loop), or at the next event after it, or by :meth:`flush`.
    :param clock: the clock intervals are measured with.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        #: events of each kind since this object was made (they only grow)
        self.totals: Counter[str] = Counter()
        self._counts: dict[str, int] = {}
        self._samples: dict[str, str] = {}
        self._started = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def record(self, kind: str, detail: str) -> None:
        """One event: ``kind`` from a fixed vocabulary, ``detail`` what happened (source, reason)."""
        logger = self.logger
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: %s", kind, detail)
        now = self._clock()
        if self._counts and now - self._started >= self.interval:
            self.flush()
        counts = self._counts
        if not counts:
            self._started = now
            self._schedule()
        if kind not in counts and len(counts) >= MAX_KINDS:
            kind = "other"
        if kind in counts:
            counts[kind] += 1
        else:
            counts[kind] = 1
            self._samples[kind] = detail[:SAMPLE_LENGTH]
        self.totals[kind] += 1

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: the next event or flush() writes the summary
            return
        self._timer = loop.call_later(self.interval, self._expired)

    def _expired(self) -> None:
        self._timer = None
        self.flush()

    @property
    def pending(self) -> int:
        """Events counted but not yet written in a summary."""
        return sum(self._counts.values())

    def flush(self) -> None:
        """Write the summary of the events counted so far (nothing when there are none)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        counts, samples = self._counts, self._samples
        if not counts:
            return
        elapsed = max(self._clock() - self._started, 0.0)
        parts = "; ".join(
            f"{kind}: {count} (first: {samples[kind]})"
            for kind, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        )
        self.logger.info(
            "dropped or refused in the last %.1f s: %d event%s; %s",
            elapsed,
            sum(counts.values()),
            "" if sum(counts.values()) == 1 else "s",
            parts,
        )
        self._counts = {}
        self._samples = {}
