"""Where the ``sctp`` transport's sockets come from: Python's standard library, or pysctp.

Both backends make one-to-one style SCTP sockets (``SOCK_STREAM`` + ``IPPROTO_SCTP``) and read and
write one SIP message per SCTP user message. What each adds:

* the standard library (:class:`SctpSockets`, :class:`StdlibWire`): one local address per listener
  (``bind``), one remote address per association (``connect``), every message on stream 0 with
  PPID 0, and no stream or PPID seen on receipt;
* pysctp (:class:`PysctpSockets`, :class:`PysctpWire`), the binding of libsctp: extra local
  addresses on a listener (``sctp_bindx``, multi-homing), several remote addresses for one
  association (``sctp_connectx``), a stream number and PPID per message sent (``sctp_sendmsg``) and
  the stream and PPID of every message read (``sctp_recvmsg``).

:func:`choose_backend` says which one a transport uses, and why, from what was found: whether
pysctp imports and whether the kernel has SCTP. It is a pure function; :func:`load_pysctp` and
:func:`sctp_unavailable` are the two look-ups it is given.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import importlib.metadata
import ipaddress
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from imscore.transport import TransportError

__all__ = [
    "PYSCTP_INSTALL",
    "UNAVAILABLE",
    "Backend",
    "PysctpImport",
    "PysctpSockets",
    "PysctpWire",
    "SctpSockets",
    "Sockets",
    "StdlibWire",
    "Wire",
    "choose_backend",
    "load_pysctp",
    "sctp_unavailable",
]

#: What listening says where the kernel has no SCTP.
UNAVAILABLE = (
    "SCTP is not available: the kernel does not support IPPROTO_SCTP (EPROTONOSUPPORT); "
    "load the sctp kernel module (modprobe sctp) or remove the sctp listener"
)
#: How to install the optional pysctp backend.
PYSCTP_INSTALL = "pip install './plugins/imscore-sctp[pysctp]'"
_NO_PROTOCOL = {errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EAFNOSUPPORT}
IPPROTO_SCTP: int = getattr(socket, "IPPROTO_SCTP", 132)
#: the attributes of pysctp's ``sctp`` module the backend uses
PYSCTP_API = ("sctpsocket_tcp", "FLAG_NOTIFICATION")
Address = tuple[str, int]


def sctp_unavailable() -> str | None:
    """Why this host cannot open an SCTP socket (:data:`UNAVAILABLE`), or ``None`` when it can."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_SCTP).close()
    except OSError as error:
        if error.errno in _NO_PROTOCOL:
            return UNAVAILABLE
        return f"SCTP is not available: {error.strerror or error}"
    return None


# --- which backend ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PysctpImport:
    """What importing pysctp (its module is ``sctp``) gave: the module and version, or the error."""

    module: Any | None
    version: str | None = None
    error: str | None = None


def load_pysctp() -> PysctpImport:
    """Import pysctp's ``sctp`` module, if it is installed."""
    try:
        module = importlib.import_module("sctp")
    except (ImportError, OSError) as error:  # OSError: its C extension or libsctp did not load
        return PysctpImport(None, error=str(error))
    try:
        version: str | None = importlib.metadata.version("pysctp")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return PysctpImport(module, version)


@dataclass(frozen=True)
class Backend:
    """The sockets a transport uses: ``"pysctp"`` or ``"stdlib"``, and why (a log line's words)."""

    name: str
    reason: str
    module: Any | None = None


def choose_backend(found: PysctpImport, unavailable: str | None) -> Backend:
    """Which backend to use: pysctp when it imports and the kernel has SCTP, else the stdlib.

    :param found: what :func:`load_pysctp` gave.
    :param unavailable: what :func:`sctp_unavailable` gave (``None``: the kernel has SCTP).
    """
    module = found.module
    if module is None:
        why = f"pysctp is not installed ({found.error})" if found.error else "pysctp is not installed"
        return Backend(
            "stdlib", f"{why}; multi-homing and per-message stream/PPID need it: {PYSCTP_INSTALL}"
        )
    missing = [name for name in PYSCTP_API if not hasattr(module, name)]
    if missing:
        where = getattr(module, "__file__", None) or repr(module)
        return Backend(
            "stdlib", f"the 'sctp' module at {where} is not pysctp (it has no {', '.join(missing)})"
        )
    named = f"pysctp {found.version}" if found.version else "pysctp"
    if unavailable is not None:
        return Backend("stdlib", f"{named} is installed but not used: {unavailable}")
    return Backend("pysctp", f"{named} is installed and the kernel has SCTP", module)


# --- reading and writing one message ----------------------------------------------------------------
class Wire(Protocol):
    """How one connected message-oriented socket reads and writes one message."""

    #: whether a stream number and PPID travel with each message
    per_message: bool

    def check(self, stream: int, ppid: int) -> None:
        """Raise :class:`TransportError` when a message cannot be sent on this stream with this PPID."""
        ...

    def read(self, sock: Any, size: int) -> tuple[bytes, int, int | None, int | None] | None:
        """One read: (data, ``msg_flags``, stream, PPID), ``None`` for a read that carried no data
        (an SCTP notification). Stream and PPID are ``None`` where the socket does not tell them."""
        ...

    def write(self, sock: Any, data: bytes, stream: int, ppid: int) -> None:
        """Send one message; :class:`BlockingIOError` when the socket is full."""
        ...


def _check_range(stream: int, ppid: int) -> None:
    if not 0 <= stream <= 0xFFFF:
        raise TransportError(f"sctp stream {stream} is out of range (0-65535)")
    if not 0 <= ppid <= 0xFFFFFFFF:
        raise TransportError(f"sctp PPID {ppid} is out of range (0-4294967295)")


class StdlibWire:
    """The standard library's ``recvmsg``/``send``: stream 0 and PPID 0 only, neither seen on receipt."""

    per_message = False

    def check(self, stream: int, ppid: int) -> None:
        """Only stream 0 with PPID 0: the socket module cannot set them per message."""
        _check_range(stream, ppid)
        if stream or ppid:
            raise TransportError(
                f"sending on sctp stream {stream} with PPID {ppid} needs pysctp "
                f"(the standard library sends on stream 0 with PPID 0): {PYSCTP_INSTALL}"
            )

    def read(self, sock: Any, size: int) -> tuple[bytes, int, int | None, int | None] | None:
        """``recvmsg``: data and flags; the stream and PPID are not known."""
        data, _, flags, _ = sock.recvmsg(size)
        return data, flags, None, None

    def write(self, sock: Any, data: bytes, stream: int, ppid: int) -> None:
        """``send``: the kernel's default stream (0) and PPID (0)."""
        sock.send(data)


class PysctpWire:
    """pysctp's ``sctp_send``/``sctp_recv`` (libsctp's ``sctp_sendmsg``/``sctp_recvmsg``).

    pysctp takes the PPID in host order and swaps it to network order itself, but hands it back as
    received, in network order: :meth:`read` swaps it back. pysctp 0.7 passes the swapped value as a
    C ``int``, so a PPID whose network-order value is above 2**31-1 cannot be sent; :meth:`check`
    says so rather than letting it fail later.
    """

    per_message = True

    def __init__(self, module: Any) -> None:
        self._notification = int(module.FLAG_NOTIFICATION)

    def check(self, stream: int, ppid: int) -> None:
        """Streams 0-65535; PPIDs pysctp can pass."""
        _check_range(stream, ppid)
        if socket.htonl(ppid) > 0x7FFFFFFF:
            raise TransportError(
                f"pysctp cannot send PPID {ppid}: in network order it overflows the C int pysctp uses"
            )

    def read(self, sock: Any, size: int) -> tuple[bytes, int, int | None, int | None] | None:
        """``sctp_recv``: data, flags and the stream and PPID of the message; ``None`` for an event."""
        _, flags, data, info = sock.sctp_recv(size)
        if flags & self._notification:
            return None
        return data, flags, int(info.stream), socket.ntohl(int(info.ppid) & 0xFFFFFFFF)

    def write(self, sock: Any, data: bytes, stream: int, ppid: int) -> None:
        """``sctp_send`` on ``stream`` with ``ppid``."""
        sock.sctp_send(data, ppid=ppid, stream=stream)


# --- making sockets -----------------------------------------------------------------------------------
class Sockets(Protocol):
    """Makes the sockets of one transport: the real SCTP ones, or stand-ins in tests.

    A socket is a :class:`socket.socket` or an object that delegates to one (pysctp's
    ``sctpsocket_tcp``): ``fileno``, ``accept``, ``close``, ``setblocking`` and ``proto`` are used.
    """

    #: how the sockets it makes read and write a message
    wire: Wire

    def listener(self, host: str, port: int) -> tuple[Any, Address]:
        """A bound, listening, non-blocking socket at (host, port) and the address it is bound to."""
        ...

    def client(self, remote: Address) -> tuple[Any, Any]:
        """A new non-blocking socket, and the address(es) to connect it to, for ``remote``."""
        ...

    async def connect(self, sock: Any, address: Any) -> None:
        """Connect a socket from :meth:`client` to what :meth:`client` gave; :class:`OSError` if not."""
        ...

    def peer(self, sock: Any) -> Address | None:
        """The (ip, port) a connected socket's peer is known by, or ``None`` when it has none."""
        ...


def family_of(host: str) -> socket.AddressFamily:
    """The address family of an IP literal."""
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def _no_sctp(error: OSError) -> TransportError | None:
    return TransportError(UNAVAILABLE) if error.errno in _NO_PROTOCOL else None


def _sctp_socket(family: socket.AddressFamily) -> socket.socket:
    try:
        sock = socket.socket(family, socket.SOCK_STREAM, IPPROTO_SCTP)
    except OSError as error:
        raise (_no_sctp(error) or error) from None
    sock.setblocking(False)
    return sock


def _peer(sock: Any) -> Address | None:
    name = sock.getpeername()
    return (str(name[0]), int(name[1])) if isinstance(name, tuple) else None


class SctpSockets:
    """The standard library's sockets: one local address per listener, one remote per association."""

    wire: Wire = StdlibWire()

    def listener(self, host: str, port: int) -> tuple[Any, Address]:
        """Bind and listen at an IP literal; :class:`TransportError` (:data:`UNAVAILABLE`) if no SCTP."""
        sock = _sctp_socket(family_of(host))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        name = sock.getsockname()
        return sock, (str(name[0]), int(name[1]))

    def client(self, remote: Address) -> tuple[Any, Any]:
        """An SCTP socket of ``remote``'s family, to connect to ``remote`` itself."""
        return _sctp_socket(family_of(remote[0])), remote

    async def connect(self, sock: Any, address: Any) -> None:
        """``connect`` on the event loop."""
        await asyncio.get_running_loop().sock_connect(sock, address)

    def peer(self, sock: Any) -> Address | None:
        """The peer's primary address."""
        return _peer(sock)


class PysctpSockets:
    """pysctp's sockets: listeners bound to extra local addresses, associations to several remote ones.

    :param module: pysctp's ``sctp`` module.
    :param local_addresses: for a listener's IP, the extra local IPs bound beside it (``sctp_bindx``,
        same port).
    :param peer_addresses: for a remote IP, the other IPs of that peer, given to ``sctp_connectx``
        with the same port when imscore opens an association to it.
    """

    def __init__(
        self,
        module: Any,
        *,
        local_addresses: Mapping[str, Sequence[str]] | None = None,
        peer_addresses: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self._module = module
        self._local = dict(local_addresses or {})
        self._peers = dict(peer_addresses or {})
        self.wire: Wire = PysctpWire(module)

    def _socket(self, family: socket.AddressFamily) -> Any:
        try:
            sock = self._module.sctpsocket_tcp(family)
        except OSError as error:
            raise (_no_sctp(error) or error) from None
        try:
            sock.events.data_io = True  # sctp_recv tells each message's stream and PPID
        except OSError:
            sock.close()
            raise
        return sock

    def listener(self, host: str, port: int) -> tuple[Any, Address]:
        """Bind at ``host``, then ``sctp_bindx`` its extra local addresses on the same port; listen."""
        sock = self._socket(family_of(host))
        extra = tuple(self._local.get(host, ()))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            bound = int(sock.getsockname()[1])
            if extra:
                try:
                    sock.bindx([(address, bound) for address in extra])
                except OSError as error:
                    raise TransportError(
                        f"sctp_bindx of {', '.join(extra)} (port {bound}) failed: "
                        f"{error.strerror or error}"
                    ) from None
            sock.listen(128)
            sock.setblocking(False)
        except (OSError, TransportError):
            sock.close()
            raise
        name = sock.getsockname()
        return sock, (str(name[0]), int(name[1]))

    def client(self, remote: Address) -> tuple[Any, Any]:
        """A pysctp socket and the peer's addresses: ``remote`` first, then its others."""
        sock = self._socket(family_of(remote[0]))
        sock.setblocking(False)
        others = [(address, remote[1]) for address in self._peers.get(remote[0], ())]
        return sock, [remote, *others]

    async def connect(self, sock: Any, address: Any) -> None:
        """``connect`` for one address, ``sctp_connectx`` for several, without blocking the loop."""
        loop = asyncio.get_running_loop()
        raw: socket.socket = sock.sock()
        addresses: list[Address] = list(address)
        if len(addresses) == 1:
            await loop.sock_connect(raw, addresses[0])
            return
        try:
            sock.connectx(addresses)
            return
        except BlockingIOError:  # EINPROGRESS: the INIT is on its way
            pass
        except RuntimeError as error:  # this libsctp has no sctp_connectx
            raise OSError(errno.EOPNOTSUPP, str(error)) from None
        writable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not writable.done():
                writable.set_result(None)

        loop.add_writer(raw.fileno(), ready)
        try:
            await writable
        finally:
            loop.remove_writer(raw.fileno())
        failed = raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if failed:
            raise OSError(failed, os.strerror(failed))

    def peer(self, sock: Any) -> Address | None:
        """The peer's primary address."""
        return _peer(sock)
