"""asyncio transports for SIP: UDP, TCP and TLS listeners over the sans-IO core.

Every message read goes through the same steps: framing (:func:`~imscore.sip.parse_datagram` per
datagram, one :class:`~imscore.sip.StreamFramer` per connection), ``check_framing_headers()``, the
``received``/``rport`` stamp on the top Via of a request (RFC 3261 §18.2.1, RFC 3581 §4), then the
message handler. Bad input is answered statelessly when it is a request that can be answered, else
dropped; either way it is counted, logged (at DEBUG one line each, at INFO in a summary per
interval: :mod:`imscore.transport.droplog`, on the ``imscore.transport`` logger), and the transport
keeps serving.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import ipaddress
import itertools
import logging
import math
import os
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final, NoReturn, cast

from imscore.capture.record import MessageRecord
from imscore.sip import (
    KeepAlive,
    Request,
    Response,
    SentResponse,
    SipError,
    StreamEvent,
    StreamFramer,
    Via,
    parse_datagram,
)

from . import stun
from .backlog import DatagramBacklog
from .droplog import DEFAULT_INTERVAL, DropLog
from .flow import TRANSPORTS, Flow, MessageHandler, TransportError, TransportStats
from .provider import TransportEndpoint, TransportProvider

_EVENT_TYPES: Final = (Request, Response, KeepAlive, SipError)
#: receive buffer asked for each UDP socket (the kernel may cap it at net.core.rmem_max)
UDP_RECEIVE_BUFFER: Final = 8 * 1024 * 1024
#: datagrams read from one UDP socket per readiness, at most (then the loop turns)
UDP_READ_BATCH: Final = 256
#: largest datagram read (an IPv4 UDP payload is at most 65,507 octets)
UDP_MAX_DATAGRAM: Final = 65535
#: datagrams waiting for room in a full UDP send buffer, per socket; more are dropped
UDP_SEND_QUEUE: Final = 4096

__all__ = ["Transports", "response_address", "stamp_via"]

logger = logging.getLogger("imscore.transport")

#: how long :meth:`Transports.close` waits for connections to finish closing before aborting them
CLOSE_WAIT: Final = 1.0
#: seconds :meth:`Transports.connect` waits for a TCP connection (and TLS handshake) by default
CONNECT_TIMEOUT: Final = 5.0

_Reply = Callable[[bytes], None]
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_BROADCAST: Final = ipaddress.IPv4Address("255.255.255.255")


# --- addresses ----------------------------------------------------------------------------------------
def _unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


@functools.lru_cache(maxsize=4096)
def _parse_ip(host: str) -> _IP | None:
    """The IP address a host string spells, or ``None`` for a name (cached: peers repeat)."""
    try:
        return ipaddress.ip_address(_unbracket(host))
    except ValueError:
        return None


def _plain_ip(ip: str) -> str:
    """A source address as it goes into ``received``: an IPv4-mapped IPv6 address as IPv4."""
    addr = _parse_ip(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return ip


def _key(address: tuple[str, int]) -> tuple[str, int]:
    """A socket address in one spelling (no brackets, compressed IPv6) for look-ups."""
    host, port = address
    return (_spelling(host), int(port))


@functools.lru_cache(maxsize=4096)
def _spelling(host: str) -> str:
    """The one spelling of an IP literal (no brackets, compressed IPv6); a name as it is (cached:
    every message's flow is keyed by it)."""
    addr = _parse_ip(host)
    return str(addr) if addr is not None else host


def _address(sockname: Any) -> tuple[str, int]:
    """(host, port) of a socket address (IPv6 ones carry flow info and scope id too)."""
    return (str(sockname[0]), int(sockname[1]))


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _family_fits(family: int, local: tuple[str, int], ip: _IP) -> bool:
    """Whether a UDP socket of ``family`` bound at ``local`` can send to ``ip``."""
    if ip.version == 4:
        if family == socket.AF_INET:
            return True
        bound = _parse_ip(local[0])  # a dual-stack wildcard socket reaches IPv4 as mapped addresses
        return bound is not None and bound.is_unspecified
    return bool(family == socket.AF_INET6)


def _unroutable(host: str, port: int) -> str | None:
    """Why a response must not be sent to that address, or ``None`` when it may."""
    if port == 0:
        return "port 0"
    return _unroutable_host(host)


@functools.lru_cache(maxsize=4096)
def _unroutable_host(host: str) -> str | None:
    """Why no response may be sent to that host, or ``None`` (cached: every response over UDP
    asks, and the address properties it reads are computed in Python each time)."""
    addr = _parse_ip(host)
    if addr is None:
        return None
    if addr == _BROADCAST:
        return "a broadcast address"
    if addr.is_multicast:
        return "a multicast address"
    if addr.is_unspecified:
        return "the unspecified address"
    return None


# --- Via ----------------------------------------------------------------------------------------------
def stamp_via(request: Request, source: tuple[str, int]) -> bool:
    """Stamp the top Via of a received request as RFC 3261 §18.2.1 and RFC 3581 §4 say.

    ``received=<source ip>`` is added when the sent-by host is not the source IP, and always when the
    Via carries ``rport``; an empty ``rport`` is filled with the source port. The top Via is rewritten
    through the headers API only when something changed.

    :param request: a request that passed ``check_framing_headers()``.
    :param source: the (ip, port) the request came from, as seen on the socket.
    :returns: whether the Via was changed.
    :raises SipError: when the top Via cannot be parsed.
    """
    via = request.top_via
    ip = _plain_ip(source[0])
    stamped = via.copy()
    changed = False
    sent_by = _parse_ip(via.host)
    if (via.has_rport or sent_by is None or sent_by != _parse_ip(ip)) and via.received != ip:
        stamped.params.set("received", ip)
        changed = True
    if via.has_rport and via.rport is None:
        stamped.params.set("rport", str(source[1]))
        changed = True
    if changed:
        # the other header fields are as they were: what was read of them stays read; the top
        # Via reads back as the stamped one (tests/test_proxy_shortcuts.py)
        request.headers.replace_first("Via", str(stamped))
        request.headers.cache["top_via"] = stamped
    return changed


def response_address(via: Via) -> tuple[str, int]:
    """Where a response goes over UDP (RFC 3261 §18.2.2 with RFC 3581 §4), from its top Via.

    The host is ``received`` if present, else the sent-by host; the port is the ``rport`` value if
    present, else the sent-by port, else 5060. (``maddr`` and DNS resolution of a sent-by name,
    RFC 3263 §5, are not handled: a stamped Via always carries ``received`` when the sent-by is a
    name.)
    """
    params = via.params  # (what via.received and via.rport read, each read once)
    host = params.get("received") or via.host
    rport = params.get("rport")
    port = int(rport) if rport is not None else via.port if via.port is not None else 5060
    return (_unbracket(host), port)


def _error_response(error: SipError) -> Response | str:
    """The stateless answer to bad input, or why there is none."""
    message = error.message
    if error.is_request is not True:
        return "a response in error" if error.is_request is False else "unreadable input"
    if not isinstance(message, Request):
        return "a request too broken to answer"
    if message.method == "ACK":
        return "an ACK (never answered)"
    # RFC 3261 §8.2.6.2: built from the Via and whatever addressing headers can be read
    response = message.make_error_response(error.status, error.phrase, to_tag=secrets.token_hex(6))
    if response is None:
        return "a request without a usable Via"
    return response


# --- the transports -----------------------------------------------------------------------------------
class Transports:
    """The SIP transports of one element: UDP, TCP and TLS listeners on IPv4 and IPv6.

    :param handler: called as ``handler(message, flow)`` for every good message received; an exception
        it raises is logged with its traceback and the transport goes on.
    :param tls_context: the server-side :class:`ssl.SSLContext` (certificate loaded) for TLS listeners.
    :param max_connections: live TCP and TLS connections at most; a connection beyond is closed at once.
    :param idle_timeout: seconds without traffic after which a connection is closed (``0`` or ``inf``:
        never).
    :param max_message_size: the largest message accepted, in octets (datagram or stream message).
    :param client_tls_context: the client-side :class:`ssl.SSLContext` for TLS connections this
        element opens (:meth:`connect`): it must verify the peer (``CERT_REQUIRED`` and
        ``check_hostname``) against the CA it trusts; ``None``: one with the system's CAs is made when
        first needed.
    :param connect_timeout: seconds :meth:`connect` waits for a connection and TLS handshake.
    :param providers: extra transports by name (``{"sctp": provider}``), as plugins offer them through
        ``ims_register_transports``; see :mod:`imscore.transport.provider`.
    :param first_message_timeout: seconds an accepted connection has to deliver its first whole,
        good SIP message (keep-alives do not count) before it is closed (``0`` or ``inf``: no limit).
    :param header_timeout: seconds a message on an accepted connection has from its first octet
        until its header section is complete before the connection is closed (``0`` or ``inf``:
        no limit).
    :param max_connections_per_source: live accepted connections from one IP address at most; one
        more is closed at once (``0``: no limit).
    :param drop_log_interval: seconds covered by one INFO summary of what was dropped or refused
        (see :mod:`imscore.transport.droplog`).
    """

    def __init__(
        self,
        handler: MessageHandler,
        *,
        tls_context: ssl.SSLContext | None = None,
        max_connections: int = 1024,
        idle_timeout: float = 600.0,
        max_message_size: int = 65535,
        client_tls_context: ssl.SSLContext | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        providers: Mapping[str, TransportProvider] | None = None,
        first_message_timeout: float = 0.0,
        header_timeout: float = 0.0,
        max_connections_per_source: int = 0,
        drop_log_interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self._handler = handler
        self._tls_context = tls_context
        self._client_tls_context = client_tls_context
        self.connect_timeout = connect_timeout
        self._providers: dict[str, TransportProvider] = {
            name.lower(): provider for name, provider in (providers or {}).items()
        }
        for name in self._providers:
            if name in TRANSPORTS:
                raise TransportError(f"transport {name!r} is built in; a provider cannot replace it")
        #: listening endpoints of provider transports, by (transport, local address)
        self._provided: dict[tuple[str, tuple[str, int]], TransportEndpoint] = {}
        #: live connections by (transport, remote address), accepted or opened (RFC 3261 §18)
        self._by_remote: dict[tuple[str, tuple[str, int]], int] = {}
        self._connecting: dict[tuple[str, tuple[str, int]], asyncio.Future[Flow]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_message_size = max_message_size
        self.first_message_timeout = first_message_timeout
        self.header_timeout = header_timeout
        self.max_connections_per_source = max_connections_per_source
        #: live accepted connections by remote IP (for max_connections_per_source)
        self._per_source: collections.Counter[str] = collections.Counter()
        #: the counters of these transports
        self.stats = TransportStats()
        #: what was dropped or refused, logged as a summary per interval
        self.drops = DropLog(logger, drop_log_interval)
        self._endpoints: dict[tuple[str, int], _DatagramEndpoint] = {}
        self._servers: list[asyncio.Server] = []
        self._connections: dict[int, _StreamConnection] = {}
        self._listening: list[tuple[str, str, int]] = []
        self._ids = itertools.count(1)
        self._closed = False
        #: UDP responses made while a batch of the backlog is handled, to be written when it is
        #: done (endpoint, octets, the socket's target, local and remote address); ``None``
        #: outside a batch (see send_response)
        self._held: list[_Held] | None = None
        #: datagrams read off the UDP sockets, waiting to be handled (see imscore.transport.backlog)
        self.backlog: DatagramBacklog[_DatagramEndpoint] = DatagramBacklog(
            self._datagram_received, begin=self._hold_responses, end=self._send_held
        )
        self._tap: Callable[[MessageRecord], None] | None = None
        #: called with the flow of every keep-alive received (CRLF on UDP, RFC 5626 ping or pong on a
        #: connection): contact qualification counts them as signs of life
        self.on_keepalive: Callable[[Flow], None] | None = None
        #: called with every datagram and its flow before it is parsed; ``True`` means it was handled
        #: (the server recognised a retransmission by its octets) and it is counted as received and
        #: delivered, unparsed. Not called while :attr:`tap` is set, so a capture sees every message.
        self.datagram_shortcut: Callable[[bytes, Flow], bool] | None = None

    @property
    def tap(self) -> Callable[[MessageRecord], None] | None:
        """Called with a :class:`~imscore.capture.MessageRecord` for every message received (once
        framed and parsed, before the Via is stamped) and sent (answers to bad input included);
        ``None``: no capture, and no cost. An exception it raises is logged, never propagated.
        While it is set, the UDP backlog keeps retransmitted copies too, so a capture sees every
        datagram."""
        return self._tap

    @tap.setter
    def tap(self, value: Callable[[MessageRecord], None] | None) -> None:
        self._tap = value
        self.backlog.keep_duplicates = value is not None

    async def __aenter__(self) -> Transports:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- listening ---------------------------------------------------------------------------------
    async def listen(self, transport: str, host: str, port: int) -> tuple[str, int]:
        """Listen on ``transport`` (``"udp"``, ``"tcp"``, ``"tls"``, a provider's) at an IP and port.

        :param host: an IPv4 or IPv6 address literal (``"127.0.0.1"``, ``"::1"``, ``"[::1]"``,
            ``"0.0.0.0"``); names are not resolved here.
        :param port: the port, ``0`` to let the system pick one.
        :returns: the address actually bound, ``(host, port)``.
        :raises TransportError: for an unknown transport, TLS without ``tls_context``, a host that is
            not an IP literal, or when the socket cannot be bound.
        """
        name = transport.lower()
        if name not in TRANSPORTS and name not in self._providers:
            known = ", ".join((*TRANSPORTS, *self._providers))
            raise TransportError(f"unknown transport {transport!r} (expected one of {known})")
        if name == "tls" and self._tls_context is None:
            raise TransportError(
                "cannot listen on tls: Transports was created without a tls_context "
                "(pass an ssl.SSLContext with the server certificate loaded)"
            )
        if self._closed:
            raise TransportError("cannot listen: the transports are closed")
        ip = _parse_ip(host)
        if ip is None:
            raise TransportError(f"cannot listen on {name}: {host!r} is not an IPv4 or IPv6 literal")
        if not 0 <= port <= 65535:
            raise TransportError(f"cannot listen on {name}: port {port} out of range")
        bind = _unbracket(host)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        loop = asyncio.get_running_loop()
        if name in self._providers:
            return await self._listen_provided(name, bind, port)
        try:
            if name == "udp":
                raw = socket.socket(family, socket.SOCK_DGRAM)
                try:
                    raw.bind((bind, port))
                    with contextlib.suppress(OSError):  # bursts of datagrams wait here, not dropped
                        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
                    endpoint = _SocketEndpoint(self, raw)
                except BaseException:
                    raw.close()
                    raise
                bound = _address(raw.getsockname())
                endpoint.local = bound
                self._endpoints[_key(bound)] = endpoint
            else:
                server = await loop.create_server(
                    lambda: _StreamConnection(self, name),
                    bind,
                    port,
                    family=family,
                    ssl=self._tls_context if name == "tls" else None,
                    reuse_address=True,
                )
                bound = _address(server.sockets[0].getsockname())
                self._servers.append(server)
        except OSError as error:
            raise TransportError(
                f"cannot listen on {name} {_join(bind, port)}: {error.strerror or error}"
            ) from error
        self._listening.append((name, bound[0], bound[1]))
        logger.info("listening on %s %s", name, _join(*bound))
        return bound

    def udp_sockets(self) -> list[socket.socket] | None:
        """The sockets of the UDP endpoints (to ask the kernel about their queues), or ``None``
        when one of them has no socket this process can name."""
        sockets = []
        for endpoint in self._endpoints.values():
            sock = endpoint.socket()
            if sock is None:
                return None
            sockets.append(sock)
        return sockets

    def adopt_udp(self, endpoint: _DatagramEndpoint, local: tuple[str, int]) -> None:
        """Serve UDP at ``local`` through an endpoint made elsewhere: a worker process's listener on
        a socket all the workers read (:mod:`imscore.transport.relay`). It sends and receives like
        one of :meth:`listen`'s and is closed with the others."""
        endpoint.local = local
        self._endpoints[_key(local)] = endpoint
        self._listening.append(("udp", local[0], local[1]))

    @property
    def listening(self) -> list[tuple[str, str, int]]:
        """``(transport, host, port)`` of every listener, as actually bound."""
        return list(self._listening)

    @property
    def open_connections(self) -> int:
        """How many TCP and TLS connections are live."""
        return len(self._connections)

    def has_connection(self, connection: int) -> bool:
        """Whether the TCP/TLS connection with this id is still open (a flow on it is usable)."""
        found = self._connections.get(connection)
        return found is not None and found.is_open()

    async def _listen_provided(self, name: str, host: str, port: int) -> tuple[str, int]:
        """Listen with a plugin's provider; its messages go through the same steps as datagrams."""
        provider = self._providers[name]
        holder: list[TransportEndpoint] = []

        def received(data: bytes, remote: tuple[str, int]) -> None:
            if holder:
                self._provided_received(name, holder[0], data, remote)

        try:
            opened = await provider.listen(host, port, received, max_message_size=self.max_message_size)
        except OSError as error:
            raise TransportError(
                f"cannot listen on {name} {_join(host, port)}: {error.strerror or error}"
            ) from error
        holder.append(opened)
        bound = _address(opened.local)
        self._provided[(name, _key(bound))] = opened
        self._listening.append((name, bound[0], bound[1]))
        logger.info("listening on %s %s", name, _join(*bound))
        return bound

    def _provided_received(
        self, name: str, endpoint: TransportEndpoint, data: bytes, remote: tuple[str, int]
    ) -> None:
        flow = Flow(name, _address(endpoint.local), _address(remote))

        def reply(answer: bytes) -> None:
            endpoint.send(answer, flow.remote)

        self._one_message(data, flow, reply)

    # -- connecting --------------------------------------------------------------------------------
    async def connect(
        self, transport: str, remote: tuple[str, int], *, server_name: str | None = None
    ) -> Flow:
        """A flow to send requests to ``remote`` over ``transport`` (RFC 3261 §18.1.1).

        UDP and provider transports (SCTP): a flow from a listening socket of ``remote``'s address
        family; nothing is sent (an SCTP provider opens its association on the first send).
        TCP and TLS: a live connection to ``remote`` over that transport is reused, whether this
        element opened it or accepted it (§18: connections are indexed by the far end's address,
        port and transport); else one is opened, and it then behaves as an accepted one: framing,
        idle timeout, messages received on it go to the handler, it counts in ``max_connections``.
        Concurrent calls for the same remote share one attempt.

        TLS verifies the peer with ``client_tls_context``: its certificate must chain to a trusted CA
        and match ``server_name`` (sent as SNI), or the remote IP when no name is given. For a
        ``sips:`` URI pass the URI's host as ``server_name`` (RFC 3261 §26.2.2 / RFC 5922).

        :param remote: ``(ip, port)``; names are not resolved here (RFC 3263 is the caller's work).
        :raises TransportError: unknown transport; ``remote`` not an IP literal; no listener of that
            family (UDP); ``max_connections`` live; connection refused, unreachable or timed out
            (``connect_timeout``); the TLS handshake or the certificate check failed. The message
            names the transport and the address.
        """
        name = transport.lower()
        if self._closed:
            raise TransportError(f"cannot connect over {name}: the transports are closed")
        host, port = _key(remote)
        where = f"{name} {_join(host, port)}"
        ip = _parse_ip(host)
        if ip is None:
            raise TransportError(f"cannot connect over {where}: not an IP address (resolve it first)")
        if not 0 < port <= 65535:
            raise TransportError(f"cannot connect over {where}: port out of range")
        if name == "udp":
            return self._udp_flow(host, port, ip, where)
        if name in self._providers:
            for (kind, local), provided in self._provided.items():
                local_ip = _parse_ip(local[0])
                if kind == name and local_ip is not None and local_ip.version == ip.version:
                    return Flow(name, _address(provided.local), (host, port))
            raise TransportError(f"cannot send over {where}: no {name} listener for IPv{ip.version}")
        if name not in ("tcp", "tls"):
            known = ", ".join((*TRANSPORTS, *self._providers))
            raise TransportError(f"unknown transport {transport!r} (expected one of {known})")
        key = (name, (host, port))
        live = self._live_connection(key)
        if live is not None:
            return live.flow
        pending = self._connecting.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._open(name, (host, port), ip, server_name))
            self._connecting[key] = pending
            pending.add_done_callback(functools.partial(self._connected, key))
        return await asyncio.shield(pending)

    def _connected(self, key: tuple[str, tuple[str, int]], attempt: asyncio.Future[Flow]) -> None:
        if self._connecting.get(key) is attempt:
            del self._connecting[key]
        if not attempt.cancelled():
            attempt.exception()  # retrieved here: every caller has it raised anyway

    def _live_connection(self, key: tuple[str, tuple[str, int]]) -> _StreamConnection | None:
        ident = self._by_remote.get(key)
        connection = None if ident is None else self._connections.get(ident)
        return connection if connection is not None and connection.is_open() else None

    async def _open(self, name: str, remote: tuple[str, int], ip: _IP, server_name: str | None) -> Flow:
        """Open one TCP or TLS connection (the work behind :meth:`connect`)."""
        where = f"{name} {_join(*remote)}"
        if len(self._connections) >= self.max_connections:
            self.stats.connections_rejected += 1
            raise TransportError(
                f"cannot connect over {where}: {len(self._connections)} connections open "
                f"(max_connections {self.max_connections})"
            )
        context: ssl.SSLContext | None = None
        if name == "tls":
            if self._client_tls_context is None:
                self._client_tls_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            context = self._client_tls_context
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _StreamConnection(self, name, outgoing=True),
                    str(ip),
                    remote[1],
                    ssl=context,
                    server_hostname=(server_name or str(ip)) if context is not None else None,
                    ssl_handshake_timeout=self.connect_timeout if context is not None else None,
                )
        except ssl.SSLCertVerificationError as error:
            raise TransportError(
                f"cannot connect over {where}: certificate verification failed"
                f"{f' for {server_name!r}' if server_name else ''}: {error.verify_message or error}"
            ) from error
        except ssl.SSLError as error:
            raise TransportError(
                f"cannot connect over {where}: TLS handshake failed: {error}"
            ) from error
        except TimeoutError as error:
            raise TransportError(
                f"cannot connect over {where}: timed out after {self.connect_timeout:g} s"
            ) from error
        except OSError as error:  # asyncio's message hides the reason; the errno tells it
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise TransportError(f"cannot connect over {where}: {reason}") from error
        connection = protocol
        if not connection.is_open():
            if self._closed:
                why = "the transports are closed"
            elif connection.rejected:
                why = f"max_connections {self.max_connections} reached"
            else:
                why = "the connection closed at once"
            raise TransportError(f"cannot connect over {where}: {why}")
        return connection.flow

    def udp_flow(self, remote: tuple[str, int]) -> Flow:
        """What :meth:`connect` gives for UDP, without awaiting: a flow from a listening socket of
        ``remote``'s address family (nothing is sent). Raises :class:`TransportError` as
        :meth:`connect` does."""
        if self._closed:
            raise TransportError("cannot connect over udp: the transports are closed")
        host, port = _key(remote)
        where = f"udp {_join(host, port)}"
        ip = _parse_ip(host)
        if ip is None:
            raise TransportError(f"cannot connect over {where}: not an IP address (resolve it first)")
        if not 0 < port <= 65535:
            raise TransportError(f"cannot connect over {where}: port out of range")
        return self._udp_flow(host, port, ip, where)

    def _udp_flow(self, host: str, port: int, ip: _IP, where: str) -> Flow:
        for endpoint in self._endpoints.values():
            if not endpoint.closed and _family_fits(endpoint.family, endpoint.local, ip):
                return Flow("udp", endpoint.local, (host, port))
        raise TransportError(f"cannot send over {where}: no udp listener for IPv{ip.version}")

    # -- sending -----------------------------------------------------------------------------------
    def send(self, message: Request | Response | SentResponse, flow: Flow) -> None:
        """Write ``message.to_bytes()`` on a flow.

        UDP: sent to ``flow.remote`` (an IP literal) from the socket bound at ``flow.local``.
        TCP/TLS: written on the connection ``flow.connection``.

        :raises TransportError: ``"connection closed"`` when that connection is gone; also when no
            UDP socket is bound at ``flow.local`` or the remote address cannot be used.
        """
        self._send_bytes(message.to_bytes(), flow)
        self.stats.sent += 1

    def send_response(self, response: Response | SentResponse, flow: Flow) -> None:
        """Send the response to a request that arrived on ``flow`` (RFC 3261 §18.2.2, RFC 3581).

        ``response`` is a :class:`Response`, or the :class:`~imscore.sip.SentResponse` a server
        transaction re-sends (its octets as they went out the first time), sent the same way.

        Reliable flows: on the same connection. When that connection has closed, a new one is opened
        to the top Via's ``received`` (else sent-by host) at its ``rport`` (else sent-by port, else
        5060 or 5061 for TLS), as §18.2.2 says: that happens in a background task (this method
        cannot await), so the call returns at once and a failure is only logged (``imscore.transport``
        logger, INFO) and counted in ``stats.responses_lost``. For TLS the certificate must match the
        sent-by host when it is a name, else the address.
        Provider transports (SCTP): sent to ``flow.remote`` by the provider, which reopens an
        association itself when needed.
        UDP: to the top Via's ``received`` (else the sent-by host) at its ``rport`` value (else the
        sent-by port, else 5060), from the socket the request came in on. A response whose
        destination is a broadcast, multicast or unspecified address, or port 0, is dropped and
        counted in ``stats.dropped_unroutable``. (``maddr`` is not honoured.) A response made
        while a batch of received datagrams is handled is written when the batch is done, with
        the others of the batch, in the order they were made (written one by one, each answer
        would wake its sender and take the caches from the next request; measured, the server's
        CPU per registration fell by about a quarter); a request or any other datagram sent
        meanwhile goes out after the responses held before it. A response that then cannot be
        written (the socket's error) is counted in ``stats.responses_lost`` and logged; the
        checks above are made at once, and raise as before.

        :raises TransportError: connection closed; no usable top Via; a sent-by that is a name.
        """
        if flow.reliable:
            if flow.transport in ("tcp", "tls") and (
                flow.connection is None or flow.connection not in self._connections
            ):
                self._respond_later(response, flow)
                return
            self.send(response, flow)
            return
        try:
            host, port = response_address(response.top_via)
        except (SipError, ValueError) as error:
            raise TransportError(f"cannot send response: no usable top Via ({error})") from error
        why = _unroutable(host, port)
        if why is not None:
            self.stats.dropped_unroutable += 1
            self.drops.record(
                "response not sent: unroutable", f"{response.status} to {_join(host, port)}: {why}"
            )
            return
        if _parse_ip(host) is None:
            raise TransportError(
                f"cannot send response to {host!r}: not an IP address and no received parameter "
                "(DNS resolution of sent-by is not done here)"
            )
        data = response.to_bytes()
        if self._held is not None:  # a batch is being handled: written when it is done
            self._hold(data, flow.local, (host, port))
            return
        self._send_udp(data, flow.local, (host, port))  # what send() does on UDP
        self.stats.sent += 1

    def _respond_later(self, response: Response | SentResponse, flow: Flow) -> None:
        """§18.2.2 fallback: the connection of the request is gone; open one to the Via and answer."""
        try:
            via = response.top_via
            host, port = response_address(via)
        except (SipError, ValueError) as error:
            raise TransportError(f"cannot send response: no usable top Via ({error})") from error
        if via.rport is None and via.port is None and flow.transport == "tls":
            port = 5061
        if _parse_ip(host) is None:
            raise TransportError(
                f"cannot send response to {host!r}: connection closed, and the Via has no received "
                "address to open a new one to (DNS resolution of sent-by is not done here)"
            )
        server_name = None if _parse_ip(via.host) is not None else _unbracket(via.host)
        where = f"{flow.transport} {_join(host, port)}"

        async def answer() -> None:
            try:
                new = await self.connect(flow.transport, (host, port), server_name=server_name)
                self.send(response, new)
            except TransportError as error:
                self.stats.responses_lost += 1
                self.drops.record("response not sent: connection closed", f"{response.status}: {error}")
                return
            logger.debug("response %d sent on a new connection to %s", response.status, where)

        task = asyncio.get_running_loop().create_task(answer())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait until the responses :meth:`send_response` is sending on new connections are done."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _send_udp(self, data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        """:meth:`_send_bytes` for a UDP flow from ``local`` to ``remote``."""
        self._udp_endpoint(local).sendto(data, remote)
        if self._tap is not None:
            self._tapped("udp", local, remote, data)

    def _udp_endpoint(self, local: tuple[str, int]) -> _DatagramEndpoint:
        """The open UDP endpoint bound at ``local``; :class:`TransportError` if there is none."""
        endpoints = self._endpoints
        # the endpoints are keyed by _key(address): a local address spelled so is found as it is
        endpoint = endpoints.get(local)
        if endpoint is None:
            endpoint = endpoints.get(_key(local))
        if endpoint is None or endpoint.closed:
            raise TransportError(f"no udp socket bound at {_join(*local)}")
        return endpoint

    def _hold_responses(self) -> None:
        """A batch of the backlog starts: UDP responses are held until it ends (not while a tap
        records every message as it goes; what is held already stays, should batches nest)."""
        if self._tap is None and self._held is None:
            self._held = []

    def _hold(self, data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        """Hold a response for the end of the batch, checked as :meth:`_send_udp` checks it."""
        assert self._held is not None
        endpoint = self._udp_endpoint(local)
        self._held.append((endpoint, data, endpoint.target(remote), local, remote))

    def _send_held(self) -> None:
        """A batch of the backlog ends: the responses held are written, and no more are held."""
        self._write_held()
        self._held = None

    def _write_held(self) -> None:
        """Write the responses held, in their order (the end of a batch, or a datagram about to be
        written after them); what cannot be written is counted as lost and logged."""
        held = self._held
        if not held:
            return
        self._held = []  # (a write below sees nothing held: it goes out at once)
        stats = self.stats
        for endpoint, data, target, local, remote in held:
            try:
                endpoint._write(data, target)
            except TransportError as error:
                stats.responses_lost += 1
                self.drops.record("response not sent", f"udp {_join(*remote)}: {error}")
                logger.info("response not sent over udp to %s: %s", _join(*remote), error)
                continue
            stats.sent += 1
            if self._tap is not None:
                self._tapped("udp", local, remote, data)

    def _send_bytes(self, data: bytes, flow: Flow) -> None:
        if flow.transport == "udp":
            self._send_udp(data, flow.local, flow.remote)
            return
        if flow.transport in ("tcp", "tls"):
            connection = None if flow.connection is None else self._connections.get(flow.connection)
            if connection is None:
                raise TransportError("connection closed")
            connection.write(data)
        elif flow.transport in self._providers:
            provided = self._provided.get((flow.transport, _key(flow.local)))
            if provided is None:
                raise TransportError(f"no {flow.transport} listener at {_join(*flow.local)}")
            provided.send(data, flow.remote)
        else:
            raise TransportError(f"unknown transport {flow.transport!r}")
        if self._tap is not None:
            self._tapped(flow.transport, flow.local, flow.remote, data)

    def _tapped(self, transport: str, src: tuple[str, int], dst: tuple[str, int], data: bytes) -> None:
        """Hand one message to :attr:`tap` (a failing tap is logged; the traffic goes on)."""
        tap = self._tap
        if tap is None:
            return
        try:
            tap(MessageRecord(time.time(), transport, _key(src), _key(dst), data))
        except Exception:
            logger.exception("capture tap failed on a %s message %s -> %s", transport, src, dst)

    # -- receiving ---------------------------------------------------------------------------------
    def _message_received(self, message: Request | Response, flow: Flow, reply: _Reply) -> bool:
        """Steps 2 to 5 for one framed message; whether it was good (handed to the handler)."""
        if self._tap is not None:  # before stamp_via: the octets as they came
            self._tapped(flow.transport, flow.remote, flow.local, message.to_bytes())
        try:
            message.check_framing_headers()
            if isinstance(message, Request):
                stamp_via(message, flow.remote)
        except SipError as error:
            self._bad_input(error, flow, reply)
            return False
        self.stats.received += 1
        self.stats.delivered += 1
        try:
            self._handler(message, flow)
        except Exception:
            logger.exception(
                "message handler failed on %r from %s %s", message, flow.transport, _join(*flow.remote)
            )
        return True

    def _bad_input(self, error: SipError, flow: Flow, reply: _Reply) -> bool:
        """Answer bad input statelessly when it allows, else drop it; count and log either way.

        Returns whether it was answered.
        """
        self.stats.received += 1
        source = f"{flow.transport} {_join(*flow.remote)}"
        answer = _error_response(error)
        if isinstance(answer, Response):
            data = answer.to_bytes()
            try:
                reply(data)
            except TransportError as failed:
                self.stats.dropped_unanswerable += 1
                self.drops.record(
                    "bad request, answer not sent",
                    f"{source}: {error.reason}; answer {error.status} not sent: {failed}",
                )
                return False
            self.stats.sent += 1
            self.stats.answered_errors += 1
            if self._tap is not None:
                self._tapped(flow.transport, flow.local, flow.remote, data)
            self.drops.record(f"bad request answered {answer.status}", f"{source}: {error.reason}")
            return True
        self.stats.dropped_unanswerable += 1
        self.drops.record(f"dropped {answer}", f"{source}: {error.reason}")
        return False

    def _datagram_received(self, endpoint: _DatagramEndpoint, data: bytes, addr: Any) -> None:
        remote = _address(addr)
        flow = Flow("udp", endpoint.local, remote)
        if stun.looks_like_stun(data):  # RFC 5626 §8: a keep-alive, never SIP
            self._stun_received(data, flow, _replier(endpoint, remote))
            return
        shortcut = self.datagram_shortcut
        if shortcut is not None and self._tap is None and shortcut(data, flow):
            stats = self.stats
            stats.received += 1
            stats.delivered += 1
            return
        # the answer to bad input goes back on the socket it came in on (made only when needed:
        # the shortcut takes most datagrams)
        self._one_message(data, flow, _replier(endpoint, remote))

    def _stun_received(self, data: bytes, flow: Flow, reply: _Reply) -> None:
        """A STUN message on a SIP UDP port: a Binding Request is answered with the flow's remote
        address (a keep-alive, counted as one); anything else is dropped and counted."""
        source = f"udp {_join(*flow.remote)}"
        try:
            answer = stun.answer(data, flow.remote)
        except stun.StunError as error:
            self.stats.stun_dropped += 1
            self.drops.record("dropped malformed STUN", f"{source}: {error}")
            return
        if answer is None:
            self.stats.stun_dropped += 1
            self.drops.record("dropped STUN not a Binding Request", source)
            return
        try:
            reply(answer)
        except TransportError as failed:
            self.stats.stun_dropped += 1
            self.drops.record("STUN answer not sent", f"{source}: {failed}")
            return
        self.stats.stun_answered += 1
        self.stats.keepalives += 1
        if self.on_keepalive is not None:
            self.on_keepalive(flow)

    def _one_message(self, data: bytes, flow: Flow, reply: _Reply) -> None:
        """One datagram or SCTP message: a SIP message, a keep-alive, or bad input answered."""
        try:
            message = parse_datagram(data, self.max_message_size)
        except SipError as error:
            self._bad_input(error, flow, reply)
            return
        if message is None:
            self.stats.keepalives += 1
            if self.on_keepalive is not None:
                self.on_keepalive(flow)
            return
        self._message_received(message, flow, reply)

    # -- closing -----------------------------------------------------------------------------------
    async def close(self) -> None:
        """Close every listener and connection (connections still closing after :data:`CLOSE_WAIT`
        seconds are aborted)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        provided = list(self._provided.values())
        self._provided.clear()
        for opened in provided:
            try:
                await opened.close()
            except Exception:  # a plugin's endpoint failing to close must not stop the rest
                logger.exception("closing a provider endpoint failed")
        servers, self._servers = self._servers, []
        endpoints = list(self._endpoints.values())
        self._endpoints.clear()
        connections = list(self._connections.values())
        self._listening.clear()
        for server in servers:
            server.close()
        for endpoint in endpoints:
            endpoint.close()
        self.backlog.clear()
        for connection in connections:
            connection.close()
        waiting = [c.lost for c in connections] + [e.lost for e in endpoints]
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=CLOSE_WAIT)
            if pending:
                for connection in connections:
                    connection.abort()
        for server in servers:
            await server.wait_closed()
        self.drops.flush()


#: a UDP response held for the end of a batch: its endpoint, octets, the socket's target, and the
#: local and remote address
_Held = tuple["_DatagramEndpoint", bytes, tuple[str, int], tuple[str, int], tuple[str, int]]


def _replier(endpoint: _DatagramEndpoint, remote: tuple[str, int]) -> _Reply:
    """What answers a datagram statelessly: octets sent back to ``remote`` on ``endpoint``."""

    def reply(answer: bytes) -> None:
        endpoint.sendto(answer, remote)

    return reply


@functools.lru_cache(maxsize=4096)
def _datagram_target(host: str, family: int) -> str | None:
    """The address a UDP socket of ``family`` sends to for the IP literal ``host`` (an IPv4 one
    mapped into IPv6 through a dual-stack socket), or ``None`` when it cannot (not an IP address,
    or IPv6 from an IPv4 socket). Cached: every datagram sent asks, and the address's text is
    computed in Python each time."""
    ip = _parse_ip(host)
    if ip is None or (ip.version == 6 and family == socket.AF_INET):
        return None
    return f"::ffff:{ip}" if ip.version == 4 and family == socket.AF_INET6 else str(ip)


class _DatagramEndpoint(asyncio.DatagramProtocol):
    """One bound UDP socket."""

    def __init__(self, owner: Transports) -> None:
        self._owner = owner
        self._transport: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] = ("", 0)
        self.family = socket.AF_INET
        self.closed = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.family = sock.family

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._owner._datagram_received(self, data, addr)

    def socket(self) -> socket.socket | None:
        """The bound socket, or ``None`` before it is made or once it is closed."""
        if self._transport is None or self.closed:
            return None
        sock = self._transport.get_extra_info("socket")
        return sock if isinstance(sock, socket.socket) else None

    def error_received(self, exc: Exception) -> None:
        self._owner.drops.record("udp socket error", f"udp {_join(*self.local)}: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self.closed = True

    def sendto(self, data: bytes, remote: tuple[str, int]) -> None:
        """Write one datagram to ``remote`` now, after the responses the transports hold (so the
        datagrams keep the order they were made in)."""
        target = self.target(remote)
        if self._owner._held:
            self._owner._write_held()
        self._write(data, target)

    def target(self, remote: tuple[str, int]) -> tuple[str, int]:
        """``remote`` as this socket writes to it (see :func:`_datagram_target`); raises
        :class:`TransportError` when it cannot (see :meth:`_unsendable`)."""
        host, port = remote
        target = _datagram_target(host, self.family)
        if target is None or not self._usable():
            self._unsendable(host)
        return (target, port)

    def _unsendable(self, host: str) -> NoReturn:
        """Raise the error :meth:`sendto` gives for a host it cannot send to, or a closed socket
        (in this order: not an IP address, the socket closed, IPv6 from an IPv4 socket)."""
        ip = _parse_ip(host)
        if ip is None:
            raise TransportError(f"cannot send over udp to {host!r}: not an IP address")
        if not self._usable():
            raise TransportError(f"udp socket at {_join(*self.local)} is closed")
        if ip.version == 6 and self.family == socket.AF_INET:
            raise TransportError(f"cannot send to IPv6 {host} from IPv4 socket {_join(*self.local)}")
        raise AssertionError(f"udp can send to {host}")  # (sendto would have)

    def _usable(self) -> bool:
        return self._transport is not None and not self.closed and not self._transport.is_closing()

    def _write(self, data: bytes, target: tuple[str, int]) -> None:
        assert self._transport is not None
        self._transport.sendto(data, target)


class _SocketEndpoint(_DatagramEndpoint):
    """A bound UDP socket this process reads itself, without an asyncio transport.

    When the socket is readable, every datagram waiting (up to :data:`UDP_READ_BATCH`) is read into
    the transports' backlog (:mod:`imscore.transport.backlog`), so the kernel's queue stays short and
    a retransmitted copy of a request still waiting is recognised; the backlog is handled a batch
    per turn of the loop. Answers are written straight to the socket; when its send buffer is full
    they wait (up to :data:`UDP_SEND_QUEUE`) until it has room.
    """

    def __init__(self, owner: Transports, sock: socket.socket) -> None:
        super().__init__(owner)
        sock.setblocking(False)
        self._sock = sock
        self.family = sock.family
        self._loop = asyncio.get_running_loop()
        self._unsent: collections.deque[tuple[bytes, tuple[str, int]]] = collections.deque()
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        receive = self._sock.recvfrom
        backlog = self._owner.backlog
        push = backlog.push
        try:
            for _ in range(UDP_READ_BATCH):
                try:
                    data, source = receive(UDP_MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # an ICMP error reported on the socket, for instance
                    self.error_received(exc)
                    return
                push(self, data, source, schedule=False)
        finally:
            # the first batch of what was read now, in this turn of the loop (not in the next
            # one, which would wait on the selector once more first); the rest in later turns
            backlog.handle_now()

    def _usable(self) -> bool:
        return not self.closed

    def socket(self) -> socket.socket | None:
        return None if self.closed else self._sock

    def _write(self, data: bytes, target: tuple[str, int]) -> None:
        if self._unsent:
            self._queue_unsent(data, target)
            return
        try:
            self._sock.sendto(data, target)
        except (BlockingIOError, InterruptedError):
            self._queue_unsent(data, target)
            self._loop.add_writer(self._sock.fileno(), self._writable)
        except OSError as exc:
            raise TransportError(
                f"cannot send over udp to {_join(*target)}: {exc.strerror or exc}"
            ) from exc

    def _queue_unsent(self, data: bytes, target: tuple[str, int]) -> None:
        if len(self._unsent) >= UDP_SEND_QUEUE:
            self._owner.drops.record(
                "udp send queue full", f"udp {_join(*self.local)}: datagram to {target} dropped"
            )
            return
        self._unsent.append((data, target))

    def _writable(self) -> None:
        unsent = self._unsent
        while unsent:
            data, target = unsent[0]
            try:
                self._sock.sendto(data, target)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # this one cannot go; the others may
                self._owner.drops.record(
                    "udp send failed", f"udp {_join(*self.local)}: cannot send to {target}: {exc}"
                )
            unsent.popleft()
        self._loop.remove_writer(self._sock.fileno())

    def close(self) -> None:
        if not self.closed:
            self._loop.remove_reader(self._sock.fileno())
            if self._unsent:
                self._loop.remove_writer(self._sock.fileno())
                self._unsent.clear()
            self._sock.close()
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)


class _StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection with its framer and its timers.

    Timers: the idle timer (no traffic either way for ``idle_timeout``); on an accepted connection
    the first-message timer (no whole, good SIP message within ``first_message_timeout`` of
    opening: keep-alives and bad messages do not count); and the header timer (a message whose
    header section is not complete within ``header_timeout`` of the chunk that brought its first
    octets).
    """

    def __init__(self, owner: Transports, transport_name: str, *, outgoing: bool = False) -> None:
        self._owner = owner
        self._name = transport_name
        self._outgoing = outgoing
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._framer = StreamFramer(owner.max_message_size)
        self._timer: asyncio.TimerHandle | None = None
        self._first_timer: asyncio.TimerHandle | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        #: the remote IP this connection counts against in max_connections_per_source
        self._source: str | None = None
        self._last = 0.0
        self.id = 0
        self.flow = Flow(transport_name, ("", 0), ("", 0))
        self.closing = False
        #: closed at once by connection_made: a limit reached, or the transports closed
        self.rejected = False
        self.lost: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio callbacks ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        owner = self._owner
        remote = _address(transport.get_extra_info("peername"))
        direction = "to" if self._outgoing else "from"
        if owner._closed or len(owner._connections) >= owner.max_connections:
            owner.stats.connections_rejected += 1
            owner.drops.record(
                "connection refused: max_connections",
                f"{self._name} {direction} {_join(*remote)}: {len(owner._connections)} connections"
                f" open (max_connections {owner.max_connections})",
            )
            self._refuse(transport)
            return
        source = _key(remote)[0]
        limit = owner.max_connections_per_source
        if not self._outgoing and limit > 0 and owner._per_source[source] >= limit:
            owner.stats.connections_refused_per_source += 1
            owner.drops.record(
                "connection refused: per-source limit",
                f"{self._name} from {_join(*remote)}: {owner._per_source[source]} connections open"
                f" from {source} (max_connections_per_source {limit})",
            )
            self._refuse(transport)
            return
        self.id = next(owner._ids)
        self.flow = Flow(self._name, _address(transport.get_extra_info("sockname")), remote, self.id)
        owner._connections[self.id] = self
        owner._by_remote[(self._name, _key(remote))] = self.id
        if self._outgoing:
            owner.stats.connections_connected += 1
        else:
            owner.stats.connections_opened += 1
            owner._per_source[source] += 1
            self._source = source
            if _limited(owner.first_message_timeout):
                self._first_timer = self._loop.call_later(
                    owner.first_message_timeout, self._first_message_expired
                )
        self._last = self._loop.time()
        if _limited(owner.idle_timeout):
            self._timer = self._loop.call_later(owner.idle_timeout, self._idle_check)
        logger.debug("%s connection %d %s %s", self._name, self.id, direction, _join(*remote))

    def _refuse(self, transport: asyncio.BaseTransport) -> None:
        self.closing = True
        self.rejected = True
        transport.close()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        owner = self._owner
        self._last = self._loop.time()
        try:
            events = self._framer.feed(data)
        except SipError as error:  # framing lost: what came before it, answer if possible, close
            self._dispatch([e for e in error.completed if isinstance(e, _EVENT_TYPES)])
            if not self.is_open():
                return
            owner._bad_input(error, self.flow, self.write)
            owner.stats.streams_closed_broken += 1
            self._closed_for("framing lost", error.reason)
            return
        self._dispatch(events)
        if self.is_open():
            self._time_header(any(not isinstance(e, KeepAlive) for e in events))

    def _dispatch(self, events: list[StreamEvent]) -> None:
        owner = self._owner
        for event in events:
            if not self.is_open():  # the handler or an error closed it
                break
            if isinstance(event, KeepAlive):
                owner.stats.keepalives += 1
                if owner.on_keepalive is not None:
                    owner.on_keepalive(self.flow)
                if event.ping:
                    self.write(b"\r\n")  # the RFC 5626 §3.5.1 pong
            elif isinstance(event, SipError):
                answered = owner._bad_input(event, self.flow, self.write)
                if not answered and event.is_request is not False:
                    # not a request we could answer, nor a response: the peer does not speak SIP
                    owner.stats.streams_closed_broken += 1
                    self._closed_for("unreadable input", event.reason)
            elif owner._message_received(event, self.flow, self.write) and self._first_timer:
                self._first_timer.cancel()  # a whole, good message: the peer speaks SIP
                self._first_timer = None

    def _time_header(self, completed: bool) -> None:
        """Start, keep or stop the header timer after a chunk was framed (``completed``: it
        finished at least one message, so a message still open began in this chunk)."""
        timer = self._header_timer
        if timer is not None and (completed or not self._framer.in_header):
            timer.cancel()
            self._header_timer = timer = None
        timeout = self._owner.header_timeout
        if timer is None and self._framer.in_header and _limited(timeout):
            self._header_timer = self._loop.call_later(timeout, self._header_expired)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        if not self.lost.done():
            self.lost.set_result(None)

    # -- ours ----------------------------------------------------------------------------------------
    def is_open(self) -> bool:
        return not self.closing

    def write(self, data: bytes) -> None:
        transport = self._transport
        if self.closing or transport is None or transport.is_closing():
            raise TransportError("connection closed")
        transport.write(data)
        self._last = self._loop.time()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        self._forget()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._forget()

    def _closed_for(self, kind: str, why: str) -> None:
        """Close the connection, and count the reason in the drop log."""
        self._owner.drops.record(
            f"connection closed: {kind}",
            f"{self._name} connection {self.id} from {_join(*self.flow.remote)}: {why}",
        )
        self.close()

    def _forget(self) -> None:
        self.closing = True
        for timer in (self._timer, self._first_timer, self._header_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._first_timer = self._header_timer = None
        owner = self._owner
        if self._source is not None:
            left = owner._per_source[self._source] - 1
            if left > 0:
                owner._per_source[self._source] = left
            else:
                del owner._per_source[self._source]
            self._source = None
        if owner._connections.get(self.id) is self:
            del owner._connections[self.id]
            key = (self._name, _key(self.flow.remote))
            if owner._by_remote.get(key) == self.id:
                del owner._by_remote[key]

    def _first_message_expired(self) -> None:
        self._first_timer = None
        if self.closing:
            return
        self._owner.stats.connections_closed_first_message += 1
        timeout = self._owner.first_message_timeout
        self._closed_for("no first message", f"no whole SIP message within {timeout:g} s")

    def _header_expired(self) -> None:
        self._header_timer = None
        if self.closing:
            return
        self._owner.stats.connections_closed_header_timeout += 1
        timeout = self._owner.header_timeout
        self._closed_for("header timeout", f"a header section not complete within {timeout:g} s")

    def _idle_check(self) -> None:
        self._timer = None
        if self.closing:
            return
        remaining = self._last + self._owner.idle_timeout - self._loop.time()
        if remaining > 0:  # there was traffic since the timer was set
            self._timer = self._loop.call_later(remaining, self._idle_check)
            return
        self._owner.stats.connections_closed_idle += 1
        self._closed_for("idle", f"no traffic for {self._owner.idle_timeout:g} s")


def _limited(timeout: float) -> bool:
    """Whether a timeout setting is a limit (``0`` and ``inf`` mean none)."""
    return 0 < timeout < math.inf
