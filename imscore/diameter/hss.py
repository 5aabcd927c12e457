"""The HSS's Cx application (TS 29.228 §6, TS 29.229): a request in, its answer out.

:class:`CxHss` answers UAR, LIR, MAR and SAR from any
:class:`~imscore.subscribers.SubscriberStore`, and keeps, per implicit registration set, the
registration state and the S-CSCF assigned to it (in memory: a restart forgets them, as a restarted
HSS-lite would). It does no I/O of its own beyond the store; the transport is
:mod:`imscore.diameter.server`.

Choices (each a rule of TS 29.228 §6.1 / §6.3 in a simple form):

- UAR: an unknown IMPU or IMPI is Experimental-Result 5001 (DIAMETER_ERROR_USER_UNKNOWN), an IMPI
  that does not own the IMPU 5002, a barred IMPU Result-Code 5003 (DIAMETER_AUTHORIZATION_REJECTED).
  Registration: 2002 SUBSEQUENT_REGISTRATION with the Server-Name when an S-CSCF is assigned, else
  2001 FIRST_REGISTRATION with the configured S-CSCF name (``server_name``) or, without one,
  empty Server-Capabilities (the I-CSCF picks from its own list). De-registration: 2001 SUCCESS
  with the Server-Name, or 5003 IDENTITY_NOT_REGISTERED.
- LIR: 2001 SUCCESS with the Server-Name of a registered or unregistered-state IMPU; for one not
  registered, 2003 UNREGISTERED_SERVICE when the subscriber has iFCs (with the configured name or
  capabilities), else 5003 IDENTITY_NOT_REGISTERED.
- MAR: Digest-AKAv1-MD5 / Digest-AKAv2-MD5 vectors from Milenage (up to SIP-Number-Auth-Items,
  at most :data:`MAX_VECTORS`), re-synchronised from a SIP-Authorization of RAND || AUTS; "SIP
  Digest" gives SIP-Digest-Authenticate { Digest-Realm (the IMPI's realm), Digest-QoP auth,
  Digest-Algorithm MD5, Digest-HA1 = hex MD5(IMPI:realm:password) }. "Unknown" or no scheme picks
  the subscriber's first (AKA before Digest). A scheme the subscriber has no credentials for is
  5006 AUTH_SCHEME_NOT_SUPPORTED. The S-CSCF's Server-Name is stored when none is.
- SAR: REGISTRATION, RE_REGISTRATION and UNREGISTERED_USER assign the S-CSCF and return User-Data
  (:mod:`imscore.diameter.userdata`) for the IMPU's implicit set; the de-registration types clear
  the state (the *_STORE_SERVER_NAME ones keep the name, unregistered); NO_ASSIGNMENT and
  AAA_USER_DATA_REQUEST return User-Data only.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from imscore.auth.aka import AkaError, generate_vector, resync_sqn
from imscore.auth.milenage import Milenage
from imscore.diameter import dictionary as d
from imscore.diameter.codec import Avp, Message
from imscore.diameter.messages import answer, cx_application_avp, experimental_result, result_code
from imscore.diameter.userdata import user_data_xml
from imscore.registrar.sqn import MemorySqnStore, SqnStore
from imscore.subscribers import AUTH_AKA, AUTH_DIGEST, ImplicitSet, Subscriber, SubscriberStore

__all__ = ["MAX_VECTORS", "Assignment", "CxHss"]

log = logging.getLogger("imscore.diameter.hss")

#: the most authentication vectors one MAA carries
MAX_VECTORS: Final = 5
V: Final = d.VENDOR_3GPP

NOT_REGISTERED: Final = "not-registered"
REGISTERED: Final = "registered"
UNREGISTERED: Final = "unregistered"

_DEREGISTER: Final = {
    d.TIMEOUT_DEREGISTRATION,
    d.USER_DEREGISTRATION,
    d.ADMINISTRATIVE_DEREGISTRATION,
    d.DEREGISTRATION_TOO_MUCH_DATA,
}
_DEREGISTER_KEEP_NAME: Final = {
    d.TIMEOUT_DEREGISTRATION_STORE_SERVER_NAME,
    d.USER_DEREGISTRATION_STORE_SERVER_NAME,
}


@dataclass
class Assignment:
    """An implicit set's state in the HSS: registration state, S-CSCF name, and the Diameter host of
    the S-CSCF that sent the SAR (where an RTR would go)."""

    state: str = NOT_REGISTERED
    server_name: str | None = None
    peer_host: str | None = None


class CxHss:
    """Answers Cx requests from a subscriber store (see the module's text).

    :param store: where the subscribers come from.
    :param origin_host: this HSS's Origin-Host.
    :param origin_realm: its Origin-Realm.
    :param server_name: the S-CSCF name given in a first-registration UAA (``None``: capabilities).
    :param sqn_store: the last AKA SQN issued per IMPI (default: in memory).
    :param random_bytes: RAND source.
    """

    def __init__(
        self,
        store: SubscriberStore,
        origin_host: str,
        origin_realm: str,
        *,
        server_name: str | None = None,
        sqn_store: SqnStore | None = None,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.store = store
        self.origin_host = origin_host
        self.origin_realm = origin_realm
        self.server_name = server_name
        self.sqn_store: SqnStore = sqn_store if sqn_store is not None else MemorySqnStore()
        self.random_bytes = random_bytes
        self.assignments: dict[tuple[str, str], Assignment] = {}

    # -- helpers ----------------------------------------------------------------------------------
    def _answer(self, request: Message, result: Avp, *more: Avp) -> Message:
        return answer(
            request,
            [
                cx_application_avp(),
                result,
                Avp.u32(d.AUTH_SESSION_STATE, d.NO_STATE_MAINTAINED),
                Avp.utf8(d.ORIGIN_HOST, self.origin_host),
                Avp.utf8(d.ORIGIN_REALM, self.origin_realm),
                *more,
            ],
        )

    def _failure(self, request: Message, code: int, *, experimental: bool = True) -> Message:
        return self._answer(request, experimental_result(code) if experimental else result_code(code))

    def assignment(self, subscriber: Subscriber, implicit_set: ImplicitSet) -> Assignment:
        """The state of one implicit set (made on first use)."""
        key = (subscriber.impi, implicit_set.keys[0])
        found = self.assignments.get(key)
        if found is None:
            found = self.assignments[key] = Assignment()
        return found

    async def _identities(
        self, request: Message, *, need_impi: bool
    ) -> tuple[Subscriber, ImplicitSet, str] | Message:
        """The subscriber, implicit set and IMPU a request names, or the failure answer."""
        impu_avp = request.find(d.PUBLIC_IDENTITY, V)
        impi_avp = request.find(d.USER_NAME)
        if impi_avp is None and need_impi:
            return self._missing(request, "User-Name")
        impi = None if impi_avp is None else impi_avp.as_str()
        if impu_avp is None:
            if impi is None:
                return self._missing(request, "Public-Identity")
            subscriber = await self.store.get_by_impi(impi)
            if subscriber is None or not subscriber.implicit_sets:
                return self._failure(request, d.ERROR_USER_UNKNOWN)
            first = subscriber.implicit_sets[0]
            return subscriber, first, str(first.default)
        impu = impu_avp.as_str()
        subscriber = await self.store.get_by_impu(impu)
        if subscriber is None:
            return self._failure(request, d.ERROR_USER_UNKNOWN)
        if impi is not None and subscriber.impi.lower() != impi.lower():
            other = await self.store.get_by_impi(impi)
            return self._failure(
                request, d.ERROR_USER_UNKNOWN if other is None else d.ERROR_IDENTITIES_DONT_MATCH
            )
        implicit_set = subscriber.implicit_set_of(impu)
        if implicit_set is None:  # barred and in no set
            return self._failure(request, d.AUTHORIZATION_REJECTED, experimental=False)
        return subscriber, implicit_set, impu

    def _missing(self, request: Message, name: str) -> Message:
        return answer(
            request,
            [
                result_code(d.MISSING_AVP),
                Avp.utf8(d.ORIGIN_HOST, self.origin_host),
                Avp.utf8(d.ORIGIN_REALM, self.origin_realm),
                Avp.utf8(d.ERROR_MESSAGE, f"{name} is missing", mandatory=False),
            ],
            error=True,
        )

    def _capabilities(self) -> Avp:
        if self.server_name is not None:
            return Avp.utf8(d.SERVER_NAME, self.server_name, V)
        return Avp.group(d.SERVER_CAPABILITIES, [], V)

    # -- the commands -----------------------------------------------------------------------------
    async def handle(self, request: Message) -> Message:
        """The answer to one Cx request (UAR, LIR, MAR, SAR); 3001 for another command."""
        handler = {
            d.UAR: self.uar,
            d.LIR: self.lir,
            d.MAR: self.mar,
            d.SAR: self.sar,
        }.get(request.command)
        if handler is None:
            return answer(
                request,
                [
                    result_code(d.COMMAND_UNSUPPORTED),
                    Avp.utf8(d.ORIGIN_HOST, self.origin_host),
                    Avp.utf8(d.ORIGIN_REALM, self.origin_realm),
                ],
                error=True,
            )
        return await handler(request)

    async def uar(self, request: Message) -> Message:
        """User-Authorization (TS 29.228 §6.1.1)."""
        found = await self._identities(request, need_impi=False)
        if isinstance(found, Message):
            return found
        subscriber, implicit_set, impu = found
        if subscriber.is_barred(impu):
            return self._failure(request, d.AUTHORIZATION_REJECTED, experimental=False)
        kind_avp = request.find(d.USER_AUTHORIZATION_TYPE, V)
        kind = d.UAT_REGISTRATION if kind_avp is None else kind_avp.as_u32()
        state = self.assignment(subscriber, implicit_set)
        if kind == d.UAT_DE_REGISTRATION:
            if state.server_name is None:
                return self._failure(request, d.ERROR_IDENTITY_NOT_REGISTERED)
            return self._answer(
                request, result_code(d.SUCCESS), Avp.utf8(d.SERVER_NAME, state.server_name, V)
            )
        if state.server_name is not None and kind != d.UAT_REGISTRATION_AND_CAPABILITIES:
            return self._answer(
                request,
                experimental_result(d.SUBSEQUENT_REGISTRATION),
                Avp.utf8(d.SERVER_NAME, state.server_name, V),
            )
        return self._answer(request, experimental_result(d.FIRST_REGISTRATION), self._capabilities())

    async def lir(self, request: Message) -> Message:
        """Location-Info (TS 29.228 §6.1.4)."""
        found = await self._identities(request, need_impi=False)
        if isinstance(found, Message):
            return found
        subscriber, implicit_set, _ = found
        state = self.assignment(subscriber, implicit_set)
        if state.state != NOT_REGISTERED and state.server_name is not None:
            return self._answer(
                request, result_code(d.SUCCESS), Avp.utf8(d.SERVER_NAME, state.server_name, V)
            )
        if subscriber.service_profile.ifcs:
            return self._answer(
                request, experimental_result(d.UNREGISTERED_SERVICE), self._capabilities()
            )
        return self._failure(request, d.ERROR_IDENTITY_NOT_REGISTERED)

    async def mar(self, request: Message) -> Message:
        """Multimedia-Auth (TS 29.228 §6.3)."""
        found = await self._identities(request, need_impi=True)
        if isinstance(found, Message):
            return found
        subscriber, implicit_set, _ = found
        item = request.find(d.SIP_AUTH_DATA_ITEM, V)
        scheme_avp = None if item is None else item.find(d.SIP_AUTHENTICATION_SCHEME, V)
        scheme = d.SCHEME_UNKNOWN if scheme_avp is None else scheme_avp.as_str()
        # "Unknown" in any case: Kamailio's ims_auth asks "unknown" in a re-synchronisation's MAR
        if scheme.lower() == d.SCHEME_UNKNOWN.lower():
            scheme = d.SCHEME_AKAV1 if subscriber.aka is not None else d.SCHEME_SIP_DIGEST
        server = request.find(d.SERVER_NAME, V)
        state = self.assignment(subscriber, implicit_set)
        if server is not None and state.server_name is None:
            state.server_name = server.as_str()
        count_avp = request.find(d.SIP_NUMBER_AUTH_ITEMS, V)
        count = max(1, min(MAX_VECTORS, 1 if count_avp is None else count_avp.as_u32()))
        if scheme in (d.SCHEME_AKAV1, d.SCHEME_AKAV2) and AUTH_AKA in subscriber.auth_schemes:
            authorization = None if item is None else item.find(d.SIP_AUTHORIZATION, V)
            return self._aka(request, subscriber, scheme, count, authorization)
        if scheme in (d.SCHEME_SIP_DIGEST, "Digest-MD5") and AUTH_DIGEST in subscriber.auth_schemes:
            # answered as what it is, "SIP Digest" (TS 29.229 §6.3.13: an H(A1) in
            # SIP-Digest-Authenticate, the S-CSCF makes the nonce), also to a request for the older
            # "Digest-MD5" (Kamailio's ims_auth asks for it and reads an item by its scheme)
            return self._digest(request, subscriber, d.SCHEME_SIP_DIGEST)
        return self._failure(request, d.ERROR_AUTH_SCHEME_NOT_SUPPORTED)

    def _aka(
        self,
        request: Message,
        subscriber: Subscriber,
        scheme: str,
        count: int,
        authorization: Avp | None,
    ) -> Message:
        aka = subscriber.aka
        assert aka is not None
        milenage = Milenage(aka.k, op=aka.op, opc=aka.opc)
        sqn_ms: int | None = None
        if authorization is not None:  # RAND || AUTS: a re-synchronisation (TS 29.229 §6.3.13)
            raw = authorization.data
            if len(raw) != 30:
                return self._failure(request, d.AUTHORIZATION_REJECTED, experimental=False)
            try:
                sqn_ms = resync_sqn(milenage, raw[:16], raw[16:])
            except AkaError as exc:
                log.info("MAR for %s: AUTS does not verify: %s", subscriber.impi, exc)
                return self._failure(request, d.AUTHORIZATION_REJECTED, experimental=False)
        items: list[Avp] = []
        for number in range(count):
            sqn = self.sqn_store.issue(subscriber.impi, aka.sqn, sqn_ms if number == 0 else None)
            vector = generate_vector(milenage, sqn, aka.amf, self.random_bytes(16))
            items.append(
                Avp.group(
                    d.SIP_AUTH_DATA_ITEM,
                    [
                        Avp.u32(d.SIP_ITEM_NUMBER, number + 1, V),
                        Avp.utf8(d.SIP_AUTHENTICATION_SCHEME, scheme, V),
                        Avp.octets(d.SIP_AUTHENTICATE, vector.rand + vector.autn, V),
                        Avp.octets(d.SIP_AUTHORIZATION, vector.xres, V),
                        Avp.octets(d.CONFIDENTIALITY_KEY, vector.ck, V),
                        Avp.octets(d.INTEGRITY_KEY, vector.ik, V),
                    ],
                    V,
                )
            )
        return self._answer(
            request,
            result_code(d.SUCCESS),
            Avp.utf8(d.USER_NAME, subscriber.impi),
            *_echoed_public_identity(request),
            Avp.u32(d.SIP_NUMBER_AUTH_ITEMS, len(items), V),
            *items,
        )

    def _digest(self, request: Message, subscriber: Subscriber, scheme: str) -> Message:
        assert subscriber.password is not None
        realm = subscriber.impi.rpartition("@")[2]
        ha1 = hashlib.md5(f"{subscriber.impi}:{realm}:{subscriber.password}".encode()).hexdigest()
        digest = Avp.group(
            d.SIP_DIGEST_AUTHENTICATE,
            [
                Avp.utf8(d.DIGEST_REALM, realm),
                Avp.utf8(d.DIGEST_ALGORITHM, "MD5"),
                Avp.utf8(d.DIGEST_QOP, "auth"),
                Avp.utf8(d.DIGEST_HA1, ha1),
            ],
            V,
        )
        item = Avp.group(
            d.SIP_AUTH_DATA_ITEM,
            [
                Avp.u32(d.SIP_ITEM_NUMBER, 1, V),
                Avp.utf8(d.SIP_AUTHENTICATION_SCHEME, scheme, V),
                digest,
            ],
            V,
        )
        return self._answer(
            request,
            result_code(d.SUCCESS),
            Avp.utf8(d.USER_NAME, subscriber.impi),
            *_echoed_public_identity(request),
            Avp.u32(d.SIP_NUMBER_AUTH_ITEMS, 1, V),
            item,
        )

    async def sar(self, request: Message) -> Message:
        """Server-Assignment (TS 29.228 §6.1.2)."""
        found = await self._identities(request, need_impi=False)
        if isinstance(found, Message):
            return found
        subscriber, implicit_set, _ = found
        kind_avp = request.find(d.SERVER_ASSIGNMENT_TYPE, V)
        if kind_avp is None:
            return self._missing(request, "Server-Assignment-Type")
        kind = kind_avp.as_u32()
        server_avp = request.find(d.SERVER_NAME, V)
        server = None if server_avp is None else server_avp.as_str()
        origin = request.find(d.ORIGIN_HOST)
        state = self.assignment(subscriber, implicit_set)
        user_data = Avp.octets(d.USER_DATA, user_data_xml(subscriber, implicit_set), V)
        user_name = Avp.utf8(d.USER_NAME, subscriber.impi)
        if kind in (d.REGISTRATION, d.RE_REGISTRATION, d.UNREGISTERED_USER):
            if server is None:
                return self._missing(request, "Server-Name")
            state.state = UNREGISTERED if kind == d.UNREGISTERED_USER else REGISTERED
            state.server_name = server
            state.peer_host = None if origin is None else origin.as_str()
            log.info("SAR %d: %s assigned to %s", kind, implicit_set.default, server)
            return self._answer(request, result_code(d.SUCCESS), user_name, user_data)
        if kind in _DEREGISTER or kind in _DEREGISTER_KEEP_NAME:
            keep = kind in _DEREGISTER_KEEP_NAME
            state.state = UNREGISTERED if keep else NOT_REGISTERED
            if not keep:
                state.server_name = None
                state.peer_host = None
            log.info("SAR %d: %s de-registered", kind, implicit_set.default)
            return self._answer(request, result_code(d.SUCCESS), user_name)
        if kind in (d.AUTHENTICATION_FAILURE, d.AUTHENTICATION_TIMEOUT):
            if state.state == NOT_REGISTERED:
                state.server_name = None
            return self._answer(request, result_code(d.SUCCESS), user_name)
        if kind in (d.NO_ASSIGNMENT, d.AAA_USER_DATA_REQUEST):
            if (
                kind == d.NO_ASSIGNMENT
                and server is not None
                and state.server_name not in (None, server)
            ):
                return self._answer(request, result_code(d.UNABLE_TO_COMPLY))
            return self._answer(request, result_code(d.SUCCESS), user_name, user_data)
        return self._failure(request, d.ERROR_IN_ASSIGNMENT_TYPE)


def _echoed_public_identity(request: Message) -> list[Avp]:
    """The MAR's Public-Identity, for its MAA (TS 29.229 §6.1.8 lists it; Kamailio's ims_auth
    takes the identity from the answer and refuses one without it)."""
    found = request.find(d.PUBLIC_IDENTITY, V)
    return [] if found is None else [Avp.utf8(d.PUBLIC_IDENTITY, found.as_str(), V)]
