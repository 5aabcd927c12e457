"""Who may be relayed: the proxy's relay rules, in one place (no I/O, no clock).

An in-dialog request (one with a To tag) is loose-routed by a proxy only when the proxy is part of
the dialog's route set, and an attacker can put a To tag and a Route of ours on any request. So the
proof of a dialog is a stamp: every Record-Route this proxy inserts carries ``dlg=``, a MAC of the
dialog's Call-ID and its caller's tag under a secret only this server (and its workers) knows. A
request inside that dialog brings the stamp back in its Route (or, from a strict router, in its
Request-URI) whichever party sends it: both ends keep the Call-ID, and the caller's tag is the From
tag of one direction and the To tag of the other. (A party of a real dialog can still send within
it; it cannot make a stamp for any other dialog.)

:func:`relay_verdict` decides from :class:`RelayFacts`, which the runtime gathers: an in-dialog
request is forwarded when it carries a valid stamp, comes from a trusted peer, arrives on a flow a
served subscriber registered on, or goes (with no further Route) to a device this proxy forked to;
one addressed to a served identity that proves no dialog is a 481; everything else is
``403 Relaying denied``. An out-of-dialog request with a Route set beyond us is forwarded only for a
trusted peer. Out-of-dialog requests without a further Route are the router's (originating
requests are authenticated, terminating ones go to the bindings).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

from imscore.sip import Request, SipUri, Uri

__all__ = ["DIALOG_PARAM", "DialogStamp", "RelayFacts", "RelayVerdict", "relay_verdict"]

#: the Record-Route URI parameter that carries the dialog stamp
DIALOG_PARAM: Final = "dlg"


class DialogStamp:
    """Makes and checks the ``dlg`` stamp of a dialog's Call-ID.

    :param secret: the key (random when not given; ``serve --workers`` derives one all workers share).
    """

    def __init__(self, secret: bytes | None = None) -> None:
        seed = secret if secret is not None else secrets.token_bytes(32)
        self._key = hashlib.sha256(b"imscore record-route stamp\x00" + seed).digest()

    def make(self, call_id: str, caller_tag: str | None) -> str:
        """The stamp of a dialog with this Call-ID started by the party with this From tag
        (20 hex digits: 80 bits of MAC)."""
        data = f"{call_id}\x00{caller_tag or ''}".encode("utf-8", "surrogateescape")
        return hmac.new(self._key, data, "sha256").hexdigest()[:20]

    def valid(self, stamp: str | None, request: Request) -> bool:
        """Whether ``stamp`` is this server's stamp of the dialog ``request`` is in: the dialog's
        caller is the From of requests in its direction and the To of the callee's."""
        if not stamp or len(stamp) != 20:
            return False
        stamp = stamp.lower()
        call_id = request.call_id
        return any(
            hmac.compare_digest(stamp, self.make(call_id, tag))
            for tag in (request.from_.tag, request.to.tag)
        )

    def __repr__(self) -> str:
        return "DialogStamp(<secret>)"


def stamp_of(uri: Uri | None) -> str | None:
    """The ``dlg`` parameter of one of our Route or Request-URI values, if any."""
    if not isinstance(uri, SipUri):
        return None
    return uri.params.get(DIALOG_PARAM)


@dataclass(frozen=True, slots=True)
class RelayFacts:
    """What the relay rules look at, gathered by the runtime after §16.4 route processing.

    :param in_dialog: the request has a To tag.
    :param stamped: our Route entry (or a strict router's Request-URI) carried a valid dialog stamp
        for this request's Call-ID.
    :param onward_route: Route entries remain after ours was removed (someone else is next).
    :param to_served: the Request-URI is one of ours or a public identity of a served domain.
    :param to_known_device: the Request-URI is a contact this proxy forked to (or a 2xx Contact of a
        dialog it forwarded).
    :param trusted_peer: the request came from a configured trusted peer.
    :param registered_flow: the request came on a flow a served subscriber registered on.
    """

    in_dialog: bool
    stamped: bool = False
    onward_route: bool = False
    to_served: bool = False
    to_known_device: bool = False
    trusted_peer: bool = False
    registered_flow: bool = False


@dataclass(frozen=True, slots=True)
class RelayVerdict:
    """``forward`` with what routes it (``"route"``: the next Route; ``"in-dialog"``: the
    Request-URI), ``route`` for the router's own decision, or a refusal ``status``/``reason``."""

    action: str
    status: int | None = None
    reason: str | None = None

    @property
    def refused(self) -> bool:
        return self.status is not None


FORWARD_ROUTE: Final = RelayVerdict("route")
FORWARD_URI: Final = RelayVerdict("in-dialog")
ROUTER: Final = RelayVerdict("router")
DENIED: Final = RelayVerdict("refuse", 403, "Relaying denied")
NO_DIALOG: Final = RelayVerdict("refuse", 481, "Call/Transaction Does Not Exist")


def relay_verdict(facts: RelayFacts) -> RelayVerdict:
    """The relay rules (see the module docstring)."""
    if not facts.in_dialog:
        if facts.onward_route:
            return FORWARD_ROUTE if facts.trusted_peer else DENIED
        return ROUTER
    proven = facts.stamped or facts.trusted_peer or facts.registered_flow
    if facts.onward_route:
        return FORWARD_ROUTE if proven else DENIED
    if proven:
        if facts.to_served and not facts.stamped:
            return NO_DIALOG  # a dialog with a served identity is always record-routed by us
        return FORWARD_URI
    if facts.to_known_device:
        return FORWARD_URI  # to one of our own devices: a request we would deliver anyway
    if facts.to_served:
        return NO_DIALOG
    return DENIED


def strict_route_fixup(request: Request, is_ours: bool) -> str | None:
    """RFC 3261 §16.4: a request from a strict router arrives with our Record-Route value as its
    Request-URI; the real Request-URI is then the last Route entry, which is moved back. Returns the
    stamp the Request-URI carried (``None`` when the request was not strict-routed to us)."""
    if not is_ours or not request.route:
        return None
    stamp = stamp_of(request.uri)
    if stamp is None:
        return None
    routes = request.headers.values("Route")
    last = request.route[-1].uri
    request.headers.set_list("Route", routes[:-1])
    request.uri = last
    return stamp
