"""The server's transaction user, sans-IO: what the server answers, given the transaction layer.

The core hands deferred requests to the runtime (:attr:`ServerCore.waiting`: the registrar's, and
with a proxy attached every new request but CANCEL), routes the events of the proxy's branches to
the :class:`~imscore.proxy.core.ProxyCore`, refuses new work with 503 while :attr:`overloaded`, and
answers what is addressed to the server itself as a UAS does: OPTIONS with 200 (Allow, Supported),
and every other request as RFC 3261 says: 405 with Allow for a method it knows, 501 for one it does
not, 481 for a CANCEL that matches nothing, 416 for a Request-URI scheme it cannot use, 420 with
Unsupported for an extension it lacks, 400 for headers it cannot parse.

Like :mod:`imscore.sip`, this module does no I/O and reads no clock: :class:`ServerCore` takes
messages, flows and ``now`` and returns the :class:`~imscore.sip.transaction.Send` outputs.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from imscore.proxy.core import Action, Branch, NeedFlow, ProxyCore
from imscore.sip import Request, Response, SipError, SipUri, TelUri
from imscore.sip.transaction import (
    AckReceived,
    ClientTransaction,
    Output,
    RequestReceived,
    ResponseReceived,
    Send,
    ServerTransaction,
    StrayResponse,
    TimerConfig,
    Transaction,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimeout,
    TransportFailed,
)

__all__ = ["ALLOWED_METHODS", "KNOWN_METHODS", "ServerCore", "ServerCounters"]

FlowT = TypeVar("FlowT", bound=Hashable)

#: methods this server implements today
ALLOWED_METHODS: Final = ("OPTIONS", "ACK", "CANCEL")
#: methods of RFC 3261 and its extensions that the server knows (405 rather than 501)
KNOWN_METHODS: Final = frozenset(
    {
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "REGISTER",
        "OPTIONS",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "INFO",
        "REFER",
        "MESSAGE",
        "UPDATE",
    }
)
#: option tags the server supports (none yet: Path, outbound and GRUU arrive with the registrar)
SUPPORTED_OPTIONS: Final[tuple[str, ...]] = ()


@dataclass
class ServerCounters:
    """What the core answered, by status code, and what it ignored."""

    answered: dict[int, int] = field(default_factory=dict)
    #: new requests refused with 503 while overloaded
    shed: int = 0
    stray_acks: int = 0
    #: requests whose handling met a header that does not parse (answered with its status)
    parse_errors: int = 0
    other_outputs: int = 0

    def count(self, status: int) -> None:
        self.answered[status] = self.answered.get(status, 0) + 1


class ServerCore(Generic[FlowT]):
    """The transaction layer plus the decisions of a UAS that implements OPTIONS.

    :param timers: RFC 3261 timer values.
    :param server_name: the ``Server`` header value, or ``None`` for none.
    """

    def __init__(
        self,
        timers: TimerConfig | None = None,
        server_name: str | None = None,
        *,
        deferred: frozenset[str] = frozenset(),
    ) -> None:
        self.layer: TransactionLayer[FlowT] = TransactionLayer(timers)
        self.server_name = server_name
        self.counters = ServerCounters()
        #: methods answered elsewhere (e.g. REGISTER by the registrar): their new server
        #: transactions wait in :attr:`waiting` until :meth:`respond` is called
        self.deferred = deferred
        self.allowed = (*ALLOWED_METHODS, *sorted(deferred))
        self.waiting: list[tuple[ServerTransaction[FlowT], Request]] = []
        #: the forking proxy, when the server proxies (its branches' events go to it)
        self.proxy: ProxyCore[FlowT] | None = None
        #: branches waiting for a flow, for the runtime to resolve (see :class:`NeedFlow`)
        self.flows_needed: list[Branch[FlowT]] = []
        #: ACKs for 2xx responses (no transaction), for the runtime to route end to end
        self.acks: list[tuple[Request, FlowT]] = []
        #: responses that matched no client transaction (a 2xx retransmitted after the branch
        #: ended): a proxy forwards them statelessly (§16.7 step 1 / §16.11)
        self.strays: list[Response] = []
        #: when set, every new request except CANCEL waits in :attr:`waiting` (the proxy decides)
        self.defer_all = False
        #: set by the runtime while the server cannot keep up (see imscore.server.overload): new
        #: out-of-dialog requests are then answered 503 with Retry-After
        self.overloaded = False
        #: the Retry-After (seconds) of those 503s
        self.retry_after = 5
        #: client transactions whose outcome someone waits for (e.g. qualification OPTIONS):
        #: called once with the final status, or 0 when none came (timeout, transport failure)
        self.watchers: dict[ClientTransaction[FlowT], Callable[[int], None]] = {}

    def receive(
        self, message: Request | Response, flow: FlowT, reliable: bool, now: float
    ) -> list[Send[FlowT]]:
        """A message from the transport (already framed and checked); returns what to send."""
        return self._handle(self.layer.receive(message, flow, reliable, now), now)

    def send_request(
        self,
        request: Request,
        flow: FlowT,
        reliable: bool,
        now: float,
        *,
        on_final: Callable[[int], None] | None = None,
    ) -> list[Send[FlowT]]:
        """Start a client transaction for a request the server originates (a NOTIFY, an OPTIONS
        ping); ``on_final`` is called with its final status, or 0 when none came (timeout or
        transport failure)."""
        client, outputs = self.layer.send_request(request, flow, reliable, now)
        if on_final is not None:
            self.watchers[client] = on_final
        return self._handle(outputs, now)

    def _watched(self, transaction: Transaction[FlowT], status: int) -> bool:
        if not isinstance(transaction, ClientTransaction):
            return False
        watcher = self.watchers.pop(transaction, None)
        if watcher is None:
            return False
        watcher(status)
        return True

    def respond(
        self, transaction: ServerTransaction[FlowT], response: Response, now: float
    ) -> list[Send[FlowT]]:
        """The final response to a deferred request; returns what to send."""
        self.counters.count(response.status)
        return self._handle(self.layer.respond(transaction, response, now), now)

    def receive_retransmission(
        self, transaction: ServerTransaction[FlowT], now: float
    ) -> list[Send[FlowT]]:
        """A retransmission of ``transaction``'s request, recognised before parsing; what to send."""
        return self._handle(self.layer.retransmission(transaction, now), now)

    def receive_transport_error(self, transaction: Transaction[FlowT], now: float) -> list[Send[FlowT]]:
        """The transport could not send for ``transaction``; returns what to send instead."""
        return self._handle(self.layer.transport_error(transaction, now), now)

    def next_deadline(self) -> float | None:
        deadline = self.layer.next_deadline()
        if self.proxy is not None:
            other = self.proxy.next_deadline()
            if other is not None and (deadline is None or other < deadline):
                return other
        return deadline

    def advance(self, now: float) -> list[Send[FlowT]]:
        """Fire the timers due at ``now`` (transactions and the proxy's ring timers)."""
        sends = self._handle(self.layer.advance(now), now)
        if self.proxy is not None:
            sends += self.proxied(self.proxy.advance(now))
        return sends

    def proxied(self, actions: Sequence[Action[FlowT]]) -> list[Send[FlowT]]:
        """Sort the proxy's actions: sends are returned, branches needing a flow are queued."""
        sends: list[Send[FlowT]] = []
        for action in actions:
            if isinstance(action, NeedFlow):
                self.flows_needed.append(action.branch)
            else:
                sends.append(action)
        return sends

    def _handle(self, outputs: Sequence[Output[FlowT]], now: float) -> list[Send[FlowT]]:
        sends: list[Send[FlowT]] = []
        proxy = self.proxy
        for output in outputs:
            if isinstance(output, Send):
                sends.append(output)
            elif isinstance(output, RequestReceived):
                request = output.request
                if self.overloaded and self._shed(request):
                    busy = self.layer.respond(output.transaction, self._busy(request), now)
                    sends.extend(self._handle(busy, now))
                    continue
                if request.method in self.deferred or (self.defer_all and request.method != "CANCEL"):
                    self.waiting.append((output.transaction, request))
                    continue
                try:
                    response = self.answer(request)
                except SipError as error:  # a header first read here: its status
                    refusal = self.refusal(request, error)
                    if refusal is None:
                        continue
                    response = refusal
                sends.extend(self._handle(self.layer.respond(output.transaction, response, now), now))
                if proxy is not None and request.method == "CANCEL" and response.status == 200:
                    cancelled = self.layer.find_cancelled(request)
                    if cancelled is not None and proxy.handles(cancelled):
                        reason = request.headers.get("Reason")
                        sends += self.proxied(proxy.on_cancel(cancelled, now, reason))
            elif isinstance(output, AckReceived):
                if proxy is not None:
                    self.acks.append((output.request, output.flow))
                else:
                    self.counters.stray_acks += 1  # an ACK for a 2xx we never sent: nothing to do
            elif isinstance(output, ResponseReceived) and output.transaction in self.watchers:
                if output.response.status >= 200:
                    self._watched(output.transaction, output.response.status)
            elif isinstance(output, TransactionTimeout | TransportFailed) and self._watched(
                output.transaction, 0
            ):
                pass  # a watched request got no answer (timeout or transport failure)
            elif proxy is not None and isinstance(output, StrayResponse):
                self.strays.append(output.response)
            elif proxy is not None and isinstance(output, ResponseReceived):
                sends += self.proxied(proxy.on_response(output.transaction, output.response, now))
            elif proxy is not None and isinstance(output, TransactionTimeout):
                if isinstance(output.transaction, ClientTransaction):
                    sends += self.proxied(proxy.on_timeout(output.transaction, now))
            elif proxy is not None and isinstance(output, TransportFailed):
                if isinstance(output.transaction, ClientTransaction):
                    sends += self.proxied(proxy.on_transport_failed(output.transaction, now))
            elif proxy is not None and isinstance(output, TransactionTerminated):
                ended = output.transaction
                if isinstance(ended, ClientTransaction):
                    self.watchers.pop(ended, None)
                    proxy.on_terminated(ended)
                elif isinstance(ended, ServerTransaction):
                    proxy.on_server_terminated(ended)
            else:
                self.counters.other_outputs += 1
        return sends

    # -- overload ---------------------------------------------------------------------------------
    @staticmethod
    def _shed(request: Request) -> bool:
        """Whether to refuse ``request`` while overloaded: new out-of-dialog work only. CANCEL and
        in-dialog requests (To tag: BYE, re-INVITE, NOTIFY …) finish what is in progress. REGISTER
        is served too: it is cheap next to a fork, a backlog of them drains (a burst of
        registrations after an outage is normal), and refusing them breeds re-registration storms."""
        if request.method in ("CANCEL", "ACK", "REGISTER"):
            return False
        try:
            return request.to.tag is None
        except SipError:
            return False  # let the normal path answer the bad header

    def _busy(self, request: Request) -> Response:
        self.counters.shed += 1
        return self.reply(request, 503, "Overloaded", [("Retry-After", self.retry_after)])

    # -- decisions --------------------------------------------------------------------------------
    def answer(self, request: Request) -> Response:
        """The final response to a new request, following RFC 3261 §8.2 in order."""
        status, reason, extra = self._decide(request)
        return self.reply(request, status, reason, extra)

    def reply(
        self,
        request: Request,
        status: int,
        reason: str | None = None,
        headers: Sequence[tuple[str, object]] = (),
    ) -> Response:
        """A response the server makes itself: ``headers``, then Server; a fresh To tag when the
        request has none; counted in :attr:`counters`."""
        fields = list(headers)
        if self.server_name:
            fields.append(("Server", self.server_name))
        self.counters.count(status)
        return request.make_response(status, reason, fields, to_tag=secrets.token_hex(6))

    def refusal(self, request: Request, error: SipError) -> Response | None:
        """The answer to a request whose handling met ``error`` (a header that does not parse):
        its status, counted; ``None`` when not even the response can be built (its Via, From, To,
        Call-ID or CSeq do not parse either): the request is then dropped."""
        self.counters.parse_errors += 1
        try:
            return self.reply(request, error.status, error.phrase)
        except SipError:
            return None

    def _decide(self, request: Request) -> tuple[int, str | None, list[tuple[str, object]]]:
        allow: list[tuple[str, object]] = [("Allow", ", ".join(self.allowed))]
        try:
            request.validate()
        except SipError as error:
            return error.status, error.phrase, []
        if not isinstance(request.uri, SipUri | TelUri):
            return 416, None, []
        method = request.method
        if method not in ("ACK", "CANCEL"):
            unsupported = [tag for tag in request.require if tag.lower() not in SUPPORTED_OPTIONS]
            if unsupported:
                return 420, None, [("Unsupported", ", ".join(unsupported))]
        if method == "OPTIONS":
            return 200, None, [*allow, ("Supported", ", ".join(SUPPORTED_OPTIONS))]
        if method == "CANCEL":
            # RFC 3261 §9.2: 200 when the CANCEL matches a transaction (every INVITE here has its
            # final answer already, so there is nothing more to do), 481 when it matches none
            return (200 if self.layer.find_cancelled(request) is not None else 481), None, []
        if method in KNOWN_METHODS:
            return 405, None, allow
        return 501, None, allow
