"""The original-dialog identifier (TS 24.229 §5.4.3.2 step 6, §5.4.3.3): how the S-CSCF knows a
request coming back from an application server is one it sent there, and where it was.

When an iFC routes a request to an AS, the S-CSCF puts two Route entries on it: the AS, then
itself with an ``odi`` URI parameter. The AS sends the request (or a new one for the same session,
as a B2BUA would) back along that Route; the token says which session case it was in, which iFC
was executed last, for which served user, and a digest of the Request-URI it had, so the S-CSCF
goes on with the next iFC — or, on the terminating side, retargets when the AS changed the
Request-URI.

The token is a MAC under a key only this server (its workers, the nodes of its pool) holds, as the
relay's dialog stamp is, so it cannot be forged; it carries its issue time and is refused after
:data:`ODI_LIFETIME` seconds, so one seen on the wire cannot be replayed later. It is not bound to
the Call-ID: a B2BUA AS may start a new dialog.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

__all__ = ["ODI_LIFETIME", "ODI_PARAM", "OdiStamp", "OdiState", "uri_digest"]

#: the Route URI parameter carrying the identifier
ODI_PARAM: Final = "odi"
#: seconds a token is accepted after it was issued (Timer C is 180 s)
ODI_LIFETIME: Final = 300
_CASES: Final = {"o": "orig", "t": "term", "c": "cdiv"}


def uri_digest(uri: str) -> str:
    """A short digest of a Request-URI (did the AS change it?)."""
    return hashlib.blake2s(uri.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()


@dataclass(frozen=True, slots=True)
class OdiState:
    """Where iFC processing stood when the request was sent to an AS.

    :param case: ``"orig"``, ``"term"`` or ``"cdiv"`` (the originating services of a user whose
        terminating AS retargeted the request, TS 24.229 §5.4.3.3).
    :param priority: the priority of the iFC just executed (the next one has a higher number).
    :param served: the served user's public identity (text).
    :param uri: :func:`uri_digest` of the Request-URI the request had.
    :param issued: when the token was made (seconds on the server's clock).
    """

    case: str
    priority: int
    served: str
    uri: str
    issued: int


class OdiStamp:
    """Makes and reads ``odi`` tokens.

    :param secret: the key (random when not given: tokens then last as long as this process).
    """

    def __init__(self, secret: bytes | None = None) -> None:
        seed = secret if secret is not None else secrets.token_bytes(32)
        self._key = hashlib.sha256(b"imscore original-dialog identifier\x00" + seed).digest()

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), "sha256").hexdigest()[:20]

    def make(self, state: OdiState) -> str:
        """The token: ``<o|t|c><priority>.<issued hex>.<served, base64url>.<uri digest>.<MAC>``."""
        served = base64.urlsafe_b64encode(state.served.encode("utf-8", "surrogateescape")).decode()
        payload = f"{state.case[0]}{state.priority}.{state.issued:x}.{served.rstrip('=')}.{state.uri}"
        return f"{payload}.{self._mac(payload)}"

    def valid(self, token: str | None) -> bool:
        """Whether ``token`` carries our MAC (its age is not checked)."""
        if not token or token.count(".") != 4:
            return False
        payload, _, mac = token.rpartition(".")
        return hmac.compare_digest(mac.lower(), self._mac(payload))

    def read(self, token: str | None, now: float) -> OdiState | None:
        """The state in a token of ours issued less than :data:`ODI_LIFETIME` seconds ago, else
        ``None`` (forged, altered, expired or malformed)."""
        if token is None or not self.valid(token):
            return None
        head, issued_hex, served, digest, _ = token.split(".")
        case = _CASES.get(head[:1])
        try:
            priority = int(head[1:])
            issued = int(issued_hex, 16)
            user = base64.urlsafe_b64decode(served + "=" * (-len(served) % 4)).decode(
                "utf-8", "surrogateescape"
            )
        except (ValueError, binascii.Error):
            return None
        if case is None or not 0 <= now - issued < ODI_LIFETIME:
            return None
        return OdiState(case, priority, user, digest, issued)

    def __repr__(self) -> str:
        return "OdiStamp(<secret>)"
