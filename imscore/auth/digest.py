"""SIP Digest authentication (RFC 2617, RFC 7616, RFC 3261 §22), sans-IO.

This module computes and checks Digest responses; it never does I/O and never reads the clock (``now``
is always an argument). It has four parts:

* :class:`NonceFactory` makes self-validating nonces (a timestamp and a MAC inside the nonce itself, so
  the server keeps no per-nonce state to know whether a nonce is its own and how old it is);
* :class:`NonceCounter` remembers the highest nonce-count seen per nonce for the nonce's lifetime,
  in bounded memory, so a replayed ``nc`` is refused;
* :func:`digest_response` and :func:`ha1` compute the response (MD5, MD5-sess, SHA-256, SHA-256-sess;
  qop ``auth``, ``auth-int`` or none, the RFC 2069 form). The password may be ``bytes`` so that Digest
  AKA (RFC 3310) can pass RES octets as the password;
* :func:`challenge` renders a ``WWW-Authenticate``/``Proxy-Authenticate`` value and :func:`verify`
  judges an ``Authorization``/``Proxy-Authorization`` header, returning a :class:`Verdict`.

Secrets discipline: nothing here logs, and no password, H(A1), nonce secret or response value ever
appears in a ``repr`` or in the text of an exception this module raises.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import hmac
import importlib
import os
import re
import secrets
import struct
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from mypy_extensions import mypyc_attr

from ..sip import grammar as g
from ..sip.errors import SipError
from ..sip.headers import AuthHeader
from ..sip.uri import Uri, parse_uri

__all__ = [
    "ALGORITHMS",
    "HASHES",
    "NonceCheck",
    "NonceCounter",
    "NonceFactory",
    "NonceUse",
    "StoredHA1",
    "Verdict",
    "VerdictKind",
    "canonical_algorithm",
    "challenge",
    "challenge_frame",
    "credentials",
    "digest_response",
    "ha1",
    "uri_matches",
    "verify",
]


# ---------------------------------------------------------------------------------------------------
# algorithms


def _builtin(name: str) -> Callable[..., hashlib._Hash]:
    """CPython's own implementation of hash ``name`` when the interpreter has it (its objects copy
    and hash short inputs with less work than OpenSSL's EVP ones), else hashlib's: the same
    digests either way."""
    try:
        module = importlib.import_module(f"_{name}")
    except ImportError:
        return cast("Callable[..., hashlib._Hash]", getattr(hashlib, name))
    return cast("Callable[..., hashlib._Hash]", getattr(module, name))


#: the hash constructors by hashlib name: called directly, they skip ``hashlib.new``'s lookup by
#: name (same digests)
HASHES: Final[dict[str, Callable[..., hashlib._Hash]]] = {
    "md5": _builtin("md5"),
    "sha256": _builtin("sha256"),
}


@dataclass(frozen=True)
class _Algo:
    name: str  # canonical spelling, as written in headers
    hash_name: str  # hashlib name
    sess: bool


_ALGOS: Final[dict[str, _Algo]] = {
    a.name.lower(): a
    for a in (
        _Algo("MD5", "md5", False),
        _Algo("MD5-sess", "md5", True),
        _Algo("SHA-256", "sha256", False),
        _Algo("SHA-256-sess", "sha256", True),
    )
}

#: The algorithms this module implements, in their canonical spelling.
ALGORITHMS: Final[tuple[str, ...]] = tuple(a.name for a in _ALGOS.values())


def canonical_algorithm(name: str) -> str | None:
    """The canonical spelling of a supported algorithm name (matched case-insensitively), else ``None``.

    >>> canonical_algorithm("sha-256-SESS")
    'SHA-256-sess'
    """
    algo = _ALGOS.get(name.lower())
    return algo.name if algo is not None else None


def _algo(name: str) -> _Algo:
    algo = _ALGOS.get(name.lower())
    if algo is None:
        raise ValueError(f"unsupported Digest algorithm {name[:40]!r}")
    return algo


def _h(hash_name: str, data: bytes) -> str:
    return HASHES[hash_name](data, usedforsecurity=False).hexdigest()


def _resolve(name: str, aliases: Mapping[str, str] | None) -> _Algo | None:
    """The algorithm ``name`` computes with: itself if supported, else what ``aliases`` maps it to."""
    if aliases:
        for alias, target in aliases.items():
            if alias.lower() == name.lower():
                return _algo(target)
    return _ALGOS.get(name.lower())


def _b(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


# ---------------------------------------------------------------------------------------------------
# H(A1)


_HEX_RE: Final = re.compile(r"[0-9a-fA-F]*")


class StoredHA1:
    """An H(A1) a subscriber store keeps instead of the password: ``H(username:realm:password)``.

    ``hash_name`` is the algorithm family the digest belongs to (``"MD5"`` or ``"SHA-256"``): an MD5
    H(A1) verifies MD5 and MD5-sess responses, a SHA-256 one SHA-256 and SHA-256-sess. The value never
    appears in ``repr``.
    """

    __slots__ = ("_hex", "hash_name")

    def __init__(self, hexdigest: str, hash_name: str = "MD5") -> None:
        algo = _algo(hash_name)
        if algo.sess:
            raise ValueError("StoredHA1 takes a hash family (MD5 or SHA-256), not a -sess algorithm")
        size = HASHES[algo.hash_name](usedforsecurity=False).digest_size * 2
        if len(hexdigest) != size or _HEX_RE.fullmatch(hexdigest) is None:
            raise ValueError(f"StoredHA1 for {algo.name} must be {size} hexadecimal digits")
        self._hex = hexdigest.lower()
        self.hash_name = algo.name

    @classmethod
    def from_password(
        cls, *, username: str, realm: str, password: bytes | str, hash_name: str = "MD5"
    ) -> StoredHA1:
        """Compute the H(A1) a store would keep for this user (the password is not kept)."""
        return cls(
            ha1(algorithm=hash_name, username=username, realm=realm, password=password), hash_name
        )

    @property
    def hexdigest(self) -> str:
        """The H(A1) as lower-case hex. A secret: do not log it."""
        return self._hex

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredHA1):
            return NotImplemented
        return self.hash_name == other.hash_name and hmac.compare_digest(self._hex, other._hex)

    def __hash__(self) -> int:
        return hash((StoredHA1, self.hash_name, self._hex))

    def __repr__(self) -> str:
        return f"StoredHA1(hash_name={self.hash_name!r}, hexdigest=<hidden>)"


def ha1(*, algorithm: str, username: str, realm: str, password: bytes | str) -> str:
    """``H(username ":" realm ":" password)`` in lower-case hex: the H(A1) a store can keep.

    For a ``-sess`` algorithm this is still the base value (the hash family is what counts); the session
    H(A1) that also covers the nonce and cnonce is derived from it in :func:`digest_response`. A ``str``
    password is encoded as UTF-8; ``bytes`` (e.g. an AKA RES) are used as they are.
    """
    algo = _algo(algorithm)
    return _h(algo.hash_name, b":".join((_b(username), _b(realm), _b(password))))


def _format_nc(nc: int | str) -> str:
    if isinstance(nc, int):
        if not 0 <= nc <= 0xFFFFFFFF:
            raise ValueError("nc must fit in 8 hexadecimal digits")
        return f"{nc:08x}"
    return nc


def digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: bytes | str | StoredHA1,
    method: str,
    uri: str,
    nonce: str,
    nc: int | str | None = None,
    cnonce: str | None = None,
    qop: str | None = None,
    entity_body: bytes = b"",
) -> str:
    """The ``response`` value (lower-case hex) of RFC 2617 §3.2.2.1 / RFC 7616 §3.4.1.

    * ``algorithm``: ``MD5``, ``MD5-sess``, ``SHA-256`` or ``SHA-256-sess`` (any case);
    * ``password``: the password (``str`` as UTF-8, or raw ``bytes`` such as an AKA RES), or a
      :class:`StoredHA1` of the same hash family;
    * ``qop``: ``"auth"``, ``"auth-int"`` (A2 then covers H(entity_body)) or ``None`` for the RFC 2069
      form ``H(HA1:nonce:HA2)``; with a qop, ``nc`` (an int, or the 8 hex digits as sent) and ``cnonce``
      are required. A ``-sess`` algorithm always needs ``cnonce``.

    Raises :class:`ValueError` for an unsupported algorithm or qop, or missing nc/cnonce; the message
    never contains the password.
    """
    algo = _algo(algorithm)
    return _response(
        algo,
        _base_ha1(algo, username, realm, password),
        method,
        uri,
        nonce,
        nc,
        cnonce,
        qop,
        entity_body,
    )


def _base_ha1(
    algo: _Algo,
    username: str,
    realm: str,
    password: bytes | str | StoredHA1,
    memo: dict[str, Any] | None = None,
) -> str:
    """The H(A1) (before any ``-sess`` step) ``password`` stands for, for ``algo``; with ``memo``,
    the one of a ``str`` password is kept there (under :data:`_HA1_MEMO`, with all it was made
    from) and given again while the password, username, realm and hash are the same."""
    if isinstance(password, StoredHA1):
        if _algo(password.hash_name).hash_name != algo.hash_name:
            raise ValueError(f"a {password.hash_name} H(A1) cannot answer with {algo.name}")
        return password.hexdigest
    if memo is None or type(password) is not str:
        return _h(algo.hash_name, b":".join((_b(username), _b(realm), _b(password))))
    kept = memo.get(_HA1_MEMO)
    hash_name = algo.hash_name
    if (
        kept is not None
        and kept[0] == password
        and kept[1] == username
        and kept[2] == realm
        and kept[3] == hash_name
    ):
        return cast(str, kept[4])
    found = _h(hash_name, b":".join((_b(username), _b(realm), password.encode("utf-8"))))
    memo[_HA1_MEMO] = (password, username, realm, hash_name, found)
    return found


#: the key of :func:`_base_ha1`'s memo entry: (password, username, realm, hash name, H(A1))
_HA1_MEMO: Final = "_imscore_digest_ha1"


#: H(A2) of qop ``auth`` (and of no qop) by (hash name, method, uri): the same few Request-URIs
#: come back with every REGISTER, and nothing secret goes into it
_HA2: dict[tuple[str, str, str], str] = {}
_HA2_MAX = 1024  # (not Final: tests lower it, and a compiled build inlines a Final)


def _ha2(hash_name: str, method: str, uri: str) -> str:
    key = (hash_name, method, uri)
    found = _HA2.get(key)
    if found is None:
        found = _h(hash_name, f"{method}:{uri}".encode())
        if len(_HA2) >= _HA2_MAX:
            _HA2.clear()
        _HA2[key] = found
    return found


def _response(
    algo: _Algo,
    base: str,
    method: str,
    uri: str,
    nonce: str,
    nc: int | str | None,
    cnonce: str | None,
    qop: str | None,
    entity_body: bytes,
) -> str:
    """:func:`digest_response` once the algorithm is resolved and the base H(A1) known."""
    hn = algo.hash_name
    if algo.sess:
        if cnonce is None:
            raise ValueError(f"{algo.name} needs a cnonce")
        ha1_hex = _h(hn, f"{base}:{nonce}:{cnonce}".encode())
    else:
        ha1_hex = base
    qop_lower = None if qop is None else qop.lower()
    if qop_lower is None or qop_lower == "auth":
        ha2 = _ha2(hn, method, uri)
    elif qop_lower == "auth-int":
        ha2 = _h(hn, f"{method}:{uri}:{_h(hn, entity_body)}".encode())
    else:
        assert qop is not None
        raise ValueError(f"unsupported qop {qop[:40]!r}")
    if qop_lower is None:
        return _h(hn, f"{ha1_hex}:{nonce}:{ha2}".encode())
    if nc is None or cnonce is None:
        raise ValueError(f"qop={qop} needs nc and cnonce")
    return _h(hn, f"{ha1_hex}:{nonce}:{_format_nc(nc)}:{cnonce}:{qop_lower}:{ha2}".encode())


# ---------------------------------------------------------------------------------------------------
# nonces


class NonceCheck(enum.Enum):
    """What :meth:`NonceFactory.check` found."""

    #: made by this factory (MAC fine) and not older than the lifetime
    VALID = "valid"
    #: made by this factory but older than the lifetime: challenge again with ``stale=true``
    STALE = "stale"
    #: not ours: bad MAC, wrong length, not base64url, from the future, or any other garbage
    INVALID = "invalid"


_TS: Final = struct.Struct(">q")
_RAND_LEN: Final = 8
#: nonces whose random octets one call of the default source fetches
_POOL_NONCES: Final = 64
_MAC_LEN: Final = 16
_NONCE_LEN: Final = _TS.size + _RAND_LEN + _MAC_LEN  # 32 octets
_NONCE_CHARS: Final = (_NONCE_LEN * 8 + 5) // 6  # 43 base64url characters, no padding
_HEAD_LEN: Final = _TS.size + _RAND_LEN  # what the MAC covers, with the caller's extra
_B64URL: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# the last character carries _NONCE_CHARS * 6 - _NONCE_LEN * 8 (= 2) unused bits: only the canonical
# spelling (those bits zero) is ours, so the last character is one of the 16 whose low bits are zero
_NONCE_LAST: Final = "".join(
    c for i, c in enumerate(_B64URL) if i % (1 << (_NONCE_CHARS * 6 - _NONCE_LEN * 8)) == 0
)
_NONCE_RE: Final = re.compile(rf"[A-Za-z0-9_-]{{{_NONCE_CHARS - 1}}}[{re.escape(_NONCE_LAST)}]")
_FROM_URLSAFE: Final = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
_HMAC_BLOCK: Final = 64  # SHA-256's block size (RFC 2104's B)

#: how many times this process was made by a fork (the child's count is one more than its
#: parent's): a NonceFactory's octets fetched before a fork are not handed out after it
_FORKS: Final = [0]


def _forked() -> None:
    _FORKS[0] += 1


os.register_at_fork(after_in_child=_forked)


class NonceFactory:
    """Makes and checks self-validating nonces, so no per-nonce state is needed to recognise them.

    Layout (32 octets, written as 43 characters of unpadded base64url, RFC 4648 §5)::

        timestamp (8) || random (8) || MAC (16)
        timestamp = int(floor(now * 1000)), signed 64-bit big-endian (milliseconds of the caller's clock)
        MAC       = HMAC-SHA256(secret, timestamp || random || extra)[:16]

    ``extra`` binds a nonce to data the caller chooses (e.g. the IMPI, or AKA material); the same
    ``extra`` must be given to :meth:`check`. Every node of a pool that shares the ``secret`` accepts the
    others' nonces. ``now`` is whatever clock the caller uses (wall or virtual time), the same for
    :meth:`make` and :meth:`check`.

    :param secret: the MAC key, at least 16 octets. Never shown in ``repr``.
    :param lifetime: seconds a nonce stays valid; an older one with a good MAC is
        :attr:`NonceCheck.STALE`.
    :param max_skew: seconds a nonce's timestamp may lie in the future (clock differences in a pool);
        beyond that it is :attr:`NonceCheck.INVALID`.
    :param random: the source of the random octets (for deterministic tests); default
        :func:`secrets.token_bytes`, asked for many nonces' octets at once.
    """

    __slots__ = (
        "_at", "_forks", "_inner", "_outer", "_pool", "_random", "_secret", "lifetime", "max_skew",
    )  # fmt: skip

    def __init__(
        self,
        secret: bytes,
        lifetime: float = 300.0,
        *,
        max_skew: float = 30.0,
        random: Callable[[int], bytes] | None = None,
    ) -> None:
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise ValueError("the nonce secret must be at least 16 bytes")
        if not lifetime > 0:
            raise ValueError("the nonce lifetime must be > 0")
        if not max_skew >= 0:
            raise ValueError("max_skew must be >= 0")
        self._secret = secret
        # HMAC (RFC 2104) with the key's two padded blocks hashed once, here: each MAC then copies
        # the two SHA-256 states instead of hashing the key again (the same HMAC-SHA256)
        sha256 = HASHES["sha256"]
        key = secret if len(secret) <= _HMAC_BLOCK else sha256(secret).digest()
        key = key.ljust(_HMAC_BLOCK, b"\x00")
        self._inner = sha256(bytes(b ^ 0x36 for b in key))
        self._outer = sha256(bytes(b ^ 0x5C for b in key))
        # None: secrets.token_bytes, looked up at call time (not bound at import), so a seeded run
        # can replace the source
        self._random: Callable[[int], bytes] | None = random
        # the default source's octets, fetched _POOL_NONCES nonces' worth at a time (one system
        # call, not one per nonce), and the forks seen when they were fetched (a forked worker
        # fetches its own, so two processes never hand out the same octets)
        self._pool = b""
        self._at = 0
        self._forks = -1
        self.lifetime = float(lifetime)
        self.max_skew = float(max_skew)

    def _mac(self, data: bytes) -> bytes:
        """HMAC-SHA256(secret, data), cut to the nonce's MAC length."""
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:_MAC_LEN]

    def make(self, now: float, *, extra: bytes = b"") -> str:
        """A fresh nonce stamped with ``now``, bound to ``extra``."""
        source = self._random
        rand = self._pooled() if source is None else source(_RAND_LEN)
        if len(rand) != _RAND_LEN:
            raise ValueError("the random source returned the wrong number of octets")
        head = _TS.pack(_millis(now)) + rand
        # base64url (RFC 4648 §5) of 32 octets: 43 characters and one "=", which is cut
        text = binascii.b2a_base64(head + self._mac(head + extra), newline=False)
        return text.translate(_TO_URLSAFE)[:_NONCE_CHARS].decode("ascii")

    def _pooled(self) -> bytes:
        """The next :data:`_RAND_LEN` octets of :func:`secrets.token_bytes`, each handed out once."""
        at, forks = self._at, _FORKS[0]
        if at + _RAND_LEN > len(self._pool) or forks != self._forks:
            self._pool = secrets.token_bytes(_RAND_LEN * _POOL_NONCES)
            self._forks = forks
            at = 0
        self._at = at + _RAND_LEN
        return self._pool[at : at + _RAND_LEN]

    def issued_at(self, nonce: object, *, extra: bytes = b"") -> float | None:
        """The ``now`` (to the millisecond) a nonce of ours was made at; ``None`` if it is not ours."""
        raw = _decode_nonce(nonce)
        if raw is None or not hmac.compare_digest(raw[_HEAD_LEN:], self._mac(raw[:_HEAD_LEN] + extra)):
            return None
        return float(_TS.unpack_from(raw)[0]) / 1000.0

    def check(self, nonce: object, now: float, *, extra: bytes = b"") -> NonceCheck:
        """Whether ``nonce`` is ours and fresh at ``now``. Never raises on garbage.

        Age exactly equal to the lifetime is still valid; a nonce stamped more than ``max_skew`` in the
        future is invalid.
        """
        return self.inspect(nonce, now, extra=extra)[0]

    def inspect(self, nonce: object, now: float, *, extra: bytes = b"") -> tuple[NonceCheck, float]:
        """:meth:`check` and :meth:`issued_at` at once: the verdict, and the issue time (``0.0``
        for an invalid nonce)."""
        issued = self.issued_at(nonce, extra=extra)
        if issued is None:
            return NonceCheck.INVALID, 0.0
        age = _millis(now) / 1000.0 - issued
        if age < -self.max_skew:
            return NonceCheck.INVALID, 0.0
        if age > self.lifetime:
            return NonceCheck.STALE, issued
        return NonceCheck.VALID, issued

    def __repr__(self) -> str:
        return f"NonceFactory(lifetime={self.lifetime!r}, max_skew={self.max_skew!r})"


def _millis(now: float) -> int:
    ms = int(now * 1000.0 // 1)
    if not -(2**63) <= ms < 2**63:
        raise ValueError("now is out of range")
    return ms


def _decode_nonce(nonce: object) -> bytes | None:
    """The 32 octets of a nonce in its canonical spelling (43 base64url characters, the unused
    bits of the last one zero: :data:`_NONCE_RE`), else ``None``."""
    if not isinstance(nonce, str) or _NONCE_RE.fullmatch(nonce) is None:
        return None
    # the pattern admits only ASCII base64url of exactly 32 octets: this decoding cannot fail
    return binascii.a2b_base64(nonce.encode("ascii").translate(_FROM_URLSAFE) + b"=")


class NonceUse(enum.Enum):
    """What :meth:`NonceCounter.use` found."""

    #: the nonce-count is greater than any accepted before on this nonce: recorded, go on
    FRESH = "fresh"
    #: the nonce-count is not greater than one already accepted: a replay
    REPLAY = "replay"
    #: the nonce was issued before this counter began (a restart): its counts are not known, so it
    #: is treated as stale and the client asked for a new one
    UNKNOWN = "unknown"
    #: no room to remember another nonce (the whole table, or the owner's share of it): treated as
    #: stale, never accepted unrecorded
    FULL = "full"


_COUNTER_BUCKETS: Final = 10
_KEY_MASK: Final = (1 << 56) - 1  # a counter's entries are keyed by 56 bits of the nonce's hash
_INFINITY: Final = float("inf")


@mypyc_attr(allow_interpreted_subclasses=True)  # (subclassed outside the compiled modules)
class NonceCounter:
    """Highest nonce-count seen per nonce, kept for the nonce's lifetime, in bounded memory.

    :meth:`use` enforces RFC 7616 §3.4's replay rule: the ``nc`` of each request on a nonce must be
    greater than every ``nc`` already accepted for it. State is created only when a nonce is first
    used with a right response (an issued but unused nonce costs nothing: it is only an HMAC), and
    it is kept until the nonce itself expires, never forgotten earlier for room: entries are filed
    by the time their nonce was issued, in buckets of ``lifetime / 10`` seconds, and a bucket is
    dropped whole once every nonce in it is older than ``lifetime`` (those are refused as stale
    before the counter is asked). Each entry is 56 bits of the nonce's (keyed) string hash and an int.

    When ``max_nonces`` entries are live, or ``per_owner`` entries of one owner (the IMPI), a new
    nonce is answered :attr:`NonceUse.FULL` (the caller challenges again with ``stale=true``) rather
    than accepted without a record, so the table cannot be flushed to replay a nonce.

    :param lifetime: the nonce lifetime (the :class:`NonceFactory`'s), seconds.
    :param max_nonces: entries kept at most, over all owners.
    :param per_owner: entries kept at most for one owner (``None``: no share per owner).
    :param since: nonces issued before this time are :attr:`NonceUse.UNKNOWN` (set it, or call
        :meth:`start`, when the process begins serving, so nonces of a previous run whose counts
        are lost are not taken as new); ``None``: no such rule.
    """

    __slots__ = ("_buckets", "_live", "_low", "_width", "lifetime", "max_nonces", "per_owner", "since")

    def __init__(
        self,
        lifetime: float = 300.0,
        *,
        max_nonces: int = 100_000,
        per_owner: int | None = 64,
        since: float | None = None,
    ) -> None:
        if not lifetime > 0:
            raise ValueError("the nonce lifetime must be > 0")
        if max_nonces < 1:
            raise ValueError("max_nonces must be >= 1")
        if per_owner is not None and per_owner < 1:
            raise ValueError("per_owner must be >= 1 or None")
        self.lifetime = float(lifetime)
        self.max_nonces = max_nonces
        self.per_owner = per_owner
        self.since = None if since is None else _millis(since) / 1000.0
        self._width = self.lifetime / _COUNTER_BUCKETS
        #: bucket number -> (nonce key -> highest nc, owner -> entries)
        self._buckets: dict[int, tuple[dict[int, int], dict[str, int]]] = {}
        #: the lowest bucket number in _buckets (infinity when there is none): nothing can expire
        #: while it is not below the horizon, and the buckets need not be looked at
        self._low: float = _INFINITY
        self._live = 0

    def start(self, now: float) -> None:
        """Begin counting at ``now`` if not begun: nonces issued before it are unknown."""
        if self.since is None:
            self.since = _millis(now) / 1000.0

    @staticmethod
    def _key(nonce: str) -> int:
        # 56 bits of the interpreter's (keyed, per process) string hash: the table lives in this
        # process only, and the nonces it is asked about passed our MAC, so nobody chooses them
        return hash(nonce) & _KEY_MASK

    def _expire(self, now: float) -> None:
        horizon = (now - self.lifetime) // self._width  # buckets ending before now - lifetime
        if not self._low + 1 < horizon:  # not even the lowest bucket has ended
            return
        for number in [b for b in self._buckets if b + 1 < horizon]:
            self._live -= len(self._buckets.pop(number)[0])
        self._low = min(self._buckets, default=_INFINITY)

    def _find(self, key: int) -> tuple[dict[int, int], int] | None:
        for entries, _owners in self._buckets.values():
            last = entries.get(key)
            if last is not None:
                return entries, last
        return None

    def use(self, nonce: str, nc: int, *, issued: float, now: float, owner: str = "") -> NonceUse:
        """Record ``nc`` for ``nonce`` (issued at ``issued``, on behalf of ``owner``) at ``now``.

        :attr:`NonceUse.FRESH` when ``nc`` (>= 1) is greater than every count accepted for the
        nonce; otherwise why not. Only a fresh count changes anything.
        """
        if self._low + 1 < (now - self.lifetime) // self._width:  # (what _expire looks at first)
            self._expire(now)
        since = self.since
        if since is not None and issued < since:
            return NonceUse.UNKNOWN
        if nc < 1:
            return NonceUse.REPLAY
        key = hash(nonce) & _KEY_MASK  # (= self._key(nonce))
        buckets = self._buckets
        for entries, _owners in buckets.values():  # (what _find does, without its call)
            last = entries.get(key)
            if last is not None:
                if nc <= last:
                    return NonceUse.REPLAY
                entries[key] = nc
                return NonceUse.FRESH
        if self._live >= self.max_nonces:
            return NonceUse.FULL
        if self.per_owner is not None and self.held(owner) >= self.per_owner:
            return NonceUse.FULL
        number = int(issued // self._width)
        bucket = buckets.get(number)
        if bucket is None:
            bucket = buckets[number] = ({}, {})
            if number < self._low:
                self._low = float(number)
        entries, owners = bucket
        entries[key] = nc
        owners[owner] = owners.get(owner, 0) + 1
        self._live += 1
        return NonceUse.FRESH

    def held(self, owner: str) -> int:
        """How many live entries ``owner`` holds."""
        count = 0
        for _entries, owners in self._buckets.values():  # a loop: no generator for a few buckets
            count += owners.get(owner, 0)
        return count

    def last(self, nonce: str) -> int | None:
        """The highest ``nc`` accepted for ``nonce``, or ``None`` if none is remembered."""
        found = self._find(self._key(nonce))
        return None if found is None else found[1]

    def __len__(self) -> int:
        return self._live

    def __repr__(self) -> str:
        return f"NonceCounter({self._live}/{self.max_nonces} nonces)"


# ---------------------------------------------------------------------------------------------------
# challenge and credentials


def _check_text(what: str, value: str) -> None:
    if any(c in value for c in "\r\n\x00"):
        raise ValueError(f"{what} must not contain CR, LF or NUL")


def challenge(
    realm: str,
    nonce: str,
    *,
    algorithm: str = "MD5",
    qop: str | Sequence[str] | None = "auth",
    stale: bool = False,
    opaque: str | None = None,
) -> str:
    """A ``WWW-Authenticate`` (or ``Proxy-Authenticate``) header value offering Digest.

    >>> challenge("ims.example.test", "abc", stale=True)
    'Digest realm="ims.example.test", nonce="abc", algorithm=MD5, qop="auth", stale=true'

    ``qop`` may be one option, several (``["auth", "auth-int"]``), or ``None`` to offer none (RFC 2069
    clients). The algorithm name is written in its canonical spelling; an unsupported one raises
    :class:`ValueError`.
    """
    algo = _algo(algorithm)
    _check_text("realm", realm)
    _check_text("nonce", nonce)
    head, tail = _frame(algo, realm, qop, stale, opaque)
    return head + g.quote(nonce) + tail


def challenge_frame(
    realm: str,
    *,
    algorithm: str = "MD5",
    qop: str | Sequence[str] | None = "auth",
    stale: bool = False,
    opaque: str | None = None,
) -> tuple[str, str]:
    """What :func:`challenge` writes before and after the quoted nonce, for a caller that challenges
    many times with the same parameters: ``challenge(realm, nonce, ...)`` is
    ``head + g.quote(nonce) + tail`` for every nonce without CR, LF or NUL (same arguments, same
    errors)."""
    algo = _algo(algorithm)
    _check_text("realm", realm)
    return _frame(algo, realm, qop, stale, opaque)


def _frame(
    algo: _Algo, realm: str, qop: str | Sequence[str] | None, stale: bool, opaque: str | None
) -> tuple[str, str]:
    head = f"Digest realm={g.quote(realm)}, nonce="
    parts = [f"algorithm={algo.name}"]
    if qop is not None:
        options = [qop] if isinstance(qop, str) else list(qop)
        for option in options:
            if option.lower() not in ("auth", "auth-int"):
                raise ValueError(f"unsupported qop {option[:40]!r}")
        if options:
            parts.append(f"qop={g.quote(','.join(o.lower() for o in options))}")
    if opaque is not None:
        _check_text("opaque", opaque)
        parts.append(f"opaque={g.quote(opaque)}")
    if stale:
        parts.append("stale=true")
    return head, ", " + ", ".join(parts)


def credentials(
    offered: AuthHeader,
    *,
    username: str,
    password: bytes | str | StoredHA1,
    method: str,
    uri: str,
    cnonce: str | None = None,
    nc: int = 1,
    entity_body: bytes = b"",
    algorithm_aliases: Mapping[str, str] | None = None,
) -> str:
    """The client side: an ``Authorization`` (or ``Proxy-Authorization``) value answering a challenge.

    ``offered`` is the parsed challenge. qop ``auth`` is chosen when offered, else ``auth-int``, else the
    RFC 2069 form. ``cnonce`` defaults to 16 random hex digits. ``algorithm_aliases`` maps an offered
    algorithm name to the one computed (e.g. ``{"AKAv1-MD5": "MD5"}`` with the RES as the password);
    the name is echoed as offered. Used by test UEs and the lab simulator.
    """
    if not offered.is_digest:
        raise ValueError("the challenge is not Digest")
    realm = offered.get("realm")
    nonce = offered.get("nonce")
    if realm is None or nonce is None:
        raise ValueError("the challenge lacks realm or nonce")
    offered_algorithm = offered.get("algorithm") or "MD5"
    algo = _resolve(offered_algorithm, algorithm_aliases)
    if algo is None:
        raise ValueError(f"unsupported Digest algorithm {offered_algorithm[:40]!r}")
    offered_qops = [q.strip().lower() for q in (offered.get("qop") or "").split(",") if q.strip()]
    qop = next((q for q in ("auth", "auth-int") if q in offered_qops), None)
    if offered_qops and qop is None:
        raise ValueError("no offered qop is supported")
    if qop is not None or algo.sess:
        cnonce = cnonce if cnonce is not None else secrets.token_hex(8)
    nc_text = _format_nc(nc)
    response = digest_response(
        algorithm=algo.name,
        username=username,
        realm=realm,
        password=password,
        method=method,
        uri=uri,
        nonce=nonce,
        nc=nc_text if qop else None,
        cnonce=cnonce,
        qop=qop,
        entity_body=entity_body,
    )
    for what, value in (("username", username), ("uri", uri), ("cnonce", cnonce or "")):
        _check_text(what, value)
    parts = [
        f"username={g.quote(username)}",
        f"realm={g.quote(realm)}",
        f"nonce={g.quote(nonce)}",
        f"uri={g.quote(uri)}",
        f"response={g.quote(response)}",
        f"algorithm={offered_algorithm if algorithm_aliases else algo.name}",
    ]
    if cnonce is not None:
        parts.append(f"cnonce={g.quote(cnonce)}")
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc_text}"]
    opaque = offered.get("opaque")
    if opaque is not None:
        parts.append(f"opaque={g.quote(opaque)}")
    return "Digest " + ", ".join(parts)


# ---------------------------------------------------------------------------------------------------
# verification


class VerdictKind(enum.Enum):
    """The outcome of :func:`verify`, and what the registrar should answer."""

    #: the credentials are good: go on with the request
    OK = "ok"
    #: malformed credentials (a parameter missing or malformed, uri not the Request-URI, a qop not
    #: offered): answer 400 with :attr:`Verdict.reason`
    BAD_REQUEST = "bad-request"
    #: well-formed, but the response does not match (wrong password): challenge again (401/407)
    WRONG_RESPONSE = "wrong-response"
    #: the response matched a nonce of ours that has expired: challenge again with ``stale=true``
    STALE = "stale"
    #: the nonce is not ours (bad MAC, garbage): challenge again
    INVALID_NONCE = "invalid-nonce"
    #: the nonce-count was not greater than one already accepted: refuse, challenge again
    REPLAY = "replay"
    #: the algorithm is not one we support (or cannot check with the stored H(A1)): challenge again
    UNSUPPORTED_ALGORITHM = "unsupported-algorithm"
    #: the credentials are not Digest: challenge again
    UNSUPPORTED_SCHEME = "unsupported-scheme"
    #: the credentials are for another realm: challenge again (RFC 3261 §22.3)
    WRONG_REALM = "wrong-realm"


@dataclass(frozen=True)
class Verdict:
    """The result of :func:`verify`: a :class:`VerdictKind`, a reason phrase, and the username given.

    ``reason`` never contains a secret or the response value; it is fit for a 400 reason phrase or a log.
    """

    kind: VerdictKind
    reason: str = ""
    username: str | None = None

    @property
    def ok(self) -> bool:
        """``True`` for :attr:`VerdictKind.OK`."""
        return self.kind is VerdictKind.OK

    @property
    def stale(self) -> bool:
        """``True`` when the new challenge should say ``stale=true``."""
        return self.kind is VerdictKind.STALE

    @property
    def rechallenge(self) -> bool:
        """``True`` when the answer is a new challenge (401, or 407 from a proxy)."""
        return self.kind not in (VerdictKind.OK, VerdictKind.BAD_REQUEST)

    @property
    def status(self) -> int:
        """200 for ok, 400 for a bad request, else 401 (a proxy answers 407 instead)."""
        if self.kind is VerdictKind.OK:
            return 200
        if self.kind is VerdictKind.BAD_REQUEST:
            return 400
        return 401


_NC_RE: Final = re.compile(r"[0-9a-fA-F]{8}")


def _bad(reason: str, username: str | None = None) -> Verdict:
    return Verdict(VerdictKind.BAD_REQUEST, reason, username)


def uri_matches(digest_uri: str, request_uri: str | Uri) -> bool:
    """RFC 2617 §3.2.2.5: whether the Digest ``uri`` names the Request-URI.

    Both are compared as URIs (RFC 3261 §19.1.4 equality) when both parse, else as exact strings.
    """
    req_text = request_uri if isinstance(request_uri, str) else str(request_uri)
    if digest_uri == req_text:  # the usual case: the client copied the Request-URI as written
        return True
    try:
        req = parse_uri(request_uri) if isinstance(request_uri, str) else request_uri
        given = parse_uri(digest_uri)
    except (SipError, ValueError):
        return digest_uri == req_text
    return bool(given == req)


def verify(
    credentials: AuthHeader,
    *,
    method: str,
    request_uri: str | Uri,
    password_or_ha1: bytes | str | StoredHA1,
    realm: str,
    nonces: NonceFactory | None = None,
    now: float | None = None,
    nonce_extra: bytes = b"",
    counter: NonceCounter | None = None,
    algorithms: Collection[str] = ALGORITHMS,
    algorithm_aliases: Mapping[str, str] | None = None,
    qops: Collection[str] = ("auth",),
    require_qop: bool = True,
    opaque: str | None = None,
    entity_body: bytes = b"",
    ha1_memo: dict[str, Any] | None = None,
) -> Verdict:
    """Judge Digest credentials (an ``Authorization``/``Proxy-Authorization`` header) for a request.

    :param credentials: the parsed header (e.g. ``request.authorization[0]``).
    :param method: the request method (A2 uses it).
    :param request_uri: the Request-URI; the Digest ``uri`` must name the same resource (400 if not).
    :param password_or_ha1: the user's password (``str``, or ``bytes`` such as an AKA RES) or a
        :class:`StoredHA1`, looked up by the caller from ``credentials.get("username")`` (the IMPI).
    :param realm: our realm; credentials for another realm get :attr:`VerdictKind.WRONG_REALM`.
    :param nonces: the factory that made our nonces; when given, ``now`` is required and the nonce is
        checked (invalid, stale). When ``None`` the caller has checked the nonce itself (AKA).
    :param nonce_extra: the ``extra`` the nonce was bound to.
    :param counter: when given (with ``nonces``), a nonce-count not greater than the last accepted
        one is a replay; a nonce the counter cannot vouch for (issued before it began, or no room
        to record it) is answered as stale, never accepted unrecorded.
    :param algorithms: the algorithm names accepted (any case; see :data:`ALGORITHMS`).
    :param algorithm_aliases: extra algorithm names and the algorithm each computes with, e.g.
        ``{"AKAv1-MD5": "MD5"}`` for Digest AKAv1 (RFC 3310) with the RES as ``password_or_ha1``; an
        alias is accepted only if it is also listed in ``algorithms``.
    :param qops: the qop values accepted; one not in it is a bad request.
    :param require_qop: refuse the RFC 2069 form (no qop) as a bad request; our challenges offer qop, and
        RFC 2617 §3.2.2 obliges the client to use it then.
    :param opaque: when given, the credentials must carry the same ``opaque`` (400 otherwise).
    :param entity_body: the message body, for qop ``auth-int``.
    :param ha1_memo: where the H(A1) of a ``str`` password may be kept from one call to the next
        (one entry, under a key of this module's; e.g. the ``__dict__`` of the immutable object
        holding the password): used again only for the same password, username, realm and hash.

    Checks in order: scheme; required parameters; realm; uri; algorithm; qop, nc, cnonce; nonce ours;
    response (constant-time comparison); stale; replay. A stale nonce is reported only when the response
    is right for it (RFC 2617 §3.2.1), so ``stale=true`` never tells a guesser anything.
    """
    get = credentials.unquoted().get  # (= credentials.get for these lower-case names)
    username: str | None = get("username")
    if not credentials.is_digest:
        return Verdict(
            VerdictKind.UNSUPPORTED_SCHEME,
            f"authorization scheme {credentials.scheme[:20]!r} is not Digest",
        )
    if username is None:
        return _bad("Digest parameter 'username' missing", username)
    c_realm = get("realm")
    if c_realm is None:
        return _bad("Digest parameter 'realm' missing", username)
    nonce = get("nonce")
    if nonce is None:
        return _bad("Digest parameter 'nonce' missing", username)
    digest_uri = get("uri")
    if digest_uri is None:
        return _bad("Digest parameter 'uri' missing", username)
    given = get("response")
    if given is None:
        return _bad("Digest parameter 'response' missing", username)
    if c_realm != realm:
        return Verdict(VerdictKind.WRONG_REALM, "credentials are for another realm", username)
    if not uri_matches(digest_uri, request_uri):
        return _bad("Digest uri does not match the Request-URI", username)

    algorithm_text = get("algorithm") or "MD5"
    algo = _resolve(algorithm_text, algorithm_aliases)
    if algo is None or not _listed(algorithm_text.lower(), algorithms):
        return Verdict(
            VerdictKind.UNSUPPORTED_ALGORITHM,
            f"unsupported Digest algorithm {algorithm_text[:40]!r}",
            username,
        )
    if (
        isinstance(password_or_ha1, StoredHA1)
        and _algo(password_or_ha1.hash_name).hash_name != algo.hash_name
    ):
        return Verdict(
            VerdictKind.UNSUPPORTED_ALGORITHM,
            f"no {algo.name} credentials stored for the user",
            username,
        )

    qop = get("qop")
    nc_text = get("nc")
    cnonce = get("cnonce")
    nc: int | None = None
    if qop is None:
        if require_qop:
            return _bad("Digest qop missing", username)
        if algo.sess and not cnonce:
            return _bad(f"Digest cnonce missing ({algo.name})", username)
    else:
        qop = qop.lower()
        if not _listed(qop, qops):
            return _bad(f"Digest qop {qop[:20]!r} not offered", username)
        if nc_text is None or not cnonce:
            return _bad(f"Digest qop={qop} needs nc and cnonce", username)
        if not _NC_RE.fullmatch(nc_text):
            return _bad("Digest nc is not 8 hexadecimal digits", username)
        nc = int(nc_text, 16)
    if opaque is not None and get("opaque") != opaque:
        return _bad("Digest opaque does not match", username)

    state, issued = NonceCheck.VALID, 0.0
    if counter is not None and nonces is None:
        raise TypeError("verify() needs nonces= when counter= is given")
    if nonces is not None:
        if now is None:
            raise TypeError("verify() needs now= when nonces= is given")
        state, issued = nonces.inspect(nonce, now, extra=nonce_extra)
        if state is NonceCheck.INVALID:
            return Verdict(VerdictKind.INVALID_NONCE, "nonce not issued here", username)

    expected = _response(
        algo,
        _base_ha1(algo, username, c_realm, password_or_ha1, ha1_memo),
        method,
        digest_uri,
        nonce,
        nc_text,
        cnonce,
        qop,
        entity_body,
    )
    if not hmac.compare_digest(expected.encode("ascii"), given.lower().encode("utf-8", "replace")):
        return Verdict(VerdictKind.WRONG_RESPONSE, "Digest response does not match", username)
    if state is NonceCheck.STALE:
        return Verdict(VerdictKind.STALE, "nonce expired", username)
    if counter is not None and nc is not None:
        assert now is not None
        use = counter.use(nonce, nc, issued=issued, now=now, owner=username)
        if use is NonceUse.REPLAY:
            return Verdict(VerdictKind.REPLAY, "nonce-count replayed", username)
        if use is NonceUse.UNKNOWN:
            return Verdict(VerdictKind.STALE, "nonce from before this server started", username)
        if use is NonceUse.FULL:
            return Verdict(VerdictKind.STALE, "no room to count another nonce", username)
    return Verdict(VerdictKind.OK, "", username)


def _listed(lowered: str, names: Collection[str]) -> bool:
    """Whether ``lowered`` (lower-case) is one of ``names``, compared case-insensitively."""
    for name in names:  # noqa: SIM110  # a loop, not any(): no generator for one or two names
        if name.lower() == lowered:
            return True
    return False
