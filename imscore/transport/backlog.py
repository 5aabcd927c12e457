"""Datagrams read off the UDP sockets and not yet handled, oldest first.

A UDP server that falls behind a burst holds a queue of requests. While a request waits, its
sender's retransmission timer fires (RFC 3261 §17.1.2.2: T1 = 500 ms, then 1 s, 2 s ... for a
non-INVITE request; Timer A for an INVITE) and copies of it arrive. Left in the kernel's receive
queue, each copy is read, recognised as a retransmission and answered again after the original has
been answered; under a burst such copies are most of what the server reads (SIPp's digest REGISTER
load sends two of them for every request), and the answers to them are more work for the sender
too.

So the sockets are read as soon as they are readable, every datagram waiting, into this backlog;
the server handles the backlog a batch at a time: the first batch in the reader's own turn of the
event loop, right after the read, the rest between later turns (timers, other sockets and the
readers run in between). A datagram whose octets and source equal one still
waiting here is a retransmission of a message nobody has seen yet: it says nothing new, and it is
dropped on arrival (counted in :attr:`duplicates`). The original is handled in its turn and its
answer answers every copy. The same request once handled is not in the backlog any more, so a later
copy is handled as a retransmission by its transaction (the answer resent), as RFC 3261 §17.2
requires. A request that differs in any octet (another branch, CSeq or credentials) is a different
message and waits its turn.

The answers the handlers send during a batch may be held and written together when the batch is
done (``begin`` and ``end``: the transports hold UDP responses so, see
:meth:`imscore.transport.Transports.send_response`).

The backlog holds at most ``limit`` octets; beyond that a datagram is dropped, as a full kernel queue
would drop it (counted in :attr:`dropped`). The server's overload control (see
:mod:`imscore.server.overload`) reads :attr:`octets`, so it sees the backlog here as it sees a
kernel queue.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

__all__ = ["BATCH", "LIMIT", "DatagramBacklog"]

logger = logging.getLogger("imscore.transport")

#: datagrams handled per turn of the event loop
BATCH: Final = 32
#: octets the backlog holds at most
LIMIT: Final = 32 * 1024 * 1024

E = TypeVar("E")
Source = Any  # the socket address a datagram came from: (host, port) or (host, port, flow, scope)


class DatagramBacklog(Generic[E]):
    """Datagrams waiting to be handled, each with the endpoint that read it and its source.

    :param handle: called with ``(endpoint, octets, source)`` for each datagram, oldest first.
    :param batch: datagrams handled per turn of the event loop.
    :param limit: octets held at most.
    :param begin: called before a batch is handled; ``end`` after it, also when a handler raised.
    """

    def __init__(
        self,
        handle: Callable[[E, bytes, Source], None],
        *,
        batch: int = BATCH,
        limit: int = LIMIT,
        begin: Callable[[], None] | None = None,
        end: Callable[[], None] | None = None,
    ) -> None:
        self._handle = handle
        self._begin = begin
        self._end = end
        self.batch = batch
        self.limit = limit
        self._queue: collections.deque[tuple[E, bytes, Source]] = collections.deque()
        #: (octets, source) of every datagram waiting
        self._waiting: set[tuple[bytes, Source]] = set()
        self._scheduled = False
        #: octets waiting
        self.octets = 0
        #: datagrams dropped on arrival because an equal one from the same source was waiting
        self.duplicates = 0
        #: datagrams dropped because :attr:`limit` octets were waiting
        self.dropped = 0
        #: when set, nothing is dropped as a duplicate (a capture must see every datagram)
        self.keep_duplicates = False

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, endpoint: E, data: bytes, source: Source, *, schedule: bool = True) -> None:
        """Queue one datagram (or drop it, see the module's text); the handling is scheduled on
        the running event loop, unless ``schedule`` is false: then the caller calls
        :meth:`handle_now` once it has pushed what it read."""
        key = (data, source)
        if key in self._waiting and not self.keep_duplicates:
            self.duplicates += 1
            return
        size = len(data)
        if self.octets + size > self.limit:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10000 == 0:
                logger.warning(
                    "udp backlog full (%d octets waiting): %d datagrams dropped so far",
                    self.octets,
                    self.dropped,
                )
            return
        self._waiting.add(key)
        self._queue.append((endpoint, data, source))
        self.octets += size
        if schedule and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._run)

    def handle_now(self) -> None:
        """Handle a batch of the datagrams waiting now, in the caller's turn of the event loop
        (a reader that has just pushed what it read); the rest is scheduled for later turns, as
        after a scheduled batch. When a batch is scheduled already, the datagrams wait for it
        (their order and the batches between turns stay as they were)."""
        if not self._scheduled and self._queue:
            self._scheduled = True
            self._run()

    def _run(self) -> None:
        self._scheduled = False
        queue, waiting, handle = self._queue, self._waiting, self._handle
        if self._begin is not None:
            self._begin()
        try:
            for _ in range(self.batch):
                if not queue:  # (cleared by a handler closing the transports, for instance)
                    break
                endpoint, data, source = queue.popleft()
                waiting.discard((data, source))
                self.octets -= len(data)
                handle(endpoint, data, source)
        finally:
            try:
                if self._end is not None:
                    self._end()
            finally:
                if queue and not self._scheduled:
                    self._scheduled = True
                    asyncio.get_running_loop().call_soon(self._run)

    def clear(self) -> None:
        """Forget every datagram waiting (the transports are closing)."""
        self._queue.clear()
        self._waiting.clear()
        self.octets = 0
