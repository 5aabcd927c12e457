"""Diameter over SCTP (RFC 6733 §2.1): the sockets, and what is said where the kernel has none.

A Diameter node here uses one-to-one style SCTP sockets (``SOCK_STREAM`` + ``IPPROTO_SCTP``,
RFC 6458 §4): one association per socket, read and written as a byte stream. They are handed to
asyncio's streams exactly as a TCP socket is, so :class:`~imscore.diameter.framer.StreamFramer`
cuts messages by their length field on both transports. Every message goes on stream 0 with PPID 0
(no Diameter PPID is registered with IANA for clear text; 46 is DTLS/SCTP, not offered), the
association has one local and one remote address (no multi-homing), and nothing in CER/CEA differs
from TCP (Host-IP-Address is the association's local address).

Where the kernel has no SCTP, making the socket fails with EPROTONOSUPPORT (or ESOCKTNOSUPPORT,
EAFNOSUPPORT); :class:`SctpSockets` raises :class:`SctpUnavailableError` with a sentence that says
so (:func:`unavailable_reason`). The socket factory is an argument of the server and the client
(:class:`Sockets`), so their SCTP path can be exercised over AF_UNIX sockets on such a kernel.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Final, Protocol

__all__ = [
    "IPPROTO_SCTP",
    "TRANSPORTS",
    "SctpSockets",
    "SctpUnavailableError",
    "Sockets",
    "sctp_unavailable",
    "unavailable_reason",
]

IPPROTO_SCTP: Final[int] = getattr(socket, "IPPROTO_SCTP", 132)
#: the transports a Diameter listener or a ``cx://`` URL may name
TRANSPORTS: Final = ("tcp", "sctp")
#: the errors that mean "this kernel has no SCTP" (not "this address is wrong")
_NO_PROTOCOL: Final = frozenset({errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EAFNOSUPPORT})
#: listen() backlog of a Diameter listener
_BACKLOG: Final = 64


class SctpUnavailableError(OSError):
    """The host cannot make an SCTP socket; ``str()`` is the sentence for the user."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "SCTP not available"


def unavailable_reason(error: OSError) -> str:
    """What an :class:`OSError` from ``socket(..., IPPROTO_SCTP)`` means, as one sentence starting
    ``SCTP not available:``."""
    if error.errno in _NO_PROTOCOL:
        name = errno.errorcode.get(error.errno or 0, str(error.errno))
        return (
            f"SCTP not available: the kernel does not support IPPROTO_SCTP ({name}); "
            "load the sctp kernel module (modprobe sctp) or use tcp"
        )
    return f"SCTP not available: {error.strerror or error}"


def sctp_unavailable(family: int = socket.AF_INET) -> str | None:
    """Why this host cannot make an SCTP socket of ``family`` (:func:`unavailable_reason`), or
    ``None`` when it can."""
    try:
        socket.socket(family, socket.SOCK_STREAM, IPPROTO_SCTP).close()
    except OSError as error:
        return unavailable_reason(error)
    return None


class Sockets(Protocol):
    """Where a Diameter node's stream sockets come from (SCTP here; AF_UNIX in tests)."""

    def listener(self, host: str, port: int) -> socket.socket:
        """A socket bound to ``host``:``port`` and listening, non-blocking.

        :raises OSError: it cannot be made or bound (:class:`SctpUnavailableError` for no SCTP).
        """
        ...

    def connector(self, host: str, port: int) -> tuple[socket.socket, Any]:
        """A new non-blocking socket, and the address to ``connect`` it to for ``host``:``port``.

        :raises OSError: it cannot be made (:class:`SctpUnavailableError` for no SCTP).
        """
        ...


class SctpSockets:
    """One-to-one style SCTP sockets from the standard library (IPv4 or IPv6 by the address)."""

    def listener(self, host: str, port: int) -> socket.socket:
        """An SCTP socket bound to ``host``:``port`` (port 0: any free one) and listening."""
        family, address = _resolve(host, port, passive=True)
        sock = _sctp_socket(family)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def connector(self, host: str, port: int) -> tuple[socket.socket, Any]:
        """An SCTP socket to connect to ``host``:``port``, and the resolved address."""
        family, address = _resolve(host, port, passive=False)
        sock = _sctp_socket(family)
        sock.setblocking(False)
        return sock, address


def _sctp_socket(family: int) -> socket.socket:
    try:
        return socket.socket(family, socket.SOCK_STREAM, IPPROTO_SCTP)
    except OSError as error:
        raise SctpUnavailableError(unavailable_reason(error)) from None


def _resolve(host: str, port: int, *, passive: bool) -> tuple[int, Any]:
    """The family and socket address of a numeric or named ``host`` (the first one found)."""
    flags = socket.AI_PASSIVE if passive else 0
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=flags)
    family, _, _, _, address = found[0]
    return int(family), address
