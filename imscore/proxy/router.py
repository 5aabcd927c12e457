"""Where a request goes: the request checks and Route processing of RFC 3261 §16.3-16.5, the
originating / terminating split of an S-CSCF, and the branch targets of a registered user.

:class:`Router` reads subscribers and bindings through the async providers, asks the forking hook
for the plan and returns a :class:`Decision`: answer locally with a status, or fork to groups of
:class:`~imscore.proxy.core.Target`. It sends nothing; the runtime hands the decision to
:class:`~imscore.proxy.core.ProxyCore`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imscore.profile import Profile
from imscore.registrar.authenticator import Authenticator, AuthOutcome
from imscore.registrar.gruu import Gruus, GruuTarget
from imscore.registrar.identity import find_identity, phone_number, resolve_identity
from imscore.registrar.model import FlowInfo, StoredBinding
from imscore.registrar.outbound import flow_set, is_outbound
from imscore.registrar.regevent import same_sender
from imscore.registrar.remote import RemoteAuthority, is_remote
from imscore.registrar.store import BindingStore
from imscore.sip import Request, SipError, SipUri, TelUri, Uri, parse_uri
from imscore.sip.headers import parse_auth, parse_via
from imscore.subscribers import Subscriber, SubscriberStore

from .core import Destination, Target, loop_key

if TYPE_CHECKING:
    from imscore.ifc.routing import ServiceRouting

__all__ = ["Decision", "Router", "flow_for", "is_private_host", "nat_decision"]

log = logging.getLogger("imscore.proxy")

#: option tags a proxy must understand when they appear in Proxy-Require (none yet)
PROXY_SUPPORTED: tuple[str, ...] = ()


@dataclass
class Decision:
    """What to do with a request.

    Either ``status`` is set (answer locally with it, ``reason`` and ``headers``), or ``groups``
    (fork: ``(targets, timeout)`` tried one after another).
    """

    status: int | None = None
    reason: str | None = None
    headers: list[tuple[str, object]] = field(default_factory=list)
    groups: list[tuple[tuple[Target, ...], float | None]] = field(default_factory=list)
    #: what the router understood, for logs and tests: "terminating", "originating", "in-dialog"
    kind: str = ""

    @classmethod
    def answer(cls, status: int, reason: str | None = None, *headers: tuple[str, object]) -> Decision:
        return cls(status=status, reason=reason, headers=list(headers))


def is_private_host(host: str) -> bool:
    """Whether a Contact host cannot be reached from outside its own network: a private (RFC
    1918, RFC 4193), link-local or shared (RFC 6598) address, or a name we will not resolve."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return True
    if address.is_loopback:
        return False
    shared = isinstance(address, ipaddress.IPv4Address) and address in ipaddress.ip_network(
        "100.64.0.0/10"
    )
    return address.is_private or address.is_link_local or shared


def nat_decision(binding: StoredBinding) -> tuple[FlowInfo | None, str]:
    """The recorded flow a request to this device must use (``None``: use its Contact), and why.

    The flow is used when the device registered over TCP or TLS (the same connection carries the
    request, RFC 5626), when its REGISTER came through a Path (the first hop is where it came
    from — unless that hop names an IP address other than the flow's, as when an I-CSCF stood
    between the P-CSCF and us: then the Path's first hop), and when the Contact names a private
    or unresolvable address that differs from the address the REGISTER came from (a NAT,
    RFC 3581). Loopback counts as reachable.
    """
    flow = binding.flow
    if flow is None:
        return None, "no flow recorded"
    seen = f"flow from {_hostport(*flow.remote)}"
    if is_outbound(binding):
        return flow, f"registered with outbound (RFC 5626): that flow only ({seen})"
    if flow.connection is not None:
        return flow, f"registered over {flow.transport.upper()}: the same connection ({seen})"
    if binding.path:
        hop = _path_hop(binding.path[0])
        if hop is not None and hop != (flow.remote[0].strip("[]"), flow.remote[1]):
            # an I-CSCF between the P-CSCF and us sent the REGISTER: the Path's first hop is not
            # where it came from (RFC 3327 §5: requests follow the Path)
            return None, f"registered through a Path whose first hop {_hostport(*hop)} is not the {seen}"
        return flow, f"registered through a Path: {seen}"
    try:
        uri = SipUri.parse(binding.uri)
    except SipError:
        return flow, f"Contact {binding.uri!r} does not parse: {seen}"
    port = uri.port or (5061 if uri.scheme == "sips" else 5060)
    host = uri.host.strip("[]")
    contact = f"Contact {_hostport(host, port)}"
    if (host, port) == (flow.remote[0].strip("[]"), flow.remote[1]):
        return None, f"{contact} is the flow's remote address"
    if is_private_host(host):
        return flow, f"{contact} is a private or unresolvable address and differs from the {seen}"
    return None, f"{contact} is reachable (the {seen} differs)"


def _path_hop(entry: str) -> tuple[str, int] | None:
    """The address of a Path entry whose URI names an IP address (its port, or the scheme's
    default); ``None`` for a host name or an entry that does not parse."""
    text = entry[1 : entry.index(">")] if entry.startswith("<") and ">" in entry else entry
    try:
        uri = SipUri.parse(text)
    except SipError:
        return None
    host = uri.host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, uri.port or (5061 if uri.scheme == "sips" else 5060)


def from_path_hop(binding: StoredBinding, flow: FlowInfo) -> bool:
    """Whether ``flow`` comes from the first hop of the Path ``binding`` registered with (the
    element next to us on the way to the device, when its URI names an IP address): over UDP its
    address and port (an edge proxy sends from its listening socket), over TCP, TLS or SCTP its
    address. When an I-CSCF relayed the REGISTER, the P-CSCF is that hop, not the REGISTER's
    sender, and it sends the user's later requests along the Service-Route itself."""
    if not binding.path:
        return False
    hop = _path_hop(binding.path[0])
    if hop is None:
        return False
    remote = (flow.remote[0].strip("[]"), flow.remote[1])
    return hop == remote if flow.transport == "udp" else hop[0] == remote[0]


def flow_for(binding: StoredBinding) -> FlowInfo | None:
    """The recorded flow a request to this device must use, or ``None`` to use its Contact
    (see :func:`nat_decision`)."""
    return nat_decision(binding)[0]


def _barred(subscriber: Subscriber, uri: Uri) -> bool:
    """The identity (or the number a ``user=phone`` SIP URI stands for) is barred."""
    tel = phone_number(uri)
    return subscriber.is_barred(uri) or (tel is not None and subscriber.is_barred(tel))


def _shown(uri: Uri) -> str:
    """A public identity for a reason phrase (no CR/LF, bounded)."""
    return "".join(c for c in str(uri) if c.isprintable())[:120]


def _is_stale(challenge: str | None) -> bool:
    """Whether a challenge the authenticator made says ``stale=true`` (kept in the 407 that
    replaces it, so the client retries without asking its user: RFC 7616 §3.3)."""
    if challenge is None:
        return False
    try:
        return (parse_auth(challenge, "challenge").get("stale") or "").lower() == "true"
    except SipError:
        return False


def _single_via(request: Request) -> bool:
    """The request has one Via: it comes from the element that made it, not through a proxy (a
    Via that cannot be read counts as a proxy's)."""
    try:
        return len(request.via) == 1
    except SipError:
        return False


def _hostport(host: str, port: int) -> str:
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _host_port(uri: SipUri) -> tuple[str, int | None]:
    return uri.host.lower().strip("[]").rstrip("."), uri.port


class Router:
    """Decides where requests go.

    :param profile: the domains served and the proxy settings.
    :param subscribers: the subscriber provider.
    :param bindings: the binding store provider.
    :param plugins: the plugin manager (forking hook).
    :param authenticator: issues and checks the 407 challenges of originating requests.
    :param local: the addresses we listen on, ``(host, port)``; a Route or Via naming one is ours.
    """

    def __init__(
        self,
        profile: Profile,
        subscribers: SubscriberStore,
        bindings: BindingStore,
        plugins: Any,
        authenticator: Authenticator,
        local: Callable[[], Sequence[tuple[str, int]]],
    ) -> None:
        self.profile = profile
        self.settings = profile.proxy
        self.domains = tuple(d.lower() for d in profile.domains)
        self.subscribers = subscribers
        self.bindings = bindings
        self.plugins = plugins
        self.authenticator = authenticator
        self._local = local
        #: routes requests through the ASs of matching iFCs (imscore.ifc.routing), or ``None``
        self.services: ServiceRouting | None = None
        #: the subscriber store when it is an HSS (Cx): the H(A1) of a 407 comes by MAR
        self.remote: RemoteAuthority | None = (
            subscribers if is_remote(subscribers) else None  # type: ignore[assignment]
        )
        #: reads the GRUUs the registrar issued (RFC 5627); ``None``: a GRUU is a plain URI
        self.gruus: Gruus | None = None

    # -- what is ours ------------------------------------------------------------------------------
    def is_local_address(self, host: str, port: int | None) -> bool:
        host = host.lower().strip("[]").rstrip(".")
        for ours, our_port in self._local():
            if host == ours.strip("[]") and (port is None or port == our_port):
                return True
        return False

    def is_ours(self, uri: Uri) -> bool:
        """A URI naming this element: one of our listener addresses, or a served domain without
        a user part other than the S-CSCF's own route users (``orig``, ``term``)."""
        if not isinstance(uri, SipUri):
            return False
        host, port = _host_port(uri)
        if self.is_local_address(host, port):
            return True
        return host in self.domains and (uri.user is None or uri.user in ("orig", "term"))

    def serves(self, uri: Uri) -> bool:
        """A public identity of a domain we serve (any ``tel:`` URI is looked up here too)."""
        if isinstance(uri, TelUri):
            return True
        return isinstance(uri, SipUri) and _host_port(uri)[0] in self.domains and uri.user is not None

    # -- the checks of §16.3 -----------------------------------------------------------------------
    def check(self, request: Request) -> Decision | None:
        """§16.3: a request this proxy must refuse (400, 416, 420, 482, 483), else ``None``."""
        try:
            request.validate()
        except SipError as error:
            return Decision.answer(error.status, error.phrase)
        if not isinstance(request.uri, SipUri | TelUri):
            return Decision.answer(416)
        forwards = request.max_forwards
        if forwards is not None and forwards <= 0:
            return Decision.answer(483)
        unsupported = [t for t in request.proxy_require if t.lower() not in PROXY_SUPPORTED]
        if unsupported:
            return Decision.answer(420, None, ("Unsupported", ", ".join(unsupported)))
        if self._looped(request) and not self._from_as(request):
            return Decision.answer(482)
        return None

    def _from_as(self, request: Request) -> bool:
        """Back from an AS with our odi Route: the same request again is a spiral, not a loop."""
        return self.services is not None and bool(self.services.returning(request))

    def _looped(self, request: Request) -> bool:
        """§16.3 step 4: a Via of ours whose branch carries the loop key of this very request
        (computed over the Via below it, as we received it then) means the request came back
        unchanged — a loop rather than a spiral."""
        vias = request.headers.values("Via")
        for i, text in enumerate(vias[:-1]):
            try:
                via = parse_via(text)
            except SipError:
                return False
            branch = via.branch or ""
            if not branch.startswith("z9hG4bK") or "." not in branch:
                continue
            if not self.is_local_address(via.host, via.port or 5060):
                continue
            if branch[7:].split(".", 1)[0] == loop_key(request, vias[i + 1]):
                return True
        return False

    def pop_own_route(self, request: Request) -> SipUri | None:
        """§16.4: remove the top Route when it names us and return its URI (its user ``orig``
        marks an originating request, TS 24.229 §5.4.3.2; its ``dlg`` stamps a dialog we
        record-routed); ``None`` when the top Route is not ours (or there is none)."""
        routes = request.route
        if not routes:
            return None
        uri = routes[0].uri
        if not self.is_ours(uri):
            return None
        request.headers.pop_first("Route")
        assert isinstance(uri, SipUri)
        return uri

    def trusted(self, flow: FlowInfo) -> bool:
        """The request came from one of the profile's ``trusted_peers``."""
        return self._trusted(flow)

    async def on_registered_flow(self, request: Request, flow: FlowInfo, now: float) -> bool:
        """The request's From is a served subscriber and it came on a flow one of that
        subscriber's devices registered on (a barred From proves nothing)."""
        try:
            caller = await self._served_caller(request)
        except SipError:
            return False
        if caller is None or _barred(caller, request.from_.uri):
            return False
        return await self._on_registered_flow(caller, flow, now, request)

    # -- the decision ------------------------------------------------------------------------------
    async def decide(self, request: Request, flow: FlowInfo, now: float) -> Decision:
        """Route an out-of-dialog request that passed :meth:`check` and the relay rules
        (:mod:`imscore.proxy.relay`), its own Route entry already popped and no other left."""
        served = await self.originating_identity(request, flow, now)
        caller = await self._served_caller(request, served)
        if caller is not None:
            if _barred(caller, served):  # TS 24.229 §5.4.3.2
                return Decision.answer(403, "Barred public identity may not originate")
            refused = await self._authorise(request, flow, caller, now)
            if refused is not None:
                return refused
            if self.services is not None:  # the caller's originating iFCs (TS 24.229 §5.4.3.2)
                shown = None if served is request.from_.uri else str(served)
                routed = await self.services.originate(self, request, caller, flow, now, served=shown)
                if routed is not None:
                    return routed
        if self.serves(request.uri):
            return await self._terminating(request, now, flow)
        if caller is None and not self._trusted(flow):
            return Decision.answer(403, "Relaying denied")
        return self.onward(request)

    def onward(self, request: Request) -> Decision:
        """A request for another domain: to the profile's outbound proxy, else its Request-URI."""
        outbound = self.settings.outbound
        if outbound:
            return Decision(
                groups=[((Target(str(request.uri), (outbound,), Destination(outbound)),), None)],
                kind="outbound",
            )
        return Decision(groups=[((self.uri_target(request),), None)], kind="originating")

    @staticmethod
    def route_target(request: Request) -> Target:
        """Loose routing (§16.5): the request goes to its next Route entry."""
        top = request.route[0].uri
        return Target(str(request.uri), (), Destination(str(top)), label=str(top))

    @staticmethod
    def uri_target(request: Request, flow: FlowInfo | None = None) -> Target:
        """The request goes to its Request-URI (on ``flow`` when we know the device's flow)."""
        uri = str(request.uri)
        return Target(uri, (), Destination(uri, flow), label=uri)

    def _trusted(self, flow: FlowInfo) -> bool:
        return flow.remote[0].strip("[]") in self.settings.trusted_peers

    async def originating_identity(self, request: Request, flow: FlowInfo, now: float) -> Uri:
        """Who an out-of-dialog request is from (TS 24.229 §5.4.3.2): its P-Asserted-Identity
        (RFC 3325; the first SIP or tel one) when the element that sent it may assert identities
        — a trusted peer, or the P-CSCF a served user of that identity registered through (the
        sender of a REGISTER with a Path that made one of the user's live bindings) — and else its
        From. A P-Asserted-Identity from anyone else is removed, not believed (RFC 3325 §5)."""
        asserted = [a.uri for a in request.p_asserted_identity if isinstance(a.uri, SipUri | TelUri)]
        if not asserted:
            return request.from_.uri
        if self._trusted(flow):
            return asserted[0]
        uri = asserted[0]
        if self.serves(uri):
            found, candidate = await find_identity(self.subscribers, uri)
            resolved = await resolve_identity(self.plugins, self.subscribers, found, candidate)
            subscriber = candidate if resolved is None else resolved[0]
            if subscriber is not None and await self._behind_edge(subscriber, flow, now):
                return uri
        request.headers.remove("P-Asserted-Identity")
        return request.from_.uri

    async def _behind_edge(self, subscriber: Subscriber, flow: FlowInfo, now: float) -> bool:
        """One of ``subscriber``'s live bindings came with a Path from the sender of ``flow``, or
        names it as the Path's first hop (:func:`from_path_hop`)."""
        for aor in subscriber.aors:
            for binding in await self.bindings.load(aor):
                seen = binding.flow
                live = binding.path and seen is not None and not binding.expired(now)
                if (
                    live
                    and seen is not None
                    and (same_sender(seen, flow) or from_path_hop(binding, flow))
                ):
                    return True
        return False

    async def _served_caller(self, request: Request, uri: Uri | None = None) -> Subscriber | None:
        """The subscriber the request comes from, when ``uri`` (default: its From) is an identity
        we serve."""
        if uri is None:
            uri = request.from_.uri
        if not self.serves(uri):
            return None
        uri, candidate = await find_identity(self.subscribers, uri)
        # (the store's record when nobody resolves it: a barred IMPU is still the caller's)
        resolved = await resolve_identity(self.plugins, self.subscribers, uri, candidate)
        return candidate if resolved is None else resolved[0]

    async def _authorise(
        self, request: Request, flow: FlowInfo, caller: Subscriber, now: float
    ) -> Decision | None:
        """No open relay: an originating request is accepted from a trusted peer, over a flow one
        of the caller's devices registered on, or with Digest credentials (407 challenge)."""
        modes = self.settings.originating_auth
        if "trusted-peer" in modes and self._trusted(flow):
            return None
        if "registered-flow" in modes and await self._on_registered_flow(caller, flow, now, request):
            return None
        if "digest" not in modes:
            return Decision.answer(403, "Originating request not authorised")
        credentials = next((c for c in request.proxy_authorization if c.is_digest), None)
        if credentials is None or not credentials.get("response"):
            await self._fetch_ha1(caller, request)
            result = self.authenticator.proxy_challenge(caller, now)
        else:
            username = credentials.get("username")
            if username is None or username.lower() != caller.impi.lower():
                return Decision.answer(403, "Credentials are not the caller's")
            result = self.authenticator.check(request, credentials, caller, now)
            if result.outcome is AuthOutcome.NEED_CREDENTIALS and self.remote is not None:
                await self._fetch_ha1(caller, request, again=True)
                result = self.authenticator.check(request, credentials, caller, now)
            if result.outcome is AuthOutcome.CHALLENGE:  # wrong or stale: a new Digest challenge
                stale = _is_stale(result.challenge)
                result = self.authenticator.proxy_challenge(caller, now, stale=stale)
        if result.outcome is AuthOutcome.OK:
            return None
        if result.outcome is AuthOutcome.CHALLENGE:
            assert result.challenge is not None
            return Decision.answer(407, None, ("Proxy-Authenticate", result.challenge))
        if result.outcome is AuthOutcome.BAD_REQUEST:
            return Decision.answer(400, result.reason)
        return Decision.answer(403, result.reason)

    async def _fetch_ha1(self, caller: Subscriber, request: Request, *, again: bool = False) -> None:
        """With an HSS for a store, the caller's SIP Digest H(A1) and realm by MAR (TS 29.229
        §6.3.13), unless one is at hand (``again``: the one at hand did not do). The HSS's
        failures are raised as the registrar's are (503 when it is unreachable, 403/404 when it
        refuses)."""
        if self.remote is None or (not again and self.authenticator.has_ha1(caller.impi)):
            return
        fetched = await self.remote.fetch_credentials(
            caller,
            request.from_.uri,
            ("digest",),
            aka_algorithm=self.authenticator.aka_algorithm,
        )
        self.authenticator.offer(caller.impi, fetched)

    async def _on_registered_flow(
        self, caller: Subscriber, flow: FlowInfo, now: float, request: Request
    ) -> bool:
        """Whether ``request`` came on the flow a live binding of ``caller`` registered on, from
        an element that speaks for the caller: the device itself (the request has a single Via),
        or the edge proxy that registered it with a Path (RFC 3327; the P-CSCF asserts its users),
        also when the request comes from the Path's first hop and an I-CSCF relayed the REGISTER
        (:func:`from_path_hop`). A flow that only carried a proxied REGISTER without a Path — an
        I-CSCF's, which relays anyone's requests — proves nothing about who sent a later request
        on it."""
        direct: bool | None = None
        for aor in caller.aors:
            for binding in await self.bindings.load(aor):
                if binding.expired(now) or binding.flow is None:
                    continue
                if from_path_hop(binding, flow):
                    return True
                seen = binding.flow
                if seen.transport != flow.transport or seen.remote != flow.remote:
                    continue
                if binding.path:
                    return True
                if direct is None:
                    direct = _single_via(request)
                if direct:
                    return True
        return False

    async def terminating(
        self, request: Request, now: float, flow: FlowInfo | None = None, after: int | None = None
    ) -> Decision:
        """The terminating side for a request back from an AS (iFCs after priority ``after``)."""
        return await self._terminating(request, now, flow, after)

    async def _terminating(
        self, request: Request, now: float, flow: FlowInfo | None = None, after: int | None = None
    ) -> Decision:
        """The bindings of the Request-URI's implicit registration set, planned by the forking hook
        (first through the ASs of the callee's terminating iFCs after priority ``after``)."""
        gruu = self._gruu(request.uri)  # RFC 5627 §5.5: a GRUU reaches its instance only
        if isinstance(gruu, Decision):
            return gruu
        looked_up = request.uri if gruu is None else parse_uri(gruu.aor)
        uri, candidate = await find_identity(self.subscribers, looked_up)
        resolved = await resolve_identity(self.plugins, self.subscribers, uri, candidate)
        if resolved is None or resolved[0].is_barred(uri):
            return Decision.answer(404, f"Not Found: no user has {_shown(uri)}")
        implicit_set = resolved[1]
        aor = implicit_set.default.aor
        live = [b for b in await self.bindings.load(aor) if not b.expired(now)]
        if gruu is not None:
            live = gruu.bindings(live)
            if not live and gruu.temporary:  # its binding was removed: it is no longer valid
                return Decision.answer(404, "Not Found: the temporary GRUU is no longer valid")
        if self.services is not None:  # TS 24.229 §5.4.3.3
            routed = self.services.terminating(request, resolved[0], bool(live), flow, now, after)
            if routed is not None:
                return routed
        if not live:
            return Decision.answer(480, "Temporarily Unavailable")
        choice = self.profile.policies["forking"]
        hook_bindings = [b.hook_binding(now) for b in live]
        plan = self.plugins.hook.ims_fork_plan(
            request_uri=uri, contacts=hook_bindings, strategy=choice.plugin, options=choice.options
        )
        if plan is None:
            log.error("no plugin implements the forking strategy %r", choice.plugin)
            return Decision.answer(500, f"Unknown forking strategy {choice.plugin!r}")
        by_contact = {b.uri: b for b in live}
        groups: list[tuple[tuple[Target, ...], float | None]] = []
        instances: set[str] = set()  # RFC 5626 §5.3: one branch per outbound instance
        for group in plan:
            targets = tuple(
                target
                for c in group.targets
                if c in by_contact
                and (target := self._instance_target(by_contact[c], live, instances)) is not None
            )
            if targets:
                groups.append((targets, group.timeout))
        if not groups:
            return Decision.answer(480, "Temporarily Unavailable")
        return Decision(groups=groups, kind="terminating")

    async def gruu_target(self, uri: Uri, now: float) -> Target | Decision | None:
        """Where an in-dialog request or an ACK whose Request-URI is a GRUU (a device that put its
        GRUU in its Contact) goes: its instance's newest binding, over its flows; ``404`` / ``480``
        as for a new request; ``None`` when the URI is no GRUU."""
        gruu = self._gruu(uri)
        if gruu is None or isinstance(gruu, Decision):
            return gruu
        looked_up = parse_uri(gruu.aor)
        found, candidate = await find_identity(self.subscribers, looked_up)
        resolved = await resolve_identity(self.plugins, self.subscribers, found, candidate)
        if resolved is None:
            return Decision.answer(404, f"Not Found: no user has {_shown(looked_up)}")
        aor = resolved[1].default.aor
        live = gruu.bindings([b for b in await self.bindings.load(aor) if not b.expired(now)])
        if not live:
            return Decision.answer(*((404, "Not Found") if gruu.temporary else (480, None)))
        newest = max(live, key=lambda b: b.registered_at)
        return self._instance_target(newest, live, set())

    def _gruu(self, uri: Uri) -> GruuTarget | Decision | None:
        """What a GRUU Request-URI names; a ``404`` decision for one that is not ours (forged, or
        made under another key); ``None`` when the URI is no GRUU."""
        if self.gruus is None:
            return None
        try:
            return self.gruus.target(uri)
        except (LookupError, SipError) as exc:
            return Decision.answer(404, f"Not Found: {exc}")

    @classmethod
    def _instance_target(
        cls, binding: StoredBinding, live: Sequence[StoredBinding], seen: set[str]
    ) -> Target | None:
        """The branch for a binding; for one registered with outbound, the branch of its
        instance, carrying every flow (reg-id) of the instance in the order to try them, once
        (``None`` for the instance's other bindings)."""
        instance = binding.instance_id
        if not is_outbound(binding) or instance is None:
            return cls._binding_target(binding)
        if instance in seen:
            return None
        seen.add(instance)
        mine = [b for b in live if b.instance_id == instance and is_outbound(b)]
        flows = flow_set(mine)
        newest = max(mine, key=lambda b: b.registered_at)
        return Target(uri=newest.uri, destination=Destination(newest.uri, flows), label=instance)

    @staticmethod
    def _binding_target(binding: StoredBinding) -> Target:
        flow = flow_for(binding)
        first = binding.path[0] if binding.path else binding.uri
        if first.startswith("<"):
            first = first[1 : first.index(">")]
        return Target(
            uri=binding.uri,
            route=binding.path,
            destination=Destination(first, flow),
            label=binding.instance_id or binding.uri,
        )
