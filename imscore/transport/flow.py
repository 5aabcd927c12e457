"""The data a transport hands to the layers above: flows, counters and the one error type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeAlias

from imscore.sip import Request, Response

__all__ = ["TRANSPORTS", "Flow", "MessageHandler", "TransportError", "TransportStats"]

#: The transport names built into :class:`~imscore.transport.Transports` (plugins add more).
TRANSPORTS = ("udp", "tcp", "tls")


class TransportError(Exception):
    """A transport cannot do what was asked: listen, or send on a flow (e.g. ``connection closed``)."""


@dataclass(frozen=True, slots=True)
class Flow:
    """Where a message came from and where its answer goes.

    :param transport: ``"udp"``, ``"tcp"``, ``"tls"``, or the name of a plugin's transport (``"sctp"``).
    :param local: our address (ip, port) the message came in on, or a message leaves from. For UDP
        it is the address the socket is bound to (``0.0.0.0`` for a wildcard listener); for a
        connection it is the local address of that connection.
    :param remote: the peer's address (ip, port) as seen on the socket.
    :param connection: the connection id for TCP and TLS; ``None`` for UDP.
    """

    transport: str
    local: tuple[str, int]
    remote: tuple[str, int]
    connection: int | None = None

    @property
    def reliable(self) -> bool:
        """Whether the transport is reliable (anything but UDP): no retransmissions needed."""
        return self.transport != "udp"


#: What the transports call for every good message received: ``handler(message, flow)``.
MessageHandler: TypeAlias = Callable[[Request | Response, Flow], None]


@dataclass(slots=True)
class TransportStats:
    """Counters of one :class:`~imscore.transport.Transports` (they only grow).

    :ivar received: SIP messages read off the wire, good or bad (keep-alives not included).
    :ivar delivered: good messages handed to the message handler.
    :ivar sent: messages written (handler sends and stateless error answers).
    :ivar answered_errors: bad requests answered statelessly with the error's status.
    :ivar dropped_unanswerable: bad input that could not be answered (responses, unreadable bytes,
        ACKs, requests too broken to build an answer from) and was dropped.
    :ivar dropped_unroutable: responses not sent because their destination was a broadcast,
        multicast or unspecified address, or port 0.
    :ivar keepalives: keep-alives received (empty UDP datagrams of CR/LF, CRLFCRLF pings and CRLF
        pongs on streams).
    :ivar stun_answered: STUN Binding Requests answered on a UDP port (RFC 5626 §8 keep-alives).
    :ivar stun_dropped: datagrams that looked like STUN (first octet 0x00/0x01, magic cookie) but
        were malformed, or STUN messages that get no answer; dropped, never parsed as SIP.
    :ivar connections_opened: stream connections accepted.
    :ivar connections_rejected: stream connections closed at once because ``max_connections`` were live.
    :ivar connections_refused_per_source: accepted connections closed at once because
        ``max_connections_per_source`` connections from the same IP address were live.
    :ivar connections_closed_idle: stream connections closed after ``idle_timeout`` without traffic.
    :ivar connections_closed_first_message: accepted connections closed because no whole, good SIP
        message came within ``first_message_timeout`` of opening.
    :ivar connections_closed_header_timeout: stream connections closed because a message's header
        section was not complete within ``header_timeout`` of its first octets.
    :ivar streams_closed_broken: stream connections closed because their framing was lost.
    :ivar connections_connected: stream connections this element opened (:meth:`Transports.connect`).
    :ivar responses_lost: responses not sent because their connection had closed and a new one to the
        Via's address could not be opened (RFC 3261 §18.2.2).
    """

    received: int = 0
    delivered: int = 0
    sent: int = 0
    answered_errors: int = 0
    dropped_unanswerable: int = 0
    dropped_unroutable: int = 0
    keepalives: int = 0
    stun_answered: int = 0
    stun_dropped: int = 0
    connections_opened: int = 0
    connections_rejected: int = 0
    connections_refused_per_source: int = 0
    connections_closed_idle: int = 0
    connections_closed_first_message: int = 0
    connections_closed_header_timeout: int = 0
    streams_closed_broken: int = 0
    connections_connected: int = 0
    responses_lost: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name (for logs and metrics)."""
        return asdict(self)
