"""Overload control: notice when the event loop falls behind, so new work is refused with 503.

A proxy that takes every new call while it cannot keep up collapses: its answers come late, the
callers and devices retransmit, the retransmissions cost more work, and the kernel starts dropping
datagrams. :class:`LoadMonitor` measures how late the loop runs a callback it scheduled every
``interval`` seconds (the loop's lag, smoothed) and says *overloaded* while that lag is above
``max_lag``; the server core then answers new out-of-dialog requests with ``503 Service Unavailable``
and ``Retry-After`` (RFC 3261 §21.5.4), cheaply, and keeps serving transactions and dialogs in
progress (ACK, CANCEL, BYE and other in-dialog requests are never refused).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["LoadMonitor"]


class LoadMonitor:
    """Watches the loop's lag.

    :param max_lag: seconds of smoothed lag above which the server is overloaded (0: never).
    :param interval: how often the loop is probed, seconds.
    :param on_change: called with the new state when it changes (for the log and the core).
    """

    def __init__(
        self,
        max_lag: float,
        *,
        interval: float = 0.05,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.max_lag = max_lag
        self.interval = interval
        self.on_change = on_change
        self.lag = 0.0
        self.overloaded = False
        #: how many times the server went into overload
        self.episodes = 0
        self._handle: asyncio.TimerHandle | None = None
        self._expected = 0.0

    def start(self) -> None:
        if self.max_lag <= 0:
            return
        loop = asyncio.get_running_loop()
        self._expected = loop.time() + self.interval
        self._handle = loop.call_at(self._expected, self._probe)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = max(0.0, now - self._expected)
        # smoothed over about four probes: one slow callback does not trip it, a backlog does
        self.lag += (late - self.lag) * 0.25
        # leave overload only well below the threshold, so the state does not flap
        state = self.lag > self.max_lag if not self.overloaded else self.lag > self.max_lag / 2
        if state != self.overloaded:
            self.overloaded = state
            if state:
                self.episodes += 1
            if self.on_change is not None:
                self.on_change(state)
        self._expected = now + self.interval
        self._handle = loop.call_at(self._expected, self._probe)
