"""The S-CSCF side of Cx: a subscriber store that is an HSS reached over Diameter.

``imscore serve --subscribers cx://HOST:PORT`` makes the registrar an S-CSCF of TS 24.229 §5.4.1
whose subscriber data lives in an HSS (``imscore hss``, or any Cx HSS):

- **Credentials by MAR.** A REGISTER to challenge sends MAR (User-Name, Public-Identity, Server-Name,
  SIP-Auth-Data-Item with the scheme the profile allows: ``Digest-AKAv1-MD5`` or
  ``Digest-AKAv2-MD5``, ``SIP Digest``, or ``Unknown`` when it allows both); the MAA's
  SIP-Auth-Data-Item gives an AKA vector (RAND ‖ AUTN, XRES, CK, IK) or the Digest-HA1. An AUTS
  from the UE goes back to the HSS as SIP-Authorization RAND ‖ AUTS (TS 29.229 §6.3.13). The
  registrar never sees K, OP or a password (:mod:`imscore.registrar.remote`).
- **Profile by SAR.** After a successful authentication, SAR REGISTRATION (RE_REGISTRATION for a set
  registered here); the SAA's User-Data (TS 29.228 Annex E) gives the implicit set and its barred
  identities. A de-registration sends SAR USER_DEREGISTRATION, an expiry TIMEOUT_DEREGISTRATION.
  A public identity not registered here (a REGISTER without Authorization, a terminating request)
  is looked up with SAR NO_ASSIGNMENT, which leaves the registration state alone.
- **RTR and PPR from the HSS.** RTR removes the sets' bindings and tells their reg-event watchers
  (contacts ``terminated`` with event ``rejected``, or ``deactivated`` for Reason-Code
  NEW_SERVER_ASSIGNED / SERVER_CHANGE, when the UE is expected to register again); PPR replaces the
  profile kept for a registered set.
- **The connection** (CER/CEA) is opened as the server starts and kept by the watchdog: a DWR
  after Tw without traffic, the connection closed when no DWA comes, and opened again every Tw
  (and by the next request) while it is down. An HSS that is not up at start-up is a warning, not
  a failed start.
- **Failures** become SIP statuses: an unreachable or silent HSS ``503`` with ``Retry-After``,
  DIAMETER_ERROR_USER_UNKNOWN ``404``, the other refusals ``403``.
- **Several processes** (``--workers``, a pool of nodes): each is a Diameter peer with its own
  Origin-Host and one shared Server-Name, and whether a set is registered here is read from the
  binding store they share (:mod:`imscore.diameter.sharing`).

The URL: ``cx://HOST:PORT`` with optional query keys ``origin_host`` (default ``scscf.<domain>``),
``origin_realm`` (default the profile's first domain), ``destination_realm`` (default the origin
realm), ``server_name`` (the S-CSCF's SIP URI in MAR and SAR, default ``sip:<origin_host>``),
``timeout`` (seconds an answer may take, default 3), ``retry_after`` (the 503's, default 30),
``watchdog`` (Tw of RFC 3539 in seconds, default 30; 0 sends no DWR) and ``transport`` (``tcp``,
the default, or ``sctp``: a one-to-one SCTP association; where the kernel has no SCTP each
connection attempt is logged ``SCTP not available: ...`` and requests get ``503``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from imscore.auth.aka import AuthVector
from imscore.diameter import dictionary as d
from imscore.diameter.client import CxClient
from imscore.diameter.codec import Avp, DiameterDecodeError, Message
from imscore.diameter.messages import (
    answer,
    cx_application_avp,
    experimental_result,
    result_code,
    result_of,
)
from imscore.diameter.peer import DiameterPeerError
from imscore.diameter.sctp import TRANSPORTS
from imscore.diameter.sharing import SetIndex, process_origin_host, serves_shared, shared_server_name
from imscore.diameter.userdata import parse_ifcs, parse_user_data
from imscore.ifc.model import NO_SERVICES, ServiceProfile
from imscore.registrar.change import DEREGISTRATION, RegistrationChange
from imscore.registrar.remote import AKA, DIGEST, RemoteCredentials, StoreRefusal, StoreUnavailable
from imscore.sip import ParseError, Uri, parse_uri
from imscore.store import StoreError
from imscore.subscribers import ImplicitSet, Subscriber, impi_key, impu_key

__all__ = ["CxSubscriberStore", "subscriber_from_user_data"]

log = logging.getLogger("imscore.diameter.provider")

V: Final = d.VENDOR_3GPP
#: seconds a profile read with SAR NO_ASSIGNMENT is kept
LOOKUP_TTL: Final = 30.0
#: private identities remembered as known to the HSS, at most
MAX_KNOWN_IMPIS: Final = 100_000
_KEYS: Final = (
    "origin_host",
    "origin_realm",
    "destination_realm",
    "server_name",
    "timeout",
    "retry_after",
    "watchdog",
    "transport",
)
_DIGEST_SCHEMES: Final = (d.SCHEME_SIP_DIGEST, "Digest-MD5", "Digest")


def subscriber_from_user_data(data: bytes, impi: str | None = None) -> Subscriber:
    """A subscriber record from User-Data XML: its private identity, one implicit set of its public
    identities (the first the default), the barred ones, its initial filter criteria
    (:func:`~imscore.diameter.userdata.parse_ifcs`), and a random password nobody knows (the HSS
    keeps the credentials).

    :raises ValueError: the XML is not an ``IMSSubscription`` or its identities do not make a set.
    """
    private, identities = parse_user_data(data)
    uris: list[Uri] = []
    barred: set[str] = set()
    for text, is_barred in identities:
        try:
            uri = parse_uri(text)
        except ParseError:
            log.info("User-Data: %r is not a URI, left out", text[:80])
            continue
        if uri.aor in {u.aor for u in uris}:
            continue
        uris.append(uri)
        if is_barred:
            barred.add(uri.aor)
    owner = private or impi
    if owner is None or not uris:
        raise ValueError("User-Data names no private identity or no public identity")
    return Subscriber(
        impi=owner,
        password=secrets.token_hex(24),  # a decoy: the authenticator uses what the HSS gives
        implicit_sets=(ImplicitSet(tuple(uris)),),
        barred=frozenset(barred),
        service_profile=_ifcs(data, owner),
    )


def _ifcs(data: bytes, impi: str) -> ServiceProfile:
    """The iFCs of User-Data; none (logged) when they cannot make a profile (two share a
    priority): the registration goes on without services rather than fail."""
    try:
        return parse_ifcs(data)
    except ValueError as exc:
        log.warning("User-Data of %s: initial filter criteria left out: %s", impi, exc)
        return NO_SERVICES


class CxSubscriberStore:
    """A :class:`~imscore.subscribers.SubscriberStore` and
    :class:`~imscore.registrar.remote.RemoteAuthority` over Cx (see the module's text).

    :param host: the HSS's address.
    :param port: its port.
    :param options: the URL's query keys (``origin_host`` ...).
    """

    def __init__(self, host: str, port: int, options: dict[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        self.options = dict(options or {})
        self.timeout = float(self.options.get("timeout", "3"))
        self.retry_after = int(self.options.get("retry_after", "30"))
        #: Tw of RFC 3539, seconds; 0 sends no DWR and only connects at start and on demand
        self.watchdog = float(self.options.get("watchdog", "30"))
        #: ``tcp`` or ``sctp`` (:mod:`imscore.diameter.sctp`)
        self.transport = self.options.get("transport", "tcp").lower()
        self.origin_host = self.options.get("origin_host", "")
        self._given_origin_host = self.origin_host
        self.origin_realm = self.options.get("origin_realm", "")
        self.destination_realm = self.options.get("destination_realm", "")
        self.server_name = self.options.get("server_name", "")
        self.server: Any = None
        self._client: CxClient | None = None
        self._connecting = asyncio.Lock()
        #: address-of-record key -> (record, until); registered sets are kept until de-registered
        #: (for :data:`LOOKUP_TTL` s when several processes serve: a PPR reaches only one of them)
        self._by_impu: dict[str, tuple[Subscriber, float]] = {}
        self._by_impi: dict[str, tuple[Subscriber, float]] = {}
        #: which set an IMPU is in, which sets an IMPI owns (from the profiles the HSS sent)
        self.sets = SetIndex()
        #: one of several processes (workers, pool nodes): the registration state is the shared
        #: binding store's (:mod:`imscore.diameter.sharing`)
        self.shared = False
        #: IMPI key -> until when the HSS is known to know it (get_by_impi's SAR NO_ASSIGNMENT)
        self._known_impis: dict[str, float] = {}
        #: the default IMPU keys of the sets this process's SARs assigned to us (one process alone
        #: trusts it; several ask the binding store, see :meth:`_registered`)
        self.registered: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, url: str) -> CxSubscriberStore:
        """``cx://HOST:PORT?key=value``; :class:`ValueError` naming what is wrong."""
        parts = urlsplit(url)
        if parts.scheme.lower() != "cx" or not parts.hostname or parts.port is None:
            raise ValueError(f"expected cx://HOST:PORT, got {url!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        known = set(_KEYS)
        unknown = sorted(set(query) - known)
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        for key in ("timeout", "retry_after", "watchdog"):
            if key in query:
                try:
                    float(query[key])
                except ValueError:
                    raise ValueError(f"{key} must be a number, got {query[key]!r}") from None
        if query.get("transport", "tcp").lower() not in TRANSPORTS:
            raise ValueError(f"transport must be tcp or sctp, got {query['transport']!r}")
        return cls(parts.hostname, parts.port, query)

    def attach(self, server: Any) -> None:
        """The server started: defaults from its profile, this process's Diameter identity (one
        per worker or pool node, :mod:`imscore.diameter.sharing`), and where RTR's NOTIFYs go."""
        self.server = server
        domain = server.profile.domains[0]
        self.shared = serves_shared(server)
        self.origin_realm = self.origin_realm or domain
        given = self._given_origin_host
        self.server_name = self.server_name or shared_server_name(server, given, domain)
        self.origin_host = process_origin_host(server, given, domain)
        self.destination_realm = self.destination_realm or self.origin_realm
        if getattr(server, "pool", None) is not None and not given and not server.node_id:
            log.warning(
                "Cx in a pool: this node has no --node-id and no origin_host, so its Origin-Host "
                "%s may be another node's too (the HSS sends RTR and PPR to one of them): give "
                "each node its own",
                self.origin_host,
            )
        # a Diameter node opens its peer connection (CER/CEA) when it starts, so the first REGISTER
        # does not wait for it, and keeps it with the watchdog
        with contextlib.suppress(RuntimeError):  # no running loop: connect on the first request
            task = asyncio.get_running_loop().create_task(self._keep_connected())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _keep_connected(self) -> None:
        """Connect now; then every Tw (``watchdog`` seconds, with jitter), connect again if the
        connection is gone, or send DWR if nothing came from the HSS for Tw, closing the connection
        when no DWA comes (RFC 3539 §3.4.1, RFC 6733 §5.5). An HSS that is down is logged once per
        outage; requests meanwhile are 503 and try to connect themselves."""
        loop = asyncio.get_running_loop()
        down = False
        while True:
            client = self._client
            if client is None or client.closed:
                try:
                    await self._connection(quiet=down)
                    down = False
                except StoreUnavailable:
                    down = True
            elif loop.time() - client.connection.last_received >= self.watchdog:
                try:
                    await client.watchdog()
                except DiameterPeerError as exc:
                    log.warning("HSS %s:%d: %s; closing the connection", self.host, self.port, exc)
                    await client.close(disconnect=False)
                    continue  # connect again at once
            if self.watchdog <= 0:
                return
            jitter = min(2.0, self.watchdog / 4)
            await asyncio.sleep(self.watchdog + secrets.SystemRandom().uniform(-jitter, jitter))

    def __str__(self) -> str:
        return f"Cx HSS at {self.host}:{self.port}"

    # -- the connection ---------------------------------------------------------------------------
    def _unavailable(self, why: object, *, quiet: bool = False) -> StoreUnavailable:
        if not quiet:
            log.warning("HSS %s:%d: %s", self.host, self.port, why)
        return StoreUnavailable(f"HSS {self.host}:{self.port}: {why}", self.retry_after)

    async def _connection(self, *, quiet: bool = False) -> CxClient:
        async with self._connecting:
            if self._client is not None and not self._client.closed:
                return self._client
            if not self.origin_realm:
                raise self._unavailable("no origin realm (the server has not started)")
            try:
                self._client = await CxClient.connect(
                    self.host,
                    self.port,
                    origin_host=self.origin_host,
                    origin_realm=self.origin_realm,
                    destination_realm=self.destination_realm,
                    timeout=self.timeout,
                    on_request=self._incoming,
                    transport=self.transport,
                )
            except DiameterPeerError as exc:
                raise self._unavailable(exc, quiet=quiet) from None
            log.info("Cx: connected to %s:%d", self.host, self.port)
            return self._client

    async def _ask(self, command: int, avps: list[Avp]) -> Message:
        client = await self._connection()
        try:
            return await client.cx(command, avps)
        except DiameterPeerError as exc:
            raise self._unavailable(exc) from None

    async def close(self) -> None:
        """Send DPR and close the connection; stop background SARs."""
        for task in list(self._tasks):
            task.cancel()
        if self._client is not None:
            with contextlib.suppress(DiameterPeerError, OSError):
                await self._client.close()
            self._client = None

    # -- the SubscriberStore methods --------------------------------------------------------------
    async def get_by_impi(self, impi: str) -> Subscriber | None:
        """The record of a registered user; otherwise one with no public identity yet (MAR and SAR
        give the rest), once the HSS said it knows the IMPI: SAR NO_ASSIGNMENT with the User-Name
        alone (TS 29.229 §6.1.3: Public-Identity is optional), kept :data:`LOOKUP_TTL` s.
        ``None`` for DIAMETER_ERROR_USER_UNKNOWN (the registrar then gives the profile's
        unknown-user answer, a challenge under ``unknown_user_status: 401``) or for text that is
        not a private identity."""
        key = impi_key(impi)
        known = self._by_impi.get(key)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        try:
            record = Subscriber(impi=impi, password=secrets.token_hex(24))
        except ValueError:
            return None
        if self._known_impis.get(key, 0.0) > time.monotonic():
            return record
        saa = await self._ask(
            d.SAR,
            [
                Avp.utf8(d.USER_NAME, impi),
                Avp.utf8(d.SERVER_NAME, self.server_name, V),
                Avp.u32(d.SERVER_ASSIGNMENT_TYPE, d.NO_ASSIGNMENT, V),
                Avp.u32(d.USER_DATA_ALREADY_AVAILABLE, 0, V),
            ],
        )
        if result_of(saa) == (d.ERROR_USER_UNKNOWN, V):
            log.info("SAR NO_ASSIGNMENT %s: user unknown", key)
            return None
        while len(self._known_impis) >= MAX_KNOWN_IMPIS:
            del self._known_impis[next(iter(self._known_impis))]
        self._known_impis[key] = time.monotonic() + LOOKUP_TTL
        return record

    async def get_by_impu(self, uri: Uri | str) -> Subscriber | None:
        """The record of the set ``uri`` is in: kept, else read with SAR NO_ASSIGNMENT."""
        key = impu_key(uri)
        if key is None:
            return None
        kept = self._by_impu.get(key)
        if kept is not None and kept[1] > time.monotonic():
            return kept[0]
        saa = await self._ask(d.SAR, self._sar_avps(str(uri), d.NO_ASSIGNMENT, None))
        if result_of(saa) == (d.UNABLE_TO_COMPLY, 0):
            log.warning(
                "SAR NO_ASSIGNMENT %s: 5012, the HSS has another Server-Name than %s for this "
                "user (the nodes of a pool must share one server_name)",
                key,
                self.server_name,
            )
            return None
        if result_of(saa) != (d.SUCCESS, 0):
            log.info("SAR NO_ASSIGNMENT %s: %s", key, result_of(saa))
            return None
        record = self._profile(saa, None)
        if record is not None:
            self._keep(record, time.monotonic() + LOOKUP_TTL)
        return record

    # -- the RemoteAuthority methods --------------------------------------------------------------
    async def fetch_credentials(
        self,
        subscriber: Subscriber,
        impu: Uri,
        schemes: Sequence[str],
        *,
        aka_algorithm: str,
        resync: bytes | None = None,
    ) -> RemoteCredentials:
        """MAR for one vector (or the H(A1)); the MAA as :class:`RemoteCredentials`."""
        aka_scheme = f"Digest-{aka_algorithm}"
        if DIGEST not in schemes:
            scheme = aka_scheme
        elif AKA not in schemes:
            scheme = d.SCHEME_SIP_DIGEST
        else:
            scheme = d.SCHEME_UNKNOWN
        item = [Avp.utf8(d.SIP_AUTHENTICATION_SCHEME, scheme, V)]
        if resync is not None:
            item.append(Avp.octets(d.SIP_AUTHORIZATION, resync, V))
        maa = await self._ask(
            d.MAR,
            [
                Avp.utf8(d.USER_NAME, subscriber.impi),
                Avp.utf8(d.PUBLIC_IDENTITY, str(impu), V),
                Avp.u32(d.SIP_NUMBER_AUTH_ITEMS, 1, V),
                Avp.group(d.SIP_AUTH_DATA_ITEM, item, V),
                Avp.utf8(d.SERVER_NAME, self.server_name, V),
            ],
        )
        self._check(maa, "MAR", subscriber.impi)
        vectors: list[AuthVector] = []
        ha1: str | None = None
        realm: str | None = None
        given = ""
        try:
            for data_item in maa.find_all(d.SIP_AUTH_DATA_ITEM, V):
                name = data_item.find(d.SIP_AUTHENTICATION_SCHEME, V)
                given = "" if name is None else name.as_str()
                if given.lower().startswith("digest-aka"):
                    vector = _vector(data_item)
                    if vector is not None:
                        vectors.append(vector)
                elif given in _DIGEST_SCHEMES:
                    digest = data_item.find(d.SIP_DIGEST_AUTHENTICATE, V)
                    found = None if digest is None else digest.find(d.DIGEST_HA1)
                    ha1 = None if found is None else found.as_str()
                    named = None if digest is None else digest.find(d.DIGEST_REALM)
                    realm = None if named is None else named.as_str()
        except DiameterDecodeError as exc:
            raise self._unavailable(f"MAA for {subscriber.impi} does not parse: {exc}") from None
        if vectors and AKA in schemes:
            algorithm = aka_algorithm if given.lower() == aka_scheme.lower() else given[len("Digest-") :]
            return RemoteCredentials(AKA, vectors, algorithm=algorithm)
        if ha1 is not None and DIGEST in schemes:
            return RemoteCredentials(DIGEST, ha1=ha1, realm=realm)
        raise StoreRefusal(403, "No authentication scheme the HSS and this S-CSCF share")

    async def assign(self, subscriber: Subscriber, impu: Uri) -> Subscriber:
        """SAR REGISTRATION, or RE_REGISTRATION for a set registered at this S-CSCF (by this
        process, or by any worker or pool node: :meth:`_registered`); the profile."""
        key = impu_key(impu) or ""
        aor = self.sets.default_of(key)
        if aor is None and self.shared:  # the set of the IMPU, to find its bindings
            await self.get_by_impu(impu)
            aor = self.sets.default_of(key)
        again = await self._registered(aor or key)
        kind = d.RE_REGISTRATION if again else d.REGISTRATION
        saa = await self._ask(d.SAR, self._sar_avps(str(impu), kind, subscriber.impi))
        self._check(saa, "SAR", subscriber.impi)
        found = self._profile(saa, subscriber.impi)
        if found is None:
            raise StoreRefusal(403, "The HSS sent no usable user profile")
        self.registered.add(found.implicit_sets[0].keys[0])
        self._keep(found, self._registered_until())
        return found

    def _registered_until(self) -> float:
        """Until when the profile of a registered set is kept: while it is registered, for one
        process (the PPRs come to it); :data:`LOOKUP_TTL` s for one of several (a PPR reaches only
        the one the HSS assigned last, the others read the profile again)."""
        return time.monotonic() + LOOKUP_TTL if self.shared else math.inf

    async def _registered(self, aor: str) -> bool:
        """Whether the set filed under ``aor`` is registered at this S-CSCF: assigned by this
        process's SAR (one process alone), or holding a live binding in the binding store (which
        workers and pool nodes share, and which survives a restart).

        :raises StoreUnavailable: the binding store failed (the request becomes ``503``).
        """
        if not self.shared and aor in self.registered:
            return True
        store = None if self.server is None else getattr(self.server, "store", None)
        if store is None:
            return aor in self.registered
        try:
            bindings = await store.load(aor)
        except StoreError as exc:
            raise StoreUnavailable(f"binding store: {exc}", self.retry_after) from None
        now = self.server.clock()
        return any(not b.expired(now) for b in bindings)

    def registration_changed(self, change: RegistrationChange) -> None:
        """A de-registration (SAR USER_DEREGISTRATION) or an expiry (TIMEOUT_DEREGISTRATION) of a
        set, sent in the background; one the network made (an RTR) is not reported back."""
        if change.kind != DEREGISTRATION or change.cause == "network":
            return
        kind = d.TIMEOUT_DEREGISTRATION if change.cause == "expired" else d.USER_DEREGISTRATION
        self._forget(change.aor)
        task = asyncio.get_running_loop().create_task(self._deregister(change.aor, change.impi, kind))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deregister(self, aor: str, impi: str, kind: int) -> None:
        try:
            saa = await self._ask(d.SAR, self._sar_avps(aor, kind, impi))
        except StoreUnavailable:
            return  # (logged) the HSS will find out at the next registration
        log.info("SAR %d for %s: %s", kind, aor, result_of(saa))

    # -- requests from the HSS --------------------------------------------------------------------
    async def _incoming(self, request: Message) -> Message | None:
        if request.command == d.RTR:
            return await self._rtr(request)
        if request.command == d.PPR:
            return await self._ppr(request)
        return self._answer(request, result_code(d.COMMAND_UNSUPPORTED), error=True)

    def _answer(self, request: Message, result: Avp, *, error: bool = False) -> Message:
        return answer(
            request,
            [
                cx_application_avp(),
                result,
                Avp.u32(d.AUTH_SESSION_STATE, d.NO_STATE_MAINTAINED),
                Avp.utf8(d.ORIGIN_HOST, self.origin_host),
                Avp.utf8(d.ORIGIN_REALM, self.origin_realm),
            ],
            error=error,
        )

    async def _sets_named(self, request: Message) -> list[str]:
        """The default IMPU keys of the registered sets an RTR names: the sets of its
        Public-Identity AVPs (an identity whose set is not known here is taken for a default
        IMPU: the RTR lists every identity of the set), else every set of its User-Name known
        here; registered as :meth:`_registered` says."""
        candidates: list[str] = []
        for avp in request.find_all(d.PUBLIC_IDENTITY, V):
            key = impu_key(avp.as_str())
            if key is not None:
                candidates.append(self.sets.default_of(key) or key)
        user = request.find(d.USER_NAME)
        if not candidates and user is not None:
            candidates = list(self.sets.sets_of(user.as_str()))
        out: list[str] = []
        for aor in dict.fromkeys(candidates):
            if await self._registered(aor):
                out.append(aor)
        return out

    async def _rtr(self, request: Message) -> Message:
        """Registration-Termination (TS 29.228 §6.5.1): de-register the sets named."""
        reason = request.find(d.DEREGISTRATION_REASON, V)
        code_avp = None if reason is None else reason.find(d.REASON_CODE, V)
        code = d.PERMANENT_TERMINATION if code_avp is None else code_avp.as_u32()
        event = "deactivated" if code in (d.NEW_SERVER_ASSIGNED, d.SERVER_CHANGE) else "rejected"
        try:
            sets = await self._sets_named(request)
        except StoreUnavailable as exc:
            log.warning("RTR: %s", exc.reason)
            return self._answer(request, result_code(d.UNABLE_TO_COMPLY))
        for aor in sets:
            self._forget(aor)
            if self.server is not None and self.server.registrar is not None:
                try:
                    notes = await self.server.registrar.network_deregister(
                        aor, event, self.server.clock()
                    )
                except StoreError as exc:  # the bindings could not be removed: the HSS may retry
                    log.warning("RTR for %s: binding store: %s", aor, exc)
                    return self._answer(request, result_code(d.UNABLE_TO_COMPLY))
                self.server._notify(notes)
        log.info("RTR (reason %d): de-registered %s", code, ", ".join(sets) or "nothing")
        return self._answer(request, result_code(d.SUCCESS))

    async def _ppr(self, request: Message) -> Message:
        """Push-Profile (TS 29.228 §6.5.2): the new User-Data replaces the kept profile."""
        data = request.find(d.USER_DATA, V)
        user = request.find(d.USER_NAME)
        if data is None:
            return self._answer(request, result_code(d.SUCCESS))  # (charging information only)
        try:
            record = subscriber_from_user_data(data.data, None if user is None else user.as_str())
        except ValueError as exc:
            log.warning("PPR: %s", exc)
            return self._answer(request, experimental_result(d.ERROR_NOT_SUPPORTED_USER_DATA))
        aor = record.implicit_sets[0].keys[0]
        try:
            registered = await self._registered(aor)
        except StoreUnavailable as exc:
            log.warning("PPR: %s", exc.reason)
            return self._answer(request, result_code(d.UNABLE_TO_COMPLY))
        if not registered:
            return self._answer(request, experimental_result(d.ERROR_USER_UNKNOWN))
        self._forget(aor, keep_registered=True)
        self._keep(record, self._registered_until())
        log.info("PPR: new profile for %s (%d IMPUs)", aor, len(record.implicit_sets[0]))
        return self._answer(request, result_code(d.SUCCESS))

    # -- pieces -----------------------------------------------------------------------------------
    def _sar_avps(self, impu: str, kind: int, impi: str | None) -> list[Avp]:
        avps = [] if impi is None else [Avp.utf8(d.USER_NAME, impi)]
        return [
            *avps,
            Avp.utf8(d.PUBLIC_IDENTITY, impu, V),
            Avp.utf8(d.SERVER_NAME, self.server_name, V),
            Avp.u32(d.SERVER_ASSIGNMENT_TYPE, kind, V),
            Avp.u32(d.USER_DATA_ALREADY_AVAILABLE, 0, V),
        ]

    def _check(self, reply: Message, what: str, impi: str) -> None:
        """Raise the refusal an answer other than 2001 is."""
        result = result_of(reply)
        if result == (d.SUCCESS, 0):
            return
        log.info("%s for %s: %s", what, impi, result)
        code = None if result is None else result[0]
        if result is not None and result[1] == V and code == d.ERROR_USER_UNKNOWN:
            raise StoreRefusal(404, "Unknown user (HSS)")
        if result is not None and result[1] == V and code == d.ERROR_IDENTITIES_DONT_MATCH:
            raise StoreRefusal(403, "The IMPI does not own this IMPU (HSS)")
        if code is not None and code in (d.UNABLE_TO_DELIVER, 3004):  # (3004: too busy)
            raise self._unavailable(f"{what} answered {code}")
        raise StoreRefusal(403, f"Refused by the HSS ({code})")

    def _profile(self, saa: Message, impi: str | None) -> Subscriber | None:
        data = saa.find(d.USER_DATA, V)
        if data is None:
            return None
        user = saa.find(d.USER_NAME)
        try:
            owner = impi or (None if user is None else user.as_str())
            return subscriber_from_user_data(data.data, owner)
        except (ValueError, DiameterDecodeError) as exc:
            log.warning("SAA User-Data: %s", exc)
            return None

    def _keep(self, record: Subscriber, until: float) -> None:
        """Keep a profile until ``until``; one from a registration (not a NO_ASSIGNMENT lookup)
        also answers for its IMPI."""
        self.sets.learn(record)
        for key in record.implicit_sets[0].keys:
            self._by_impu[key] = (record, until)
        if until == math.inf or record.implicit_sets[0].keys[0] in self.registered:
            self._by_impi[impi_key(record.impi)] = (record, until)

    def _forget(self, aor: str, *, keep_registered: bool = False) -> None:
        kept = self._by_impu.get(aor)
        if not keep_registered:
            self.registered.discard(aor)
        if kept is None:
            return
        record = kept[0]
        for key in record.implicit_sets[0].keys:
            self._by_impu.pop(key, None)
        owned = self._by_impi.get(impi_key(record.impi))
        if owned is not None and owned[0] is record:
            del self._by_impi[impi_key(record.impi)]


def _vector(item: Avp) -> AuthVector | None:
    authenticate = item.find(d.SIP_AUTHENTICATE, V)
    xres = item.find(d.SIP_AUTHORIZATION, V)
    ck = item.find(d.CONFIDENTIALITY_KEY, V)
    ik = item.find(d.INTEGRITY_KEY, V)
    if authenticate is None or xres is None or ck is None or ik is None:
        return None
    if len(authenticate.data) != 32 or len(ck.data) != 16 or len(ik.data) != 16:
        return None
    return AuthVector(authenticate.data[:16], authenticate.data[16:], xres.data, ck.data, ik.data)
