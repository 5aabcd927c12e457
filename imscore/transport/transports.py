"""asyncio transports for SIP: UDP, TCP and TLS listeners over the sans-IO core.

Every message read goes through the same steps: framing (:func:`~imscore.sip.parse_datagram` per
datagram, one :class:`~imscore.sip.StreamFramer` per connection), ``check_framing_headers()``, the
``received``/``rport`` stamp on the top Via of a request (RFC 3261 §18.2.1, RFC 3581 §4), then the
message handler. Bad input is answered statelessly when it is a request that can be answered, else
dropped; either way it is counted, logged at INFO on the ``imscore.transport`` logger, and the
transport keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import itertools
import logging
import math
import secrets
import socket
import ssl
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, cast

from imscore.sip import (
    KeepAlive,
    Request,
    Response,
    SipError,
    StreamEvent,
    StreamFramer,
    Via,
    parse_datagram,
)

from .flow import TRANSPORTS, Flow, MessageHandler, TransportError, TransportStats

_EVENT_TYPES: Final = (Request, Response, KeepAlive, SipError)
#: receive buffer asked for each UDP socket (the kernel may cap it at net.core.rmem_max)
UDP_RECEIVE_BUFFER: Final = 8 * 1024 * 1024

__all__ = ["Transports", "response_address", "stamp_via"]

logger = logging.getLogger("imscore.transport")

#: how long :meth:`Transports.close` waits for connections to finish closing before aborting them
CLOSE_WAIT: Final = 1.0

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
    addr = _parse_ip(host)
    return (str(addr) if addr is not None else host, int(port))


def _address(sockname: Any) -> tuple[str, int]:
    """(host, port) of a socket address (IPv6 ones carry flow info and scope id too)."""
    return (str(sockname[0]), int(sockname[1]))


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _unroutable(host: str, port: int) -> str | None:
    """Why a response must not be sent to that address, or ``None`` when it may."""
    if port == 0:
        return "port 0"
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
        request.headers.pop_first("Via")
        request.headers.prepend("Via", str(stamped))
    return changed


def response_address(via: Via) -> tuple[str, int]:
    """Where a response goes over UDP (RFC 3261 §18.2.2 with RFC 3581 §4), from its top Via.

    The host is ``received`` if present, else the sent-by host; the port is the ``rport`` value if
    present, else the sent-by port, else 5060. (``maddr`` and DNS resolution of a sent-by name,
    RFC 3263 §5, are not handled: a stamped Via always carries ``received`` when the sent-by is a
    name.)
    """
    host = via.received or via.host
    port = via.rport if via.rport is not None else via.port if via.port is not None else 5060
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
    try:
        response = message.make_response(error.status, error.phrase, to_tag=secrets.token_hex(6))
        # the answer must itself carry a usable Via, From, To, Call-ID and CSeq
        response.check_framing_headers()
    except SipError as again:
        return f"a request too broken to answer ({again.reason})"
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
    """

    def __init__(
        self,
        handler: MessageHandler,
        *,
        tls_context: ssl.SSLContext | None = None,
        max_connections: int = 1024,
        idle_timeout: float = 600.0,
        max_message_size: int = 65535,
    ) -> None:
        self._handler = handler
        self._tls_context = tls_context
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_message_size = max_message_size
        #: the counters of these transports
        self.stats = TransportStats()
        self._endpoints: dict[tuple[str, int], _DatagramEndpoint] = {}
        self._servers: list[asyncio.Server] = []
        self._connections: dict[int, _StreamConnection] = {}
        self._listening: list[tuple[str, str, int]] = []
        self._ids = itertools.count(1)
        self._closed = False

    async def __aenter__(self) -> Transports:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- listening ---------------------------------------------------------------------------------
    async def listen(self, transport: str, host: str, port: int) -> tuple[str, int]:
        """Listen on ``transport`` (``"udp"``, ``"tcp"`` or ``"tls"``) at an IP literal and port.

        :param host: an IPv4 or IPv6 address literal (``"127.0.0.1"``, ``"::1"``, ``"[::1]"``,
            ``"0.0.0.0"``); names are not resolved here.
        :param port: the port, ``0`` to let the system pick one.
        :returns: the address actually bound, ``(host, port)``.
        :raises TransportError: for an unknown transport, TLS without ``tls_context``, a host that is
            not an IP literal, or when the socket cannot be bound.
        """
        name = transport.lower()
        if name not in TRANSPORTS:
            known = ", ".join(TRANSPORTS)
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
        try:
            if name == "udp":
                sock, endpoint = await loop.create_datagram_endpoint(
                    lambda: _DatagramEndpoint(self), local_addr=(bind, port), family=family
                )
                bound = _address(sock.get_extra_info("sockname"))
                endpoint.local = bound
                raw = sock.get_extra_info("socket")
                if raw is not None:
                    with contextlib.suppress(OSError):  # bursts of datagrams wait here, not dropped
                        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
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

    @property
    def listening(self) -> list[tuple[str, str, int]]:
        """``(transport, host, port)`` of every listener, as actually bound."""
        return list(self._listening)

    @property
    def open_connections(self) -> int:
        """How many TCP and TLS connections are live."""
        return len(self._connections)

    # -- sending -----------------------------------------------------------------------------------
    def send(self, message: Request | Response, flow: Flow) -> None:
        """Write ``message.to_bytes()`` on a flow.

        UDP: sent to ``flow.remote`` (an IP literal) from the socket bound at ``flow.local``.
        TCP/TLS: written on the connection ``flow.connection``.

        :raises TransportError: ``"connection closed"`` when that connection is gone; also when no
            UDP socket is bound at ``flow.local`` or the remote address cannot be used.
        """
        self._send_bytes(message.to_bytes(), flow)
        self.stats.sent += 1

    def send_response(self, response: Response, flow: Flow) -> None:
        """Send the response to a request that arrived on ``flow`` (RFC 3261 §18.2.2, RFC 3581).

        Reliable flows: on the same connection; when it has closed, :class:`TransportError` is raised
        (opening a new connection to the sent-by address, as §18.2.2 allows, is not done here).
        UDP: to the top Via's ``received`` (else the sent-by host) at its ``rport`` value (else the
        sent-by port, else 5060), from the socket the request came in on. A response whose
        destination is a broadcast, multicast or unspecified address, or port 0, is dropped and
        counted in ``stats.dropped_unroutable``. (``maddr`` is not honoured.)

        :raises TransportError: connection closed; no usable top Via; a sent-by that is a name.
        """
        if flow.reliable:
            self.send(response, flow)
            return
        try:
            host, port = response_address(response.top_via)
        except (SipError, ValueError) as error:
            raise TransportError(f"cannot send response: no usable top Via ({error})") from error
        why = _unroutable(host, port)
        if why is not None:
            self.stats.dropped_unroutable += 1
            logger.info("dropped %d response to %s: %s", response.status, _join(host, port), why)
            return
        if _parse_ip(host) is None:
            raise TransportError(
                f"cannot send response to {host!r}: not an IP address and no received parameter "
                "(DNS resolution of sent-by is not done here)"
            )
        self.send(response, Flow("udp", flow.local, (host, port)))

    def _send_bytes(self, data: bytes, flow: Flow) -> None:
        if flow.transport == "udp":
            endpoint = self._endpoints.get(_key(flow.local))
            if endpoint is None or endpoint.closed:
                raise TransportError(f"no udp socket bound at {_join(*flow.local)}")
            endpoint.sendto(data, flow.remote)
        elif flow.transport in ("tcp", "tls"):
            connection = None if flow.connection is None else self._connections.get(flow.connection)
            if connection is None:
                raise TransportError("connection closed")
            connection.write(data)
        else:
            raise TransportError(f"unknown transport {flow.transport!r}")

    # -- receiving ---------------------------------------------------------------------------------
    def _message_received(self, message: Request | Response, flow: Flow, reply: _Reply) -> None:
        """Steps 2 to 5 for one framed message."""
        try:
            message.check_framing_headers()
            if isinstance(message, Request):
                stamp_via(message, flow.remote)
        except SipError as error:
            self._bad_input(error, flow, reply)
            return
        self.stats.received += 1
        self.stats.delivered += 1
        try:
            self._handler(message, flow)
        except Exception:
            logger.exception(
                "message handler failed on %r from %s %s", message, flow.transport, _join(*flow.remote)
            )

    def _bad_input(self, error: SipError, flow: Flow, reply: _Reply) -> bool:
        """Answer bad input statelessly when it allows, else drop it; count and log either way.

        Returns whether it was answered.
        """
        self.stats.received += 1
        source = f"{flow.transport} {_join(*flow.remote)}"
        answer = _error_response(error)
        if isinstance(answer, Response):
            try:
                reply(answer.to_bytes())
            except TransportError as failed:
                self.stats.dropped_unanswerable += 1
                logger.info(
                    "bad request from %s: %s; answer %d not sent: %s",
                    source,
                    error.reason,
                    error.status,
                    failed,
                )
                return False
            self.stats.sent += 1
            self.stats.answered_errors += 1
            logger.info("bad request from %s answered %d: %s", source, answer.status, error.reason)
            return True
        self.stats.dropped_unanswerable += 1
        logger.info("dropped %s from %s: %s", answer, source, error.reason)
        return False

    def _datagram_received(self, endpoint: _DatagramEndpoint, data: bytes, addr: Any) -> None:
        remote = _address(addr)
        flow = Flow("udp", endpoint.local, remote)

        def reply(answer: bytes) -> None:
            endpoint.sendto(answer, remote)

        try:
            message = parse_datagram(data, self.max_message_size)
        except SipError as error:
            self._bad_input(error, flow, reply)
            return
        if message is None:
            self.stats.keepalives += 1
            return
        self._message_received(message, flow, reply)

    # -- closing -----------------------------------------------------------------------------------
    async def close(self) -> None:
        """Close every listener and connection (connections still closing after :data:`CLOSE_WAIT`
        seconds are aborted)."""
        self._closed = True
        servers, self._servers = self._servers, []
        endpoints = list(self._endpoints.values())
        self._endpoints.clear()
        connections = list(self._connections.values())
        self._listening.clear()
        for server in servers:
            server.close()
        for endpoint in endpoints:
            endpoint.close()
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

    def error_received(self, exc: Exception) -> None:
        logger.info("udp %s: %s", _join(*self.local), exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self.closed = True

    def sendto(self, data: bytes, remote: tuple[str, int]) -> None:
        host, port = remote
        ip = _parse_ip(host)
        if ip is None:
            raise TransportError(f"cannot send over udp to {host!r}: not an IP address")
        if self._transport is None or self.closed or self._transport.is_closing():
            raise TransportError(f"udp socket at {_join(*self.local)} is closed")
        if ip.version == 4 and self.family == socket.AF_INET6:
            target = f"::ffff:{ip}"  # an IPv4-mapped address through a dual-stack socket
        elif ip.version == 6 and self.family == socket.AF_INET:
            raise TransportError(f"cannot send to IPv6 {host} from IPv4 socket {_join(*self.local)}")
        else:
            target = str(ip)
        self._transport.sendto(data, (target, port))


class _StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection with its framer and idle timer."""

    def __init__(self, owner: Transports, transport_name: str) -> None:
        self._owner = owner
        self._name = transport_name
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._framer = StreamFramer(owner.max_message_size)
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self.id = 0
        self.flow = Flow(transport_name, ("", 0), ("", 0))
        self.closing = False
        self.lost: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio callbacks ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        owner = self._owner
        remote = _address(transport.get_extra_info("peername"))
        if owner._closed or len(owner._connections) >= owner.max_connections:
            owner.stats.connections_rejected += 1
            logger.info(
                "%s connection from %s rejected: %d connections open (max_connections %d)",
                self._name,
                _join(*remote),
                len(owner._connections),
                owner.max_connections,
            )
            self.closing = True
            transport.close()
            return
        self.id = next(owner._ids)
        self.flow = Flow(self._name, _address(transport.get_extra_info("sockname")), remote, self.id)
        owner._connections[self.id] = self
        owner.stats.connections_opened += 1
        self._last = self._loop.time()
        timeout = owner.idle_timeout
        if 0 < timeout < math.inf:
            self._timer = self._loop.call_later(timeout, self._idle_check)
        logger.debug("%s connection %d from %s", self._name, self.id, _join(*remote))

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
            logger.info(
                "%s connection %d from %s closed: framing lost",
                self._name,
                self.id,
                _join(*self.flow.remote),
            )
            self.close()
            return
        self._dispatch(events)

    def _dispatch(self, events: list[StreamEvent]) -> None:
        owner = self._owner
        for event in events:
            if not self.is_open():  # the handler or an error closed it
                break
            if isinstance(event, KeepAlive):
                owner.stats.keepalives += 1
                if event.ping:
                    self.write(b"\r\n")  # the RFC 5626 §3.5.1 pong
            elif isinstance(event, SipError):
                answered = owner._bad_input(event, self.flow, self.write)
                if not answered and event.is_request is not False:
                    # not a request we could answer, nor a response: the peer does not speak SIP
                    owner.stats.streams_closed_broken += 1
                    logger.info(
                        "%s connection %d from %s closed: unreadable input",
                        self._name,
                        self.id,
                        _join(*self.flow.remote),
                    )
                    self.close()
            else:
                owner._message_received(event, self.flow, self.write)

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

    def _forget(self) -> None:
        self.closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._owner._connections.get(self.id) is self:
            del self._owner._connections[self.id]

    def _idle_check(self) -> None:
        self._timer = None
        if self.closing:
            return
        remaining = self._last + self._owner.idle_timeout - self._loop.time()
        if remaining > 0:  # there was traffic since the timer was set
            self._timer = self._loop.call_later(remaining, self._idle_check)
            return
        self._owner.stats.connections_closed_idle += 1
        logger.info(
            "%s connection %d from %s closed: idle for %g s",
            self._name,
            self.id,
            _join(*self.flow.remote),
            self._owner.idle_timeout,
        )
        self.close()
