"""The stateful forking proxy of RFC 3261 §16, sans-IO.

:class:`ProxyCore` takes a request that the server's transaction layer received (with its server
transaction), the branch groups to try (from the binding store and the forking hook, looked up by
the caller), and ``now``; it gives what to send and what it needs resolved. It never does I/O and
never reads a clock:

* a new branch needs a flow to be sent on: the core emits :class:`NeedFlow`; the caller works the
  destination out (a flow recorded at registration, a numeric address, DNS, a new connection) and
  calls :meth:`ProxyCore.send_branch` or :meth:`ProxyCore.branch_failed`;
* responses, timeouts and transport failures of the branches' client transactions come in through
  :meth:`on_response`, :meth:`on_timeout` and :meth:`on_transport_failed`; a CANCEL from upstream
  through :meth:`on_cancel`; group ring timers through :meth:`advance` / :meth:`next_deadline`.

Groups are tried one after another and the targets of a group in parallel, which covers parallel
forking (one group), sequential forking by q (one group per q value) and hunting (one target per
group, each with its ring timer). When a group's timer runs out its unanswered INVITE branches are
CANCELled and the next group starts. A 2xx or a 6xx ends the search: other branches are CANCELled
(with ``Reason: SIP;cause=200;text="Call completed elsewhere"`` after a 2xx, RFC 3326) and no other
group starts. Every 2xx to an INVITE is forwarded; otherwise the best final response is chosen as
§16.7 says once every branch has its answer (a 408 when none answered).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from imscore.sip import Request, Response, SipError
from imscore.sip.transaction import (
    ClientTransaction,
    Output,
    Send,
    ServerTransaction,
    TransactionLayer,
    build_cancel,
)

from .aggregate import best_response_index, merge_challenges

__all__ = [
    "COMPLETED_ELSEWHERE",
    "TIMER_C",
    "Action",
    "Branch",
    "Destination",
    "ForkContext",
    "NeedFlow",
    "ProxyCore",
    "Target",
    "loop_key",
]

FlowT = TypeVar("FlowT", bound=Hashable)

#: The Reason header of a CANCEL sent because another branch answered (RFC 3326, RFC 3261 §16.7).
COMPLETED_ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'
#: Timer C (§16.6 step 11): longest an INVITE branch may ring without a final answer.
TIMER_C = 180.0


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a branch goes: the URI to resolve (top Route, else the Request-URI) and, when the
    registrar recorded one, the flow the device registered on (RFC 5626: behind a NAT, or an open
    TCP/TLS connection, requests go down that flow rather than to the Contact address).

    :param uri: the URI to resolve (RFC 3263) when no flow is used.
    :param flow: the recorded flow (opaque here; the runtime knows its shape), or ``None``.
    """

    uri: str
    flow: object | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """One branch to create: its Request-URI, the Route set to push (the binding's Path, RFC
    3327) and where to send it.

    :param uri: the new Request-URI (a registered contact, or the original Request-URI).
    :param route: Route header values to put first (Path of the binding), in order.
    :param destination: where to send it.
    :param label: a name for logs and tests (e.g. the device's instance id or contact).
    :param answer_timeout: seconds to wait for the branch's first response (a 100 Trying counts)
        before it counts as not reached (an application server's shorter timer); ``None``: only
        the transaction's Timer B/F.
    :param unreached: an opaque continuation: when the branch is not reached (no response, a
        transport failure, a 408 or a 5xx before any provisional response), the proxy asks
        :attr:`ProxyCore.on_unreached` whether the caller routes the request on instead
        (:meth:`ProxyCore.reroute`); ``None``: the branch's failure counts as any other.
    """

    uri: str
    route: tuple[str, ...] = ()
    destination: Destination | None = None
    label: str = ""
    answer_timeout: float | None = None
    unreached: object | None = None


@dataclass(eq=False)
class Branch(Generic[FlowT]):
    """One forwarded copy of the request (§16.6) and what became of it."""

    context: ForkContext[FlowT]
    index: int
    target: Target
    request: Request
    group: int
    transaction: ClientTransaction[FlowT] | None = None
    flow: FlowT | None = None
    reliable: bool = False
    provisional: bool = False
    response: Response | None = None
    #: set when a CANCEL is wanted before any provisional response arrived (§9.1: wait for one)
    cancel_pending: bool = False
    #: the Reason that CANCEL will carry
    cancel_reason: str | None = None
    cancelled: bool = False
    #: the proxy stopped waiting for this branch (ring timer ran out, or the fork ended before it
    #: rang); a provisional response arriving later still gets its CANCEL
    abandoned: bool = False
    #: a final response arrived from the network on this branch
    got_final: bool = False
    #: the caller's failover state for this branch (RFC 3263 §4.3: e.g. the DNS target list)
    targets: object | None = None
    #: how many targets were tried
    attempts: int = 0
    #: when the branch counts as not reached without a first response (Target.answer_timeout)
    answer_deadline: float | None = None

    @property
    def final(self) -> bool:
        """Whether this branch has its outcome (a final response, a timeout or an abandonment)."""
        return self.abandoned or (self.response is not None and self.response.status >= 200)


@dataclass(eq=False)
class ForkContext(Generic[FlowT]):
    """The response context of one proxied request (§16.7)."""

    server: ServerTransaction[FlowT]
    request: Request
    groups: list[tuple[tuple[Target, ...], float | None]]
    is_invite: bool
    loop: str
    group_index: int = -1
    group_deadline: float | None = None
    branches: list[Branch[FlowT]] = field(default_factory=list)
    answered: bool = False
    final_sent: bool = False
    cancelled: bool = False
    stopped: bool = False
    reason: str | None = None
    #: the first final response went upstream (and :attr:`ProxyCore.on_final` was told)
    reported: bool = False
    #: the caller works out where the request goes instead of an unreached branch
    #: (:meth:`ProxyCore.reroute`): no answer goes upstream meanwhile
    rerouting: bool = False
    #: the flow the request came on
    inbound: object | None = None
    #: the request passed ``check_framing_headers`` when the fork started, with a Max-Forwards
    #: (if any) of at least 1: so do its branch copies and their CANCELs, which keep its framing
    #: lines (the transaction layer need not check them again)
    framed: bool = False

    def pending(self) -> list[Branch[FlowT]]:
        return [b for b in self.branches if not b.final]


@dataclass(frozen=True, slots=True)
class NeedFlow(Generic[FlowT]):
    """A branch waits for a flow: resolve ``branch.target.destination`` and call
    :meth:`ProxyCore.send_branch` (or :meth:`ProxyCore.branch_failed`)."""

    branch: Branch[FlowT]


#: What the proxy asks of its caller: send a message, or find a flow for a branch.
Action = Send[FlowT] | NeedFlow[FlowT]


def _framed(request: Request) -> bool:
    """Whether ``request``'s framing headers pass (warm parse caches make this cheap for a request
    the transport checked) and its Max-Forwards, if any, leaves a branch copy one in range."""
    try:
        request.check_framing_headers()
        forwards = request.max_forwards
    except SipError:
        return False
    return forwards is None or forwards >= 1


def loop_key(request: Request, upstream_via: str) -> str:
    """The loop-detection part of our branch parameter (§16.6 step 8): a digest of what identifies
    the request as it arrived — Request-URI, From tag, To tag, Call-ID, CSeq number, the Via we
    received it with, Proxy-Require and Proxy-Authorization."""
    parts = (
        str(request.uri),
        request.from_.tag or "",
        request.to.tag or "",
        request.call_id,
        str(request.cseq.seq),
        upstream_via.strip(),
        ",".join(request.headers.get_all("Proxy-Require")),
        ",".join(request.headers.get_all("Proxy-Authorization")),
    )
    return hashlib.blake2s(
        "\n".join(parts).encode("utf-8", "surrogateescape"), digest_size=8
    ).hexdigest()


class ProxyCore(Generic[FlowT]):
    """Forks requests over the transaction layer and aggregates their responses.

    :param layer: the element's transaction layer (shared with the UAS and registrar parts).
    :param sent_by: gives our Via sent-by ``(transport, host, port)`` for a flow a branch leaves on.
    :param record_route: the Record-Route value to insert (``None``: do not record-route).
    :param server_name: the Server header of responses the proxy makes itself (408, 483 …).
    """

    def __init__(
        self,
        layer: TransactionLayer[FlowT],
        sent_by: Callable[[FlowT], tuple[str, str, int]],
        *,
        record_route: Callable[[FlowT, Request], str | None] | None = None,
        server_name: str | None = None,
        can_retry: Callable[[Branch[FlowT]], bool] | None = None,
        on_answer: Callable[[Branch[FlowT], Response], None] | None = None,
    ) -> None:
        self.layer = layer
        self.sent_by = sent_by
        #: asked when a branch times out, fails to send or gets a 503 before any provisional
        #: response: ``True`` when another target is left to try (RFC 3263 §4.3 failover)
        self.can_retry = can_retry
        #: told of every 2xx a branch forwards (the runtime learns the dialog's remote target)
        self.on_answer = on_answer
        #: told of the first final response of each forked request as it goes upstream (the
        #: runtime logs and counts the outcome)
        self.on_final: Callable[[ForkContext[FlowT], Response], None] | None = None
        #: asked when a branch whose target has an ``unreached`` continuation was not reached:
        #: ``True`` when the caller will route the request on (and call :meth:`reroute`)
        self.on_unreached: Callable[[Branch[FlowT]], bool] | None = None
        self.record_route = record_route
        self.server_name = server_name
        self._by_client: dict[ClientTransaction[FlowT], Branch[FlowT]] = {}
        self._by_server: dict[ServerTransaction[FlowT], ForkContext[FlowT]] = {}
        self._counter = 0
        #: what the proxy did, for logs and tests
        self.stats: dict[str, int] = {
            "forked": 0,
            "branches": 0,
            "cancels_sent": 0,
            "responses_forwarded": 0,
            "failovers": 0,
        }

    # -- starting ----------------------------------------------------------------------------------
    def start(
        self,
        server: ServerTransaction[FlowT],
        request: Request,
        groups: Sequence[tuple[Sequence[Target], float | None]],
        now: float,
        *,
        inbound: FlowT | None = None,
    ) -> list[Action[FlowT]]:
        """Fork ``request`` (already route-processed, §16.4) to ``groups``.

        :param server: the server transaction the request created.
        :param request: the request as received, after the proxy removed its own Route entry.
        :param groups: ``(targets, timeout)`` pairs: the targets of a group are tried at once; the
            timeout (seconds, ``None`` for Timer C on INVITE) bounds how long a group rings.
        :param inbound: the flow the request came on (for the Record-Route value).
        """
        vias = request.headers.values("Via")
        upstream_via = vias[0] if vias else ""
        context: ForkContext[FlowT] = ForkContext(
            server=server,
            request=request,
            groups=[(tuple(targets), timeout) for targets, timeout in groups if targets],
            is_invite=request.method == "INVITE",
            loop=loop_key(request, upstream_via),
            inbound=inbound,
        )
        context.framed = _framed(request)
        if self.record_route is not None and inbound is not None:
            value = self.record_route(inbound, request)
            if value is not None:
                request.headers.prepend("Record-Route", value)
        self._by_server[server] = context
        self.stats["forked"] += 1
        out: list[Action[FlowT]] = []
        if not context.groups:
            out += self._finish(context, now)
            return out
        out += self._next_group(context, now)
        return out

    def _next_group(self, context: ForkContext[FlowT], now: float) -> list[Action[FlowT]]:
        context.group_index += 1
        if context.group_index >= len(context.groups):
            context.group_deadline = None
            return []
        targets, timeout = context.groups[context.group_index]
        if timeout is None and context.is_invite:
            timeout = TIMER_C
        context.group_deadline = None if timeout is None else now + timeout
        out: list[Action[FlowT]] = []
        for target in targets:
            branch = Branch(
                context=context,
                index=len(context.branches),
                target=target,
                request=self._copy_for(context.request, target),
                group=context.group_index,
            )
            context.branches.append(branch)
            self.stats["branches"] += 1
            out.append(NeedFlow(branch))
        return out

    @staticmethod
    def _copy_for(request: Request, target: Target) -> Request:
        """§16.6 steps 1-7: copy, new Request-URI, Max-Forwards decremented, Route pushed."""
        headers = request.headers.copy()
        forwards = request.max_forwards
        headers.set("Max-Forwards", 70 if forwards is None else forwards - 1)
        if target.route:
            existing = headers.get_all("Route")
            headers.remove("Route")
            for value in (*target.route, *existing):
                headers.add("Route", value)
        return Request(request.method, target.uri, headers, request.body)

    # -- sending a branch --------------------------------------------------------------------------
    def send_branch(
        self, branch: Branch[FlowT], flow: FlowT, reliable: bool, now: float
    ) -> list[Action[FlowT]]:
        """The caller found ``flow`` for a branch: add our Via and start its client transaction."""
        context = branch.context
        if branch.final or context.stopped:
            branch.abandoned = True
            return self._settle(context, now)
        transport, host, port = self.sent_by(flow)
        self._counter += 1
        tag = f"z9hG4bK{context.loop}.{self._counter}"
        via = f"SIP/2.0/{transport.upper()} {host}:{port};branch={tag};rport"
        branch.request.headers.prepend("Via", via)
        branch.flow = flow
        branch.reliable = reliable
        if branch.target.answer_timeout is not None and not branch.provisional:
            branch.answer_deadline = now + branch.target.answer_timeout
        try:
            client, outputs = self.layer.send_request(
                branch.request, flow, reliable, now, framed=context.framed
            )
        except SipError as error:  # a header we must copy cannot be parsed: that branch fails
            return self.branch_failed(branch, 500, f"Cannot forward: {error.reason}", now)
        branch.transaction = client
        self._by_client[client] = branch
        return self._sends(outputs)

    def branch_failed(
        self, branch: Branch[FlowT], status: int, reason: str, now: float
    ) -> list[Action[FlowT]]:
        """No flow could be found for a branch (unresolvable, unreachable): it answers ``status``."""
        if branch.final:
            return []
        branch.response = self._local_response(branch.context.request, status, reason)
        return self._after_final(branch, now)

    # -- events from the transaction layer ---------------------------------------------------------
    def owns(self, client: ClientTransaction[FlowT]) -> bool:
        """Whether ``client`` is a branch of this proxy."""
        return client in self._by_client

    def handles(self, server: ServerTransaction[FlowT]) -> bool:
        """Whether ``server`` is a request this proxy is forking."""
        return server in self._by_server

    def on_response(
        self, client: ClientTransaction[FlowT], response: Response, now: float
    ) -> list[Action[FlowT]]:
        """A response on a branch (§16.7)."""
        branch = self._by_client.get(client)
        if branch is None:
            return []  # e.g. the 200 to a CANCEL we sent
        context = branch.context
        status = response.status
        out: list[Action[FlowT]] = []
        branch.answer_deadline = None
        if status < 200:
            first = not branch.provisional
            branch.provisional = True
            if first and branch.cancel_pending and context.is_invite:
                out += self._cancel(branch, now, branch.cancel_reason)
            if status > 100 and not context.final_sent and not context.answered and not branch.abandoned:
                out += self._forward(context, response, now)
            return out
        branch.got_final = True
        if 200 <= status < 300:
            branch.response = response
            if self.on_answer is not None:
                self.on_answer(branch, response)
            # every 2xx to an INVITE goes upstream (§16.7 step 5); of a non-INVITE only the first
            if context.is_invite or not (context.answered or context.final_sent):
                out += self._forward(context, response, now)
            if not context.answered:
                context.answered = True
                context.stopped = True
                context.group_deadline = None
                out += self._cancel_pending(context, now, COMPLETED_ELSEWHERE)
            out += self._settle(context, now)
            return out
        if branch.final and not branch.abandoned:
            return out  # a retransmitted final (the transaction absorbs most)
        if branch.abandoned:
            return out
        if status == 503 and self._failover(branch, client):  # §4.3: a 503 moves to the next target
            return [NeedFlow(branch)]
        branch.response = response
        return self._after_final(branch, now)

    def on_timeout(self, client: ClientTransaction[FlowT], now: float) -> list[Action[FlowT]]:
        """Timer B or F fired on a branch: it counts as a 408 (§16.7 step 2)."""
        branch = self._by_client.get(client)
        if branch is None or branch.final:
            return []
        if self._failover(branch, client):
            return [NeedFlow(branch)]
        branch.response = self._local_response(branch.context.request, 408, "Request Timeout")
        return self._after_final(branch, now)

    def on_transport_failed(self, client: ClientTransaction[FlowT], now: float) -> list[Action[FlowT]]:
        """The transport could not send a branch: it counts as a 503 (§16.9)."""
        branch = self._by_client.get(client)
        if branch is None or branch.final:
            return []
        if self._failover(branch, client):
            return [NeedFlow(branch)]
        branch.response = self._local_response(branch.context.request, 503, "Service Unavailable")
        return self._after_final(branch, now)

    def on_terminated(self, client: ClientTransaction[FlowT]) -> None:
        """A branch's client transaction ended: forget it (its context may live on)."""
        self._by_client.pop(client, None)

    def on_server_terminated(self, server: ServerTransaction[FlowT]) -> None:
        """The server transaction ended: the context is done."""
        self._by_server.pop(server, None)

    def on_cancel(
        self, server: ServerTransaction[FlowT], now: float, reason: str | None = None
    ) -> list[Action[FlowT]]:
        """A CANCEL matched a request being forked (§16.10): cancel every pending branch (copying
        the CANCEL's ``Reason``, RFC 3326); no new group starts. The final response still comes
        from the branches (487 typically)."""
        context = self._by_server.get(server)
        if context is None or context.final_sent:
            return []
        context.cancelled = True
        context.reason = reason
        context.stopped = True
        context.group_deadline = None
        out = self._cancel_pending(context, now, None)
        out += self._settle(context, now)
        return out

    # -- time --------------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """The earliest group ring timer, ``None`` when none runs."""
        earliest: float | None = None
        for context in self._by_server.values():  # one pass, no lists: it runs after every message
            deadline = context.group_deadline
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
            for branch in context.branches:
                deadline = branch.answer_deadline
                if deadline is not None and (earliest is None or deadline < earliest):
                    earliest = deadline
        return earliest

    def advance(self, now: float) -> list[Action[FlowT]]:
        """Fire the group timers due at ``now``: the group's pending branches are CANCELled (or,
        without a provisional response yet, abandoned) and the next group starts."""
        out: list[Action[FlowT]] = []
        for context in list(self._by_server.values()):
            out += self._answer_timeouts(context, now)
            if context.group_deadline is None or context.group_deadline > now:
                continue
            context.group_deadline = None
            for branch in context.pending():
                if branch.group != context.group_index:
                    continue
                if context.is_invite:
                    out += self._cancel(branch, now)
                branch.abandoned = True
                if branch.response is None:
                    branch.response = self._local_response(context.request, 408, "Request Timeout")
            out += self._next_group(context, now)
            out += self._settle(context, now)
        return out

    def _answer_timeouts(self, context: ForkContext[FlowT], now: float) -> list[Action[FlowT]]:
        """Branches whose first response did not come within their target's answer timeout: not
        reached (a 408); an INVITE is CANCELled should it ring later."""
        out: list[Action[FlowT]] = []
        for branch in context.branches:
            deadline = branch.answer_deadline
            if deadline is None or deadline > now:
                continue
            branch.answer_deadline = None
            if branch.final or branch.provisional:
                continue
            if context.is_invite:
                out += self._cancel(branch, now)
            branch.abandoned = True
            branch.response = self._local_response(context.request, 408, "Request Timeout")
            out += self._after_final(branch, now)
        return out

    def reroute(
        self,
        context: ForkContext[FlowT],
        groups: Sequence[tuple[Sequence[Target], float | None]],
        now: float,
        status: int | None = None,
        reason: str | None = None,
    ) -> list[Action[FlowT]]:
        """Where the request goes instead of an unreached branch (:attr:`on_unreached` said the
        caller would tell): ``groups`` are tried next, or ``status`` answers upstream."""
        context.rerouting = False
        if context.final_sent or context.server.terminated:
            return []
        if context.stopped or status is not None or not groups:
            if status is not None and not context.stopped:
                context.final_sent = True
                context.group_deadline = None
                self._by_server.pop(context.server, None)
                response = self._local_response(context.request, status, reason)
                return self._forward(context, response, now)
            return self._settle(context, now)
        added = [(tuple(targets), timeout) for targets, timeout in groups if targets]
        context.groups[context.group_index + 1 : context.group_index + 1] = added
        return self._settle(context, now)

    def _unreached(self, branch: Branch[FlowT]) -> bool:
        """The branch was not reached and the caller routes the request on instead: its failure
        no longer counts (§16.7 sees only the branches that follow)."""
        context = branch.context
        response = branch.response
        if (
            branch.target.unreached is None
            or self.on_unreached is None
            or branch.provisional
            or context.stopped
            or response is None
            or not (response.status == 408 or response.status >= 500)
        ):
            return False
        if not self.on_unreached(branch):
            return False
        branch.response = None
        branch.abandoned = True
        context.rerouting = True
        return True

    # -- internals ---------------------------------------------------------------------------------
    def _failover(self, branch: Branch[FlowT], client: ClientTransaction[FlowT]) -> bool:
        """Prepare ``branch`` for its next target when the caller has one (RFC 3263 §4.3): only
        before any provisional response, and not once the fork is stopped. The branch request
        loses our Via (a new one, with a new branch, is added when it is sent again)."""
        context = branch.context
        if branch.provisional or context.stopped or branch.cancel_pending or self.can_retry is None:
            return False
        if not self.can_retry(branch):
            return False
        self._by_client.pop(client, None)
        branch.transaction = None
        branch.flow = None
        branch.request.headers.pop_first("Via")
        self.stats["failovers"] += 1
        return True

    def _after_final(self, branch: Branch[FlowT], now: float) -> list[Action[FlowT]]:
        context = branch.context
        out: list[Action[FlowT]] = []
        assert branch.response is not None
        if self._unreached(branch):
            return out
        if branch.response.status >= 600 and not context.stopped:
            context.stopped = True
            context.group_deadline = None
            out += self._cancel_pending(context, now, None)
        out += self._settle(context, now)
        return out

    def _settle(self, context: ForkContext[FlowT], now: float) -> list[Action[FlowT]]:
        """Start the next group when the current one is all answered; answer upstream when every
        branch is final and no group is left (§16.7 step 4)."""
        out: list[Action[FlowT]] = []
        if context.final_sent or context.rerouting:
            return out
        if any(not b.final for b in context.branches):
            return out
        if not context.stopped and context.group_index + 1 < len(context.groups):
            out += self._next_group(context, now)
            return out
        if context.answered:
            context.final_sent = True  # the 2xx went up already
            self._by_server.pop(context.server, None)
            return out
        out += self._finish(context, now)
        return out

    def _finish(self, context: ForkContext[FlowT], now: float) -> list[Action[FlowT]]:
        finals = [
            b.response for b in context.branches if b.response is not None and b.response.status >= 300
        ]
        if finals:
            chosen = finals[best_response_index([r.status for r in finals])]
            merge_challenges(chosen, finals)
            if chosen.status == 503:  # §16.7 step 6: a 503 becomes a 500 upstream
                chosen = self._relabel(chosen, 500, "Server Internal Error")
        elif context.cancelled:
            chosen = self._local_response(context.request, 487, "Request Terminated")
        else:
            chosen = self._local_response(context.request, 408, "Request Timeout")
        context.final_sent = True
        context.group_deadline = None
        self._by_server.pop(context.server, None)
        return self._forward(context, chosen, now)

    def _forward(
        self, context: ForkContext[FlowT], response: Response, now: float
    ) -> list[Action[FlowT]]:
        """§16.7 steps 7-9: remove our Via and send on the server transaction."""
        upstream = self._upstream_copy(context, response)
        if context.server.terminated:
            return []
        self.stats["responses_forwarded"] += 1
        if response.status >= 200 and not context.reported:
            context.reported = True
            if self.on_final is not None:
                self.on_final(context, upstream)
        try:
            return self._sends(self.layer.respond(context.server, upstream, now))
        except SipError:
            return []

    @staticmethod
    def _upstream_copy(context: ForkContext[FlowT], response: Response) -> Response:
        """The response with our Via removed (responses the proxy made itself from the received
        request have none of ours on top)."""
        ours = f"branch=z9hG4bK{context.loop}."
        first = response.headers.get("Via")
        if first is not None and ours in first:
            # our Via alone on the first line (a branch's answer): the rest is kept as received
            cut = response.headers.copy_without_first("via")
            if cut is not None:
                return Response(response.status, response.reason, cut, response.body)
        headers = response.headers.copy()
        if first is not None and "," not in first and first.strip(" \t"):
            top = first  # one element on the first line (the common case): no split needed
        else:
            vias = headers.values("Via")
            top = vias[0] if vias else ""
        if ours in top:
            headers.pop_first("Via")
        return Response(response.status, response.reason, headers, response.body)

    def _relabel(self, response: Response, status: int, reason: str) -> Response:
        return Response(status, reason, response.headers.copy(), response.body)

    def _local_response(self, request: Request, status: int, reason: str | None) -> Response:
        """A response the proxy makes itself for a branch, as if the branch had sent it: the
        request's headers (with our Via on top, popped when forwarded)."""
        headers: list[tuple[str, object]] = []
        if self.server_name:
            headers.append(("Server", self.server_name))
        response = request.make_response(status, reason, headers, to_tag=f"px{status}")
        return response

    def _cancel_pending(
        self, context: ForkContext[FlowT], now: float, reason: str | None
    ) -> list[Action[FlowT]]:
        out: list[Action[FlowT]] = []
        for branch in context.pending():
            if context.is_invite:
                out += self._cancel(branch, now, reason)
            if not context.is_invite or not branch.provisional:
                # nothing to wait for: a branch that never rang would keep the answer upstream
                # waiting for its Timer B; its CANCEL still goes out if it rings later
                branch.abandoned = True
        return out

    def _cancel(
        self, branch: Branch[FlowT], now: float, reason: str | None = None
    ) -> list[Action[FlowT]]:
        """CANCEL an INVITE branch (§9.1): at once if it had a provisional response, else as soon
        as one arrives; a branch with no client transaction yet is abandoned."""
        if branch.cancelled or branch.got_final:
            return []
        if branch.transaction is None or branch.flow is None:
            branch.abandoned = True
            return []
        if not branch.provisional:
            branch.cancel_pending = True
            branch.cancel_reason = reason
            return []
        branch.cancelled = True
        cancel = build_cancel(branch.request)
        if reason is not None:
            cancel.headers.add("Reason", reason)
        elif branch.context.reason is not None:
            cancel.headers.add("Reason", branch.context.reason)
        try:
            _, outputs = self.layer.send_request(
                cancel, branch.flow, branch.reliable, now, framed=branch.context.framed
            )
        except SipError:
            return []
        self.stats["cancels_sent"] += 1
        return self._sends(outputs)

    @staticmethod
    def _sends(outputs: Sequence[Output[FlowT]]) -> list[Action[FlowT]]:
        return [o for o in outputs if isinstance(o, Send)]
