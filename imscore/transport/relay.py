"""UDP shared between worker processes: every worker reads the sockets, and hands a datagram that
belongs to another worker to that one.

With ``imscore serve --workers N`` (see :mod:`imscore.server.workers`) the parent process binds the
UDP sockets and forks the workers, which inherit them. Every worker reads every shared socket itself,
as Kamailio's UDP children do (the kernel gives each datagram to one reader), and answers on it, so
answers leave from the address the request came to. Each datagram has one owner, the worker its
Call-ID names (the ``route`` given to :class:`SharedUdp`): a datagram a worker reads for itself goes
into its transports' backlog (:mod:`imscore.transport.backlog`) as any datagram would; one it reads
for another worker goes to that worker's inbox, an ``AF_UNIX`` datagram socket, as a record
(:func:`pack`: the size, the listener's position, the source's port and host, the octets), and the
owner queues it in its backlog as if it had read it from the socket itself. So everything of one
Call-ID meets in one process, whichever worker the kernel woke. The records for one worker that one
read of the sockets finds go in one message (up to :data:`BATCH_OCTETS`): under load a worker reads
many datagrams at a time, and one system call on each side then carries them all.

The inbox of worker ``i`` is one end of a datagram socket pair; every other worker holds the other
end, connected to it, and sends on it. A socket pair's receive queue is bounded by the sender's
send buffer only (not by ``net.unix.max_dgram_qlen``): when it is full, which takes a worker that
stopped reading, the record is dropped and counted, as a full UDP receive buffer would drop it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from .transports import UDP_MAX_DATAGRAM, UDP_READ_BATCH, _SocketEndpoint

if TYPE_CHECKING:
    from .transports import Transports

__all__ = ["BATCH_OCTETS", "HEADER", "INBOX_BUFFER", "SharedEndpoint", "SharedUdp", "pack", "unpack"]

logger = logging.getLogger("imscore.transport")

#: a record's header: the datagram's size, the listener's position, the source port, the length of
#: the source host (ASCII) that follows; then the datagram's octets
HEADER: Final = struct.Struct("!IBHB")
#: octets of records gathered for one worker before they are sent without waiting for the end of
#: the read
BATCH_OCTETS: Final = 60 * 1024
#: the send buffer of an inbox's sending end, and the receive buffer of the inbox (the kernel caps
#: them at net.core.wmem_max and rmem_max)
INBOX_BUFFER: Final = 4 * 1024 * 1024
#: messages read from the inbox per readiness at most (they are only queued here: reading is cheap)
INBOX_BATCH: Final = 64
#: the largest message on an inbox: a batch and the datagram that made it overflow, with headers
INBOX_MESSAGE: Final = BATCH_OCTETS + UDP_MAX_DATAGRAM + 1024


def pack(position: int, data: bytes, source: tuple[str, int]) -> bytes:
    """One handed-over datagram: its size, the listener it came to, its source, its octets."""
    host = source[0].encode("ascii")
    return HEADER.pack(len(data), position, source[1], len(host)) + host + data


def unpack(message: bytes) -> list[tuple[int, bytes, tuple[str, int]]]:
    """``(position, octets, source)`` of every record of a message, in order, up to one that is
    cut short (a message is written whole, so that takes a broken sender)."""
    found = []
    pos, end, header = 0, len(message), HEADER.size
    while end - pos >= header:
        size, position, port, host_size = HEADER.unpack_from(message, pos)
        start = pos + header + host_size
        stop = start + size
        if stop > end:
            break
        host = message[pos + header : start].decode("ascii", "replace")
        found.append((position, message[start:stop], (host, port)))
        pos = stop
    return found


class SharedEndpoint(_SocketEndpoint):
    """A worker's UDP listener on a socket all workers read: a datagram its :class:`SharedUdp`
    routes elsewhere is handed over instead of queued here. Reads only once started
    (:meth:`SharedUdp.start`); sends like any UDP listener of :class:`Transports`.
    """

    def __init__(self, owner: Transports, sock: socket.socket, position: int, shared: SharedUdp) -> None:
        super().__init__(owner, sock)
        self._loop.remove_reader(sock.fileno())  # (nothing is read before the worker serves)
        self._reading = False
        self.position = position
        self._shared = shared

    def start_reading(self) -> None:
        if not self._reading and not self.closed:
            self._reading = True
            self._loop.add_reader(self._sock.fileno(), self._readable)

    def _readable(self) -> None:
        receive = self._sock.recvfrom
        push = self._owner.backlog.push
        shared = self._shared
        route, mine = shared.route, shared.index
        try:
            for count in range(UDP_READ_BATCH):
                try:
                    data, source = receive(UDP_MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):  # (or another worker read it first)
                    if count == 0:
                        shared.empty_wakeups += 1
                    return
                except OSError as exc:  # an ICMP error reported on the socket, for instance
                    self.error_received(exc)
                    return
                worker = route(data)
                if worker == mine:
                    push(self, data, source)
                else:
                    shared.hand_over(worker, self.position, data, source)
        finally:
            shared.send_batches()


class SharedUdp:
    """One worker's part of the shared UDP sockets: its listeners on them, its inbox, and the
    sending ends of the other workers' inboxes.

    :param index: this worker's number.
    :param route: the worker (0 … ``len(outboxes)`` - 1) a datagram's octets belong to.
    :param inbox: this worker's end of its inbox pair (records from the other workers).
    :param outboxes: per worker, the sending end of its inbox (``None`` at ``index``).
    """

    def __init__(
        self,
        index: int,
        route: Callable[[bytes], int],
        inbox: socket.socket,
        outboxes: Sequence[socket.socket | None],
    ) -> None:
        self.index = index
        self.route = route
        self._inbox = inbox
        self._outboxes = list(outboxes)
        self._endpoints: dict[int, SharedEndpoint] = {}
        self._transports: Transports | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        #: per worker, the records gathered for it, and how many
        self._batches = [bytearray() for _ in outboxes]
        self._batched = [0 for _ in outboxes]
        #: datagrams handed to another worker, and records taken from this worker's inbox
        self.handed_over = 0
        self.taken_in = 0
        #: times a shared socket was readable but another worker had read what there was
        self.empty_wakeups = 0
        for sock in (inbox, *[s for s in outboxes if s is not None]):
            sock.setblocking(False)

    def adopt(self, transports: Transports, position: int, udp: socket.socket) -> None:
        """Serve the ``position``-th listener on the shared socket ``udp`` (reading once started)."""
        self._transports = transports
        self._loop = asyncio.get_running_loop()
        endpoint = SharedEndpoint(transports, udp, position, self)
        self._endpoints[position] = endpoint
        host, port = udp.getsockname()[:2]
        transports.adopt_udp(endpoint, (str(host), int(port)))

    def start(self) -> None:
        """Read the shared sockets and the inbox from now on."""
        if self._reading or self._loop is None:
            return
        self._reading = True
        self._loop.add_reader(self._inbox.fileno(), self._inbox_readable)
        for endpoint in self._endpoints.values():
            endpoint.start_reading()

    def stop(self) -> None:
        """Read the inbox no more, and close it (the listeners close with the transports)."""
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._inbox.fileno())
        self._reading = False
        self._inbox.close()
        for sock in self._outboxes:
            if sock is not None:
                sock.close()

    def hand_over(self, worker: int, position: int, data: bytes, source: Any) -> None:
        """Gather a datagram read here for the worker it belongs to (sent by :meth:`send_batches`
        at the end of the read, or at once when its batch is full)."""
        if not 0 <= worker < len(self._outboxes) or self._outboxes[worker] is None:
            return
        batch = self._batches[worker]
        batch += pack(position, data, (source[0], source[1]))
        self._batched[worker] += 1
        if len(batch) >= BATCH_OCTETS:
            self._send(worker)

    def send_batches(self) -> None:
        """Send every worker the records gathered for it."""
        for worker, batch in enumerate(self._batches):
            if batch:
                self._send(worker)

    def _send(self, worker: int) -> None:
        outbox, batch, count = self._outboxes[worker], self._batches[worker], self._batched[worker]
        self._batched[worker] = 0
        message = bytes(batch)
        batch.clear()
        if outbox is None:
            return
        try:
            outbox.send(message)
        except (BlockingIOError, InterruptedError):
            self._dropped(count, f"inbox of worker {worker} full")
            return
        except OSError as exc:  # that worker is gone (its parent stops the server)
            self._dropped(count, f"inbox of worker {worker} failed: {exc.strerror or exc}")
            return
        self.handed_over += count

    def _dropped(self, count: int, why: str) -> None:
        if self._transports is not None:
            for _ in range(count):
                self._transports.drops.record("datagram for another worker dropped", why)

    def _inbox_readable(self) -> None:
        receive = self._inbox.recv
        endpoints = self._endpoints
        assert self._transports is not None
        push = self._transports.backlog.push
        for _ in range(INBOX_BATCH):
            try:
                message = receive(INBOX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.warning("the inbox of worker %d failed: %s", self.index, exc)
                return
            for position, data, source in unpack(message):
                endpoint = endpoints.get(position)
                if endpoint is not None and not endpoint.closed:
                    self.taken_in += 1
                    push(endpoint, data, source)
