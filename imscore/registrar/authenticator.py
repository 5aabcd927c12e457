"""Challenge and verify a REGISTER with SIP Digest or IMS Digest-AKA (no I/O; ``now`` is passed in).

Digest nonces validate themselves (timestamp + MAC, :class:`~imscore.auth.digest.NonceFactory`), so
Digest needs no per-nonce state beyond the nonce-count window. AKA keeps, per challenge, the
authentication vector it sent (the expected RES lives only here) and, per private identity, the
sequence number state; both are in memory.
"""

from __future__ import annotations

import enum
import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from imscore.auth.aka import (
    AkaError,
    AuthVector,
    decode_auts,
    derive_password,
    generate_vector,
    parse_aka_algorithm,
    resync_sqn,
)
from imscore.auth.digest import (
    NonceCounter,
    NonceFactory,
    Verdict,
    VerdictKind,
    challenge,
    verify,
)
from imscore.auth.milenage import Milenage
from imscore.sip import AuthHeader, Request
from imscore.sip.grammar import quote
from imscore.subscribers import Subscriber

from .sqn import MemorySqnStore, SqnStore

__all__ = ["SCHEMES_BY_POLICY", "AuthOutcome", "AuthResult", "Authenticator"]

#: which schemes each builtin ``auth`` policy allows, preferred first
SCHEMES_BY_POLICY: Final[dict[str, tuple[str, ...]]] = {
    "digest": ("digest",),
    "aka": ("aka",),
    "digest-or-aka": ("aka", "digest"),
}
AKA_ALGORITHM: Final = "AKAv1-MD5"
AKA_ALGORITHMS: Final = ("AKAv1-MD5", "AKAv2-MD5")
DIGEST_ALGORITHMS: Final = ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess")
AKA_VECTOR_LIFETIME: Final = 120.0


class AuthOutcome(enum.Enum):
    OK = "ok"
    CHALLENGE = "challenge"  # answer 401 with the challenge
    BAD_REQUEST = "bad request"  # answer 400
    FORBIDDEN = "forbidden"  # answer 403 (no scheme this subscriber and profile share)


@dataclass(frozen=True)
class AuthResult:
    """What the authenticator decided; ``challenge`` is a WWW-Authenticate value when asked for."""

    outcome: AuthOutcome
    reason: str = ""
    challenge: str | None = None
    impi: str | None = None


@dataclass
class _Pending:
    impi: str
    vector: AuthVector
    created: float


class Authenticator:
    """Per-registrar authentication state.

    :param realm: the realm of challenges (the served domain).
    :param schemes: the schemes the profile accepts, preferred first (``digest``, ``aka``).
    :param secret: the key that makes Digest nonces self-validating.
    :param random_bytes: where AKA RANDs come from (injectable for tests).
    :param sqn_store: where the last AKA SQN issued per IMPI is kept (default: in this process).
    """

    def __init__(
        self,
        realm: str,
        schemes: Sequence[str],
        *,
        secret: bytes | None = None,
        nonce_lifetime: float = 300.0,
        random_bytes: Callable[[int], bytes] | None = None,
        digest_algorithm: str = "MD5",
        aka_algorithm: str = AKA_ALGORITHM,
        sqn_store: SqnStore | None = None,
    ) -> None:
        if digest_algorithm not in DIGEST_ALGORITHMS:
            expected = ", ".join(DIGEST_ALGORITHMS)
            raise ValueError(f"digest_algorithm: expected one of {expected}, got {digest_algorithm!r}")
        if aka_algorithm not in AKA_ALGORITHMS:
            raise ValueError(
                f"aka_algorithm: expected one of {', '.join(AKA_ALGORITHMS)}, got {aka_algorithm!r}"
            )
        self.realm = realm
        self.schemes = tuple(schemes)
        self.digest_algorithm = digest_algorithm
        self.aka_algorithm = aka_algorithm
        self.nonces = NonceFactory(secret or secrets.token_bytes(32), nonce_lifetime)
        #: what every nonce made here is bound to: worker processes sharing one secret each bind
        #: theirs to their number, so a nonce-count is always checked where the nonce was made
        self.nonce_extra = b""
        self.counter = NonceCounter()
        # looked up at call time (not bound at import), so a seeded lab run can replace the source
        self.random_bytes: Callable[[int], bytes] = random_bytes or (lambda n: secrets.token_bytes(n))
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        #: the last AKA SQN issued per IMPI (in the SQLite store file when the server has one, so it
        #: survives restarts and worker processes share it)
        self.sqn_store: SqnStore = sqn_store if sqn_store is not None else MemorySqnStore()
        #: asks the plugins which scheme to challenge with (``ims_auth_select_scheme``); its answer
        #: counts when the profile allows that scheme and the subscriber has credentials for it
        self.select_scheme: Callable[[Subscriber, Request | None], str | None] | None = None

    # -- choosing and challenging ----------------------------------------------------------------
    def _usable(self, scheme: str, subscriber: Subscriber) -> bool:
        if scheme not in self.schemes:
            return False
        return subscriber.aka is not None if scheme == "aka" else subscriber.password is not None

    def scheme_for(self, subscriber: Subscriber, request: Request | None = None) -> str | None:
        """The scheme to challenge ``request`` with: the plugins' choice when usable, else the
        first scheme of the profile that the subscriber has credentials for."""
        if self.select_scheme is not None:
            chosen = self.select_scheme(subscriber, request)
            if chosen is not None and self._usable(chosen, subscriber):
                return chosen
        for scheme in self.schemes:
            if scheme == "aka" and subscriber.aka is not None:
                return "aka"
            if scheme == "digest" and subscriber.password is not None:
                return "digest"
        return None

    def challenge_for(
        self,
        subscriber: Subscriber,
        now: float,
        *,
        stale: bool = False,
        request: Request | None = None,
    ) -> AuthResult:
        """A 401 challenge for ``subscriber`` (for ``request``, which the plugins may look at)."""
        scheme = self.scheme_for(subscriber, request)
        if scheme is None:
            return AuthResult(AuthOutcome.FORBIDDEN, "no authentication scheme allowed for this user")
        if scheme == "digest":
            nonce = self.nonces.make(now, extra=self.nonce_extra)
            value = challenge(self.realm, nonce, algorithm=self.digest_algorithm, stale=stale)
            return AuthResult(AuthOutcome.CHALLENGE, "authentication required", value, subscriber.impi)
        vector = self._new_vector(subscriber)
        self._remember(vector, subscriber.impi, now)
        # RFC 3310 §3.2: a Digest challenge whose nonce is base64(RAND || AUTN)
        value = (
            f'Digest realm={quote(self.realm)}, nonce={quote(vector.nonce)}, qop="auth", '
            f"algorithm={self.aka_algorithm}" + (", stale=true" if stale else "")
        )
        return AuthResult(AuthOutcome.CHALLENGE, "authentication required", value, subscriber.impi)

    def proxy_challenge(self, subscriber: Subscriber, now: float) -> AuthResult:
        """A Digest challenge for a request other than REGISTER (the proxy's 407): AKA
        authenticates registrations only, so a subscriber without a password cannot be
        challenged here (FORBIDDEN)."""
        if subscriber.password is None or "digest" not in self.schemes:
            return AuthResult(AuthOutcome.FORBIDDEN, "no Digest credentials for this user")
        nonce = self.nonces.make(now, extra=self.nonce_extra)
        value = challenge(self.realm, nonce, algorithm=self.digest_algorithm)
        return AuthResult(AuthOutcome.CHALLENGE, "authentication required", value, subscriber.impi)

    def _milenage(self, subscriber: Subscriber) -> Milenage:
        aka = subscriber.aka
        assert aka is not None
        return Milenage(aka.k, op=aka.op, opc=aka.opc)

    def _new_vector(self, subscriber: Subscriber, sqn_ms: int | None = None) -> AuthVector:
        aka = subscriber.aka
        assert aka is not None
        sqn = self.sqn_store.issue(subscriber.impi, aka.sqn, sqn_ms)
        return generate_vector(self._milenage(subscriber), sqn, aka.amf, self.random_bytes(16))

    def _remember(self, vector: AuthVector, impi: str, now: float) -> None:
        for nonce, pending in list(self._pending.items()):  # drop the stale ones (oldest first)
            if now - pending.created <= AKA_VECTOR_LIFETIME and len(self._pending) < 100_000:
                break
            del self._pending[nonce]
        self._pending[vector.nonce] = _Pending(impi, vector, now)

    # -- verifying ---------------------------------------------------------------------------------
    def check(
        self, request: Request, credentials: AuthHeader, subscriber: Subscriber, now: float
    ) -> AuthResult:
        """Judge the credentials of ``request`` for ``subscriber`` (the IMPI of ``username``)."""
        algorithm = credentials.get("algorithm") or "MD5"
        aka = parse_aka_algorithm(algorithm)
        if aka is not None and "aka" in self.schemes and subscriber.aka is not None:
            return self._check_aka(request, credentials, subscriber, now, aka[0], algorithm)
        if aka is None and "digest" in self.schemes and subscriber.password is not None:
            verdict = verify(
                credentials,
                method=request.method,
                request_uri=request.uri,
                password_or_ha1=subscriber.password,
                realm=self.realm,
                nonces=self.nonces,
                now=now,
                nonce_extra=self.nonce_extra,
                counter=self.counter,
                algorithms=DIGEST_ALGORITHMS,
            )
            return self._judged(verdict, subscriber, now, request)
        return self.challenge_for(subscriber, now, request=request)

    def _check_aka(
        self,
        request: Request,
        credentials: AuthHeader,
        subscriber: Subscriber,
        now: float,
        version: int,
        algorithm: str,
    ) -> AuthResult:
        nonce = credentials.get("nonce") or ""
        pending = self._pending.get(nonce)
        if (
            pending is None
            or pending.impi != subscriber.impi
            or now - pending.created > AKA_VECTOR_LIFETIME
        ):
            return self.challenge_for(subscriber, now, stale=pending is not None, request=request)
        auts = credentials.get("auts")
        if auts:
            # RFC 3310 §3.4: re-synchronise SQN from AUTS, then challenge again
            del self._pending[nonce]
            try:
                sqn_ms = resync_sqn(self._milenage(subscriber), pending.vector.rand, decode_auts(auts))
            except AkaError:
                return AuthResult(AuthOutcome.FORBIDDEN, "AKA re-synchronisation failed (bad AUTS)")
            assert subscriber.aka is not None
            self.sqn_store.issue(subscriber.impi, subscriber.aka.sqn, sqn_ms)
            return self.challenge_for(subscriber, now, request=request)
        vector = pending.vector
        password = derive_password(version, vector.xres, vector.ik, vector.ck)
        verdict = verify(
            credentials,
            method=request.method,
            request_uri=request.uri,
            password_or_ha1=password,
            realm=self.realm,
            counter=self.counter,
            algorithms=(algorithm,),
            algorithm_aliases={algorithm: "MD5"},
        )
        if verdict.ok:
            del self._pending[nonce]
        return self._judged(verdict, subscriber, now, request)

    def _judged(
        self, verdict: Verdict, subscriber: Subscriber, now: float, request: Request
    ) -> AuthResult:
        if verdict.ok:
            return AuthResult(AuthOutcome.OK, impi=subscriber.impi)
        if verdict.kind is VerdictKind.BAD_REQUEST:
            return AuthResult(AuthOutcome.BAD_REQUEST, verdict.reason)
        return self.challenge_for(subscriber, now, stale=verdict.stale, request=request)
