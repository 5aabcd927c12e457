"""Overload control: notice when the server falls behind, so new work is refused with 503.

A proxy that takes every new call while it cannot keep up collapses: its answers come late, the
callers and devices retransmit, the retransmissions cost more work, and the kernel starts dropping
datagrams. :class:`LoadMonitor` watches two signs: how late the loop runs a callback it scheduled
every ``interval`` seconds (the loop's lag, smoothed), and how many octets of UDP wait unhandled:
in the kernel's receive queues of the listeners (asked of each socket with ``SO_MEMINFO`` on Linux,
else read from ``/proc/net/udp`` and ``/proc/net/udp6``) and in the transports' backlog
(:mod:`imscore.transport.backlog`; it is handled a batch per loop turn, so a long backlog barely
delays the loop's callbacks: the queue is the sign that matters for UDP). It says *overloaded* while
either is above its limit; the server core then answers new out-of-dialog requests with ``503
Service Unavailable`` and ``Retry-After`` (RFC 3261 §21.5.4), cheaply, and keeps serving
transactions and dialogs in progress (ACK, CANCEL, BYE and other in-dialog requests are never
refused).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Final

__all__ = ["SO_MEMINFO", "LoadMonitor", "socket_receive_queue", "udp_receive_queue"]

#: Linux's socket option for a socket's memory use (``SK_MEMINFO_*``; the receive queue first)
SO_MEMINFO: Final = int(getattr(socket, "SO_MEMINFO", 55))


def udp_receive_queue(ports: set[int]) -> int:
    """Octets waiting in the receive queues of the UDP sockets bound to ``ports`` (Linux
    ``/proc/net/udp`` and ``udp6``; 0 where they cannot be read)."""
    total = 0
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(name, encoding="ascii") as table:
                next(table, None)
                for line in table:
                    fields = line.split()
                    if len(fields) > 4 and int(fields[1].rsplit(":", 1)[1], 16) in ports:
                        total += int(fields[4].split(":", 1)[1], 16)
        except (OSError, ValueError, IndexError):
            continue
    return total


def socket_receive_queue(sockets: Iterable[socket.socket]) -> int | None:
    """Octets waiting in the receive queues of ``sockets``, as the kernel counts them for
    ``/proc/net/udp`` (the first value of Linux's ``SO_MEMINFO``), without reading the whole
    table; ``None`` where a socket cannot tell (another system)."""
    total = 0
    for sock in sockets:
        try:
            info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4)
        except OSError:
            return None
        if len(info) != 4:
            return None
        total += int.from_bytes(info, sys.byteorder)
    return total


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
        backlog: Callable[[], int] | None = None,
        max_backlog: int = 0,
    ) -> None:
        self.max_lag = max_lag
        self.interval = interval
        self.on_change = on_change
        #: octets waiting unread in the listeners' receive queues (``None``: not watched)
        self.backlog = backlog
        self.max_backlog = max_backlog
        self.queued = 0
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
        if self.backlog is not None and self.max_backlog > 0:
            self.queued = self.backlog()
        # leave overload only well below the limits, so the state does not flap
        factor = 0.5 if self.overloaded else 1.0
        state = self.lag > self.max_lag * factor or (
            self.max_backlog > 0 and self.queued > self.max_backlog * factor
        )
        if state != self.overloaded:
            self.overloaded = state
            if state:
                self.episodes += 1
            if self.on_change is not None:
                self.on_change(state)
        self._expected = now + self.interval
        self._handle = loop.call_at(self._expected, self._probe)
