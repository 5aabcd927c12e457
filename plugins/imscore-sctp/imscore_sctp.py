"""imscore transport ``sctp``: SIP over SCTP (RFC 4168), as a separately installed plugin.

One SIP message travels as one SCTP user message, so there is no stream framing: a read that ends a
message (``MSG_EOR``) hands it to imscore as it is. A message the kernel delivers in parts (the
partial delivery API, for messages larger than the receive buffer) is put back together before it
is handed on. Messages are sent on stream 0 with the payload protocol identifier 0 (RFC 4168 gives
SIP none); any stream and PPID are accepted on receipt.

The sockets are one-to-one style (``SOCK_STREAM`` + ``IPPROTO_SCTP``): one socket per association,
accepted or opened, as for TCP. All of the message logic is written against a connection-mode,
message-oriented socket and a small :class:`Sockets` factory, so it runs unchanged over
``AF_UNIX``/``SOCK_SEQPACKET`` (which keeps message boundaries as SCTP does) where the kernel has no
SCTP; imscore's tests use that.

Where the kernel has no SCTP, listening fails with :data:`UNAVAILABLE`, and the server stops
start-up with that line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any, Protocol

from imscore.plugin import hookimpl
from imscore.plugin.types import ProviderRegistry
from imscore.transport import ReceivedCallback, TransportError

__all__ = [
    "PPID",
    "UNAVAILABLE",
    "Association",
    "MessageAssembler",
    "MessageEndpoint",
    "SctpSockets",
    "SctpTransport",
    "Sockets",
    "ims_register_transports",
    "sctp_unavailable",
]

logger = logging.getLogger("imscore.transport.sctp")

#: The payload protocol identifier sent with every message (0: "unspecified"; RFC 4168 names none).
PPID = 0
#: What listening says where the kernel has no SCTP.
UNAVAILABLE = (
    "SCTP is not available: the kernel does not support IPPROTO_SCTP (EPROTONOSUPPORT); "
    "load the sctp kernel module (modprobe sctp) or remove the sctp listener"
)
_NO_PROTOCOL = {errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EAFNOSUPPORT}
_IPPROTO_SCTP: int = getattr(socket, "IPPROTO_SCTP", 132)
_Address = tuple[str, int]


def sctp_unavailable() -> str | None:
    """Why this host cannot open an SCTP socket (:data:`UNAVAILABLE`), or ``None`` when it can."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, _IPPROTO_SCTP).close()
    except OSError as error:
        if error.errno in _NO_PROTOCOL:
            return UNAVAILABLE
        return f"SCTP is not available: {error.strerror or error}"
    return None


# --- sockets ------------------------------------------------------------------------------------------
class Sockets(Protocol):
    """Makes the sockets of one transport: the real SCTP ones, or stand-ins in tests."""

    def listener(self, host: str, port: int) -> tuple[socket.socket, _Address]:
        """A bound, listening, non-blocking socket at (host, port) and the address it is bound to."""
        ...

    def client(self, remote: _Address) -> tuple[socket.socket, Any]:
        """A new non-blocking socket, and the address to connect it to, for an association to ``remote``.
        """
        ...

    def peer(self, sock: socket.socket) -> _Address | None:
        """The (ip, port) a connected socket's peer is known by, or ``None`` when it has none."""
        ...


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def _sctp_socket(family: socket.AddressFamily) -> socket.socket:
    try:
        sock = socket.socket(family, socket.SOCK_STREAM, _IPPROTO_SCTP)
    except OSError as error:
        if error.errno in _NO_PROTOCOL:
            raise TransportError(UNAVAILABLE) from None
        raise
    sock.setblocking(False)
    return sock


class SctpSockets:
    """One-to-one style SCTP sockets (``SOCK_STREAM``, ``IPPROTO_SCTP``) for IPv4 and IPv6."""

    def listener(self, host: str, port: int) -> tuple[socket.socket, _Address]:
        """Bind and listen at an IP literal; :class:`TransportError` (:data:`UNAVAILABLE`) if no SCTP."""
        sock = _sctp_socket(_family(host))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        name = sock.getsockname()
        return sock, (str(name[0]), int(name[1]))

    def client(self, remote: _Address) -> tuple[socket.socket, Any]:
        """An SCTP socket of ``remote``'s family, to connect to ``remote`` itself."""
        return _sctp_socket(_family(remote[0])), remote

    def peer(self, sock: socket.socket) -> _Address | None:
        """The peer's primary address."""
        name = sock.getpeername()
        return (str(name[0]), int(name[1])) if isinstance(name, tuple) else None


# --- messages -----------------------------------------------------------------------------------------
class MessageAssembler:
    """Puts one message together from the reads of a message-oriented socket.

    :param use_eor: the socket marks the end of each message with ``MSG_EOR`` and may deliver one
        in parts (SCTP); when false every read is one whole message (``SOCK_SEQPACKET``).
    :param limit: the largest message, in octets; a longer one is dropped whole.
    """

    def __init__(self, *, use_eor: bool, limit: int) -> None:
        self.use_eor = use_eor
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._too_big = False
        #: messages dropped for being longer than ``limit``
        self.dropped = 0

    def feed(self, data: bytes, flags: int) -> bytes | None:
        """Take one read (its data and ``msg_flags``); the whole message once it is complete."""
        if flags & socket.MSG_TRUNC:  # the rest of a too long message was discarded by the kernel
            self._too_big = True
        self._size += len(data)
        if self._size > self.limit:
            self._too_big = True
            self._parts.clear()
        elif not self._too_big:
            self._parts.append(data)
        if self.use_eor and not flags & socket.MSG_EOR:
            return None  # more of this message is coming
        message, too_big = b"".join(self._parts), self._too_big
        self._parts, self._size, self._too_big = [], 0, False
        if too_big:
            self.dropped += 1
            return None
        return message


class Association:
    """One connected message-oriented socket (an SCTP association) on the event loop.

    :param on_message: called with every whole message read.
    :param on_closed: called once when the association ends (peer closed, error, :meth:`close`).
    """

    def __init__(
        self,
        sock: socket.socket,
        remote: _Address,
        *,
        limit: int,
        on_message: Callable[[bytes, _Address], None],
        on_closed: Callable[[Association], None],
    ) -> None:
        self.sock = sock
        self.remote = remote
        self._loop = asyncio.get_running_loop()
        self._on_message = on_message
        self._on_closed = on_closed
        self._assembler = MessageAssembler(use_eor=sock.proto == _IPPROTO_SCTP, limit=limit)
        self._read_size = limit + 1
        self._queue: list[bytes] = []
        self.closed = False
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._readable)

    @property
    def dropped(self) -> int:
        """Messages dropped for being too long."""
        return self._assembler.dropped

    def _readable(self) -> None:
        while not self.closed:
            try:
                data, _, flags, _ = self.sock.recvmsg(self._read_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                logger.info("sctp association with %s failed: %s", self.remote, error.strerror or error)
                self.close()
                return
            if not data and not flags & socket.MSG_EOR:  # the peer closed (SIP sends no empty messages)
                self.close()
                return
            dropped = self._assembler.dropped
            message = self._assembler.feed(data, flags)
            if message is not None:
                try:
                    self._on_message(message, self.remote)
                except Exception:
                    logger.exception("sctp message from %s: the receiver failed", self.remote)
            elif self._assembler.dropped > dropped:
                logger.info(
                    "sctp message from %s:%d dropped: longer than %d octets",
                    *self.remote,
                    self._assembler.limit,
                )

    def send(self, data: bytes) -> None:
        """Send one whole message (queued while the socket is full)."""
        if self.closed:
            raise TransportError(f"sctp association with {self.remote[0]}:{self.remote[1]} is closed")
        if self._queue:
            self._queue.append(data)
            return
        try:
            self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            self._queue.append(data)
            self._loop.add_writer(self.sock.fileno(), self._writable)
        except OSError as error:
            self.close()
            raise TransportError(
                f"sctp send to {self.remote[0]}:{self.remote[1]} failed: {error.strerror or error}"
            ) from error

    def _writable(self) -> None:
        while self._queue and not self.closed:
            try:
                self.sock.send(self._queue[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                logger.info("sctp send to %s failed: %s", self.remote, error.strerror or error)
                self.close()
                return
            self._queue.pop(0)
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        """End the association (idempotent)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self.sock.fileno())
            self._loop.remove_writer(self.sock.fileno())
        self.sock.close()
        self._on_closed(self)


class MessageEndpoint:
    """A listening socket and its associations, accepted or opened: an imscore transport endpoint.

    :param received: imscore's callback, called once per whole message with the peer's address.
    """

    def __init__(
        self,
        sockets: Sockets,
        listener: socket.socket,
        local: _Address,
        received: ReceivedCallback,
        *,
        limit: int,
    ) -> None:
        self._sockets = sockets
        self._listener = listener
        self.local = local
        self._received = received
        self._limit = limit
        self._loop = asyncio.get_running_loop()
        self._associations: dict[_Address, Association] = {}
        self._connecting: dict[_Address, list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._anonymous = 0
        self.closed = False
        listener.setblocking(False)
        self._loop.add_reader(listener.fileno(), self._acceptable)

    @property
    def associations(self) -> int:
        """How many associations are live."""
        return len(self._associations)

    def _acceptable(self) -> None:
        while not self.closed:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                logger.info("sctp accept at %s failed: %s", self.local, error.strerror or error)
                return
            remote = self._sockets.peer(sock)
            if remote is None:  # an unnamed AF_UNIX peer: known as 0.0.0.0 and a number of its own
                self._anonymous = self._anonymous % 65535 + 1
                remote = ("0.0.0.0", self._anonymous)
            self._adopt(sock, remote)
            logger.debug("sctp association from %s:%d", *remote)

    def _adopt(self, sock: socket.socket, remote: _Address) -> Association:
        old = self._associations.get(remote)
        if old is not None:
            old.close()
        association = Association(
            sock, remote, limit=self._limit, on_message=self._received, on_closed=self._forget
        )
        self._associations[remote] = association
        return association

    def _forget(self, association: Association) -> None:
        if self._associations.get(association.remote) is association:
            del self._associations[association.remote]

    def send(self, data: bytes, remote: _Address) -> None:
        """Send one message to ``remote`` on its association, opening one first when there is none."""
        if self.closed:
            raise TransportError(f"sctp endpoint {self.local[0]}:{self.local[1]} is closed")
        remote = (remote[0], int(remote[1]))
        association = self._associations.get(remote)
        if association is not None and not association.closed:
            association.send(data)
            return
        waiting = self._connecting.get(remote)
        if waiting is not None:
            waiting.append(data)
            return
        try:
            sock, address = self._sockets.client(remote)
        except (OSError, ValueError) as error:
            raise TransportError(f"cannot open an sctp association to {remote}: {error}") from error
        self._connecting[remote] = [data]
        task = self._loop.create_task(self._connect(sock, address, remote))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, sock: socket.socket, address: Any, remote: _Address) -> None:
        try:
            await self._loop.sock_connect(sock, address)
        except OSError as error:
            sock.close()
            lost = self._connecting.pop(remote, [])
            logger.info(
                "sctp association to %s:%d failed: %s; %d message(s) not sent",
                remote[0],
                remote[1],
                error.strerror or error,
                len(lost),
            )
            return
        except asyncio.CancelledError:
            sock.close()
            raise
        association = self._adopt(sock, remote)
        for data in self._connecting.pop(remote, []):
            try:
                association.send(data)
            except TransportError as error:
                logger.info("%s", error)
                return

    async def close(self) -> None:
        """Stop listening, close every association, give up associations still being opened."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._listener.fileno())
        self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for association in list(self._associations.values()):
            association.close()


class SctpTransport:
    """The ``sctp`` transport provider imscore listens with.

    :param sockets: where sockets come from; the default is real SCTP (:class:`SctpSockets`).
    """

    def __init__(self, sockets: Sockets | None = None) -> None:
        self.sockets: Sockets = sockets if sockets is not None else SctpSockets()

    async def listen(
        self, host: str, port: int, received: ReceivedCallback, *, max_message_size: int
    ) -> MessageEndpoint:
        """Listen at (host, port).

        :raises TransportError: :data:`UNAVAILABLE` where the kernel has no SCTP.
        """
        listener, local = self.sockets.listener(host, port)
        return MessageEndpoint(self.sockets, listener, local, received, limit=max_message_size)


@hookimpl
def ims_register_transports(registry: ProviderRegistry[Any]) -> None:
    """Offer the ``sctp`` transport."""
    registry.add("sctp", SctpTransport())
