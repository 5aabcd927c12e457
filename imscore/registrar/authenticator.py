"""Challenge and verify a REGISTER with SIP Digest or IMS Digest-AKA (no I/O; ``now`` is passed in).

Digest nonces validate themselves (timestamp + MAC, :class:`~imscore.auth.digest.NonceFactory`) and
are bound to the algorithm challenged with, so credentials computed with another algorithm are not
accepted (RFC 7616 §3.4, §3.9: no downgrade). A nonce costs no state until it is first used with a
right response; then its nonce-count is kept for the nonce's lifetime
(:class:`~imscore.auth.digest.NonceCounter`), and a nonce the counter cannot vouch for is answered
as stale, never accepted.

AKA keeps, per challenge, the authentication vector it sent (the expected RES lives only here) and,
per private identity, the sequence number state. A private identity has at most
:data:`AKA_VECTORS_PER_IMPI` vectors made in one :data:`AKA_REUSE_AGE`; a further challenge re-sends
the newest of them, so unauthenticated REGISTERs cannot move the SQN (nor write the store) at will.

Failed authentications are counted per IMPI and source address and logged, rate-limited
(:mod:`.failures`); past the profile's limits credentials get ``403`` unchecked. With the profile's
``registrar.unknown_user_status: 401`` an unknown user is challenged like a known one
(:meth:`Authenticator.unknown_user`) and never authenticated.
"""

from __future__ import annotations

import base64
import enum
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

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
    StoredHA1,
    Verdict,
    VerdictKind,
    challenge_frame,
    verify,
)
from imscore.auth.milenage import Milenage
from imscore.profile import Profile
from imscore.profile.model import AKA_ALGORITHMS, DIGEST_ALGORITHMS, check_auth_options
from imscore.sip import AuthHeader, Request, SipError
from imscore.sip.grammar import quote
from imscore.subscribers import Subscriber

from .failures import FailureLimiter, FailureLimits, FailureLog
from .remote import AKA, RemoteCredentials
from .sqn import MemorySqnStore, SqnStore

__all__ = [
    "AKA_REUSE_AGE",
    "AKA_VECTORS_PER_IMPI",
    "AKA_VECTOR_LIFETIME",
    "SCHEMES_BY_POLICY",
    "AuthOutcome",
    "AuthResult",
    "Authenticator",
]

#: which schemes each builtin ``auth`` policy allows, preferred first
SCHEMES_BY_POLICY: Final[dict[str, tuple[str, ...]]] = {
    "digest": ("digest",),
    "aka": ("aka",),
    "digest-or-aka": ("aka", "digest"),
}
AKA_ALGORITHM: Final = "AKAv1-MD5"
#: seconds an AKA vector may be answered
AKA_VECTOR_LIFETIME: Final = 120.0
#: seconds within which a private identity gets at most :data:`AKA_VECTORS_PER_IMPI` new vectors
AKA_REUSE_AGE: Final = AKA_VECTOR_LIFETIME / 2
#: new vectors (each a fresh SQN, one store write) per private identity per :data:`AKA_REUSE_AGE`
AKA_VECTORS_PER_IMPI: Final = 4
#: AKA vectors kept at most (over all private identities)
MAX_PENDING_VECTORS: Final = 100_000
#: made-up AKA nonces kept at most for unknown users (see :meth:`Authenticator.unknown_user`)
MAX_UNKNOWN_NONCES: Final = 10_000
#: the reason phrase of a 403 for credentials past a failure limit
LOCKED_OUT: Final = "Too many failed authentications"
#: the Digest algorithms' names as written (none of them reads as an AKA algorithm)
_DIGEST_NAMES: Final = frozenset(DIGEST_ALGORITHMS)


class AuthOutcome(enum.Enum):
    OK = "ok"
    CHALLENGE = "challenge"  # answer 401 with the challenge
    BAD_REQUEST = "bad request"  # answer 400
    FORBIDDEN = "forbidden"  # answer 403 (no scheme this subscriber and profile share, locked out)
    #: a store holding the credentials (an HSS, :mod:`.remote`) must fetch them (``offer``) first
    NEED_CREDENTIALS = "need credentials"


@dataclass(frozen=True)
class AuthResult:
    """What the authenticator decided; ``challenge`` is a WWW-Authenticate value when asked for."""

    outcome: AuthOutcome
    reason: str = ""
    challenge: str | None = None
    impi: str | None = None
    #: with NEED_CREDENTIALS after an AUTS: RAND || AUTS for the store's re-synchronisation
    resync: bytes | None = None


@dataclass
class _Pending:
    impi: str
    vector: AuthVector
    created: float
    algorithm: str


def source_of(request: Request) -> str:
    """The address a request came from, as its top Via says once the transport stamped it
    (``received``, RFC 3261 §18.2.1); ``"?"`` when there is no readable Via."""
    try:
        via = request.top_via
    except (SipError, ValueError, IndexError):
        return "?"
    return via.received or via.host or "?"


def _looks_3gpp(impi: str) -> bool:
    """An IMPI derived from an IMSI (TS 23.003 §13.3) ends in ``.3gppnetwork.org``."""
    return impi.rpartition("@")[2].lower().rstrip(".").endswith(".3gppnetwork.org")


class Authenticator:
    """Per-registrar authentication state.

    :param realm: the realm of challenges (the served domain).
    :param schemes: the schemes the profile accepts, preferred first (``digest``, ``aka``).
    :param secret: the key that makes Digest nonces self-validating.
    :param nonce_lifetime: seconds a Digest nonce may be used.
    :param random_bytes: where AKA RANDs come from (injectable for tests).
    :param digest_algorithm: the one Digest algorithm challenged with and accepted.
    :param aka_algorithm: the one AKA algorithm challenged with and accepted.
    :param sqn_store: where the last AKA SQN issued per IMPI is kept (default: in this process).
    :param limits: the limits on failed authentications (default: :class:`FailureLimits`).
    :param counter: the nonce-count state (default: one for ``nonce_lifetime``).
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
        limits: FailureLimits | None = None,
        counter: NonceCounter | None = None,
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
        secret = secret or secrets.token_bytes(32)
        self.nonces = NonceFactory(secret, nonce_lifetime)
        #: what every nonce made here is bound to: worker processes sharing one secret each bind
        #: theirs to their number, so a nonce-count is always checked where the nonce was made
        #: (the algorithm challenged with is bound too, see :meth:`_extra`)
        self.nonce_extra = b""
        #: nonce-counts, per process: a nonce made before the counter began is answered as stale
        self.counter = counter if counter is not None else NonceCounter(nonce_lifetime)
        # looked up at call time (not bound at import), so a seeded lab run can replace the source
        self.random_bytes: Callable[[int], bytes] = random_bytes or (lambda n: secrets.token_bytes(n))
        #: AKA vectors sent and not yet used, oldest first, and their nonces per IMPI
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._by_impi: dict[str, list[str]] = {}
        #: made-up AKA nonces of unknown users: IMPI -> [(nonce, made at)], least recent IMPI first
        self._unknown: OrderedDict[str, list[tuple[str, float]]] = OrderedDict()
        #: the "password" an unknown user's answer is checked with (derived, so that it draws
        #: nothing from a seeded random source)
        self._decoy = hmac.digest(secret, b"imscore unknown-user decoy", "sha256")[:16]
        #: the last AKA SQN issued per IMPI (in the SQLite store file when the server has one, so it
        #: survives restarts and worker processes share it)
        self.sqn_store: SqnStore = sqn_store if sqn_store is not None else MemorySqnStore()
        self.limiter = FailureLimiter(limits)
        self.failure_log = FailureLog()
        #: asks the plugins which scheme to challenge with (``ims_auth_select_scheme``); its answer
        #: counts when the profile allows that scheme and the subscriber has credentials for it
        self.select_scheme: Callable[[Subscriber, Request | None], str | None] | None = None
        #: the plugin manager :attr:`select_scheme` asks (the registrar sets both), or ``None``:
        #: while only the builtin implements ``ims_auth_select_scheme`` (``only_builtin``), a
        #: subscriber with credentials for one of the profile's schemes only is challenged with that
        #: one without the call, whose answer could not count (the builtin's has no effects)
        self.scheme_plugins: Any = None
        #: the subscriber store holds the credentials (an HSS over Cx, :mod:`.remote`): only what
        #: :meth:`offer` handed over is used, never the record's own password or K
        self.remote_credentials = False
        self._remote: OrderedDict[str, RemoteCredentials] = OrderedDict()
        #: (nonce_extra, digest_algorithm) -> what _extra() gives for them, the last one asked
        self._extra_memo: tuple[bytes, str, bytes] = (b"", "", b"")
        #: (realm, algorithm, stale) -> the text of a Digest challenge around its nonce
        self._frames: dict[tuple[str, str, bool], tuple[str, str]] = {}

    @classmethod
    def from_profile(
        cls,
        profile: Profile,
        *,
        secret: bytes | None = None,
        sqn_store: SqnStore | None = None,
    ) -> Authenticator:
        """The authenticator a profile describes: its ``auth`` policy's schemes and options
        (:func:`~imscore.profile.model.check_auth_options`), trusted peers exempt from the
        per-source failure limit. Raises :class:`ValueError` naming a bad option."""
        auth = profile.policies["auth"]
        options = check_auth_options(auth.plugin, auth.options)
        window = options["failure_window"]
        assert isinstance(window, float)
        limits = FailureLimits(
            window=window,
            per_impi_source=_int(options["max_failures"]),
            per_source=_int(options["max_failures_per_source"]),
            per_impi=_int(options["max_failures_per_impi"]),
            exempt=frozenset(profile.proxy.trusted_peers),
        )
        return cls(
            profile.domains[0],
            SCHEMES_BY_POLICY.get(auth.plugin, ("digest",)),
            secret=secret,
            digest_algorithm=str(options["digest_algorithm"]),
            aka_algorithm=str(options["aka_algorithm"]),
            sqn_store=sqn_store,
            limits=limits,
        )

    # -- choosing and challenging ----------------------------------------------------------------
    def _usable(self, scheme: str, subscriber: Subscriber) -> bool:
        if scheme not in self.schemes:
            return False
        return subscriber.aka is not None if scheme == "aka" else subscriber.password is not None

    def scheme_for(self, subscriber: Subscriber, request: Request | None = None) -> str | None:
        """The scheme to challenge ``request`` with: the plugins' choice when usable, else the
        first scheme of the profile that the subscriber has credentials for."""
        if self.remote_credentials:  # the HSS chose (the store asked for the profile's schemes)
            offered = self._remote.get(subscriber.impi)
            return offered.scheme if offered is not None and offered.scheme in self.schemes else None
        if self.select_scheme is not None and not self._one_usable(subscriber):
            chosen = self.select_scheme(subscriber, request)
            if chosen is not None and self._usable(chosen, subscriber):
                return chosen
        for scheme in self.schemes:
            if scheme == "aka" and subscriber.aka is not None:
                return "aka"
            if scheme == "digest" and subscriber.password is not None:
                return "digest"
        return None

    def _one_usable(self, subscriber: Subscriber) -> bool:
        """Whether :attr:`select_scheme` need not be asked for ``subscriber``: it has credentials
        for one of the profile's schemes only, and only the builtin implements the hook."""
        plugins = self.scheme_plugins
        if plugins is None:
            return False
        schemes = self.schemes
        for scheme in schemes:  # (a scheme of another name takes what the hook names)
            if scheme != "aka" and scheme != "digest":
                return False
        usable = ("aka" in schemes and subscriber.aka is not None) + (
            "digest" in schemes and subscriber.password is not None
        )
        return usable == 1 and bool(plugins.only_builtin("ims_auth_select_scheme"))

    def _extra(self) -> bytes:
        # the nonce names the algorithm it was issued for: credentials computed with another one
        # fail the nonce's MAC, even if the profile changed between the challenge and the answer
        extra, algorithm, made = self._extra_memo
        if extra is not self.nonce_extra or algorithm is not self.digest_algorithm:
            extra, algorithm = self.nonce_extra, self.digest_algorithm
            made = extra + b"\x00" + algorithm.encode("ascii")
            self._extra_memo = (extra, algorithm, made)
        return made

    def _digest_challenge(self, now: float, *, stale: bool = False, realm: str | None = None) -> str:
        counter = self.counter
        if counter.since is None:
            counter.start(now)
        nonce = self.nonces.make(now, extra=self._extra())
        key = (realm or self.realm, self.digest_algorithm, stale)
        frame = self._frames.get(key)
        if frame is None:
            frame = challenge_frame(key[0], algorithm=key[1], stale=stale)
            if len(self._frames) >= 64:  # a few realms in practice (ours, the HSS's)
                self._frames.clear()
            self._frames[key] = frame
        # = challenge(realm, nonce, ...): a nonce of NonceFactory is base64url, which quotes as
        # itself between two DQUOTEs
        return f'{frame[0]}"{nonce}"{frame[1]}'

    def _digest_realm(self, subscriber: Subscriber) -> str:
        """The realm of a Digest challenge and check: the one the store's H(A1) was made with
        (:attr:`RemoteCredentials.realm`), else ours."""
        offered = self._remote.get(subscriber.impi) if self.remote_credentials else None
        return offered.realm if offered is not None and offered.realm else self.realm

    def _aka_challenge(self, nonce: str, stale: bool) -> str:
        # RFC 3310 §3.2: a Digest challenge whose nonce is base64(RAND || AUTN)
        return (
            f'Digest realm={quote(self.realm)}, nonce={quote(nonce)}, qop="auth", '
            f"algorithm={self.aka_algorithm}" + (", stale=true" if stale else "")
        )

    def challenge_for(
        self,
        subscriber: Subscriber,
        now: float,
        *,
        stale: bool = False,
        request: Request | None = None,
    ) -> AuthResult:
        """A 401 challenge for ``subscriber`` (for ``request``, which the plugins may look at)."""
        remote = self.remote_credentials  # (without it, nothing is fetched, and the realm is ours)
        if remote and self._needs_credentials(subscriber, now):
            need = AuthOutcome.NEED_CREDENTIALS
            return AuthResult(need, "credentials from the store", impi=subscriber.impi)
        scheme = self.scheme_for(subscriber, request)
        if scheme is None:
            return AuthResult(AuthOutcome.FORBIDDEN, "no authentication scheme allowed for this user")
        if scheme == "digest":
            realm = self._digest_realm(subscriber) if remote else self.realm
            value = self._digest_challenge(now, stale=stale, realm=realm)
            return AuthResult(AuthOutcome.CHALLENGE, "authentication required", value, subscriber.impi)
        vector = self._vector_for(subscriber, now)
        value = self._aka_challenge(vector.nonce, stale)
        return AuthResult(AuthOutcome.CHALLENGE, "authentication required", value, subscriber.impi)

    def proxy_challenge(self, subscriber: Subscriber, now: float, *, stale: bool = False) -> AuthResult:
        """A Digest challenge for a request other than REGISTER (the proxy's 407): AKA
        authenticates registrations only, so a subscriber without a password cannot be
        challenged here (FORBIDDEN). ``stale``: the credentials were right but their nonce is
        not usable any more (RFC 7616 §3.3)."""
        if self.remote_credentials:  # the HSS's H(A1) and realm, fetched first (the router's MAR)
            offered = self._remote.get(subscriber.impi)
            if "digest" not in self.schemes or offered is None or offered.ha1 is None:
                return AuthResult(AuthOutcome.FORBIDDEN, "no Digest credentials for this user")
            value = self._digest_challenge(now, stale=stale, realm=self._digest_realm(subscriber))
            return AuthResult(AuthOutcome.CHALLENGE, "authentication required", value, subscriber.impi)
        if subscriber.password is None or "digest" not in self.schemes:
            return AuthResult(AuthOutcome.FORBIDDEN, "no Digest credentials for this user")
        value = self._digest_challenge(now, stale=stale)
        return AuthResult(AuthOutcome.CHALLENGE, "authentication required", value, subscriber.impi)

    def _milenage(self, subscriber: Subscriber) -> Milenage:
        aka = subscriber.aka
        assert aka is not None
        return Milenage(aka.k, op=aka.op, opc=aka.opc)

    # -- credentials a remote store fetched (.remote) ---------------------------------------------
    def has_ha1(self, impi: str) -> bool:
        """Whether a SIP Digest H(A1) the remote store gave for ``impi`` is at hand."""
        offered = self._remote.get(impi)
        return offered is not None and offered.ha1 is not None

    def offer(self, impi: str, credentials: RemoteCredentials) -> None:
        """Credentials the store (the HSS) gave for ``impi``; they replace earlier ones."""
        self._remote.pop(impi, None)
        while len(self._remote) >= MAX_PENDING_VECTORS:
            self._remote.popitem(last=False)
        self._remote[impi] = credentials

    def _needs_credentials(self, subscriber: Subscriber, now: float) -> bool:
        """Whether a challenge for a remote store's subscriber needs a fetch first: nothing
        offered, or AKA with no vector left and none of the recent ones to send again."""
        if not self.remote_credentials:
            return False
        offered = self._remote.get(subscriber.impi)
        if offered is None:
            return True
        if offered.scheme != AKA or offered.vectors:
            return False
        self._expire_vectors(now)
        return len(self._recent(subscriber.impi, now)) < AKA_VECTORS_PER_IMPI

    def _new_vector(self, subscriber: Subscriber, sqn_ms: int | None = None) -> AuthVector:
        if self.remote_credentials:  # one the HSS made (_needs_credentials saw it is there)
            return self._remote[subscriber.impi].vectors.pop(0)
        aka = subscriber.aka
        assert aka is not None
        sqn = self.sqn_store.issue(subscriber.impi, aka.sqn, sqn_ms)
        return generate_vector(self._milenage(subscriber), sqn, aka.amf, self.random_bytes(16))

    def _vector_for(self, subscriber: Subscriber, now: float) -> AuthVector:
        """A new vector, or, when the IMPI already got :data:`AKA_VECTORS_PER_IMPI` within
        :data:`AKA_REUSE_AGE`, the newest of those again (it has not been used: used vectors go)."""
        self._expire_vectors(now)
        recent = self._recent(subscriber.impi, now)
        if len(recent) >= AKA_VECTORS_PER_IMPI:
            return recent[-1].vector
        vector = self._new_vector(subscriber)
        self._pending[vector.nonce] = _Pending(subscriber.impi, vector, now, self.aka_algorithm)
        self._by_impi.setdefault(subscriber.impi, []).append(vector.nonce)
        return vector

    def _recent(self, impi: str, now: float) -> list[_Pending]:
        return [
            self._pending[n]
            for n in self._by_impi.get(impi, ())
            if now - self._pending[n].created <= AKA_REUSE_AGE
            and self._pending[n].algorithm == self.aka_algorithm
        ]

    def _expire_vectors(self, now: float) -> None:
        while self._pending:
            nonce, oldest = next(iter(self._pending.items()))
            if now - oldest.created <= AKA_VECTOR_LIFETIME and len(self._pending) < MAX_PENDING_VECTORS:
                break
            self._drop(nonce)

    def _drop(self, nonce: str) -> None:
        pending = self._pending.pop(nonce, None)
        if pending is None:
            return
        nonces = self._by_impi.get(pending.impi)
        if nonces is not None:
            if nonce in nonces:
                nonces.remove(nonce)
            if not nonces:
                del self._by_impi[pending.impi]

    def vectors_pending(self, impi: str | None = None) -> int:
        """AKA vectors sent and not yet used (of ``impi``, or of everyone)."""
        if impi is None:
            return len(self._pending)
        return len(self._by_impi.get(impi, ()))

    # -- verifying ---------------------------------------------------------------------------------
    def check(
        self, request: Request, credentials: AuthHeader, subscriber: Subscriber, now: float
    ) -> AuthResult:
        """Judge the credentials of ``request`` for ``subscriber`` (the IMPI of ``username``)."""
        counter = self.counter
        if counter.since is None:
            counter.start(now)
        # the source is read when a limit could refuse it or a failure is noted (a limiter
        # holding no failure refuses nothing)
        source: str | None = None
        if self.limiter.holds_failures():
            source = source_of(request)
            refused = self._locked_out(subscriber.impi, source, now)
            if refused is not None:
                return refused
        algorithm = credentials.get("algorithm") or "MD5"
        # (a Digest algorithm's name is no AKA one: parse_aka_algorithm gives None for each)
        aka = None if algorithm in _DIGEST_NAMES else parse_aka_algorithm(algorithm)
        remote = self._remote.get(subscriber.impi) if self.remote_credentials else None
        if aka is not None and "aka" in self.schemes and (subscriber.aka or self.remote_credentials):
            return self._check_aka(request, credentials, subscriber, now, aka[0], algorithm)
        if aka is None and "digest" in self.schemes and subscriber.password is not None:
            secret: str | StoredHA1 = subscriber.password
            # the subscriber keeps the H(A1) of its password (a Subscriber is frozen, and a
            # reloaded file makes new ones; the entry is used again only for the same password,
            # username, realm and hash anyway)
            memo: dict[str, Any] | None = getattr(subscriber, "__dict__", None)
            if self.remote_credentials:  # the H(A1) the HSS gave, never the record's decoy
                if remote is None or remote.ha1 is None:
                    return AuthResult(AuthOutcome.NEED_CREDENTIALS, "H(A1) from the store")
                secret = StoredHA1(remote.ha1)
                memo = None
            verdict = verify(
                credentials,
                method=request.method,
                request_uri=request.uri,
                password_or_ha1=secret,
                realm=self._digest_realm(subscriber) if self.remote_credentials else self.realm,
                nonces=self.nonces,
                now=now,
                nonce_extra=self._extra(),
                counter=self.counter,
                algorithms=(self.digest_algorithm,),
                ha1_memo=memo,
            )
            return self._judged(verdict, subscriber, now, request, source)
        if aka is not None or algorithm.lower() != self.digest_algorithm.lower():
            where = source_of(request) if source is None else source
            self._note(now, subscriber.impi, where, f"algorithm {algorithm[:20]!r} not offered")
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
        source = source_of(request)
        pending = self._pending.get(nonce)
        if (
            pending is None
            or pending.impi != subscriber.impi
            or now - pending.created > AKA_VECTOR_LIFETIME
        ):
            return self.challenge_for(subscriber, now, stale=pending is not None, request=request)
        if algorithm.lower() != pending.algorithm.lower():  # AKAv1 to an AKAv2 challenge: no
            self._note(now, subscriber.impi, source, f"algorithm {algorithm[:20]!r} not offered")
            return self.challenge_for(subscriber, now, request=request)
        auts = credentials.get("auts")
        if auts:
            # RFC 3310 §3.4: re-synchronise SQN from AUTS, then challenge again
            self._drop(nonce)
            if self.remote_credentials:  # the HSS re-synchronises (MAR with RAND || AUTS)
                self._drop_all(subscriber.impi)
                self._remote.pop(subscriber.impi, None)
                try:
                    resync = pending.vector.rand + decode_auts(auts)
                except AkaError:
                    return AuthResult(AuthOutcome.BAD_REQUEST, "malformed AUTS")
                need = AuthOutcome.NEED_CREDENTIALS
                return AuthResult(need, "re-synchronisation", impi=subscriber.impi, resync=resync)
            try:
                sqn_ms = resync_sqn(self._milenage(subscriber), pending.vector.rand, decode_auts(auts))
            except AkaError:
                self._failed(now, subscriber.impi, source, "AKA AUTS does not verify")
                return AuthResult(AuthOutcome.FORBIDDEN, "AKA re-synchronisation failed (bad AUTS)")
            assert subscriber.aka is not None
            self.sqn_store.issue(subscriber.impi, subscriber.aka.sqn, sqn_ms)
            self._drop_all(subscriber.impi)  # their SQNs are behind the USIM's now
            return self.challenge_for(subscriber, now, request=request)
        vector = pending.vector
        password = derive_password(version, vector.xres, vector.ik, vector.ck)
        # no nonce-count state: a vector is used once (dropped on success, below)
        verdict = verify(
            credentials,
            method=request.method,
            request_uri=request.uri,
            password_or_ha1=password,
            realm=self.realm,
            algorithms=(algorithm,),
            algorithm_aliases={algorithm: "MD5"},
        )
        if verdict.ok:
            self._drop(nonce)
        return self._judged(verdict, subscriber, now, request, source)

    def _drop_all(self, impi: str) -> None:
        for nonce in list(self._by_impi.get(impi, ())):
            self._drop(nonce)

    def _judged(
        self,
        verdict: Verdict,
        subscriber: Subscriber,
        now: float,
        request: Request,
        source: str | None,
    ) -> AuthResult:
        """The result of a verdict on ``request`` from ``source`` (``None``: not read yet)."""
        if verdict.ok:
            return AuthResult(AuthOutcome.OK, impi=subscriber.impi)
        if verdict.kind is VerdictKind.BAD_REQUEST:
            return AuthResult(AuthOutcome.BAD_REQUEST, verdict.reason)
        if source is None:
            source = source_of(request)
        self._verdict_failed(verdict, subscriber.impi, source, now)
        return self.challenge_for(subscriber, now, stale=verdict.stale, request=request)

    # -- failures ----------------------------------------------------------------------------------
    def _verdict_failed(self, verdict: Verdict, impi: str, source: str, now: float) -> None:
        if verdict.kind is VerdictKind.WRONG_RESPONSE:
            self._failed(now, impi, source, "wrong response")
        elif verdict.kind in (VerdictKind.REPLAY, VerdictKind.UNSUPPORTED_ALGORITHM):
            self._note(now, impi, source, verdict.reason)

    def _locked_out(self, impi: str, source: str, now: float) -> AuthResult | None:
        why = self.limiter.blocked(impi, source, now)
        if why is None:
            return None
        self._note(now, impi, source, f"refused unchecked, {why}")
        return AuthResult(AuthOutcome.FORBIDDEN, LOCKED_OUT)

    def _failed(self, now: float, impi: str, source: str, reason: str) -> None:
        """A failed authentication: counted towards the limits, and logged."""
        self.limiter.failed(impi, source, now)
        self._note(now, impi, source, reason)

    def _note(self, now: float, impi: str, source: str, reason: str) -> None:
        self.failure_log.note(now, impi, source, reason)

    # -- unknown users -----------------------------------------------------------------------------
    def unknown_scheme(self, impi: str) -> str:
        """The scheme an unknown user is challenged with: the only one the profile allows, or
        with both AKA for an IMPI derived from an IMSI (``…3gppnetwork.org``) and Digest else."""
        if "aka" in self.schemes and ("digest" not in self.schemes or _looks_3gpp(impi)):
            return "aka"
        return "digest"

    def _unknown_challenge(self, impi: str, now: float, stale: bool = False) -> AuthResult:
        if self.unknown_scheme(impi) == "digest":
            value = self._digest_challenge(now, stale=stale)
        else:  # new nonces, then the newest again, by the rule a known IMPI's vectors follow
            made = [m for m in self._unknown.pop(impi, []) if now - m[1] <= AKA_VECTOR_LIFETIME]
            recent = [m for m in made if now - m[1] <= AKA_REUSE_AGE]
            if len(recent) >= AKA_VECTORS_PER_IMPI:
                nonce = recent[-1][0]
            else:  # looks like base64(RAND || AUTN): 32 octets nobody can tell from a vector's
                nonce = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
                made.append((nonce, now))
            while len(self._unknown) >= MAX_UNKNOWN_NONCES:
                self._unknown.popitem(last=False)
            self._unknown[impi] = made
            value = self._aka_challenge(nonce, stale)
        return AuthResult(AuthOutcome.CHALLENGE, "authentication required", value)

    def unknown_user(
        self, request: Request, credentials: AuthHeader | None, impi: str, now: float
    ) -> AuthResult:
        """Answer a REGISTER of ``impi``, which the subscriber store does not know, as a known
        user's would be answered, without ever authenticating it.

        Without a response: a challenge of the same shape (the same headers and algorithms, a real
        Digest nonce, or for AKA a random one repeated as a known IMPI's vector would be). With a
        response: it is checked against a random password (so it costs what a known user's check
        costs), counted and logged as a failure, and challenged again; malformed credentials get
        ``400`` as a known user's would; past the failure limits, ``403``. Never OK.
        """
        self.counter.start(now)
        if credentials is None or (not credentials.get("response") and not credentials.get("auts")):
            return self._unknown_challenge(impi, now)
        source = source_of(request)
        refused = self._locked_out(impi, source, now)
        if refused is not None:
            return refused
        algorithm = credentials.get("algorithm") or "MD5"
        scheme = self.unknown_scheme(impi)
        if parse_aka_algorithm(algorithm) is not None:
            made = [m[0] for m in self._unknown.get(impi, []) if now - m[1] <= AKA_VECTOR_LIFETIME]
            if scheme != "aka" or credentials.get("nonce") not in made:
                return self._unknown_challenge(impi, now)  # as for a nonce no vector is known for
            if credentials.get("auts"):
                self._failed(now, impi, source, "AKA AUTS does not verify")
                return AuthResult(AuthOutcome.FORBIDDEN, "AKA re-synchronisation failed (bad AUTS)")
            verdict = verify(
                credentials,
                method=request.method,
                request_uri=request.uri,
                password_or_ha1=self._decoy,
                realm=self.realm,
                algorithms=(algorithm,),
                algorithm_aliases={algorithm: "MD5"},
            )
        elif scheme == "digest":
            verdict = verify(
                credentials,
                method=request.method,
                request_uri=request.uri,
                password_or_ha1=self._decoy.hex(),
                realm=self.realm,
                nonces=self.nonces,
                now=now,
                nonce_extra=self._extra(),
                algorithms=(self.digest_algorithm,),
            )
        else:
            return self._unknown_challenge(impi, now)
        if verdict.kind is VerdictKind.BAD_REQUEST:
            return AuthResult(AuthOutcome.BAD_REQUEST, verdict.reason)
        if verdict.kind in (VerdictKind.WRONG_RESPONSE, VerdictKind.OK, VerdictKind.STALE):
            self._failed(now, impi, source, "wrong response, unknown user")  # (a decoy never matches)
        else:
            self._verdict_failed(verdict, impi, source, now)
        return self._unknown_challenge(impi, now)


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value
