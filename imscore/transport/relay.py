"""UDP shared between worker processes: the parent reads the socket, a worker answers on it.

With ``imscore serve --workers N`` (see :mod:`imscore.server.workers`) the parent process owns every
UDP socket and reads it; each datagram goes to one worker over a stream socket pair, framed by
:func:`pack` as ``size, port, host length, host, octets``. The worker's :class:`RelayedEndpoint` reads
those records, as many as are waiting, and queues each datagram in the transports' backlog
(:mod:`imscore.transport.backlog`) as if it had read it from the socket itself; it sends
straight on the shared UDP socket (inherited across ``fork``), so answers leave from the address the
request came to, and the parent never touches outgoing traffic.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import TYPE_CHECKING, Final

from .flow import TransportError
from .transports import _DatagramEndpoint

if TYPE_CHECKING:
    from .transports import Transports

__all__ = ["HEADER", "RelayedEndpoint", "pack"]

logger = logging.getLogger("imscore.transport")

#: a record's header: datagram size, source port, length of the source host (ASCII) that follows
HEADER: Final = struct.Struct("!IHB")
#: octets read from the relay at a time
READ_SIZE: Final = 65536
#: reads per readiness at most (the datagrams are only queued here: reading is cheap)
READ_CHUNKS: Final = 16


def pack(data: bytes, source: tuple[str, int]) -> bytes:
    """One relayed datagram: its header, the source host, the octets."""
    host = source[0].encode("ascii")
    return HEADER.pack(len(data), source[1], len(host)) + host + data


class RelayedEndpoint(_DatagramEndpoint):
    """A worker's UDP listener: datagrams arrive on ``relay`` (records from the parent), answers
    leave on ``udp`` (the shared socket, never read here).

    :param owner: the worker's transports.
    :param udp: the shared, bound UDP socket (non-blocking).
    :param relay: this worker's end of the stream socket pair from the parent.
    """

    def __init__(self, owner: Transports, udp: socket.socket, relay: socket.socket) -> None:
        super().__init__(owner)
        self._udp = udp
        self._relay = relay
        self.family = udp.family
        self._buffer = bytearray()
        udp.setblocking(False)
        relay.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(relay.fileno(), self._readable)

    def _usable(self) -> bool:
        return not self.closed

    def _write(self, data: bytes, target: tuple[str, int]) -> None:
        try:
            self._udp.sendto(data, target)
        except BlockingIOError:  # the send buffer is full: a datagram lost, as on any UDP socket
            self._owner.drops.record(
                "udp send buffer full", f"udp {self.local}: datagram to {target} dropped"
            )
        except OSError as exc:
            raise TransportError(f"cannot send over udp to {target[0]}: {exc.strerror or exc}") from exc

    def _readable(self) -> None:
        for _ in range(READ_CHUNKS):
            try:
                chunk = self._relay.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.warning("relay from the parent process failed: %s", exc)
                self.close()
                return
            if not chunk:  # the parent is gone: nothing more will come
                logger.warning("the parent process closed the relay of udp %s", self.local)
                self.close()
                return
            self._records(chunk)

    def _records(self, chunk: bytes) -> None:
        """Queue every whole record of what has been read; keep the rest for the next read."""
        buffer = self._buffer
        buffer += chunk
        header = HEADER.size
        pos, end = 0, len(buffer)
        push = self._owner.backlog.push
        while end - pos >= header:
            size, port, host_size = HEADER.unpack_from(buffer, pos)
            start = pos + header + host_size
            stop = start + size
            if stop > end:
                break
            host = buffer[pos + header : start].decode("ascii")
            data = bytes(buffer[start:stop])
            pos = stop
            push(self, data, (host, port))
        del buffer[:pos]

    def close(self) -> None:
        if not self.closed:
            self._loop.remove_reader(self._relay.fileno())
            self._relay.close()
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
