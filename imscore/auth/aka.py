"""Digest AKA (RFC 3310 AKAv1, RFC 4169 AKAv2): authentication vectors, nonces, passwords, resync.

Pure functions and small state objects: no I/O, no clock, and randomness only through an injectable
``random_bytes`` callable (default :func:`secrets.token_bytes`). The registrar asks this module for a
vector, puts :func:`make_nonce` of it in the 401 challenge, and checks the client's RFC 2617 digest
with :func:`aka_password` as the password. Hashing the digest itself is the Digest module's job.

Sources and choices (see also ``/work/shared/corpus/akaspec.md``):

* AUTN = (SQN xor AK) || AMF || MAC-A, AUTS = (SQN_MS xor AK*) || MAC-S: 3GPP TS 33.102 §6.3.
* nonce = base64(RAND || AUTN || optional server data): RFC 3310 §3.2.
* AKAv1 password = RES/XRES as raw octets: RFC 3310 §3.3 (as pjsip and SIPp implement it).
* AKAv2 password = base64(HMAC-MD5(key = XRES || IK || CK, msg = "http-digest-akav2-password")):
  RFC 4169 §3, "PRF(XRES||IK||CK, "http-digest-akav2-password")" with PRF = HMAC-MD5, as quoted in
  akaspec.md and implemented alike by pjsip and Clearwater. The 24-character base64 text is the password.
* MAC-S is computed with the dummy AMF* = 0x0000 (TS 33.102 §6.3.3); both hostapd AUTS vectors only
  verify with it.
* When the client sends ``auts`` it computes its digest with the empty password (RFC 3310 §3.4):
  :data:`RESYNC_PASSWORD`. Whether AKAv2 does the same was not verified against RFC 4169.
* SQN management: TS 33.102 Annex C in a simple form, see :class:`SqnState`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from imscore.auth.milenage import Milenage

__all__ = [
    "AKAV2_PASSWORD_LABEL",
    "AMF_RESYNC",
    "IND_BITS",
    "RESYNC_PASSWORD",
    "SQN_DELTA",
    "AkaError",
    "AuthVector",
    "MacError",
    "NonceError",
    "SqnState",
    "UeResponse",
    "UeSim",
    "aka_password",
    "decode_auts",
    "derive_password",
    "encode_auts",
    "generate_vector",
    "make_auts",
    "make_nonce",
    "new_vector",
    "parse_aka_algorithm",
    "parse_nonce",
    "resync_sqn",
]

RandomBytes = Callable[[int], bytes]

SQN_BITS = 48
SQN_MAX = (1 << SQN_BITS) - 1
#: Number of low-order SQN bits that hold the array index IND (TS 33.102 Annex C.1.2 suggests 5).
IND_BITS = 5
_IND_MASK = (1 << IND_BITS) - 1
_SEQ_MAX = (1 << (SQN_BITS - IND_BITS)) - 1
#: Largest step SEQ may take beyond the highest SEQ the USIM accepted (Annex C.2.1 suggests 2^28).
SQN_DELTA = 1 << 28
#: The dummy AMF used for MAC-S in AUTS (TS 33.102 §6.3.3).
AMF_RESYNC = b"\x00\x00"
#: The PRF label of RFC 4169 §3.
AKAV2_PASSWORD_LABEL = b"http-digest-akav2-password"
#: The password a client uses for its digest when it sends ``auts`` (RFC 3310 §3.4).
RESYNC_PASSWORD = b""

_RAND_LEN = 16
_AUTN_LEN = 16
_AUTS_LEN = 14


class AkaError(ValueError):
    """A Digest-AKA value is malformed or does not verify."""


class NonceError(AkaError):
    """A nonce is not base64 of at least RAND || AUTN (32 octets)."""


class MacError(AkaError):
    """A MAC did not verify: MAC-A in AUTN (UE side) or MAC-S in AUTS (network side)."""


def _need(name: str, value: bytes, size: int) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    data = bytes(value)
    if len(data) != size:
        raise ValueError(f"{name} must be {size} octets, got {len(data)}")
    return data


def _sqn_bytes(sqn: int) -> bytes:
    if not 0 <= sqn <= SQN_MAX:
        raise ValueError(f"SQN must be in 0..2^48-1, got {sqn}")
    return sqn.to_bytes(6, "big")


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _b64decode(text: str | bytes, what: str) -> bytes:
    try:
        raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
        return base64.b64decode(raw, validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise NonceError(f"{what} is not valid base64: {exc}") from None


# --- vectors and nonces --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthVector:
    """A UMTS authentication vector (TS 33.102 §6.3.2) without KASME: the network's side of a challenge.

    :param rand: the 16-octet RAND.
    :param autn: the 16-octet AUTN = (SQN xor AK) || AMF || MAC-A.
    :param xres: the expected response XRES (8 octets with MILENAGE).
    :param ck: the 16-octet cipher key.
    :param ik: the 16-octet integrity key.

    XRES, CK and IK are left out of ``repr`` so a vector can be logged without its secrets.
    """

    rand: bytes
    autn: bytes
    xres: bytes = field(repr=False)
    ck: bytes = field(repr=False)
    ik: bytes = field(repr=False)

    @property
    def nonce(self) -> str:
        """The Digest nonce for this vector, ``base64(RAND || AUTN)`` (see :func:`make_nonce`)."""
        return make_nonce(self.rand, self.autn)


def generate_vector(milenage: Milenage, sqn: int, amf: bytes, rand: bytes) -> AuthVector:
    """Compute the authentication vector for ``sqn`` (48-bit int), a 2-octet AMF and a 16-octet RAND.

    AUTN = (SQN xor AK) || AMF || MAC-A with AK = f5(RAND) and MAC-A = f1(RAND, SQN, AMF).
    """
    sqn_b = _sqn_bytes(sqn)
    amf = _need("AMF", amf, 2)
    rand = _need("RAND", rand, _RAND_LEN)
    xres, ck, ik, ak = milenage.f2345(rand)
    mac_a = milenage.f1(rand, sqn_b, amf)
    return AuthVector(rand=rand, autn=_xor(sqn_b, ak) + amf + mac_a, xres=xres, ck=ck, ik=ik)


def new_vector(
    milenage: Milenage, sqn: int, amf: bytes, *, random_bytes: RandomBytes = secrets.token_bytes
) -> AuthVector:
    """Like :func:`generate_vector`, drawing a fresh RAND from ``random_bytes(16)``."""
    return generate_vector(milenage, sqn, amf, random_bytes(_RAND_LEN))


def make_nonce(rand: bytes, autn: bytes, server_data: bytes = b"") -> str:
    """Build the Digest-AKA nonce ``base64(RAND || AUTN || server_data)`` (RFC 3310 §3.2).

    ``server_data`` is optional opaque data the server may append (for example a key into its own
    state); clients ignore everything past the 32 octets of RAND and AUTN.
    """
    rand = _need("RAND", rand, _RAND_LEN)
    autn = _need("AUTN", autn, _AUTN_LEN)
    return base64.b64encode(rand + autn + bytes(server_data)).decode("ascii")


def parse_nonce(nonce: str | bytes) -> tuple[bytes, bytes]:
    """Split a Digest-AKA nonce into ``(RAND, AUTN)``; any server data after them is ignored.

    Raises :class:`NonceError` when the nonce is not strict base64 or decodes to fewer than 32 octets.
    """
    raw = _b64decode(nonce, "nonce")
    if len(raw) < _RAND_LEN + _AUTN_LEN:
        raise NonceError(f"nonce decodes to {len(raw)} octets; RAND || AUTN needs 32")
    return raw[:_RAND_LEN], raw[_RAND_LEN : _RAND_LEN + _AUTN_LEN]


# --- passwords -----------------------------------------------------------------------------------


def parse_aka_algorithm(token: str) -> tuple[int, str] | None:
    """Read a Digest ``algorithm`` token of the form ``AKAv<n>-<hash>`` (RFC 3310 §3.1).

    Returns ``(version, hash name)`` such as ``(1, "MD5")``, or ``None`` when the token is not an AKA
    algorithm or its version is not a positive integer. Matching is case-insensitive.
    """
    head, sep, hash_name = token.strip().partition("-")
    if not sep or not hash_name or head[:4].lower() != "akav":
        return None
    digits = head[4:]
    if not digits.isascii() or not digits.isdigit() or int(digits) < 1:
        return None
    return int(digits), hash_name.upper()


def derive_password(version: int, res: bytes, ik: bytes, ck: bytes) -> bytes:
    """The Digest password for AKA ``version`` from RES (or XRES), IK and CK.

    * version 1 (RFC 3310): the RES octets themselves.
    * version 2 (RFC 4169): ``base64(HMAC-MD5(RES || IK || CK, "http-digest-akav2-password"))`` as
      ASCII octets (24 characters).

    Raises ``ValueError`` for any other version.
    """
    if version == 1:
        return bytes(res)
    if version == 2:
        key = bytes(res) + _need("IK", ik, 16) + _need("CK", ck, 16)
        prf = hmac.new(key, AKAV2_PASSWORD_LABEL, hashlib.md5).digest()
        return base64.b64encode(prf)
    raise ValueError(f"unsupported Digest-AKA version {version} (1 and 2 are defined)")


def aka_password(version: int, vector: AuthVector) -> bytes:
    """The password the server uses to check a Digest-AKA response for ``vector`` (XRES-based)."""
    return derive_password(version, vector.xres, vector.ik, vector.ck)


# --- resynchronisation ---------------------------------------------------------------------------


def make_auts(milenage: Milenage, rand: bytes, sqn_ms: int) -> bytes:
    """The 14-octet AUTS = (SQN_MS xor AK*) || MAC-S a UE sends on a sync failure (TS 33.102 §6.3.3).

    MAC-S = f1*(RAND, SQN_MS, AMF* = 0x0000), AK* = f5*(RAND).
    """
    rand = _need("RAND", rand, _RAND_LEN)
    sqn_b = _sqn_bytes(sqn_ms)
    mac_s = milenage.f1_star(rand, sqn_b, AMF_RESYNC)
    return _xor(sqn_b, milenage.f5_star(rand)) + mac_s


def encode_auts(auts: bytes) -> str:
    """The ``auts`` Digest parameter value: base64 of the 14 AUTS octets (RFC 3310 §3.4)."""
    return base64.b64encode(_need("AUTS", auts, _AUTS_LEN)).decode("ascii")


def decode_auts(text: str | bytes) -> bytes:
    """Decode an ``auts`` parameter value to its 14 octets; :class:`AkaError` when malformed."""
    raw = _b64decode(text, "auts")
    if len(raw) != _AUTS_LEN:
        raise AkaError(f"auts decodes to {len(raw)} octets; AUTS is 14")
    return raw


def resync_sqn(milenage: Milenage, rand: bytes, auts: bytes) -> int:
    """Verify an AUTS against the RAND of the challenge it answers and return SQN_MS.

    SQN_MS = AUTS[0:6] xor f5*(RAND); MAC-S must equal f1*(RAND, SQN_MS, AMF* = 0x0000).
    Raises :class:`MacError` when MAC-S does not verify (the AUTS is forged, corrupted, or was made
    for another RAND or key) and ``ValueError`` for wrong lengths.
    """
    rand = _need("RAND", rand, _RAND_LEN)
    auts = _need("AUTS", auts, _AUTS_LEN)
    sqn_b = _xor(auts[:6], milenage.f5_star(rand))
    expected = milenage.f1_star(rand, sqn_b, AMF_RESYNC)
    if not hmac.compare_digest(expected, auts[6:]):
        raise MacError("AUTS MAC-S does not verify (wrong key, wrong RAND or corrupted AUTS)")
    return int.from_bytes(sqn_b, "big")


# --- SQN management ------------------------------------------------------------------------------


class SqnState:
    """The home network's sequence-number state for one subscriber (TS 33.102 Annex C, simple form).

    SQN = SEQ || IND: the low :data:`IND_BITS` (5) bits are the array index IND, the upper 43 bits
    the sequence SEQ. Each :meth:`next` increments SEQ by one and moves IND round-robin through
    0..31. Rotating IND, rather than a bare ``SQN + 1``, keeps the scheme compatible with a USIM that
    checks SQN against an array of 32 SEQ values (Annex C.2.1): a UE then accepts up to 32
    challenges answered out of order (parallel REGISTERs, a retried challenge), while a plain
    counter would be accepted by such a USIM just the same (SEQ still grows strictly).

    Resync (TS 33.102 §6.3.5): given SQN_MS from a verified AUTS, if the next SEQ would be in the
    USIM's acceptable range (greater than SEQ_MS and at most :data:`SQN_DELTA` beyond it) the counter
    simply continues; otherwise SEQ restarts from SEQ_MS, so the next SQN is fresh for the UE.

    The whole state is the last SQN issued, an int: store ``int(state)`` and rebuild with
    ``SqnState(value)``. A fresh subscriber starts at 0 (no SQN issued yet).
    """

    __slots__ = ("_delta", "_value")

    def __init__(self, value: int = 0, *, delta: int = SQN_DELTA) -> None:
        _sqn_bytes(value)
        if delta < 1:
            raise ValueError("delta must be positive")
        self._value = value
        self._delta = delta

    @classmethod
    def from_int(cls, value: int) -> SqnState:
        """Rebuild the state stored by :meth:`to_int`."""
        return cls(value)

    def to_int(self) -> int:
        """The state as an int (the last SQN issued), for storage."""
        return self._value

    def __int__(self) -> int:
        return self._value

    def __repr__(self) -> str:
        return f"SqnState(seq={self._value >> IND_BITS}, ind={self._value & _IND_MASK})"

    @property
    def last(self) -> int:
        """The last SQN issued (0 before the first)."""
        return self._value

    def next(self, sqn_ms: int | None = None) -> int:
        """Issue the next SQN; pass ``sqn_ms`` (from :func:`resync_sqn`) to resynchronise first.

        Raises :class:`AkaError` when SEQ would overflow its 43 bits (no wrap-around is done).
        """
        seq, ind = self._value >> IND_BITS, self._value & _IND_MASK
        if sqn_ms is not None:
            _sqn_bytes(sqn_ms)
            seq_ms = sqn_ms >> IND_BITS
            if not seq_ms < seq + 1 <= seq_ms + self._delta:
                seq = seq_ms
        seq += 1
        if seq > _SEQ_MAX:
            raise AkaError("SQN space exhausted (SEQ would wrap)")
        self._value = (seq << IND_BITS) | ((ind + 1) & _IND_MASK)
        return self._value


# --- the UE side ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UeResponse:
    """What a UE computes from a challenge: RES, CK and IK, or an AUTS on a synchronisation failure.

    Exactly one of ``res`` and ``auts`` is set; ``ck``/``ik`` are ``None`` with ``auts``.
    """

    res: bytes | None = field(default=None, repr=False)
    auts: bytes | None = None
    ck: bytes | None = field(default=None, repr=False)
    ik: bytes | None = field(default=None, repr=False)

    @property
    def auts_param(self) -> str | None:
        """The base64 ``auts`` Digest parameter, or ``None`` when the challenge was accepted."""
        return None if self.auts is None else encode_auts(self.auts)

    def password(self, version: int) -> bytes:
        """The Digest password: :func:`derive_password` of RES, or the empty password with AUTS."""
        if self.res is None:
            return RESYNC_PASSWORD
        assert self.ck is not None and self.ik is not None
        return derive_password(version, self.res, self.ik, self.ck)


class UeSim:
    """A simulated USIM/UE for tests: answers Digest-AKA nonces as a real UE would.

    :param milenage: the subscriber's MILENAGE (same K and OPc as the network).
    :param sqn_ms: the highest SQN already accepted; every IND slot starts at its SEQ.
    :param delta: the largest SEQ jump accepted beyond the highest accepted SEQ (Annex C.2.1).

    It checks MAC-A (a mismatch raises :class:`MacError`: the network is not authentic) and SQN
    freshness with the Annex C array scheme: accepted when SEQ > SEQ_MS[IND] and
    SEQ - max(SEQ_MS) <= delta. A stale SQN yields an AUTS carrying SQN_MS = the highest accepted
    SEQ with IND 0.
    """

    __slots__ = ("_delta", "_m", "_seq_ms")

    def __init__(self, milenage: Milenage, sqn_ms: int = 0, *, delta: int = SQN_DELTA) -> None:
        _sqn_bytes(sqn_ms)
        self._m = milenage
        self._seq_ms = [sqn_ms >> IND_BITS] * (1 << IND_BITS)
        self._delta = delta

    @property
    def sqn_ms(self) -> int:
        """The highest accepted SEQ, as an SQN with IND 0 (what an AUTS reports)."""
        return max(self._seq_ms) << IND_BITS

    def respond(self, nonce: str | bytes) -> UeResponse:
        """Answer a challenge nonce: RES/CK/IK when it is authentic and fresh, else an AUTS.

        Raises :class:`NonceError` for a malformed nonce and :class:`MacError` when MAC-A fails.
        """
        rand, autn = parse_nonce(nonce)
        res, ck, ik, ak = self._m.f2345(rand)
        sqn_b = _xor(autn[:6], ak)
        amf, mac_a = autn[6:8], autn[8:16]
        if not hmac.compare_digest(self._m.f1(rand, sqn_b, amf), mac_a):
            raise MacError("AUTN MAC-A does not verify: the network is not authentic")
        sqn = int.from_bytes(sqn_b, "big")
        seq, ind = sqn >> IND_BITS, sqn & _IND_MASK
        if seq <= self._seq_ms[ind] or seq - max(self._seq_ms) > self._delta:
            return UeResponse(auts=make_auts(self._m, rand, self.sqn_ms))
        self._seq_ms[ind] = seq
        return UeResponse(res=res, ck=ck, ik=ik)
