"""The proxy in the running server: routes requests, finds flows for branches, forwards ACKs.

:class:`ProxyService` is the asyncio side of :mod:`imscore.proxy`: it awaits the providers the
router needs (subscribers, bindings, DNS, new connections) and feeds the sans-IO
:class:`~imscore.proxy.core.ProxyCore` (which lives in the server core, beside the transaction
layer). Requests the server answers itself (OPTIONS to the server, methods it does not route) get
the answers of :meth:`imscore.server.core.ServerCore.answer`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
import sqlite3
from typing import TYPE_CHECKING, Any

from imscore.ifc.defaults import DefaultHandling
from imscore.ifc.odi import ODI_PARAM, OdiStamp
from imscore.ifc.routing import ServiceRouting
from imscore.plugin.types import NextHop
from imscore.proxy.core import Branch, Destination, ProxyCore, Target
from imscore.proxy.relay import (
    DIALOG_PARAM,
    DialogStamp,
    RelayFacts,
    relay_verdict,
    stamp_of,
    strict_route_fixup,
)
from imscore.proxy.router import Decision, Router
from imscore.registrar import FlowInfo
from imscore.registrar.gruu import KEY_NAME as GRUU_KEY_NAME
from imscore.registrar.gruu import Gruus
from imscore.registrar.outbound import FlowCursor, FlowSet
from imscore.registrar.store import SqliteBindingStore
from imscore.routing import RoutingError, TargetList
from imscore.sip import Request, Response, SipError, SipUri
from imscore.sip.headers import parse_via
from imscore.sip.transaction import Send, ServerTransaction
from imscore.store import StoreError, stored_secret
from imscore.transport import Flow, TransportError
from imscore.transport.transports import response_address

from .pool_nodes import FLOW_PARAM, FlowToken, held_by, relay_listener

if TYPE_CHECKING:
    from .runtime import Server

__all__ = ["ProxyService"]

log = logging.getLogger("imscore.proxy")

#: requests the registrar answers (when addressed to a served domain)
REGISTRAR_METHODS = ("REGISTER",)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class ProxyService:
    """Routing and forwarding for one :class:`~imscore.server.runtime.Server`."""

    def __init__(self, server: Server) -> None:
        self.server = server
        assert server.registrar is not None and server.store is not None
        self.router = Router(
            server.profile,
            server.subscribers,
            server.store,
            server.plugins,
            server.registrar.authenticator,
            self._local_addresses,
        )
        self.core: ProxyCore[Flow] = ProxyCore(
            server.core.layer,
            self.sent_by,
            record_route=self._record_route if server.profile.proxy.record_route else None,
            server_name=server.core.server_name,
            can_retry=self._can_retry,
            on_answer=self.answered,
        )
        server.core.proxy = self.core
        server.core.defer_all = True
        #: stamps our Record-Route values with the dialog's Call-ID (workers share the key)
        # one secret for both stamps (drawn once when no store keeps it: the lab's seeded runs
        # then stay byte for byte what they were)
        secret = self._stamp_secret(server) or secrets.token_bytes(32)
        self.stamp = DialogStamp(secret)
        #: names a flow of this node in a request another pool node relays (pool_nodes)
        self.flow_tokens = FlowToken(secret)
        #: the registrar issues GRUUs and the router resolves them under one key (RFC 5627)
        gruus = Gruus(self._gruu_key(server, secret))
        self.router.gruus = server.registrar.gruus = server.registrar.regevent.gruus = gruus
        #: routes requests through the ASs of matching iFCs, and knows them when they come back
        self.ifc = ServiceRouting(server.plugins, OdiStamp(secret), self._odi_route)
        self.router.services = self.ifc
        #: an AS not reached, with default handling session-continued, is skipped (docs/ifc.rst)
        self.core.on_unreached = DefaultHandling(self).unreached
        #: flows seen for contacts we forked to: in-dialog requests and ACKs to them use these
        self.known_flows: dict[str, FlowInfo | None] = {}
        #: ACKs neither in a dialog we record-routed nor to a device we forked to (not relayed)
        self.acks_dropped = 0
        #: stray responses forwarded statelessly, and dropped (not ours, or undeliverable)
        self.strays_forwarded = 0
        self.strays_dropped = 0

    @staticmethod
    def _stamp_secret(server: Server) -> bytes | None:
        """The dialog stamps' key: kept in the SQLite store file (the same after a restart and for
        every worker), else the workers' shared secret, else random (``None``)."""
        store = server.store
        pool = getattr(store, "pool", None)  # a pool's store (Redis): every node the same key
        if pool is not None:
            return bytes(pool.secret("record-route"))
        if isinstance(store, SqliteBindingStore):
            try:
                return stored_secret(store.connection, "record-route")
            except sqlite3.Error as exc:  # a read-only file: stamps live as long as this process
                log.warning("dialog stamps: cannot keep their key in %s: %s", store.url, exc)
        return None if server.worker is None else server.worker.nonce_secret

    @staticmethod
    def _gruu_key(server: Server, stamp_secret: bytes) -> bytes:
        """The temporary GRUUs' key: kept in the store (a pool's Redis, the SQLite file) so that
        another node, or this one after a restart, resolves them; else one made from the dialog
        stamps' key (a ``memory:`` store forgets its bindings, and with them its GRUUs)."""
        store = server.store
        pool = getattr(store, "pool", None)
        if pool is not None:
            return bytes(pool.secret(GRUU_KEY_NAME))
        if isinstance(store, SqliteBindingStore):
            try:
                return stored_secret(store.connection, GRUU_KEY_NAME)
            except sqlite3.Error as exc:
                log.warning("GRUUs: cannot keep their key in %s: %s", store.url, exc)
        return hmac.digest(stamp_secret, b"imscore gruu key", "sha256")

    # -- our addresses -----------------------------------------------------------------------------
    def _local_addresses(self) -> list[tuple[str, int]]:
        return [(host, port) for _, host, port in self.server.addresses]

    def _listener(self, transport: str, family_v6: bool) -> tuple[str, int] | None:
        for name, host, port in self.server.addresses:
            if name == transport and (":" in host) == family_v6:
                return host, port
        return None

    def sent_by(self, flow: Flow) -> tuple[str, str, int]:
        """Our Via sent-by for a flow: the listener of that transport and address family (so the
        answer comes back to a listening socket), else the flow's own local address."""
        listener = self._listener(flow.transport, ":" in flow.local[0])
        host, port = listener if listener is not None else flow.local
        if host in ("0.0.0.0", "::"):
            host = (
                flow.local[0]
                if flow.local[0] not in ("0.0.0.0", "::")
                else self.server.profile.domains[0]
            )
        return flow.transport, _bracket(host), port

    def _record_route(self, flow: Flow, request: Request) -> str:
        """Our Record-Route: the listener of the flow, stamped with the dialog's Call-ID (so a
        request inside the dialog proves the dialog is ours: :mod:`imscore.proxy.relay`)."""
        transport, host, port = self.sent_by(flow)
        stamp = self.stamp.make(request.call_id, request.from_.tag)
        return f"<sip:{host}:{port};transport={transport};lr;{DIALOG_PARAM}={stamp}>"

    def _odi_route(self, token: str) -> str:
        """Our Route for an AS to send a request back along, carrying its ``odi`` token."""
        transport, host, port = self.server.addresses[0]
        return f"<sip:{_bracket(host)}:{port};transport={transport};lr;{ODI_PARAM}={token}>"

    # -- requests ----------------------------------------------------------------------------------
    def is_registrar_request(self, request: Request) -> bool:
        """REGISTER, and a SUBSCRIBE that starts a subscription, go to the registrar (which
        serves the reg event package and answers 489 for others: there is no presence server);
        requests carrying a Route set go to the proxy."""
        if request.method not in ("REGISTER", "SUBSCRIBE"):
            return False
        if request.method == "SUBSCRIBE" and request.to.tag is not None:
            return False  # a refresh inside a dialog we do not hold: the proxy answers
        try:
            routes = request.route
        except SipError:
            return True  # the registrar answers the bad header with 400
        if not all(self.router.is_ours(route.uri) for route in routes):
            return False
        # a UE with an outbound proxy setting preloads a Route to us (RFC 3261 §8.1.2): ours to drop
        for _ in routes:
            request.headers.pop_first("Route")
        return True

    async def handle(self, transaction: ServerTransaction[Flow], request: Request, flow: Flow) -> None:
        """A new request the registrar does not take: answer it here or fork it."""
        server = self.server
        core = server.core
        started = server.now()
        refused = self.router.check(request)
        if refused is None:
            strict = strict_route_fixup(request, self.router.is_ours(request.uri))
            own = self.router.pop_own_route(request)
            if not request.route and own is None and strict is None and self.router.is_ours(request.uri):
                # addressed to this server (OPTIONS ping, or a method we do not serve)
                answer = core.answer(request)
                self._answer(transaction, answer)
                server.proxy_answered(request, answer, flow, started)
                return
            info = FlowInfo(flow.transport, flow.remote, flow.local, flow.connection)
            try:
                decision = await self._route(request, info, strict or stamp_of(own), own)
            except SipError:
                raise  # a header of the request does not parse: the server's guard answers it
            except StoreError as exc:  # the bindings cannot be read (Redis down): come back later
                log.warning("routing %s from %s: %s", request.method, flow.remote, exc)
                retry = ("Retry-After", core.retry_after)
                decision = Decision.answer(503, "Store unavailable", retry)
            except Exception:  # a provider failed: answer 500 rather than leave the caller waiting
                log.exception("routing %s from %s failed", request.method, flow.remote)
                decision = Decision.answer(500, "Routing error")
        else:
            decision = refused
        if transaction.terminated:
            return
        if decision.status is not None:
            reply = core.reply(request, decision.status, decision.reason, decision.headers)
            self._answer(transaction, reply)
            server.proxy_answered(request, reply, flow, started)
            return
        self.remember_targets(decision)
        actions = self.core.start(transaction, request, decision.groups, server.now(), inbound=flow)
        server.emit(core.proxied(actions))

    def remember_targets(self, decision: Decision) -> None:
        """The devices a terminating decision forks to: the end-to-end ACK for their 2xx may come
        through us."""
        if decision.kind != "terminating":
            return
        for group in decision.groups:
            for target in group[0]:
                destination = target.destination
                if destination is not None:
                    recorded = destination.flow
                    self._remember(target.uri, recorded if isinstance(recorded, FlowInfo) else None)

    async def relay_facts(self, request: Request, flow: FlowInfo, stamp: str | None) -> RelayFacts:
        """What the relay rules (:func:`~imscore.proxy.relay.relay_verdict`) look at, for a
        request whose Route entry of ours (carrying ``stamp``, if any) was already removed."""
        router = self.router
        in_dialog = request.to.tag is not None
        stamped = self.stamp.valid(stamp, request)
        trusted = router.trusted(flow)
        onward = bool(request.route)
        uri = request.uri
        registered = False
        if in_dialog and not stamped and not trusted:
            registered = await router.on_registered_flow(request, flow, self.server.clock())
        return RelayFacts(
            in_dialog=in_dialog,
            stamped=stamped,
            onward_route=onward,
            to_served=router.serves(uri) or router.is_ours(uri),
            to_known_device=self._contact_key(str(uri)) in self.known_flows,
            trusted_peer=trusted,
            registered_flow=registered,
        )

    async def _route(
        self, request: Request, flow: FlowInfo, stamp: str | None, own: SipUri | None = None
    ) -> Decision:
        """The relay rules first (who may be relayed where), then the router's decision; a
        request back from an AS with our valid ``odi`` Route goes on with its iFCs."""
        relayed = self._relayed_flow(own)
        if relayed is not None:  # another pool node sends this down a flow we hold
            return self._relayed_decision(request, relayed)
        odi = own.params.get(ODI_PARAM) if own is not None else None
        if odi is not None and request.to.tag is None:
            now = self.server.clock()
            state = self.ifc.read(odi, now)
            if state is not None:  # TS 24.229 §5.4.3.2 / §5.4.3.3
                return await self.ifc.resume(self.router, request, flow, now, state)
        verdict = relay_verdict(await self.relay_facts(request, flow, stamp))
        if verdict.refused:
            assert verdict.status is not None
            return Decision.answer(verdict.status, verdict.reason)
        if verdict.action == "route":
            return Decision(groups=[((self.router.route_target(request),), None)], kind="route")
        if verdict.action == "in-dialog":
            device = await self.router.gruu_target(request.uri, self.server.clock())
            if isinstance(device, Decision):
                return device
            if device is not None:  # a device's GRUU as its remote target (RFC 5627 §5.5)
                return Decision(groups=[((device,), None)], kind="in-dialog")
            known = self.known_flows.get(self._contact_key(str(request.uri)))
            return Decision(groups=[((self.router.uri_target(request, known),), None)], kind="in-dialog")
        return await self.router.decide(request, flow, self.server.clock())

    @staticmethod
    def _contact_key(uri: str) -> str:
        """A contact as an address: scheme, user, host and port (``sip:desk@127.0.0.1:5062``); the
        URI parameters a device adds to the Contact of its 2xx (``;transport=UDP``) do not count."""
        return _contact_key(uri)

    def _remember(self, contact: str, flow: FlowInfo | None) -> None:
        """Keep the flow of a contact we forked to, or of a 2xx's Contact (the dialog's remote
        target, where the end-to-end ACK goes); bounded: the oldest entries go first."""
        known = self.known_flows
        key = self._contact_key(contact)
        known.pop(key, None)
        known[key] = flow
        while len(known) > 10_000:
            del known[next(iter(known))]

    def answered(self, branch: Branch[Flow], response: Response) -> None:
        """A branch's 2xx went upstream: its Contact is where the caller's ACK and BYE go."""
        try:
            contacts = response.contacts
        except SipError:
            return  # the caller will not be able to use it either
        if contacts and self._contact_key(branch.target.uri) in self.known_flows:
            # (only for the devices we forked to: a foreign callee's Contact is not ours to relay to)
            destination = branch.target.destination
            flow = destination.flow if destination is not None else None
            self._remember(str(contacts[0].uri), flow if isinstance(flow, FlowInfo) else None)

    def _answer(self, transaction: ServerTransaction[Flow], response: Any) -> None:
        server = self.server
        if not transaction.terminated:
            server.emit(server.core.respond(transaction, response, server.now()))

    # -- branches ----------------------------------------------------------------------------------
    def drain(self) -> None:
        """Start resolving every branch that waits for a flow, and forward queued ACKs.

        A branch whose flow is known without waiting (:meth:`_known_flow`: a device's UDP address
        or recorded flow, or its TCP/TLS connection still open) is sent here and now, as
        :meth:`_resolve_branch` would send it; the others are resolved in a task each, which may
        wait for DNS or a new connection. Branches leave in the order they were queued: after the
        first that needs a task, the ones behind it take tasks too (tasks run in the order they
        were made)."""
        server = self.server
        core = server.core
        sends: list[Send[Flow]] = []
        queued = False
        while core.flows_needed:
            branch = core.flows_needed.pop(0)
            flow = None if queued else self._known_flow(branch)
            if flow is None:
                queued = True
                server.spawn(self._resolve_branch(branch))
            else:  # what _resolve_branch does once _branch_flow gave the flow
                sends += core.proxied(self.core.send_branch(branch, flow, flow.reliable, server.now()))
        if sends:
            server.emit(sends)  # drains again: a branch that failed may have started another
        while core.acks:
            ack, flow = core.acks.pop(0)
            self.server.spawn(self._forward_ack(ack, flow))
        while core.strays:
            self.server.spawn(self._forward_stray(core.strays.pop(0)))

    async def _resolve_branch(self, branch: Branch[Flow]) -> None:
        server = self.server
        destination = branch.target.destination or Destination(branch.target.uri)
        try:
            flow = await self._branch_flow(branch, destination)
        except RoutingError as exc:  # RFC 3263 found nothing: its status (404, 503) is the branch's
            log.info("branch %s to %s: %s", branch.index, destination.uri, exc)
            self._fail(branch, exc.status, exc.reason)
            return
        except (TransportError, SipError, LookupError) as exc:
            log.info("branch %s to %s: no route: %s", branch.index, destination.uri, exc)
            self._fail(branch, 503, "No route")
            return
        except Exception:  # a provider failed: the branch answers 500 so the caller gets an answer
            log.exception("branch %s to %s failed", branch.index, destination.uri)
            self._fail(branch, 500, "Routing error")
            return
        if isinstance(destination.flow, FlowSet):  # in-dialog requests follow the flow chosen
            self._remember(
                branch.target.uri, FlowInfo(flow.transport, flow.remote, flow.local, flow.connection)
            )
        actions = self.core.send_branch(branch, flow, flow.reliable, server.now())
        server.emit(server.core.proxied(actions))

    def _known_flow(self, branch: Branch[Flow]) -> Flow | None:
        """The flow of a branch's first attempt when it is known without waiting
        (:meth:`_known_destination_flow`), else ``None``: a later attempt is the task's."""
        if branch.targets is not None or branch.attempts:
            return None
        flow = self._known_destination_flow(branch.target.destination or Destination(branch.target.uri))
        if flow is not None:
            branch.attempts += 1
        return flow

    def _known_destination_flow(self, destination: Destination) -> Flow | None:
        """The flow :meth:`_direct_flow` gives for ``destination`` in the cases where that never
        waits and never fails, else ``None``.

        They are: a flow the registration recorded, of this node (not an outbound instance's, not
        another pool node's), that is UDP or a TCP/TLS connection still open; or no flow recorded
        and a URI whose host is an IP address reached over UDP (the common case: a device whose
        Contact is the address it registered from). A UDP flow is the one
        :meth:`Transports.connect` gives (from our listening socket of that family). Anything else
        (a name to resolve, a connection to open or that closed, a URI that does not parse) is
        ``None``: the general path decides, with its waits and its failures."""
        transports = self.server.transports
        if transports is None:
            return None
        try:
            uri = SipUri.parse(destination.uri)  # read first by the general path, failing there
        except SipError:
            return None
        recorded = destination.flow
        if isinstance(recorded, FlowInfo):
            if held_by(recorded) is not None:
                return None
            if recorded.connection is not None:
                if not transports.has_connection(recorded.connection):
                    return None
                return Flow(recorded.transport, recorded.local, recorded.remote, recorded.connection)
            transport, remote = recorded.transport.lower(), recorded.remote
        elif recorded is None:
            address = _uri_address(uri)
            if address is None:
                return None
            transport, remote = address
        else:
            return None
        if transport != "udp":
            return None
        try:
            return transports.udp_flow(remote)
        except TransportError:
            return None  # the general path fails it the same way, with its log line

    @staticmethod
    def _can_retry(branch: Branch[Flow]) -> bool:
        """RFC 3263 §4.3: another DNS target is left for this branch (RFC 5626 §5.3: or another
        flow of the outbound instance, or the 430 that says none is left)."""
        targets = branch.targets
        if isinstance(targets, FlowCursor):
            return targets.can_move()
        return isinstance(targets, TargetList) and not targets.exhausted

    async def _branch_flow(self, branch: Branch[Flow], destination: Destination) -> Flow:
        """The flow for a branch's next attempt. A name resolved by DNS gives the branch a target
        list (RFC 3263 §4.3): each later attempt (after a transport error, a timeout or a 503)
        takes the next target; a target that cannot be connected to is skipped at once."""
        branch.attempts += 1
        targets = branch.targets
        if isinstance(destination.flow, FlowSet):  # an outbound instance: its flows in turn
            if isinstance(targets, FlowCursor):
                targets.index += 1  # the flow it was sent on failed
            else:
                targets = branch.targets = FlowCursor(destination.flow.flows)
            return await self._outbound_flow(destination.flow, targets, branch.request)
        if targets is None:
            uri = SipUri.parse(destination.uri)
            direct = await self._direct_flow(destination, uri, branch.request)
            if direct is not None:
                return direct
            targets = branch.targets = await self._targets(uri, branch.request)
        else:
            assert isinstance(targets, TargetList)
            targets.mark_failed()
        return await self._first_reachable(targets, destination.uri)

    async def _direct_flow(
        self, destination: Destination, uri: SipUri, request: Request | None = None
    ) -> Flow | None:
        """The flow that needs no DNS: for a device registered with outbound, the first of its
        flows still open (none left: :class:`RoutingError` 430 Flow Failed, RFC 5626 §5.3, never
        the Contact); else the registration's recorded flow while it is usable (a closed TCP/TLS
        connection falls back to the Contact), else the URI's numeric host; ``None`` when the
        host is a name. A flow another pool node holds is reached through that node."""
        recorded = destination.flow
        if isinstance(recorded, FlowSet):
            return await self._outbound_flow(recorded, None, request)
        if isinstance(recorded, FlowInfo):
            if self._elsewhere(recorded):
                return await self._through_holder(recorded, request)
            if recorded.connection is None:
                return await self._connect(recorded.transport, recorded.remote)
            if self._has_connection(recorded.connection):
                return Flow(recorded.transport, recorded.local, recorded.remote, recorded.connection)
        address = _uri_address(uri)
        if address is None:
            return None
        transport, remote = address
        return await self._connect(transport, remote)

    async def _outbound_flow(
        self, flows: FlowSet, cursor: FlowCursor | None = None, request: Request | None = None
    ) -> Flow:
        """The first flow of an outbound instance that is not gone (a TCP/TLS connection still
        open, a UDP flow through our socket), in the router's order, from the ``cursor``'s flow
        on (which it then points at)."""
        start = 0 if cursor is None else cursor.index
        for index in range(start, len(flows.flows)):
            recorded = flows.flows[index]
            if cursor is not None:
                cursor.index = index
            if self._elsewhere(recorded):
                try:
                    return await self._through_holder(recorded, request)
                except (RoutingError, TransportError, LookupError) as exc:
                    log.info("outbound flow %s of %s gone: %s", recorded, flows.instance_id, exc)
                    continue
            if recorded.connection is None:
                try:
                    return await self._connect(recorded.transport, recorded.remote)
                except TransportError as exc:
                    log.info("outbound flow %s of %s gone: %s", recorded, flows.instance_id, exc)
                    continue
            if self._has_connection(recorded.connection):
                return Flow(recorded.transport, recorded.local, recorded.remote, recorded.connection)
            log.info("outbound flow %s of %s gone: connection closed", recorded, flows.instance_id)
        if cursor is not None:
            cursor.index = len(flows.flows)  # nothing left to move to
        raise RoutingError(430, "Flow Failed", f"no flow of {flows.instance_id} is left")

    async def _first_reachable(self, targets: TargetList, what: str) -> Flow:
        """A flow to the next target that can be connected to (the others are marked failed)."""
        errors: list[str] = []
        while (target := targets.next()) is not None:
            try:
                return await self._connect(target.transport, (target.address, target.port), target.host)
            except TransportError as exc:
                targets.mark_failed(target)
                errors.append(str(exc))
        raise LookupError(f"no target left for {what}: {'; '.join(errors) or 'all failed'}")

    async def _targets(self, uri: SipUri, request: Request | None) -> TargetList:
        """RFC 3263 targets for ``uri``; for a request, in the order the ``ims_route_next_hop``
        hook prefers (its choice first, the rest after as DNS ordered them)."""
        resolver = getattr(self.server, "resolver", None)
        if resolver is None:
            raise LookupError(f"{uri.host} is a name and no DNS resolver is configured")
        found = await resolver.resolve(uri)
        if request is not None:
            hops = [NextHop(str(uri), t.address, t.port, t.transport) for t in found]
            chosen = self.server.plugins.hook.ims_route_next_hop(request=request, targets=hops)
            if chosen is not None and chosen in hops:
                first = hops.index(chosen)
                found = [found[first], *found[:first], *found[first + 1 :]]
        return TargetList(found)

    def _has_connection(self, connection: int) -> bool:
        transports = self.server.transports
        return transports is not None and transports.has_connection(connection)

    async def _connect(self, transport: str, remote: tuple[str, int], name: str | None = None) -> Flow:
        transports = self.server.transports
        assert transports is not None
        server_name = name if transport == "tls" and name and not _is_ip(name) else None
        return await transports.connect(transport, remote, server_name=server_name)

    def _fail(self, branch: Branch[Flow], status: int, reason: str) -> None:
        server = self.server
        server.emit(server.core.proxied(self.core.branch_failed(branch, status, reason, server.now())))

    async def flow_for(self, destination: Destination, request: Request | None = None) -> Flow:
        """The flow to send to (an ACK, a qualification OPTIONS): the recorded flow of a
        registration or the URI's numeric host, else the first reachable RFC 3263 target."""
        uri = SipUri.parse(destination.uri)
        direct = await self._direct_flow(destination, uri, request)
        if direct is not None:
            return direct
        return await self._first_reachable(await self._targets(uri, request), destination.uri)

    # -- flows held by other pool nodes (imscore.server.pool_nodes) --------------------------------
    def _elsewhere(self, recorded: FlowInfo) -> bool:
        """The flow is held by another node of the pool."""
        node = held_by(recorded)
        return node is not None and node != self.server.node_id

    async def _through_holder(self, recorded: FlowInfo, request: Request | None) -> Flow:
        """The flow to the node holding ``recorded``, with our Route naming the flow pushed on
        ``request``; ``430 Flow Failed`` when that node is gone (RFC 5626 §5.3)."""
        node = held_by(recorded)
        pool = self.server.pool
        if request is None or pool is None or node is None:
            raise LookupError(f"the flow {recorded} is held by node {node}")
        try:
            listeners = await pool.nodes.listeners(node)
        except StoreError as exc:  # Redis down: the branch is 503, as a call whose bindings fail
            raise RoutingError(503, "Store unavailable", str(exc)) from None
        listener = None if listeners is None else relay_listener(listeners)
        if listener is None:
            raise RoutingError(430, "Flow Failed", f"node {node}, which holds the flow, is gone")
        transport, host, port = listener
        routes = request.headers.get_all("Route")
        if routes and f";{FLOW_PARAM}=" in str(routes[0]):  # an earlier attempt's (failover)
            request.headers.pop_first("Route")
        token = self.flow_tokens.make(recorded)
        request.headers.prepend(
            "Route", f"<sip:{_bracket(host)}:{port};transport={transport};lr;{FLOW_PARAM}={token}>"
        )
        return await self._connect(transport, (host, port))

    def _relayed_flow(self, own: SipUri | None) -> FlowInfo | None:
        """The flow of ours a pool node's Route names (a valid ``pflow`` token), else ``None``."""
        token = None if own is None else own.params.get(FLOW_PARAM)
        return None if not token else self.flow_tokens.read(token)

    @staticmethod
    def _relayed_decision(request: Request, flow: FlowInfo) -> Decision:
        """Down that one flow: a connection that is gone ends the branch with 430."""
        uri = str(request.uri)
        destination = Destination(uri, FlowSet("pool relay", (flow,)))
        return Decision(groups=[((Target(uri, (), destination, label=uri),), None)], kind="relayed")

    # -- stray responses ---------------------------------------------------------------------------
    async def _forward_stray(self, response: Response) -> None:
        """A response no transaction wants (typically a 2xx retransmitted by a callee after its
        branch ended): forwarded statelessly (§16.7 step 1, §16.11) when the top Via is ours —
        removed — to the next Via's received/rport (§18.2.2); dropped otherwise."""
        try:
            vias = response.headers.values("Via")
            if len(vias) < 2:
                self.strays_dropped += 1
                return
            ours = parse_via(vias[0])
            if not self.router.is_local_address(ours.host, ours.port or 5060):
                self.strays_dropped += 1
                return
            response.headers.pop_first("Via")
            upstream = parse_via(vias[1])
            address = response_address(upstream)
            flow = await self._connect(upstream.transport.lower(), address)
            assert self.server.transports is not None
            self.server.transports.send(response, flow)
            self.strays_forwarded += 1
        except (SipError, TransportError, ValueError) as exc:
            self.strays_dropped += 1
            log.info("cannot forward a stray %s response: %s", response.status, exc)

    # -- ACK for 2xx -------------------------------------------------------------------------------
    async def _forward_ack(self, ack: Request, flow: Flow) -> None:
        """An ACK for a 2xx travels end to end (§16.4, §16.6): pop our Route, go to the next Route
        or the Request-URI (through the flow the device registered on, when we know it)."""
        try:
            ack.check_framing_headers()
            strict = strict_route_fixup(ack, self.router.is_ours(ack.uri))
            own = self.router.pop_own_route(ack)
            if not ack.route and own is None and strict is None and self.router.is_ours(ack.uri):
                return  # an ACK for a 2xx this server sent itself: nothing to do
            info = FlowInfo(flow.transport, flow.remote, flow.local, flow.connection)
            relayed = self._relayed_flow(own)
            verdict = relay_verdict(await self.relay_facts(ack, info, strict or stamp_of(own)))
            if verdict.refused and relayed is None:
                # not in a dialog we record-routed, nor to a device we forked to: no relaying
                self.acks_dropped += 1
                return
            forwards = ack.max_forwards
            if forwards is not None and forwards <= 0:
                return
            ack.headers.set("Max-Forwards", 69 if forwards is None else forwards - 1)
            device = (
                None
                if ack.route or relayed is not None
                else await self.router.gruu_target(ack.uri, self.server.clock())
            )
            if isinstance(device, Decision):
                return  # a GRUU that reaches nobody: the ACK has nowhere to go
            if relayed is not None:  # from another pool node, down a flow we hold
                destination = Destination(str(ack.uri), relayed)
            elif ack.route:
                destination = Destination(str(ack.route[0].uri))
            elif device is not None and device.destination is not None:
                destination = device.destination  # a device's GRUU: its flows
            else:
                target = str(ack.uri)
                destination = Destination(target, self.known_flows.get(self._contact_key(target)))
            out = await self.flow_for(destination, ack)
            transport, host, port = self.sent_by(out)
            branch = (
                "z9hG4bK"
                + hashlib.blake2s(
                    ack.top_via.branch.encode() if ack.top_via.branch else ack.call_id.encode(),
                    digest_size=8,
                ).hexdigest()
            )
            ack.headers.prepend(
                "Via", f"SIP/2.0/{transport.upper()} {host}:{port};branch={branch};rport"
            )
            assert self.server.transports is not None
            self.server.transports.send(ack, out)
        except (SipError, TransportError, LookupError, RoutingError) as exc:
            log.info("cannot forward ACK from %s: %s", flow.remote, exc)


@functools.lru_cache(maxsize=4096)
def _contact_key(uri: str) -> str:
    """:meth:`ProxyService._contact_key`, cached: a function of the text alone, and the same
    contacts and Request-URIs come back with every call to a device."""
    try:
        return SipUri.parse(uri.strip("<>")).aor
    except SipError:
        return uri


def _uri_address(uri: SipUri) -> tuple[str, tuple[str, int]] | None:
    """The transport (lower case) and address a URI with a numeric host names (its
    ``transport`` parameter, else TLS for ``sips:`` and UDP; its port, else the transport's
    default); ``None`` when the host is a name."""
    host = uri.host.strip("[]")
    if not _is_ip(host):
        return None
    transport = (uri.params.get("transport") or ("tls" if uri.scheme == "sips" else "udp")).lower()
    return transport, (host, uri.port or (5061 if transport == "tls" else 5060))


@functools.lru_cache(maxsize=4096)
def _is_ip(host: str) -> bool:
    """Whether ``host`` is an IP literal (cached: the same hosts come back with every request)."""
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
