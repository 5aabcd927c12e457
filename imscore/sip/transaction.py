"""The SIP transaction layer: RFC 3261 §17 as corrected by RFC 6026, with no I/O and no clock.

A :class:`TransactionLayer` holds the four transaction state machines (INVITE and non-INVITE, client
and server). The transport hands it every received message with the *flow* it came from (an opaque
object the layer never looks into) and whether that transport is reliable (TCP, TLS, SCTP) or not
(UDP); the transaction user (TU: a UA core, a proxy core) hands it requests to send and responses to
answer with. Every entry point takes ``now`` (seconds, any origin, never read from a clock) and
returns a list of outputs: messages to send (:class:`Send`) and events for the TU. Timers are
deadlines the layer keeps; :meth:`TransactionLayer.next_deadline` says when the next one falls due
and :meth:`TransactionLayer.advance` fires every timer due at ``now``.

What RFC 6026 changes, and this module does:

* a 2xx moves an INVITE client transaction to *Accepted* (Timer M) where further 2xx responses are
  passed to the TU, and an INVITE server transaction to *Accepted* (Timer L) where the TU's 2xx
  retransmissions are sent, INVITE retransmissions are absorbed and ACKs go to the TU;
* a transport failure on a server transaction is reported to the TU and the transaction stays in its
  state (RFC 6026 §8.8); a client transaction still terminates (RFC 3261 §17.1.4).

Messages handed to the layer are kept by reference: a client transaction retransmits the very
:class:`Request` it was given, so the TU must not change it afterwards. A server transaction copies
what it matches on when it is created, so a proxy may reuse the received request object.

A non-INVITE server transaction over UDP lives Timer J (32 s) after its final response, only to
answer retransmissions with that response, so it keeps no more than that (a flood of REGISTERs each
leaves one behind): it lets go of its request when the final response is sent, and once that
response has gone out (at the layer's next call) it keeps the response only as the octets that went
out, a :class:`SentResponse`. The first :class:`Send` of a final response carries the TU's
:class:`Response`; a retransmitted request is answered with a :class:`Send` of that
:class:`SentResponse`, which the transport sends as a response (its ``top_via`` says where), and
whose bytes on the wire are the first answer's.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import heapq
import itertools
import math
import re
import secrets
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Final, Generic

from . import grammar as g
from .errors import SipError, TransactionError
from .headers import Via
from .message import Headers, Message, Request, Response
from .outputs import (
    AckReceived,
    FlowT,
    Output,
    RequestReceived,
    ResponseReceived,
    Send,
    StrayResponse,
    TransactionTerminated,
    TransactionTimeout,
    TransportFailed,
)
from .sent import SentResponse

__all__ = [
    "MAGIC_COOKIE",
    "PLAIN_SECTION_KEY",
    "AckReceived",
    "ClientTransaction",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "Output",
    "RequestReceived",
    "ResponseReceived",
    "Send",
    "SentResponse",
    "ServerTransaction",
    "StrayResponse",
    "TimerConfig",
    "Transaction",
    "TransactionLayer",
    "TransactionState",
    "TransactionTerminated",
    "TransactionTimeout",
    "TransportFailed",
    "build_ack",
    "build_cancel",
    "is_rfc3261_branch",
    "new_branch",
]

#: The prefix of every RFC 3261 branch (§8.1.1.7).
MAGIC_COOKIE: Final = "z9hG4bK"

Key = tuple[object, ...]

_COMPACT_MIN: Final = 64  # stale timer entries tolerated before the heap is rebuilt
#: one int object per sent-by port seen in server transaction keys (the few ports of the next hops
#: come back in every key, and each parse makes a new int); no more are added once it holds
#: _PORTS_MAX, and keys then keep their own
_PORTS: Final[dict[int, object]] = {}
_PORTS_MAX: Final = 1024
#: the timer dict of every non-INVITE server transaction: always empty (Timer J, their only timer,
#: is queued by the layer), shared, never written to
_NO_TIMERS: Final[dict[str, tuple[float, int]]] = {}


# --- timers ---------------------------------------------------------------------------------------
def _check_duration(name: str, value: float, *, positive: bool) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "a finite number > 0" if positive else "a finite number >= 0"
        raise TransactionError(f"timer {name} must be {need}, not {value!r}")
    return value


@dataclass(frozen=True, init=False)
class TimerConfig:
    """RFC 3261 Table 4 timers and the RFC 6026 Timers L and M, in seconds.

    ``t1`` (RTT estimate), ``t2`` (cap of the non-INVITE and Timer G retransmission intervals) and
    ``t4`` (how long a message may stay in the network) are the base values; Timers A, E and G
    start at T1.
    Every other timer is derived from them unless given:

    ======== ==================================== ================================
    timer    default (unreliable transport)       reliable transport
    ======== ==================================== ================================
    B, F, H  64*T1                                same
    D        max(32 s, 64*T1)                     0
    I, K     T4                                   0
    J        64*T1                                0
    L, M     64*T1 (RFC 6026)                     same
    ======== ==================================== ================================

    Timer D is "at least 32 seconds" (§17.1.1.2) and stands for the server's Timer H, hence the
    maximum with 64*T1 when T1 is raised. The zero values over reliable transports are fixed by the
    RFC and do not depend on this configuration. Derived values are resolved when the object is
    built, so ``TimerConfig(t1=1.0).timer_b == 64.0``; build a new object to change T1 rather than
    :func:`dataclasses.replace` (which would carry the old derived values over).
    """

    t1: float
    t2: float
    t4: float
    timer_b: float
    timer_d: float
    timer_f: float
    timer_h: float
    timer_i: float
    timer_j: float
    timer_k: float
    timer_l: float
    timer_m: float

    def __init__(
        self,
        t1: float = 0.5,
        t2: float = 4.0,
        t4: float = 5.0,
        *,
        timer_b: float | None = None,
        timer_d: float | None = None,
        timer_f: float | None = None,
        timer_h: float | None = None,
        timer_i: float | None = None,
        timer_j: float | None = None,
        timer_k: float | None = None,
        timer_l: float | None = None,
        timer_m: float | None = None,
    ) -> None:
        t1 = _check_duration("T1", t1, positive=True)
        t2 = _check_duration("T2", t2, positive=True)
        t4 = _check_duration("T4", t4, positive=False)
        if t2 < t1:
            raise TransactionError(f"T2 ({t2}) must not be smaller than T1 ({t1})")
        t64 = 64 * t1

        def pick(name: str, given: float | None, default: float, *, positive: bool) -> float:
            return _check_duration(name, default if given is None else given, positive=positive)

        values = {
            "t1": t1,
            "t2": t2,
            "t4": t4,
            "timer_b": pick("B", timer_b, t64, positive=True),
            "timer_d": pick("D", timer_d, max(32.0, t64), positive=False),
            "timer_f": pick("F", timer_f, t64, positive=True),
            "timer_h": pick("H", timer_h, t64, positive=True),
            "timer_i": pick("I", timer_i, t4, positive=False),
            "timer_j": pick("J", timer_j, t64, positive=False),
            "timer_k": pick("K", timer_k, t4, positive=False),
            "timer_l": pick("L", timer_l, t64, positive=True),
            "timer_m": pick("M", timer_m, t64, positive=True),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)


# --- helpers --------------------------------------------------------------------------------------
def is_rfc3261_branch(branch: str | None) -> bool:
    """Whether a Via branch identifies a transaction (RFC 3261 §8.1.1.7): it starts with the magic
    cookie and has something after it. Otherwise §17.2.3's RFC 2543 matching applies.

    Parameter values compare case-insensitively (§7.3.1), and so does the cookie here.
    """
    if branch is None or len(branch) <= len(MAGIC_COOKIE):
        return False
    return branch[: len(MAGIC_COOKIE)].lower() == MAGIC_COOKIE.lower()


# random per process; the lab's deterministic runs replace both for the length of a run
_BRANCH_PREFIX: str = secrets.token_hex(6)
_branch_counter = itertools.count(1)


def new_branch(seed: str | None = None) -> str:
    """A new RFC 3261 branch: the magic cookie and a token.

    Without ``seed`` the token is a random per-process prefix and a counter, unique across calls
    and, with overwhelming likelihood, across processes (§8.1.1.7). With ``seed`` the token is a
    hash of it, so the same seed gives the same branch: for a stateless proxy that must give a
    retransmission the branch it gave the original (§16.11), or for reproducible simulations.
    No clock is read.
    """
    if seed is None:
        return f"{MAGIC_COOKIE}{_BRANCH_PREFIX}{next(_branch_counter):x}"
    digest = hashlib.sha256(seed.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{MAGIC_COOKIE}{digest[:24]}"


def _raw(message: Message, name: str) -> str:
    """The value of a single header as written, or TransactionError."""
    values = message.headers.get_all(name)
    if len(values) != 1:
        problem = "no" if not values else "more than one"
        raise TransactionError(f"{problem} {name} header in the {_what(message)}")
    return values[0]


def _what(message: Message) -> str:
    return f"{message.method} request" if isinstance(message, Request) else "response"


def _top_via_text(request: Request) -> str:
    first = request.headers.get("Via")
    if first is not None and "," not in first:
        # one element on the first line: what values() gives first, without splitting the rest
        element = first.strip(" \t")
        if element:
            return element
    vias = request.headers.values("Via")
    if not vias:
        raise TransactionError(f"no Via header in the {_what(request)}")
    return vias[0]


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK an INVITE client transaction sends for a 300-699 response (RFC 3261 §17.1.1.3).

    Request-URI, Call-ID and From of the INVITE; CSeq with the INVITE's number and method ACK; a
    single Via, the INVITE's top Via; To from the response (with its tag); the INVITE's Route header
    fields; ``Max-Forwards: 70``; ``Content-Length: 0``. Header values are copied as written.
    The ACK for a 2xx is the TU's (§13.2.2.4): asking for one raises :class:`TransactionError`.
    """
    if invite.method != "INVITE":
        raise TransactionError(f"an ACK acknowledges an INVITE, not a {invite.method}")
    if response.status < 300:
        raise TransactionError(
            f"the ACK for a {response.status} is built by the TU, not the transaction (§13.2.2.4)"
        )
    return _same_hop_request("ACK", invite, response)


def build_cancel(request: Request) -> Request:
    """A CANCEL for ``request`` (RFC 3261 §9.1).

    Request-URI, Call-ID, From and To (tags included) of the request; CSeq with its number and
    method CANCEL; a single Via, the request's top Via (so the CANCEL gets the same branch and
    reaches the same next hop); the request's Route header fields; ``Max-Forwards: 70``;
    ``Content-Length: 0``. Header values are copied as written. ACK and CANCEL cannot be cancelled
    (:class:`TransactionError`). Send it with :meth:`TransactionLayer.send_request` on the flow of
    the request's transaction, once a provisional response has arrived (§9.1).
    """
    if request.method in ("ACK", "CANCEL"):
        raise TransactionError(f"a {request.method} cannot be cancelled")
    return _same_hop_request("CANCEL", request, request)


def _same_hop_request(method: str, request: Request, to_source: Message) -> Request:
    """The shape ACK (for a non-2xx) and CANCEL share: the request's Request-URI, top Via,
    Route, From, Call-ID and CSeq number; To taken from ``to_source``; Max-Forwards 70."""
    try:
        seq = request.cseq.seq
    except SipError as error:
        raise TransactionError(f"cannot build the {method}: {error.reason}") from error
    headers: list[tuple[str, object]] = [
        ("Via", _top_via_text(request)),
        ("Max-Forwards", 70),
    ]
    headers.extend(("Route", value) for value in request.headers.get_all("Route"))
    headers += [
        ("From", _raw(request, "From")),
        ("To", _raw(to_source, "To")),
        ("Call-ID", _raw(request, "Call-ID")),
        ("CSeq", f"{seq} {method}"),
        ("Content-Length", 0),
    ]
    return Request(method, request.uri.copy(), headers)


#: header sections that split into fields without an error (a subset of those that do): every line
#: a token, a colon and a value with neither CR nor LF in it. Such a line is read as one field
#: whose name is that token (no continuation line, no empty line, no line without a colon).
_PLAIN_SECTION: Final = re.compile(rb"(?:[" + g.TOKEN_CHARS.encode() + rb"]+:[^\r\n]*\r\n)*")
#: the key of a response's header cache (:attr:`Headers.cache`, emptied whenever a field changes)
#: under which its builder says its section is a plain one (see :data:`_PLAIN_SECTION`), having
#: written every line of it itself: it is not checked again
PLAIN_SECTION_KEY: Final = "plain-section"


def _as_sent(response: Response) -> Response | SentResponse:
    """A final response that was sent, as its octets (see :class:`SentResponse`).

    Left as it is when its octets would not read back as the same status line and header fields
    (a TU may have written a reason phrase or a header value with a line break in it): then the
    Response is what is sent again. The bytes on the wire are the same either way.
    """
    reason = response.reason
    if "\r" in reason or "\n" in reason:
        return response
    headers = response.headers
    section = headers.to_bytes()  # serialised: kept, not redone
    vouched = headers.cache.get(PLAIN_SECTION_KEY) is True
    if not vouched and _PLAIN_SECTION.fullmatch(section) is None:  # else it splits, no trying
        try:
            Headers._from_section(section).check()
        except SipError:
            return response
    return SentResponse(response.to_bytes())



def _lower(text: str | None) -> str | None:
    return None if text is None else text.lower()


def _via_key(via: Via) -> Key:
    """A Via for RFC 2543 matching: protocol, transport, sent-by and parameters, case folded."""
    params = frozenset(
        (name.lower(), value if value is None or value.startswith('"') else value.lower())
        for name, value in via.params.items()
    )
    return (via.protocol.upper(), via.version, via.transport, *via.sent_by_key(), params)


def _server_key(request: Request, method: str) -> Key:
    """The §17.2.3 matching key of a request, as if its method were ``method``.

    The key always ends with the method, so keys that differ only by method are ``key[:-1]`` equal.
    """
    via = request.top_via
    branch = via.branch
    if branch is not None and is_rfc3261_branch(branch):
        host, port = via.sent_by_key()
        lowered = branch.lower()
        # host, port and method shared: tens of thousands of transactions from a few hosts
        # (the int kept as an object: a compiled build would box a new one from a native int)
        shared: object = _PORTS.get(port)
        if shared is None:
            shared = port
            if len(_PORTS) < _PORTS_MAX:
                _PORTS[port] = shared
        return (
            "3261",
            branch if lowered == branch else lowered,
            sys.intern(host),
            shared,
            sys.intern(method),
        )
    return (
        "2543",
        request.uri.copy(),
        _lower(request.to.tag),
        _lower(request.from_.tag),
        request.call_id,
        request.cseq.seq,
        _via_key(via),
        method,
    )


def _ack_key_2543(request: Request) -> Key:
    """What an RFC 2543 ACK shares with its INVITE: Request-URI, From tag, Call-ID, CSeq number and
    top Via (the To tag is checked against the response the transaction sent)."""
    return (
        request.uri.copy(),
        _lower(request.from_.tag),
        request.call_id,
        request.cseq.seq,
        _via_key(request.top_via),
    )


# --- transactions ---------------------------------------------------------------------------------
class TransactionState(enum.Enum):
    """The states of RFC 3261 Figures 5-8 with RFC 6026's Accepted."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


_CALLING: Final = TransactionState.CALLING
_TRYING: Final = TransactionState.TRYING
_PROCEEDING: Final = TransactionState.PROCEEDING
_COMPLETED: Final = TransactionState.COMPLETED
_CONFIRMED: Final = TransactionState.CONFIRMED
_ACCEPTED: Final = TransactionState.ACCEPTED
_TERMINATED: Final = TransactionState.TERMINATED


class Transaction(Generic[FlowT]):
    """What client and server transactions share.

    ``request`` is the request that created the transaction (a non-INVITE server transaction lets
    go of it, ``None``, once its final response is sent), ``flow`` where it sends, ``reliable``
    whether that transport is reliable, ``state`` a :class:`TransactionState`, ``branch`` the top
    Via branch of the request (``None`` for an RFC 2543 request), ``cseq`` its CSeq number,
    ``response`` the last response received (client) or sent (server; a Completed non-INVITE
    server transaction keeps its final response as a :class:`SentResponse` once it went out),
    ``key`` what it is matched by. Transactions are made by the :class:`TransactionLayer`.
    """

    # tens of thousands are alive under load (every one over UDP for 32 s after its answer)
    __slots__ = (
        "_interval",
        "_layer",
        "_timers",
        "branch",
        "created_at",
        "cseq",
        "flow",
        "key",
        "method",
        "reliable",
        "request",
        "response",
        "state",
    )

    is_client: ClassVar[bool] = False
    is_invite: ClassVar[bool] = False

    def __init__(
        self,
        layer: TransactionLayer[FlowT],
        request: Request,
        flow: FlowT,
        reliable: bool,
        now: float,
        key: Key,
    ) -> None:
        self.flow = flow
        self.reliable = reliable
        self.created_at = now
        self.key = key
        self.method = sys.intern(request.method)  # the key's string (see _server_key)
        # a server transaction matched by its RFC 3261 branch keeps the key's (case-folded) copy:
        # branches compare case-insensitively, and one string per transaction is enough
        folded = key[1] if key[0] == "3261" else None
        self.branch: str | None = folded if isinstance(folded, str) else request.top_via.branch
        self.cseq = request.cseq.seq
        self.state = _TRYING
        self.response: Response | SentResponse | None = None
        self._layer = layer
        self._timers: dict[str, tuple[float, int]] = {}
        self._interval = 0.0

    @property
    def terminated(self) -> bool:
        """Whether the transaction reached the Terminated state."""
        return self.state is _TERMINATED

    @property
    def deadlines(self) -> dict[str, float]:
        """The running timers: letter (``"A"``, ``"B"``, ...) to the time it fires."""
        return {name: deadline for name, (deadline, _) in self._timers.items()}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} branch={self.branch!r} {self.state.value}>"

    # -- machinery ---------------------------------------------------------------------------------
    def _set(self, name: str, deadline: float) -> None:
        self._layer._schedule(self, name, deadline)

    def _cancel(self, *names: str) -> None:
        removed = 0
        for name in names:
            if self._timers.pop(name, None) is not None:
                removed += 1
        self._layer._dropped(removed)

    def _wait(self, name: str, duration: float, now: float) -> list[Output[FlowT]]:
        """Start a timer; one of zero duration fires at once."""
        if duration <= 0:
            return self._fire(name, now)
        self._set(name, now + duration)
        return []

    def _time_out(self) -> list[Output[FlowT]]:
        """Timer B, F or H fired: tell the TU, then terminate."""
        out: list[Output[FlowT]] = [TransactionTimeout(self)]
        out += self._terminate()
        return out

    def _terminate(self) -> list[Output[FlowT]]:
        self.state = _TERMINATED
        self._layer._dropped(len(self._timers))
        self._timers.clear()
        self._layer._forget(self)
        return [TransactionTerminated(self)]

    def _fire(self, name: str, at: float) -> list[Output[FlowT]]:
        raise NotImplementedError

    def _transport_error(self) -> list[Output[FlowT]]:
        raise NotImplementedError


class ClientTransaction(Transaction[FlowT]):
    """A client transaction (RFC 3261 §17.1): sends a request, retransmits it over unreliable
    transports, and passes the responses up. ``ack`` is the ACK an INVITE client transaction built
    for a non-2xx final response, else ``None``."""

    __slots__ = ("ack",)

    is_client = True

    def __init__(
        self,
        layer: TransactionLayer[FlowT],
        request: Request,
        flow: FlowT,
        reliable: bool,
        now: float,
        key: Key,
    ) -> None:
        super().__init__(layer, request, flow, reliable, now, key)
        self.request: Request = request
        self.response = None
        self.ack: Request | None = None

    def _start(self, now: float) -> list[Output[FlowT]]:
        raise NotImplementedError

    def _on_response(self, response: Response, now: float) -> list[Output[FlowT]]:
        raise NotImplementedError

    def _transport_error(self) -> list[Output[FlowT]]:
        out: list[Output[FlowT]] = [TransportFailed(self)]
        out += self._terminate()
        return out


class InviteClientTransaction(ClientTransaction[FlowT]):
    """RFC 3261 Figure 5 with RFC 6026's Accepted state.

    Calling (Timer A retransmits, doubling, over unreliable transports; Timer B times out) ->
    Proceeding on 1xx (no retransmissions, no timeout: the TU cancels) -> Completed on 300-699 (ACK
    sent and re-sent for each retransmitted final response; Timer D) or Accepted on 2xx (every 2xx
    passed up; Timer M) -> Terminated.
    """

    __slots__ = ()

    is_invite = True

    def _start(self, now: float) -> list[Output[FlowT]]:
        config = self._layer.timers
        self.state = _CALLING
        if not self.reliable:
            self._interval = config.t1
            self._set("A", now + config.t1)
        self._set("B", now + config.timer_b)
        return [Send(self.request, self.flow, self)]

    def _on_response(self, response: Response, now: float) -> list[Output[FlowT]]:
        state = self.state
        status = response.status
        out: list[Output[FlowT]]
        if state is _CALLING or state is _PROCEEDING:
            self.response = response
            self._cancel("A", "B")
            out = [ResponseReceived(response, self)]
            if status < 200:
                self.state = _PROCEEDING
            elif status < 300:
                self.state = _ACCEPTED
                out += self._wait("M", self._layer.timers.timer_m, now)
            else:
                self.state = _COMPLETED
                self.ack = build_ack(self.request, response)
                out.append(Send(self.ack, self.flow, self))
                wait = 0.0 if self.reliable else self._layer.timers.timer_d
                out += self._wait("D", wait, now)
            return out
        if state is _COMPLETED and status >= 300 and self.ack is not None:
            return [Send(self.ack, self.flow, self)]
        if state is _ACCEPTED and 200 <= status < 300:
            self.response = response
            return [ResponseReceived(response, self)]
        return []

    def _fire(self, name: str, at: float) -> list[Output[FlowT]]:
        state = self.state
        if name == "A" and state is _CALLING:
            self._interval *= 2
            self._set("A", at + self._interval)
            return [Send(self.request, self.flow, self)]
        if name == "B" and state is _CALLING:
            return self._time_out()
        if (name == "D" and state is _COMPLETED) or (name == "M" and state is _ACCEPTED):
            return self._terminate()
        return []


class NonInviteClientTransaction(ClientTransaction[FlowT]):
    """RFC 3261 Figure 6.

    Trying (Timer E retransmits at T1, 2*T1, ... capped at T2 over unreliable transports; Timer F
    times out) -> Proceeding on 1xx (retransmissions go on, every T2) -> Completed on a final
    response (retransmitted responses absorbed; Timer K) -> Terminated.
    """

    __slots__ = ()

    def _start(self, now: float) -> list[Output[FlowT]]:
        config = self._layer.timers
        self.state = _TRYING
        if not self.reliable:
            self._interval = config.t1
            self._set("E", now + config.t1)
        self._set("F", now + config.timer_f)
        return [Send(self.request, self.flow, self)]

    def _on_response(self, response: Response, now: float) -> list[Output[FlowT]]:
        if self.state is not _TRYING and self.state is not _PROCEEDING:
            return []
        self.response = response
        out: list[Output[FlowT]] = [ResponseReceived(response, self)]
        if response.status < 200:
            self.state = _PROCEEDING
            return out
        self.state = _COMPLETED
        self._cancel("E", "F")
        wait = 0.0 if self.reliable else self._layer.timers.timer_k
        out += self._wait("K", wait, now)
        return out

    def _fire(self, name: str, at: float) -> list[Output[FlowT]]:
        state = self.state
        config = self._layer.timers
        if name == "E" and (state is _TRYING or state is _PROCEEDING):
            if state is _TRYING:
                self._interval = min(2 * self._interval, config.t2)
            else:
                self._interval = config.t2
            self._set("E", at + self._interval)
            return [Send(self.request, self.flow, self)]
        if name == "F" and (state is _TRYING or state is _PROCEEDING):
            return self._time_out()
        if name == "K" and state is _COMPLETED:
            return self._terminate()
        return []


class ServerTransaction(Transaction[FlowT]):
    """A server transaction (RFC 3261 §17.2): absorbs retransmitted requests (re-sending the last
    response where the state says so) and sends the TU's responses to the request's flow."""

    __slots__ = ()

    def __init__(
        self,
        layer: TransactionLayer[FlowT],
        request: Request,
        flow: FlowT,
        reliable: bool,
        now: float,
        key: Key,
    ) -> None:
        super().__init__(layer, request, flow, reliable, now, key)
        self.request: Request | None = request

    def _start(self, now: float, auto_trying: bool) -> list[Output[FlowT]]:
        raise NotImplementedError

    def _on_request(self, now: float) -> list[Output[FlowT]]:
        """A retransmission of the request arrived."""
        raise NotImplementedError

    def _on_ack(self, ack: Request, flow: FlowT, now: float) -> list[Output[FlowT]]:
        return []

    def _respond(self, response: Response, now: float) -> list[Output[FlowT]]:
        raise NotImplementedError

    def _transport_error(self) -> list[Output[FlowT]]:
        # RFC 6026 §8.8: inform the TU and remain in the current state.
        return [TransportFailed(self)]


class InviteServerTransaction(ServerTransaction[FlowT]):
    """RFC 3261 Figure 7 with RFC 6026's Accepted state.

    Proceeding (100 Trying sent at once when the layer's ``auto_trying`` is on; a retransmitted
    INVITE re-sends the last provisional response) -> Completed on a 300-699 from the TU (Timer G
    retransmits it over unreliable transports, doubling up to T2; a retransmitted INVITE re-sends
    it; Timer H times out) -> Confirmed on ACK (Timer I) -> Terminated; or Proceeding -> Accepted
    on a 2xx from the TU (the TU's 2xx retransmissions are sent, INVITEs absorbed, ACKs passed to
    the TU; Timer L) -> Terminated.
    """

    __slots__ = ("_ack_key",)

    is_invite = True

    def __init__(
        self,
        layer: TransactionLayer[FlowT],
        request: Request,
        flow: FlowT,
        reliable: bool,
        now: float,
        key: Key,
    ) -> None:
        super().__init__(layer, request, flow, reliable, now, key)
        self.response = None
        self._ack_key: Key | None = None

    def _start(self, now: float, auto_trying: bool) -> list[Output[FlowT]]:
        request = self.request
        assert request is not None  # an INVITE server transaction keeps its request
        self.state = _PROCEEDING
        out: list[Output[FlowT]] = []
        if auto_trying:
            # §8.2.6.1: a 100 copies the request's Timestamp; it gets no To tag.
            stamps = [("Timestamp", value) for value in request.headers.get_all("Timestamp")]
            trying = request.make_response(100, headers=stamps)
            self.response = trying
            out.append(Send(trying, self.flow, self))
        out.append(RequestReceived(request, self))
        return out

    def _on_request(self, now: float) -> list[Output[FlowT]]:
        if self.response is not None and (self.state is _PROCEEDING or self.state is _COMPLETED):
            return [Send(self.response, self.flow, self)]
        return []

    def _on_ack(self, ack: Request, flow: FlowT, now: float) -> list[Output[FlowT]]:
        if self.state is _COMPLETED:
            self.state = _CONFIRMED
            self._cancel("G", "H")
            wait = 0.0 if self.reliable else self._layer.timers.timer_i
            return self._wait("I", wait, now)
        if self.state is _ACCEPTED:
            return [AckReceived(ack, flow, self)]
        return []

    def _respond(self, response: Response, now: float) -> list[Output[FlowT]]:
        status = response.status
        config = self._layer.timers
        if self.state is _PROCEEDING:
            self.response = response
            out: list[Output[FlowT]] = [Send(response, self.flow, self)]
            if status < 200:
                return out
            if status < 300:
                self.state = _ACCEPTED
                out += self._wait("L", config.timer_l, now)
                return out
            self.state = _COMPLETED
            if not self.reliable:
                self._interval = config.t1
                self._set("G", now + config.t1)
            out += self._wait("H", config.timer_h, now)
            return out
        if self.state is _ACCEPTED and 200 <= status < 300:
            self.response = response
            return [Send(response, self.flow, self)]
        return []

    def _fire(self, name: str, at: float) -> list[Output[FlowT]]:
        state = self.state
        if name == "G" and state is _COMPLETED and self.response is not None:
            self._interval = min(2 * self._interval, self._layer.timers.t2)
            self._set("G", at + self._interval)
            return [Send(self.response, self.flow, self)]
        if name == "H" and state is _COMPLETED:
            return self._time_out()
        if (name == "I" and state is _CONFIRMED) or (name == "L" and state is _ACCEPTED):
            return self._terminate()
        return []


class NonInviteServerTransaction(ServerTransaction[FlowT]):
    """RFC 3261 Figure 8.

    Trying (retransmitted requests discarded) -> Proceeding on a 1xx from the TU (a retransmitted
    request re-sends it) -> Completed on a final response (a retransmitted request re-sends it;
    further final responses from the TU are discarded; Timer J) -> Terminated.

    In Completed it needs only its key, flow, final response and Timer J: it drops its request then,
    and keeps the final response as a :class:`SentResponse` once it went out (see the module's
    notes); a terminated one drops its response too. Timer J, its only timer, waits in the layer's
    first-in first-out queue of J deadlines (every one is ``now + timer_j``), not in the timer
    heap, and its deadline is kept in ``_interval`` and its place among timers started at the same
    time in ``_j_seq``: no timer dict and no heap entry of its own (about 350 octets less for each
    of tens of thousands).
    """

    __slots__ = ("_j_seq",)

    def __init__(
        self,
        layer: TransactionLayer[FlowT],
        request: Request,
        flow: FlowT,
        reliable: bool,
        now: float,
        key: Key,
    ) -> None:
        super().__init__(layer, request, flow, reliable, now, key)
        self._timers = _NO_TIMERS  # never given a heap timer (see _respond)
        self._j_seq = -1  # set when Timer J starts

    @property
    def deadlines(self) -> dict[str, float]:
        """The running timers: Timer J and when it fires, while Completed."""
        return {"J": self._interval} if self.state is _COMPLETED else {}

    def _start(self, now: float, auto_trying: bool) -> list[Output[FlowT]]:
        self.state = _TRYING
        request = self.request
        assert request is not None  # set at creation, dropped only with the final response
        return [RequestReceived(request, self)]

    def _on_request(self, now: float) -> list[Output[FlowT]]:
        response = self.response
        if response is None or (self.state is not _PROCEEDING and self.state is not _COMPLETED):
            return []
        return [Send(response, self.flow, self)]

    def _respond(self, response: Response, now: float) -> list[Output[FlowT]]:
        if self.state is not _TRYING and self.state is not _PROCEEDING:
            return []
        self.response = response
        out: list[Output[FlowT]] = [Send(response, self.flow, self)]
        if response.status < 200:
            self.state = _PROCEEDING
            return out
        self.state = _COMPLETED
        self.request = None  # only the final response is needed from now on
        if self.reliable:  # Timer J is 0: terminated at once
            out += self._fire("J", now)
            return out
        self._layer._to_slim.append(self)  # its response, once the transport has sent it
        duration = self._layer.timers.timer_j
        if duration <= 0:
            out += self._fire("J", now)
        else:
            self._interval = now + duration
            self._layer._schedule_j(self)
        return out

    def _fire(self, name: str, at: float) -> list[Output[FlowT]]:
        if name == "J" and self.state is _COMPLETED:
            return self._terminate()
        return []

    def _terminate(self) -> list[Output[FlowT]]:
        self.response = self.request = None  # a terminated transaction answers nothing
        return super()._terminate()


def _j_order(server: NonInviteServerTransaction[FlowT]) -> tuple[float, int]:
    """Where a Timer J falls among all timers: its deadline, then the order timers were started."""
    return (server._interval, server._j_seq)


# --- the layer ------------------------------------------------------------------------------------
class TransactionLayer(Generic[FlowT]):
    """The transactions of one SIP element, matched and timed without I/O.

    :param timers: the timer values (defaults: :class:`TimerConfig()`).
    :param auto_trying: send 100 Trying as soon as an INVITE server transaction is created
        (§17.2.1 requires it unless the TU answers within 200 ms).

    ``FlowT`` is whatever the transport uses to name a flow (an address pair, a connection object);
    the layer only stores it and hands it back. Each call returns its outputs in the order they
    happen (a new INVITE server transaction gives the :class:`Send` of its 100 Trying, then
    :class:`RequestReceived`; a 486 to an INVITE gives :class:`ResponseReceived`, then the
    :class:`Send` of the ACK). Transactions are dropped from the layer when they terminate, and a
    :class:`TransactionTerminated` says so.
    """

    def __init__(self, timers: TimerConfig | None = None, auto_trying: bool = True) -> None:
        self.timers = timers if timers is not None else TimerConfig()
        self.auto_trying = auto_trying
        self._clients: dict[Key, ClientTransaction[FlowT]] = {}
        self._servers: dict[Key, ServerTransaction[FlowT]] = {}
        self._acks_2543: dict[Key, InviteServerTransaction[FlowT]] = {}
        self._heap: list[tuple[float, int, Transaction[FlowT], str]] = []
        self._stale = 0  # heap entries whose timer was stopped or restarted
        self._seq = itertools.count()
        #: Completed non-INVITE server transactions waiting for Timer J, in the order of their
        #: (deadline, start) (each deadline is now + timer_j: appended in order as time goes on)
        self._timer_j: deque[NonInviteServerTransaction[FlowT]] = deque()
        #: non-INVITE server transactions whose final response was sent since the last call: they
        #: keep it as a SentResponse from the next one on (by then the transport has sent it)
        self._to_slim: list[NonInviteServerTransaction[FlowT]] = []

    def __len__(self) -> int:
        """How many transactions are alive."""
        return len(self._clients) + len(self._servers)

    def transactions(self) -> Iterator[Transaction[FlowT]]:
        """Every live transaction, client ones first."""
        yield from list(self._clients.values())
        yield from list(self._servers.values())

    # -- input from the transport ------------------------------------------------------------------
    def receive(
        self, message: Request | Response, flow: FlowT, reliable: bool, now: float
    ) -> list[Output[FlowT]]:
        """A message from the transport, with the flow it came on.

        A response goes to the client transaction it matches (§17.1.3: top Via branch and CSeq
        method), else it is a :class:`StrayResponse`. A request goes to the server transaction it
        matches (§17.2.3; RFC 2543 rules when the branch lacks the magic cookie), else it creates
        one (:class:`RequestReceived`) unless it is an ACK (:class:`AckReceived`). ``reliable``
        says whether the flow is reliable; it matters for the server transaction a request creates.
        Raises :class:`~imscore.sip.errors.ParseError` if a header matching needs is missing or
        malformed (a message from :func:`~imscore.sip.parse_datagram` always has them).
        """
        if self._to_slim:
            self._slim_sent()
        if isinstance(message, Response):
            client = self.find_client(message)
            if client is None:
                return [StrayResponse(message, flow)]
            return client._on_response(message, now)
        if message.method == "ACK":
            invite = self._match_ack(message)
            if invite is None:
                return [AckReceived(message, flow)]
            return invite._on_ack(message, flow, now)
        key = _server_key(message, message.method)
        server = self._servers.get(key)
        if server is not None:
            return server._on_request(now)
        return self._new_server(message, flow, reliable, now, key)

    def receive_new(
        self, request: Request, flow: FlowT, reliable: bool, now: float
    ) -> list[Output[FlowT]] | None:
        """What :meth:`receive` gives for a request (not an ACK) that matches no live server
        transaction, the one it creates; ``None``, with nothing done, when it matches one (the
        transaction :meth:`find_server` finds). The matching key is computed once for both."""
        assert request.method != "ACK"
        key = _server_key(request, request.method)
        if key in self._servers:
            return None
        if self._to_slim:
            self._slim_sent()
        return self._new_server(request, flow, reliable, now, key)

    def _new_server(
        self, request: Request, flow: FlowT, reliable: bool, now: float, key: Key
    ) -> list[Output[FlowT]]:
        """Create and start the server transaction of a request that matched none (its ``key``)."""
        server: ServerTransaction[FlowT]
        if request.method == "INVITE":
            invite = InviteServerTransaction(self, request, flow, reliable, now, key)
            if key[0] == "2543":
                invite._ack_key = _ack_key_2543(request)
                self._acks_2543[invite._ack_key] = invite
            server = invite
        else:
            server = NonInviteServerTransaction(self, request, flow, reliable, now, key)
        self._servers[key] = server
        return server._start(now, self.auto_trying)

    def retransmission(self, transaction: ServerTransaction[FlowT], now: float) -> list[Output[FlowT]]:
        """A retransmission of the request that created ``transaction``, which the caller recognised
        without parsing it (the same octets from the same source): what :meth:`receive` does with a
        request matching the transaction (re-send the last response where the state says so).

        Nothing for a transaction that has terminated or is not a server transaction of this layer
        (the caller should then hand the message to :meth:`receive`).
        """
        if self._to_slim:
            self._slim_sent()
        if (
            not isinstance(transaction, ServerTransaction)
            or transaction._layer is not self
            or transaction.terminated
        ):
            return []
        return transaction._on_request(now)

    def transport_error(self, transaction: Transaction[FlowT], now: float) -> list[Output[FlowT]]:
        """The transport failed to send for ``transaction`` (after any fail-over of §18 / RFC 3263).

        Gives :class:`TransportFailed`; a client transaction then terminates (§17.1.4), a server
        transaction stays in its state (RFC 6026 §8.8). An error for a transaction that has
        already terminated is ignored (transports report late).
        """
        if transaction.terminated or transaction._layer is not self:
            return []
        return transaction._transport_error()

    # -- input from the TU -------------------------------------------------------------------------
    def send_request(
        self, request: Request, flow: FlowT, reliable: bool, now: float, *, framed: bool = False
    ) -> tuple[ClientTransaction[FlowT], list[Output[FlowT]]]:
        """Create a client transaction for ``request`` and send it on ``flow``.

        The top Via must carry an RFC 3261 branch (see :func:`new_branch`) unused by another live
        client transaction of the same method; the layer never adds one. A CANCEL is sent this way
        too (:func:`build_cancel`). An ACK is not: the transaction sends the ACK for a non-2xx, the
        TU sends the ACK for a 2xx straight to the transport. Raises :class:`TransactionError`.

        The request's framing headers are checked (``check_framing_headers``) unless ``framed``
        says the caller knows they pass: the request was made from one that passed, with its
        From, To, Call-ID, CSeq and Content-Length lines and body unchanged, its method the same,
        and any Max-Forwards it set in range (a proxy's branch copy, or :func:`build_cancel` of
        one). The top Via is parsed either way.
        """
        if request.method == "ACK":
            raise TransactionError(
                "an ACK has no client transaction: hand the ACK for a 2xx to the transport"
            )
        try:
            if not framed:
                request.check_framing_headers()
            branch = request.top_via.branch
        except SipError as error:
            raise TransactionError(f"cannot send the request: {error.reason}") from error
        if branch is None:
            raise TransactionError("the top Via has no branch parameter (see new_branch())")
        if not is_rfc3261_branch(branch):
            raise TransactionError(f"the branch {branch[:40]!r} lacks the magic cookie z9hG4bK")
        key: Key = (branch.lower(), request.method)
        if key in self._clients:
            raise TransactionError(
                f"a {request.method} client transaction with branch {branch[:40]!r} is alive"
            )
        client: ClientTransaction[FlowT]
        if request.method == "INVITE":
            client = InviteClientTransaction(self, request, flow, reliable, now, key)
        else:
            client = NonInviteClientTransaction(self, request, flow, reliable, now, key)
        self._clients[key] = client
        return client, client._start(now)

    def respond(
        self, transaction: Transaction[FlowT], response: Response, now: float
    ) -> list[Output[FlowT]]:
        """Send ``response`` on a server transaction, to the flow its request came from.

        What the state machine does with it follows the RFC: a response after the final one is
        discarded (§17.2.2), except 2xx retransmissions in an INVITE transaction's Accepted state,
        which are sent (RFC 6026 §7.1). Raises :class:`TransactionError` when the transaction is not
        a live server transaction of this layer, or the response's CSeq or top Via branch is not
        the request's.
        """
        if self._to_slim:
            self._slim_sent()
        if not isinstance(transaction, ServerTransaction) or transaction._layer is not self:
            raise TransactionError("respond() takes a server transaction of this layer")
        if transaction.state is _TERMINATED:
            raise TransactionError(f"cannot respond on a terminated transaction {transaction!r}")
        try:
            cseq = response.cseq
            branch = response.top_via.branch
        except SipError as error:
            raise TransactionError(f"cannot send the response: {error.reason}") from error
        if cseq.seq != transaction.cseq or cseq.method != transaction.method:
            raise TransactionError(
                f"response CSeq {cseq} does not match {transaction.cseq} {transaction.method}"
            )
        expected = transaction.branch  # (an RFC 3261 one is kept case-folded already)
        if branch != expected and _lower(branch) != _lower(expected):
            raise TransactionError("the response's top Via branch is not the request's")
        return transaction._respond(response, now)

    # -- time --------------------------------------------------------------------------------------
    def advance(self, now: float) -> list[Output[FlowT]]:
        """Fire every timer due at ``now`` (deadline <= now), earliest first.

        A timer restarted when it fires counts from its deadline, not from ``now``, so calling
        this late fires every retransmission the schedule held, exactly as calling it at each
        deadline would.
        """
        if self._to_slim:
            self._slim_sent()
        out: list[Output[FlowT]] = []
        heap, queue = self._heap, self._timer_j
        while True:
            heap_due = bool(heap) and heap[0][0] <= now
            queue_due = bool(queue) and queue[0]._interval <= now
            if queue_due and (not heap_due or _j_order(queue[0]) < heap[0][:2]):
                server = queue.popleft()
                if server.state is _COMPLETED:  # else it terminated otherwise: a stale entry
                    out += server._fire("J", server._interval)
                continue
            if not heap_due:
                return out
            deadline, seq, transaction, name = heapq.heappop(heap)
            entry = transaction._timers.get(name)
            if entry is None or entry[1] != seq:
                self._stale -= 1
                continue
            del transaction._timers[name]
            out += transaction._fire(name, deadline)

    def next_deadline(self) -> float | None:
        """When the next timer falls due, or ``None`` when no timer runs."""
        queue = self._timer_j
        while queue and queue[0].state is not _COMPLETED:
            queue.popleft()  # terminated otherwise: a stale entry
        first_j = queue[0]._interval if queue else None
        heap = self._heap
        while heap:
            deadline, seq, transaction, name = heap[0]
            entry = transaction._timers.get(name)
            if entry is not None and entry[1] == seq:
                return deadline if first_j is None else min(deadline, first_j)
            heapq.heappop(heap)
            self._stale -= 1
        return first_j

    # -- look-ups ----------------------------------------------------------------------------------
    def find_client(self, response: Response) -> ClientTransaction[FlowT] | None:
        """The client transaction a response belongs to (§17.1.3), or ``None``."""
        branch = response.top_via.branch
        if branch is None:
            return None
        return self._clients.get((branch.lower(), response.cseq.method))

    def find_server(self, request: Request) -> ServerTransaction[FlowT] | None:
        """The server transaction a request matches (§17.2.3), or ``None``.

        An ACK finds the INVITE transaction it acknowledges; a CANCEL finds its own transaction
        (see :meth:`find_cancelled` for the one it cancels).
        """
        if request.method == "ACK":
            return self._match_ack(request)
        return self._servers.get(_server_key(request, request.method))

    def find_cancelled(self, cancel: Request) -> ServerTransaction[FlowT] | None:
        """The server transaction a CANCEL asks to cancel (§9.2), or ``None``.

        It is matched as §17.2.3 says, taking the CANCEL's method to be any but CANCEL and ACK.
        """
        probe = _server_key(cancel, "INVITE")
        found = self._servers.get(probe)
        if found is not None:
            return found
        head = probe[:-1]
        for key, server in self._servers.items():
            if key[:-1] == head and key[-1] not in ("CANCEL", "ACK"):
                return server
        return None

    def _match_ack(self, ack: Request) -> InviteServerTransaction[FlowT] | None:
        if is_rfc3261_branch(ack.top_via.branch):
            found = self._servers.get(_server_key(ack, "INVITE"))
            return found if isinstance(found, InviteServerTransaction) else None
        invite = self._acks_2543.get(_ack_key_2543(ack))
        response = None if invite is None else invite.response
        if not isinstance(response, Response):  # (an INVITE's is never kept as octets)
            return None
        if _lower(ack.to.tag) != _lower(response.to.tag):
            return None
        return invite

    # -- internals ---------------------------------------------------------------------------------
    def _slim_sent(self) -> None:
        """Let the transactions that sent a final response since the last call keep it as its
        octets (see :func:`_as_sent`)."""
        for server in self._to_slim:
            response = server.response
            if server.state is _COMPLETED and isinstance(response, Response):
                server.response = _as_sent(response)
        self._to_slim.clear()

    def _schedule(self, transaction: Transaction[FlowT], name: str, deadline: float) -> None:
        if name in transaction._timers:
            self._dropped(1)
        seq = next(self._seq)
        transaction._timers[name] = (deadline, seq)
        heapq.heappush(self._heap, (deadline, seq, transaction, name))

    def _schedule_j(self, server: NonInviteServerTransaction[FlowT]) -> None:
        """Start Timer J of ``server`` (its deadline in ``_interval``): appended to the queue, or
        put in its place in the rare case of a clock that went back (a caller's ``now`` smaller
        than before)."""
        server._j_seq = next(self._seq)
        queue = self._timer_j
        if queue and server._interval < queue[-1]._interval:
            bisect.insort(queue, server, key=_j_order)
        else:
            queue.append(server)

    def _dropped(self, count: int) -> None:
        """Count heap entries made stale; rebuild the heap (in place) when they are most of it,
        so stopped timers do not keep their transactions alive until their deadline."""
        self._stale += count
        heap = self._heap
        if self._stale > _COMPACT_MIN and 2 * self._stale > len(heap):
            heap[:] = [item for item in heap if item[2]._timers.get(item[3], (0.0, -1))[1] == item[1]]
            heapq.heapify(heap)
            self._stale = 0

    def _forget(self, transaction: Transaction[FlowT]) -> None:
        if isinstance(transaction, ClientTransaction):
            if self._clients.get(transaction.key) is transaction:
                del self._clients[transaction.key]
            return
        if self._servers.get(transaction.key) is transaction:
            del self._servers[transaction.key]
        if (
            isinstance(transaction, InviteServerTransaction)
            and transaction._ack_key is not None
            and self._acks_2543.get(transaction._ack_key) is transaction
        ):
            del self._acks_2543[transaction._ack_key]
