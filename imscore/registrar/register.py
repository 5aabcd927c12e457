"""REGISTER processing: RFC 3261 §10.3 with the S-CSCF behaviour of 3GPP TS 24.229 §5.4.1.

:class:`Registrar` takes a REGISTER (already framed, checked and matched to a transaction), the flow
it arrived on and ``now`` (seconds since the epoch), and returns the final response; it reads and
writes subscribers and bindings through async providers and asks the binding-policy hook what to do
with the contacts.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from imscore.auth.digest import HASHES
from imscore.plugin.builtin import ims_binding_policy_apply as builtin_binding_policy
from imscore.plugin.types import Binding, BindingDecision
from imscore.profile import Profile
from imscore.sip import Contact, Request, Response, SipError, SipUri, TelUri, Uri, parse_uri
from imscore.subscribers import ImplicitSet, Subscriber, SubscriberStore

from .authenticator import Authenticator, AuthOutcome, AuthResult
from .change import DEREGISTRATION, INITIAL, REREGISTRATION, RegistrationChange
from .gruu import Gruus, gruu_params
from .identity import find_identity, phone_number, resolve_identity
from .model import FIRST_CSEQ, FlowInfo, StoredBinding, new_binding
from .news import ORDINARY, ChangeListener, SetNews, save_with_news
from .outbound import (
    OUTBOUND_MARK,
    first_hop_lacks_outbound,
    flow_timer,
    through_outbound_edge,
    uses_outbound,
)
from .regevent import RegEventService
from .remote import RemoteAuthority, StoreRefusal, StoreUnavailable, is_remote
from .sqn import SqnStore
from .store import BindingStore
from .versioned import (
    MAX_ATTEMPTS,
    AorLocks,
    BindingConflict,
    is_versioned,
    load_for_update,
    save_checked,
)

__all__ = ["SUPPORTED", "RegisterOutcome", "Registrar"]

log = logging.getLogger("imscore.registrar")

#: option tags the registrar supports (RFC 3327 Path, RFC 5626 outbound, RFC 5627 GRUU)
SUPPORTED: Final = ("path", "outbound", "gruu")
#: the Supported header field value of a 200 OK to a REGISTER
_SUPPORTED_TEXT: Final = ", ".join(SUPPORTED)


@dataclass(frozen=True)
class RegisterOutcome:
    """The response, the bindings removed, and the reg-event NOTIFYs to send (with their flows)."""

    response: Response
    removed: tuple[StoredBinding, ...] = ()
    notifications: tuple[tuple[Request, FlowInfo], ...] = ()


def _server_uris(subscriber: Subscriber) -> tuple[list[str], list[SipUri]]:
    """The application servers of ``subscriber``'s initial filter criteria: the IP addresses their
    URIs name, and the URIs that name a host by its DNS name (to resolve)."""
    addresses: list[str] = []
    named: list[SipUri] = []
    for ifc in subscriber.service_profile.ifcs:
        try:
            uri = parse_uri(ifc.server.uri)
        except SipError:
            continue
        if isinstance(uri, SipUri):
            name = uri.host.strip("[]")
            try:
                ipaddress.ip_address(name)
            except ValueError:
                named.append(uri)
                continue
            addresses.append(name)
    return addresses, named


class Registrar:
    """The registrar of the domains a profile serves.

    :param profile: domains, expiry limits, the binding policy and the accepted auth schemes.
    :param subscribers: where subscriber data comes from (HSS-lite or a vendor's provider).
    :param bindings: where bindings are kept.
    :param plugins: the plugin manager (its ``ims_binding_policy_apply`` decides the contacts).
    :param authenticator: challenge and verify; built from the profile when not given.
    """

    def __init__(
        self,
        profile: Profile,
        subscribers: SubscriberStore,
        bindings: BindingStore,
        plugins: Any,
        *,
        authenticator: Authenticator | None = None,
        nonce_secret: bytes | None = None,
        sqn_store: SqnStore | None = None,
    ) -> None:
        # (pass an Authenticator to choose its secret or its source of AKA RANDs; nonce_secret and
        # sqn_store set only the secret and the AKA SQN store of the one made here)
        self.profile = profile
        self.domains = {d.lower() for d in profile.domains}
        self.subscribers = subscribers
        self.bindings = bindings
        self.plugins = plugins
        self.authenticator = authenticator or Authenticator.from_profile(
            profile, secret=nonce_secret, sqn_store=sqn_store
        )
        #: the store holds the credentials (an HSS over Cx, .remote): vectors come from it
        self.remote: RemoteAuthority | None = subscribers if is_remote(subscribers) else None  # type: ignore[assignment]
        self.authenticator.remote_credentials = self.remote is not None
        if self.authenticator.select_scheme is None:
            self.authenticator.select_scheme = self._select_scheme
            self.authenticator.scheme_plugins = plugins
        route = profile.registrar.service_route or f"sip:orig@{profile.domains[0]};lr"
        self.service_route = f"<{route}>"
        self.regevent = RegEventService(profile.reg_event.max_per_set, profile.reg_event.max_per_watcher)
        #: called with the AOR whose bindings a REGISTER, an expiry or the network changed, and the
        #: news of why (worker processes tell each other, so a reg-event subscription held by
        #: another one hears of it too: imscore.registrar.news)
        self.on_change: ChangeListener | None = None
        #: called after a stored REGISTER or an expiry changed whether or how long a set is
        #: registered (third-party registration, TS 24.229 §5.4.1.7: imscore.server.thirdparty)
        self.on_registration: Callable[[RegistrationChange], None] | None = None
        #: REGISTERs of one set decided here take turns (a store shared by several nodes)
        self._deciding = AorLocks()
        #: issues public and temporary GRUUs (RFC 5627); the server replaces it with one whose key
        #: is kept in the store (imscore.server.proxying), so every node resolves the same ones
        self.gruus = Gruus(lambda: secrets.token_bytes(32))
        self.regevent.gruus = self.gruus
        #: whether a URI names this element (a listener address; the server sets the proxy's
        #: check): a REGISTER whose Request-URI an I-CSCF rewrote to the S-CSCF is ours
        self.names_us: Callable[[Uri], bool] | None = None
        #: RFC 3263 resolution (the server sets its resolver): finds the addresses of an AS its
        #: iFCs name by a DNS name, which may then watch the user's reg event
        self.resolve: Callable[[SipUri], Awaitable[Sequence[Any]]] | None = None

    def _authenticate(
        self, request: Request, credentials: Any, subscriber: Subscriber, now: float
    ) -> AuthResult:
        """Challenge a REGISTER without a response, else check its credentials."""
        if credentials is None or (not credentials.get("response") and not credentials.get("auts")):
            return self.authenticator.challenge_for(subscriber, now, request=request)
        return self.authenticator.check(request, credentials, subscriber, now)

    def _select_scheme(self, subscriber: Subscriber, request: Request | None) -> str | None:
        """``ims_auth_select_scheme``: which scheme a challenge uses (a plugin may prefer Digest for
        some subscribers under an AKA-first profile, for instance)."""
        choice = self.plugins.hook.ims_auth_select_scheme(
            subscriber=subscriber.hook_record(), request=request
        )
        return choice if isinstance(choice, str) else None

    async def register(self, request: Request, flow: FlowInfo, now: float) -> RegisterOutcome:
        """Process one REGISTER; never raises for bad input (it becomes a status)."""
        return await self._guarded(request, self._register(request, flow, now))

    async def _guarded(
        self, request: Request, work: Coroutine[Any, Any, RegisterOutcome]
    ) -> RegisterOutcome:
        """The outcome of ``work`` for ``request``, bad input and an HSS's trouble as a status."""
        try:
            return await work
        except SipError as error:
            return RegisterOutcome(self._reply(request, error.status, error.phrase))
        except StoreUnavailable as exc:  # the HSS (.remote) is down or silent: come back later
            log.warning("REGISTER %s: subscriber store unavailable: %s", request.call_id, exc.reason)
            headers = [("Retry-After", exc.retry_after)]
            return RegisterOutcome(self._reply(request, 503, "HSS unavailable", headers))
        except StoreRefusal as exc:  # the HSS refused the user (unknown, barred ...)
            return RegisterOutcome(self._reply(request, exc.status, exc.reason))

    def _reply(
        self,
        request: Request,
        status: int,
        reason: str | None = None,
        headers: Sequence[tuple[str, object]] = (),
    ) -> Response:
        return request.make_response(status, reason, headers, to_tag=_tag(request))

    def _served_request_uri(self, request: Request) -> SipUri | None:
        """The Request-URI of a REGISTER that names this S-CSCF rather than a home domain, as the
        home domain the UE registered with (``None`` when it does not name us).

        An I-CSCF (TS 24.229 §5.3.1.2; Kamailio's ``I_scscf_select``) writes the S-CSCF's name —
        the Server-Name the HSS gave, e.g. ``sip:scscf.ims.example.test:6060`` or one of our
        addresses — into the Request-URI. The UE's Request-URI was its home domain, and its Digest
        ``uri`` says which one: that is used when it names a domain served here without a user
        part, else the To's domain when served, else the first served domain."""
        uri = request.uri
        if not isinstance(uri, SipUri) or not self._names_us(uri):
            return None
        credentials = next((c for c in request.authorization if c.is_digest), None)
        given = credentials.get("uri") if credentials is not None else None
        if given:
            try:
                digest_uri = parse_uri(given)
            except (SipError, ValueError):
                digest_uri = None
            if self._served(digest_uri) and isinstance(digest_uri, SipUri) and digest_uri.user is None:
                return digest_uri
        to_uri = request.to.uri
        if self._served(to_uri) and isinstance(to_uri, SipUri):
            return SipUri(to_uri.host, scheme=to_uri.scheme)
        return SipUri(self.profile.domains[0])

    def _served(self, uri: Uri | None) -> bool:
        return isinstance(uri, SipUri) and uri.host.lower().rstrip(".") in self.domains

    def _names_us(self, uri: SipUri) -> bool:
        if self.names_us is not None and self.names_us(uri):
            return True
        server_name = getattr(self.remote, "server_name", "")  # the Cx S-CSCF's own SIP URI
        if not server_name:
            return False
        try:
            ours = parse_uri(server_name)
        except (SipError, ValueError):
            return False
        return (
            isinstance(ours, SipUri)
            and ours.host.lower().rstrip(".") == uri.host.lower().rstrip(".")
            and (ours.port or 5060) == (uri.port or 5060)
        )

    async def _register(self, request: Request, flow: FlowInfo, now: float) -> RegisterOutcome:
        uri = request.uri
        if isinstance(uri, SipUri) and uri.host.lower().rstrip(".") not in self.domains:
            home = self._served_request_uri(request)
            if home is not None:  # an I-CSCF named us: read it as the home domain (docs/ims-core)
                request.uri = uri = home
        # §10.3 step 1: a domain we are the registrar for
        if not isinstance(uri, SipUri) or uri.host.lower().rstrip(".") not in self.domains:
            request.contacts  # noqa: B018  # a malformed REGISTER is 400 first (RFC 4475 regbadct)
            return RegisterOutcome(self._reply(request, 404, "Domain not served here"))
        to_uri = request.to.uri
        if not isinstance(to_uri, SipUri | TelUri):
            return RegisterOutcome(self._reply(request, 400, "To must be a SIP, SIPS or tel URI"))
        # step 2: Require — path, outbound and gruu are ours
        unsupported = [tag for tag in request.require if tag.lower() not in SUPPORTED]
        if unsupported:
            return RegisterOutcome(
                self._reply(request, 420, None, [("Unsupported", ", ".join(unsupported))])
            )
        # step 3: authentication; the username is the IMPI (TS 24.229), else find it from To
        credentials = next((c for c in request.authorization if c.is_digest), None)
        username = credentials.get("username") if credentials is not None else None
        if username and phone_number(to_uri) is not None:  # the number it stands for, if listed
            to_uri, _ = await find_identity(self.subscribers, to_uri)
        if username:
            subscriber = await self.subscribers.get_by_impi(username)
        else:  # the owner of the To IMPU (or the store's record, for a barred-only one)
            to_uri, subscriber = await find_identity(self.subscribers, to_uri)
            resolved = await resolve_identity(self.plugins, self.subscribers, to_uri, subscriber)
            if resolved is not None:
                subscriber = resolved[0]
        if subscriber is None:
            status = self.profile.registrar.unknown_user_status
            if status != 401:
                return RegisterOutcome(self._reply(request, status, _unknown(username, to_uri)))
            # challenged as a known user would be, never authenticated (docs/security.rst)
            impi = username or str(to_uri).partition(":")[2]
            result = self.authenticator.unknown_user(request, credentials, impi, now)
        else:
            result = self._authenticate(request, credentials, subscriber, now)
            if result.outcome is AuthOutcome.NEED_CREDENTIALS and self.remote is not None:
                # the HSS holds the credentials: vectors or H(A1) by MAR, then decide again
                fetched = await self.remote.fetch_credentials(
                    subscriber,
                    to_uri,
                    self.authenticator.schemes,
                    aka_algorithm=self.authenticator.aka_algorithm,
                    resync=result.resync,
                )
                self.authenticator.offer(subscriber.impi, fetched)
                result = self._authenticate(request, credentials, subscriber, now)
        refused = self._refused(request, result)
        if refused is not None:
            return refused
        if subscriber is None:
            return RegisterOutcome(self._reply(request, 403, result.reason))
        if self.remote is not None:  # the HSS's profile (SAR/SAA) for the rest of the REGISTER
            if not _deregistering(request):
                subscriber = await self.remote.assign(subscriber, to_uri)
            elif not subscriber.owns(to_uri):
                found = await self.subscribers.get_by_impu(to_uri)
                if found is not None and found.impi == subscriber.impi:
                    subscriber = found
        # step 4: the IMPU must not be barred, and it must resolve (ims_identity_resolve) to an
        # implicit set of the authenticated IMPI
        if subscriber.is_barred(to_uri):
            return RegisterOutcome(self._reply(request, 403, "Barred public identity"))
        resolved = await resolve_identity(self.plugins, self.subscribers, to_uri, subscriber)
        if resolved is None and subscriber.owns(to_uri):
            return RegisterOutcome(self._reply(request, 403, "The IMPU is in no implicit set"))
        if resolved is None or resolved[0].impi != subscriber.impi:
            return RegisterOutcome(self._reply(request, 403, "The IMPI does not own this IMPU"))
        return await self._store(request, subscriber, resolved[1], flow, now)

    def _refused(self, request: Request, result: AuthResult) -> RegisterOutcome | None:
        """The answer to a REGISTER whose credentials were not accepted (challenge, 400, 403), or
        ``None`` when they were."""
        if result.outcome is AuthOutcome.CHALLENGE:
            assert result.challenge is not None
            response = self._reply(request, 401, None, [("WWW-Authenticate", result.challenge)])
            return RegisterOutcome(response)
        if result.outcome is AuthOutcome.BAD_REQUEST:
            return RegisterOutcome(self._reply(request, 400, result.reason))
        if result.outcome in (AuthOutcome.FORBIDDEN, AuthOutcome.NEED_CREDENTIALS):
            return RegisterOutcome(self._reply(request, 403, result.reason))
        return None

    async def register_known(
        self,
        request: Request,
        credentials: Any,
        subscriber: Subscriber,
        implicit_set: ImplicitSet,
        flow: FlowInfo,
        now: float,
    ) -> RegisterOutcome:
        """What :meth:`register` does for a REGISTER whose Digest ``credentials`` (with a
        response) name ``subscriber``, whose To that subscriber owns unbarred in ``implicit_set``
        (what ``ims_identity_resolve`` answers), when the subscriber store holds no credentials of
        its own: check the credentials, then steps 5-7. Never raises for bad input. For a caller
        that made sure of all that itself (:mod:`imscore.server.fastreg`)."""
        return await self._guarded(
            request, self._known(request, credentials, subscriber, implicit_set, flow, now)
        )

    async def _known(
        self,
        request: Request,
        credentials: Any,
        subscriber: Subscriber,
        implicit_set: ImplicitSet,
        flow: FlowInfo,
        now: float,
    ) -> RegisterOutcome:
        refused = self._refused(request, self._authenticate(request, credentials, subscriber, now))
        if refused is not None:
            return refused
        return await self._store(request, subscriber, implicit_set, flow, now)

    async def _store(
        self,
        request: Request,
        subscriber: Subscriber,
        implicit_set: ImplicitSet,
        flow: FlowInfo,
        now: float,
    ) -> RegisterOutcome:
        # what a binding keeps or the answer echoes must parse before anything is stored (the
        # headers a registrar has no use for are not read: RFC 3261 §8.2 asks no more)
        for hop in request.path:
            hop.check()
        request.expires  # noqa: B018
        request.supported  # noqa: B018
        if (
            request.headers.count("Contact")
            and not request.contact_star
            and any(first_hop_lacks_outbound(request, c) for c in request.contacts)
        ):  # RFC 5626 §6: outbound asked for through an edge proxy that does not do it
            return RegisterOutcome(self._reply(request, 439))
        # steps 5-7 read, decide and write; a store shared by several nodes refuses a write when
        # another node wrote the set meanwhile, and the decision is made again (.versioned)
        if not is_versioned(self.bindings):
            return await self._bind(request, subscriber, implicit_set, flow, now)
        async with self._deciding.hold(implicit_set.aor):  # this node's turn
            for _ in range(MAX_ATTEMPTS - 1):
                try:
                    return await self._bind(request, subscriber, implicit_set, flow, now)
                except BindingConflict:
                    continue
            return await self._bind(request, subscriber, implicit_set, flow, now)

    async def _bind(
        self,
        request: Request,
        subscriber: Subscriber,
        implicit_set: ImplicitSet,
        flow: FlowInfo,
        now: float,
    ) -> RegisterOutcome:
        """Steps 5-7 of RFC 3261 §10.3 for an authenticated REGISTER: load the set's bindings,
        decide, save (:class:`~.versioned.BindingConflict` when another node wrote first)."""
        # step 5: bindings are filed under the implicit set's default IMPU
        aor = implicit_set.aor
        loaded, version = await load_for_update(self.bindings, aor)
        stored = [b for b in loaded if not b.expired(now)]
        # step 6: contacts
        if request.contact_star:
            if request.expires != 0 or request.headers.count("Contact") != 1:
                return RegisterOutcome(self._reply(request, 400, "Contact * needs Expires: 0 alone"))
            for binding in stored:
                if binding.call_id == request.call_id and request.cseq.seq <= binding.cseq:
                    return RegisterOutcome(self._reply(request, 500, "Out-of-order REGISTER (CSeq)"))
            await save_checked(self.bindings, aor, [], version)
            self._changed(aor)
            notes = self.regevent.changed(aor, [], now, deregistered=True)
            ok = self._ok(request, subscriber, implicit_set, [], now)
            self._registration(request, ok, subscriber, implicit_set, flow, stored, [], now)
            return RegisterOutcome(ok, tuple(stored), tuple(notes))
        contacts = request.contacts
        if not contacts:  # a query
            return RegisterOutcome(self._ok(request, subscriber, implicit_set, stored, now))
        incoming: list[StoredBinding] = []
        for contact in contacts:
            expires = self._expires(request, contact)
            if 0 < expires < self.profile.registrar.min_expires:
                headers = [("Min-Expires", self.profile.registrar.min_expires)]
                return RegisterOutcome(self._reply(request, 423, None, headers))
            incoming.append(self._binding(request, contact, aor, subscriber, flow, expires, now))
        # step 7: Call-ID / CSeq ordering per binding
        for new in incoming:
            for old in stored:
                if old.same_device(new) and old.call_id == new.call_id and new.cseq <= old.cseq:
                    return RegisterOutcome(self._reply(request, 500, "Out-of-order REGISTER (CSeq)"))
        decision = self._policy(stored, incoming, subscriber, now)
        if decision is None:
            return RegisterOutcome(self._reply(request, 500, "No binding policy answered"))
        if decision.reject_status is not None:
            reason = decision.reject_reason or None
            return RegisterOutcome(self._reply(request, decision.reject_status, reason))
        kept = self._merge(stored, incoming, decision)
        await save_checked(self.bindings, aor, kept, version)
        self._changed(aor)
        removed = tuple(b for b in stored if not any(k.same_device(b) for k in kept))
        notes = self.regevent.changed(aor, kept, now, deregistered=not kept)
        ok = self._ok(request, subscriber, implicit_set, kept, now)
        self._registration(request, ok, subscriber, implicit_set, flow, stored, kept, now)
        return RegisterOutcome(ok, removed, tuple(notes))

    async def subscribe(
        self, request: Request, flow: FlowInfo, local_contact: str, now: float
    ) -> tuple[Response, tuple[tuple[Request, FlowInfo], ...]]:
        """A SUBSCRIBE to the reg event package (RFC 3680) for one of our public identities."""
        try:
            return await self._subscribe(request, flow, local_contact, now)
        except SipError as error:
            return self._reply(request, error.status, error.phrase), ()

    async def _subscribe(
        self, request: Request, flow: FlowInfo, local_contact: str, now: float
    ) -> tuple[Response, tuple[tuple[Request, FlowInfo], ...]]:
        request.validate()  # a header that does not parse is a 400 before anything is decided
        event = (request.headers.get("Event") or "").split(";", 1)[0].strip().lower()
        if event != "reg":
            return self._reply(request, 489, None, [("Allow-Events", "reg")]), ()
        target = request.uri
        if not isinstance(target, SipUri | TelUri):
            return self._reply(request, 416), ()
        target, candidate = await find_identity(self.subscribers, target)
        resolved = await resolve_identity(self.plugins, self.subscribers, target, candidate)
        if resolved is None:
            return self._reply(request, 404, "Unknown public identity"), ()
        subscriber, implicit_set = resolved
        aor = implicit_set.aor
        bindings = [b for b in await self.bindings.load(aor) if not b.expired(now)]
        watcher = request.from_.uri  # one of the subscriber's IMPUs, or one a plugin resolves to it
        own = subscriber.owns(watcher)
        if not own and isinstance(watcher, SipUri | TelUri):
            found = await resolve_identity(self.plugins, self.subscribers, watcher, subscriber)
            own = found is not None and found[0].impi == subscriber.impi
        trusted = flow.remote[0].strip("[]") in self.profile.proxy.trusted_peers
        servers = await self._server_addresses(subscriber)
        if not self.regevent.authorised(flow, bindings, own=own, trusted=trusted, servers=servers):
            why = "Only a registered device of this user, its P-CSCF or its AS may subscribe"
            return self._reply(request, 403, why), ()
        impus = [u for u in implicit_set if not subscriber.is_barred(u)]
        status, headers, tag, notify = self.regevent.subscribe(
            request, flow, impus, aor, bindings, local_contact, now
        )
        response = request.make_response(status, None, headers, to_tag=tag)
        return response, (() if notify is None else ((notify, flow),))

    async def _server_addresses(self, subscriber: Subscriber) -> frozenset[str]:
        """The IP addresses of ``subscriber``'s application servers: those their URIs name, and
        those DNS gives for the ones named by a host name (RFC 3263, every target's address; a
        name that does not resolve adds nothing)."""
        addresses, named = _server_uris(subscriber)
        found = set(addresses)
        if self.resolve is not None:
            for uri in named:
                try:  # in a task of its own: the resolver's timeout needs one (imscore.server.eager)
                    targets = await asyncio.ensure_future(self.resolve(uri))
                except Exception as exc:  # a RoutingError, a resolver failure: not a watcher
                    log.info("reg event: application server %s does not resolve: %s", uri, exc)
                    continue
                found.update(str(getattr(t, "address", "")) for t in targets)
        found.discard("")
        return frozenset(found)

    async def expire(self, now: float) -> tuple[tuple[Request, FlowInfo], ...]:
        """Remove expired bindings and end expired subscriptions; the NOTIFYs that follow."""
        expired = await self.bindings.expire(now)
        notes: list[tuple[Request, FlowInfo]] = []
        for aor in dict.fromkeys(b.aor for b in expired):
            self._changed(aor)
            left = [b for b in await self.bindings.load(aor) if not b.expired(now)]
            notes.extend(self.regevent.changed(aor, left, now, deregistered=not left))
            if not left:
                impi = next(b.impi for b in expired if b.aor == aor)
                self._report(RegistrationChange(DEREGISTRATION, aor, impi, 0, "expired"))
        notes.extend(self.regevent.expire(now))
        return tuple(notes)

    async def changed_elsewhere(
        self, aor: str, now: float, news: SetNews = ORDINARY
    ) -> tuple[tuple[Request, FlowInfo], ...]:
        """Another process changed the bindings of ``aor`` in the shared store: the NOTIFYs for the
        reg-event subscriptions held here (none, without a store read, when nobody here watches).
        An ordinary change is read back from the store; when the network ended the registration
        (``news.ended``, an RTR that reached the other process) the subscriptions end as
        :meth:`network_deregister` ends them here, with each contact they knew."""
        if not self.regevent.watches(aor):
            return ()
        if news.ended is not None:
            return tuple(self.regevent.network_terminated(aor, None, now, news.ended))
        bindings = [b for b in await self.bindings.load(aor) if not b.expired(now)]
        return tuple(self.regevent.changed(aor, bindings, now, deregistered=not bindings))

    def _report(self, change: RegistrationChange) -> None:
        """Tell :attr:`on_registration`, and a store that holds the credentials (SAR), of a change."""
        if self.on_registration is not None:
            self.on_registration(change)
        if self.remote is not None:
            self.remote.registration_changed(change)

    async def network_deregister(
        self, aor: str, event: str, now: float
    ) -> tuple[tuple[Request, FlowInfo], ...]:
        """The network ends the registration of the set filed under ``aor`` (an HSS's RTR,
        TS 24.229 §5.4.1.5): its bindings go, and its reg-event watchers get a NOTIFY whose contacts
        are ``terminated`` with ``event`` (``rejected``: do not register again; ``deactivated``:
        register again) and whose subscription ends with that reason (RFC 3680 §5.1, RFC 6665
        §4.2.2). The news other processes get (:attr:`on_change`, and a store that announces its
        writes) says so, and their watchers hear the same (:mod:`imscore.registrar.news`)."""
        stored = await self.bindings.load(aor)
        news = SetNews(event)
        await save_with_news(self.bindings, aor, [], news)
        self._changed(aor, news)
        if stored and self.on_registration is not None:
            impi = stored[0].impi
            self.on_registration(RegistrationChange(DEREGISTRATION, aor, impi, 0, "network"))
        live = [b for b in stored if not b.expired(now)]
        return tuple(self.regevent.network_terminated(aor, live, now, event))

    def _changed(self, aor: str, news: SetNews = ORDINARY) -> None:
        if self.on_change is not None:
            self.on_change(aor, news)

    def _registration(
        self,
        request: Request,
        response: Response,
        subscriber: Subscriber,
        implicit_set: ImplicitSet,
        flow: FlowInfo,
        before: Sequence[StoredBinding],
        after: Sequence[StoredBinding],
        now: float,
    ) -> None:
        """Tell :attr:`on_registration` what a stored REGISTER did to the set's registration."""
        if (self.on_registration is None and self.remote is None) or (not before and not after):
            return
        kind = DEREGISTRATION if not after else (REREGISTRATION if before else INITIAL)
        host, port = flow.local
        # RegistrationChange(kind, ..., interface=...) without the frozen __init__'s
        # object.__setattr__ per field (it has a __dict__: filled at once, the same object)
        change = object.__new__(RegistrationChange)
        change.__dict__.update(
            kind=kind,
            aor=implicit_set.aor,
            impi=subscriber.impi,
            expires=max((b.remaining(now) for b in after), default=0),
            cause="register",
            impu=request.to.uri,
            subscriber=subscriber,
            implicit_set=implicit_set,
            request=request,
            response=response,
            interface=f"{flow.transport}:{host}:{port}",
        )
        self._report(change)

    # -- pieces --------------------------------------------------------------------------------------
    def _expires(self, request: Request, contact: Contact) -> int:
        settings = self.profile.registrar
        value = contact.expires
        if value is None:
            value = request.expires
        if value is None:
            value = settings.default_expires
        return min(value, settings.max_expires)

    def _binding(
        self,
        request: Request,
        contact: Contact,
        aor: str,
        subscriber: Subscriber,
        flow: FlowInfo,
        expires: int,
        now: float,
    ) -> StoredBinding:
        uri = contact.uri
        extra = {OUTBOUND_MARK: "1"} if uses_outbound(request, contact) else {}
        if contact.instance is not None:  # RFC 5628 first-cseq: kept while the Call-ID stays
            extra[FIRST_CSEQ] = str(request.cseq.seq)
        return new_binding(  # StoredBinding(aor=aor, ...) without its __init__'s cost
            aor,
            subscriber.impi,
            contact.echo(_ECHO_WITHOUT),
            str(uri),
            now + expires,
            now,
            request.call_id,
            request.cseq.seq,
            contact.instance,
            contact.reg_id,
            contact.q,
            tuple(request.headers.values("Path")),
            flow,
            request.headers.get("User-Agent"),
            True,
            extra,
        )

    def _policy(
        self,
        stored: Sequence[StoredBinding],
        incoming: Sequence[StoredBinding],
        subscriber: Subscriber,
        now: float,
    ) -> BindingDecision | None:
        choice = self.profile.policies["binding_policy"]
        options: Mapping[str, Any] = dict(choice.options)
        if subscriber.max_devices is not None:
            options = {**options, "max_contacts": subscriber.max_devices}
        existing = [b.hook_binding(now) for b in stored]
        asked = [b.hook_binding(now, registered_at=0.0) for b in incoming]
        only = getattr(self.plugins, "only_builtin", None)
        if only is not None and only("ims_binding_policy_apply"):  # its answer is the hook's
            return builtin_binding_policy(existing, asked, choice.plugin, options)
        decision: BindingDecision | None = self.plugins.hook.ims_binding_policy_apply(
            existing=existing, incoming=asked, policy=choice.plugin, options=options
        )
        return decision

    @staticmethod
    def _merge(
        stored: Sequence[StoredBinding], incoming: Sequence[StoredBinding], decision: BindingDecision
    ) -> list[StoredBinding]:
        """The stored bindings the decision keeps: incoming ones (refreshing a device keeps its first
        registration time) and untouched existing ones, oldest registration first."""
        kept: list[StoredBinding] = []
        for chosen in decision.bindings:
            new = next((b for b in incoming if _matches(b, chosen)), None)
            old = next((b for b in stored if _matches(b, chosen)), None)
            if new is not None:
                kept.append(old.refreshed(new) if old is not None else new)
            elif old is not None:
                kept.append(old)
        kept.sort(key=lambda b: b.registered_at)
        return kept

    def _contact(self, binding: StoredBinding, request: Request, now: float) -> str:
        """A Contact of the 200 OK to a REGISTER with ``Supported: gruu``: with ``pub-gruu`` and
        ``temp-gruu`` when the binding has an instance (RFC 5627 §5.3)."""
        domain = request.uri.host if isinstance(request.uri, SipUri) else self.profile.domains[0]
        params = "".join(
            f";{name}={value}"
            for name, value in gruu_params(self.gruus, binding, request.to.uri, domain)
        )
        return f"{binding.contact}{params};expires={binding.remaining(now)}"

    def _ok(
        self,
        request: Request,
        subscriber: Subscriber,
        implicit_set: ImplicitSet,
        bindings: Sequence[StoredBinding],
        now: float,
    ) -> Response:
        headers = self.ok_headers(request, subscriber, implicit_set, bindings, now)
        return self._reply(request, 200, None, headers)

    def ok_headers(
        self,
        request: Request,
        subscriber: Subscriber,
        implicit_set: ImplicitSet,
        bindings: Sequence[StoredBinding],
        now: float,
    ) -> list[tuple[str, object]]:
        """The header fields of the 200 OK to a stored REGISTER, after the ones copied from the
        request: the set's bindings, P-Associated-URI, Service-Route, Path, Supported, what RFC
        5626 asks, Date."""
        supported = [t.lower() for t in request.supported]
        gruu = "gruu" in supported
        headers: list[tuple[str, object]] = [
            (
                "Contact",
                self._contact(b, request, now) if gruu else f"{b.contact};expires={b.remaining(now)}",
            )
            for b in bindings
        ]
        associated = associated_uri_text(subscriber, implicit_set)
        if associated:
            headers.append(("P-Associated-URI", associated))
        headers.append(("Service-Route", self.service_route))
        if "path" in supported and "Path" in request.headers:
            headers.extend(("Path", value) for value in request.headers.get_all("Path"))
        headers.append(("Supported", _SUPPORTED_TEXT))
        if request.headers.count("Contact") and not request.contact_star:
            contacts = request.contacts
            flows = [c for c in contacts if uses_outbound(request, c)]
            if flows:  # RFC 5626 §6: the device's flow is registered; keep it alive this often
                headers.append(("Require", "outbound"))
                headers.append(("Flow-Timer", flow_timer(request.top_via.transport)))
            elif any(through_outbound_edge(request, c) for c in contacts):
                headers.append(("Require", "outbound"))  # the edge proxy keeps the flow alive
        headers.append(("Date", _http_date(now)))
        return headers


#: where :func:`associated_uri_text` keeps its texts in a subscriber's ``__dict__``
_ASSOCIATED_MEMO: Final = "imscore.registrar.p-associated-uri"


def associated_uri_text(subscriber: Subscriber, implicit_set: ImplicitSet) -> str:
    """The P-Associated-URI value of a 200 OK registering ``implicit_set`` of ``subscriber``: its
    unbarred IMPUs, default first, each in angle brackets (``""`` when all are barred). For one of
    the subscriber's own sets it is made once and kept in the subscriber's ``__dict__``, by the
    set's place (a Subscriber and its sets never change: a reloaded subscriber file makes new
    ones)."""
    memo: dict[str, Any] | None = getattr(subscriber, "__dict__", None)
    place = -1
    if memo is not None:
        for number, own in enumerate(subscriber.implicit_sets):
            if own is implicit_set:
                place = number
                break
    texts: dict[int, str] | None = None if place < 0 or memo is None else memo.get(_ASSOCIATED_MEMO)
    if texts is not None:
        found = texts.get(place)
        if found is not None:
            return found
    text = ", ".join([f"<{u}>" for u in subscriber.unbarred(implicit_set)])
    if place >= 0 and memo is not None:
        if texts is None:
            texts = memo[_ASSOCIATED_MEMO] = {}
        texts[place] = text
    return text


#: the Contact parameters a stored binding's echo leaves out: ours to add in the 200 OK
_ECHO_WITHOUT: Final = frozenset({"expires", "pub-gruu", "temp-gruu"})

_date_cache: tuple[int, str] = (-1, "")


def _http_date(now: float) -> str:
    """The Date header value for ``now`` (RFC 3261 §20.17), formatted once per second: every 200 OK
    to a REGISTER carries one."""
    global _date_cache
    second = int(now)
    if _date_cache[0] != second:
        _date_cache = (second, email.utils.formatdate(second, usegmt=True))
    return _date_cache[1]


def _matches(binding: StoredBinding, chosen: Binding) -> bool:
    if binding.instance_id is not None and chosen.instance_id is not None:
        return binding.instance_id == chosen.instance_id and binding.reg_id == chosen.reg_id
    return binding.uri == chosen.contact


def _tag(request: Request) -> str:
    """A To tag that is the same for retransmissions of one request and differs between requests."""
    return to_tag(request.top_via.branch, request.call_id, request.cseq.seq)


#: SHA-256 as CPython implements it where it can (less set-up per call than OpenSSL's for a short
#: input; the same digest)
_SHA256: Final = HASHES["sha256"]


def to_tag(branch: str | None, call_id: str, cseq: int) -> str:
    """The registrar's To tag for a request of that top Via branch, Call-ID and CSeq number: the
    first 12 hex digits of SHA-256 over ``branch|call-id|cseq``."""
    key = f"{branch}|{call_id}|{cseq}"
    return _SHA256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def _deregistering(request: Request) -> bool:
    """Whether a REGISTER removes contacts only (``Contact: *``, or every contact expires 0)."""
    if request.contact_star:
        return True
    contacts = request.contacts
    if not contacts:
        return False
    default = request.expires
    return all((c.expires if c.expires is not None else default) == 0 for c in contacts)


def _unknown(username: str | None, impu: Uri) -> str:
    """The reason phrase of a 404/403 for an unknown user: what was looked up (the Digest username
    is the full private identity, ``alice@ims.example.test``, not ``alice``)."""
    if username:
        shown = "".join(c for c in username if c.isprintable())[:80]
        hint = "" if "@" in shown else " (the username is the full private identity, user@realm)"
        return f"Unknown user: no private identity {shown!r}{hint}"
    shown = "".join(c for c in str(impu) if c.isprintable())[:120]
    return f"Unknown user: no public identity {shown}"
