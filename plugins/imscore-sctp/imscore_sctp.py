"""imscore transport ``sctp``: SIP over SCTP (RFC 4168), as a separately installed plugin.

One SIP message travels as one SCTP user message, so there is no stream framing: a read that ends a
message (``MSG_EOR``) hands it to imscore as it is. A message the kernel delivers in parts (the
partial delivery API, for messages larger than the receive buffer) is put back together before it
is handed on. Messages are sent on stream 0 with the payload protocol identifier 0 (RFC 4168 gives
SIP none) unless told otherwise; any stream and PPID are accepted on receipt.

The sockets are one-to-one style (``SOCK_STREAM`` + ``IPPROTO_SCTP``): one socket per association,
accepted or opened, as for TCP. They come from one of two backends (:mod:`imscore_sctp_sockets`):
the standard library's ``socket`` module, or pysctp where it is installed and the kernel has SCTP;
pysctp adds multi-homing (``sctp_bindx``, ``sctp_connectx``) and a stream and PPID per message. The
first listen logs which backend is used and why.

All of the message logic is written against a connection-mode, message-oriented socket and a small
:class:`Sockets` factory, so it runs unchanged over ``AF_UNIX``/``SOCK_SEQPACKET`` (which keeps
message boundaries as SCTP does) where the kernel has no SCTP; imscore's tests use that.

Where the kernel has no SCTP, listening fails with :data:`UNAVAILABLE`, and the server stops
start-up with that line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imscore_sctp_sockets import (
    IPPROTO_SCTP,
    UNAVAILABLE,
    Backend,
    PysctpImport,
    PysctpSockets,
    PysctpWire,
    SctpSockets,
    Sockets,
    StdlibWire,
    Wire,
    choose_backend,
    load_pysctp,
    sctp_unavailable,
)

from imscore.plugin import hookimpl
from imscore.plugin.types import ProviderRegistry
from imscore.transport import ReceivedCallback, TransportError

__all__ = [
    "LOCAL_ADDRESSES_VARIABLE",
    "PEER_ADDRESSES_VARIABLE",
    "PPID",
    "UNAVAILABLE",
    "Association",
    "Backend",
    "MessageAssembler",
    "MessageEndpoint",
    "PysctpImport",
    "PysctpSockets",
    "PysctpWire",
    "Received",
    "SctpOptions",
    "SctpSockets",
    "SctpTransport",
    "Sockets",
    "StdlibWire",
    "Wire",
    "check_addresses",
    "choose_backend",
    "ims_register_transports",
    "load_pysctp",
    "parse_addresses",
    "sctp_unavailable",
]

logger = logging.getLogger("imscore.transport.sctp")

#: The payload protocol identifier sent by default (0: "unspecified"; RFC 4168 names none).
PPID = 0
#: The environment variable naming extra local addresses of listeners (multi-homing, pysctp).
LOCAL_ADDRESSES_VARIABLE = "IMSCORE_SCTP_LOCAL_ADDRESSES"
#: The environment variable naming the other addresses of multi-homed peers (pysctp).
PEER_ADDRESSES_VARIABLE = "IMSCORE_SCTP_PEER_ADDRESSES"
_Address = tuple[str, int]
_Addresses = Mapping[str, tuple[str, ...]]


# --- options ------------------------------------------------------------------------------------------
def parse_addresses(text: str, *, source: str) -> dict[str, tuple[str, ...]]:
    """Parse ``"IP=IP,IP; IP=IP"``: for each IP on the left, the other IPs of the same host.

    :param source: what the text is called in errors (an environment variable's name).
    :raises TransportError: naming ``source`` and the part that is wrong.
    """
    parsed: dict[str, tuple[str, ...]] = {}
    for part in (piece.strip() for piece in text.replace("\n", ";").split(";")):
        if not part:
            continue
        primary, equals, others = part.partition("=")
        extra = tuple(address.strip() for address in others.split(",") if address.strip())
        if not equals or not extra:
            raise TransportError(f"{source}: {part!r} is not IP=IP[,IP...]")
        parsed[primary.strip()] = extra
    return check_addresses(parsed, source=source)


def check_addresses(
    addresses: Mapping[str, Sequence[str]], *, source: str
) -> dict[str, tuple[str, ...]]:
    """Every key and value an IP literal, each value of its key's address family; the same, as tuples."""
    checked: dict[str, tuple[str, ...]] = {}
    for primary, others in addresses.items():
        try:
            version = ipaddress.ip_address(primary).version
        except ValueError:
            raise TransportError(f"{source}: {primary!r} is not an IP address") from None
        for other in others:
            try:
                other_version = ipaddress.ip_address(other).version
            except ValueError:
                raise TransportError(f"{source}: {other!r} is not an IP address") from None
            if other_version != version:
                raise TransportError(f"{source}: {other} is not of the same address family as {primary}")
        checked[primary] = tuple(others)
    return checked


@dataclass(frozen=True)
class SctpOptions:
    """What the ``sctp`` transport is told beyond the listener's address.

    :param local_addresses: for a listener IP, extra local IPs bound beside it on the same port
        (multi-homing; pysctp's ``sctp_bindx``).
    :param peer_addresses: for a remote IP, the peer's other IPs, tried by ``sctp_connectx`` when
        imscore opens an association to it (pysctp).
    :param stream: the stream messages are sent on unless a send says otherwise.
    :param ppid: the payload protocol identifier sent unless a send says otherwise.
    """

    local_addresses: _Addresses = field(default_factory=dict)
    peer_addresses: _Addresses = field(default_factory=dict)
    stream: int = 0
    ppid: int = PPID

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SctpOptions:
        """The options of :data:`LOCAL_ADDRESSES_VARIABLE` and :data:`PEER_ADDRESSES_VARIABLE`."""
        return cls(
            local_addresses=parse_addresses(
                environ.get(LOCAL_ADDRESSES_VARIABLE, ""), source=LOCAL_ADDRESSES_VARIABLE
            ),
            peer_addresses=parse_addresses(
                environ.get(PEER_ADDRESSES_VARIABLE, ""), source=PEER_ADDRESSES_VARIABLE
            ),
        )

    def needs_pysctp(self) -> str | None:
        """What of these options only pysctp does, or ``None``."""
        wanted = []
        if self.local_addresses:
            wanted.append("extra local addresses (multi-homing)")
        if self.peer_addresses:
            wanted.append("peer addresses for sctp_connectx")
        if self.stream or self.ppid:
            wanted.append(f"sending on stream {self.stream} with PPID {self.ppid}")
        return " and ".join(wanted) or None


@dataclass(frozen=True)
class Received:
    """The stream and payload protocol identifier a message came on (``None``: not told, stdlib)."""

    stream: int | None
    ppid: int | None


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

    :param on_message: called with every whole message read; :attr:`last_received` then holds the
        stream and PPID it came on.
    :param on_closed: called once when the association ends (peer closed, error, :meth:`close`).
    :param wire: how the socket reads and writes a message (the stdlib's ``recvmsg``/``send`` by
        default, pysctp's ``sctp_recv``/``sctp_send`` for its sockets).
    """

    def __init__(
        self,
        sock: Any,
        remote: _Address,
        *,
        limit: int,
        on_message: Callable[[bytes, _Address], None],
        on_closed: Callable[[Association], None],
        wire: Wire | None = None,
    ) -> None:
        self.sock = sock
        self.remote = remote
        self._loop = asyncio.get_running_loop()
        self._on_message = on_message
        self._on_closed = on_closed
        self._wire: Wire = wire if wire is not None else StdlibWire()
        self._assembler = MessageAssembler(use_eor=sock.proto == IPPROTO_SCTP, limit=limit)
        self._read_size = limit + 1
        self._queue: list[tuple[bytes, int, int]] = []
        self._stream: int | None = None
        self._ppid: int | None = None
        #: the stream and PPID of the latest whole message read (``None`` before the first)
        self.last_received: Received | None = None
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
                got = self._wire.read(self.sock, self._read_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                logger.info("sctp association with %s failed: %s", self.remote, error.strerror or error)
                self.close()
                return
            if got is None:  # an SCTP notification, not data
                continue
            data, flags, stream, ppid = got
            if not data and not flags & socket.MSG_EOR:  # the peer closed (SIP sends no empty messages)
                self.close()
                return
            if self._stream is None:  # the first part of a message says its stream and PPID
                self._stream, self._ppid = stream, ppid
            dropped = self._assembler.dropped
            message = self._assembler.feed(data, flags)
            if self._assembler.use_eor and not flags & socket.MSG_EOR:
                continue  # more of this message is coming
            received = Received(self._stream, self._ppid)
            self._stream = self._ppid = None
            if message is not None:
                self.last_received = received
                if received.stream or received.ppid:
                    logger.debug(
                        "sctp message from %s:%d on stream %s with PPID %s",
                        *self.remote,
                        received.stream,
                        received.ppid,
                    )
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

    def send(self, data: bytes, *, stream: int = 0, ppid: int = PPID) -> None:
        """Send one whole message on ``stream`` with ``ppid`` (queued while the socket is full).

        :raises TransportError: the association is closed, the send failed, or the socket cannot
            send on that stream with that PPID (the stdlib sends only stream 0, PPID 0).
        """
        if self.closed:
            raise TransportError(f"sctp association with {self.remote[0]}:{self.remote[1]} is closed")
        self._wire.check(stream, ppid)
        if self._queue:
            self._queue.append((data, stream, ppid))
            return
        try:
            self._wire.write(self.sock, data, stream, ppid)
        except (BlockingIOError, InterruptedError):
            self._queue.append((data, stream, ppid))
            self._loop.add_writer(self.sock.fileno(), self._writable)
        except OSError as error:
            self.close()
            raise TransportError(
                f"sctp send to {self.remote[0]}:{self.remote[1]} failed: {error.strerror or error}"
            ) from error

    def _writable(self) -> None:
        while self._queue and not self.closed:
            try:
                self._wire.write(self.sock, *self._queue[0])
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
    :param stream: the stream :meth:`send` uses unless told; ``ppid`` likewise.
    """

    def __init__(
        self,
        sockets: Sockets,
        listener: Any,
        local: _Address,
        received: ReceivedCallback,
        *,
        limit: int,
        stream: int = 0,
        ppid: int = PPID,
    ) -> None:
        self._sockets = sockets
        self._listener = listener
        self.local = local
        self._received = received
        self._limit = limit
        self.stream = stream
        self.ppid = ppid
        self._loop = asyncio.get_running_loop()
        self._associations: dict[_Address, Association] = {}
        self._connecting: dict[_Address, list[tuple[bytes, int, int]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._anonymous = 0
        self.closed = False
        listener.setblocking(False)
        self._loop.add_reader(listener.fileno(), self._acceptable)

    @property
    def associations(self) -> int:
        """How many associations are live."""
        return len(self._associations)

    def association(self, remote: _Address) -> Association | None:
        """The live association with ``remote`` (its :attr:`~Association.last_received` tells the
        stream and PPID of the latest message from it), or ``None``."""
        return self._associations.get((remote[0], int(remote[1])))

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

    def _adopt(self, sock: Any, remote: _Address) -> Association:
        old = self._associations.get(remote)
        if old is not None:
            old.close()
        association = Association(
            sock,
            remote,
            limit=self._limit,
            on_message=self._received,
            on_closed=self._forget,
            wire=self._sockets.wire,
        )
        self._associations[remote] = association
        return association

    def _forget(self, association: Association) -> None:
        if self._associations.get(association.remote) is association:
            del self._associations[association.remote]

    def send(
        self, data: bytes, remote: _Address, *, stream: int | None = None, ppid: int | None = None
    ) -> None:
        """Send one message to ``remote`` on its association, opening one first when there is none.

        :param stream: the SCTP stream to send on (default :attr:`stream`); ``ppid`` likewise. Other
            than 0 they need the pysctp backend.
        """
        if self.closed:
            raise TransportError(f"sctp endpoint {self.local[0]}:{self.local[1]} is closed")
        stream = self.stream if stream is None else stream
        ppid = self.ppid if ppid is None else ppid
        remote = (remote[0], int(remote[1]))
        association = self._associations.get(remote)
        if association is not None and not association.closed:
            association.send(data, stream=stream, ppid=ppid)
            return
        self._sockets.wire.check(stream, ppid)
        waiting = self._connecting.get(remote)
        if waiting is not None:
            waiting.append((data, stream, ppid))
            return
        try:
            sock, address = self._sockets.client(remote)
        except (OSError, ValueError) as error:
            raise TransportError(f"cannot open an sctp association to {remote}: {error}") from error
        self._connecting[remote] = [(data, stream, ppid)]
        task = self._loop.create_task(self._connect(sock, address, remote))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, sock: Any, address: Any, remote: _Address) -> None:
        try:
            await self._sockets.connect(sock, address)
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
        for data, stream, ppid in self._connecting.pop(remote, []):
            try:
                association.send(data, stream=stream, ppid=ppid)
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


# --- the provider -------------------------------------------------------------------------------------
class SctpTransport:
    """The ``sctp`` transport provider imscore listens with.

    :param sockets: where sockets come from. By default the first listen chooses (and logs why):
        pysctp's (:class:`~imscore_sctp_sockets.PysctpSockets`) when pysctp imports and the kernel
        has SCTP, else the standard library's (:class:`SctpSockets`).
    :param options: the transport's :class:`SctpOptions`, or a callable giving them at the first
        listen (the installed plugin reads them from the environment then).
    :param pysctp: how to import pysctp (:func:`~imscore_sctp_sockets.load_pysctp`), for the choice.
    :param kernel: how to ask whether the kernel has SCTP (:func:`sctp_unavailable`), likewise.
    """

    def __init__(
        self,
        sockets: Sockets | None = None,
        *,
        options: SctpOptions | Callable[[], SctpOptions] | None = None,
        pysctp: Callable[[], PysctpImport] = load_pysctp,
        kernel: Callable[[], str | None] = sctp_unavailable,
    ) -> None:
        self._given = sockets
        self._options = options if options is not None else SctpOptions()
        self._load_pysctp = pysctp
        self._kernel = kernel
        self._sockets: Sockets | None = sockets
        self._settled: SctpOptions | None = None
        self._unavailable: str | None = None
        #: the backend chosen at the first listen (``None`` before it, or when ``sockets`` was given)
        self.backend: Backend | None = None

    @property
    def sockets(self) -> Sockets:
        """The sockets listeners use (the stdlib's until the first listen has chosen)."""
        return self._sockets if self._sockets is not None else SctpSockets()

    def _settle(self) -> tuple[Sockets, SctpOptions]:
        if self._sockets is not None and self._settled is not None:
            return self._sockets, self._settled
        options = self._options() if callable(self._options) else self._options
        local = check_addresses(options.local_addresses, source="local_addresses")
        peers = check_addresses(options.peer_addresses, source="peer_addresses")
        if self._given is not None:
            logger.info("sctp transport: using the sockets given (%s)", type(self._given).__name__)
            sockets = self._given
        else:
            self._unavailable = self._kernel()
            backend = choose_backend(self._load_pysctp(), self._unavailable)
            self.backend = backend
            if backend.name == "pysctp":
                logger.info("sctp transport: using pysctp: %s", backend.reason)
                sockets = PysctpSockets(backend.module, local_addresses=local, peer_addresses=peers)
            else:
                logger.info(
                    "sctp transport: using the standard library socket module: %s", backend.reason
                )
                sockets = SctpSockets()
        self._sockets, self._settled = sockets, options
        return sockets, options

    async def listen(
        self, host: str, port: int, received: ReceivedCallback, *, max_message_size: int
    ) -> MessageEndpoint:
        """Listen at (host, port).

        :raises TransportError: :data:`UNAVAILABLE` where the kernel has no SCTP; options that need
            pysctp where the standard library's sockets are used; bad options.
        """
        sockets, options = self._settle()
        wanted = options.needs_pysctp()
        if wanted is not None and not sockets.wire.per_message:
            if self._unavailable is not None:
                raise TransportError(self._unavailable)  # the kernel, not pysctp, is what is missing
            why = (
                self.backend.reason
                if self.backend is not None
                else f"the sockets given ({type(sockets).__name__}) do not carry them"
            )
            raise TransportError(f"{wanted} need pysctp, which is not used: {why}")
        sockets.wire.check(options.stream, options.ppid)
        listener, local = sockets.listener(host, port)
        return MessageEndpoint(
            sockets,
            listener,
            local,
            received,
            limit=max_message_size,
            stream=options.stream,
            ppid=options.ppid,
        )


@hookimpl
def ims_register_transports(registry: ProviderRegistry[Any]) -> None:
    """Offer the ``sctp`` transport, its options read from the environment at the first listen."""
    registry.add("sctp", SctpTransport(options=lambda: SctpOptions.from_environ(os.environ)))
