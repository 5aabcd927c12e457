"""Authentication for the registrar: SIP Digest (RFC 2617/7616) in :mod:`imscore.auth.digest`.

Everything here is sans-IO: no sockets, no clock reads (``now`` is an argument), no logging of secrets.
"""

from .digest import (
    ALGORITHMS,
    NonceCheck,
    NonceCounter,
    NonceFactory,
    NonceUse,
    StoredHA1,
    Verdict,
    VerdictKind,
    canonical_algorithm,
    challenge,
    credentials,
    digest_response,
    ha1,
    uri_matches,
    verify,
)

__all__ = [
    "ALGORITHMS",
    "NonceCheck",
    "NonceCounter",
    "NonceFactory",
    "NonceUse",
    "StoredHA1",
    "Verdict",
    "VerdictKind",
    "canonical_algorithm",
    "challenge",
    "credentials",
    "digest_response",
    "ha1",
    "uri_matches",
    "verify",
]
