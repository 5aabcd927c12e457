"""What the registrar stores: one binding per registered device of an implicit registration set."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from imscore.plugin.types import Binding
from imscore.sip import SipError

__all__ = ["FIRST_CSEQ", "FlowInfo", "StoredBinding", "feature_tags"]

#: the key in :attr:`StoredBinding.extra` holding the CSeq of the first REGISTER under the
#: binding's Call-ID (RFC 5628 ``first-cseq``): temporary GRUUs issued from it on are valid
#: (:mod:`imscore.registrar.gruu`)
FIRST_CSEQ = "first-cseq"


def feature_tags(contact: str) -> tuple[tuple[str, str | None], ...]:
    """The feature-tag parameters of a Contact value (names starting with ``+``, RFC 3840), without
    ``+sip.instance`` (an identity, not a capability)."""
    if "+" not in contact:  # no parameter can start with "+": skip the parse (most devices)
        return ()
    from imscore.sip.headers import parse_contact

    try:
        params = parse_contact(contact).params.items()
    except SipError:
        return ()
    return tuple((k, v) for k, v in params if k.startswith("+") and k.lower() != "+sip.instance")


@dataclass(frozen=True, slots=True)
class FlowInfo:
    """The flow a REGISTER arrived on (RFC 5626): where requests for the device go behind a NAT.

    :param transport: ``udp``, ``tcp`` or ``tls``.
    :param remote: the device's address as the socket saw it (after any NAT).
    :param local: our address it came in on.
    :param connection: the TCP/TLS connection id, ``None`` for UDP.
    """

    transport: str
    remote: tuple[str, int]
    local: tuple[str, int]
    connection: int | None = None


@dataclass(frozen=True, slots=True)
class StoredBinding:
    """One registered contact of an address-of-record, as the binding store keeps it.

    Times are seconds since the epoch (the registrar's clock), so a store that survives a restart
    reloads bindings with their remaining lifetime.

    :param aor: the address-of-record key the set is filed under (the AOR key of the implicit set's
        default IMPU, see :attr:`imscore.sip.SipUri.aor`).
    :param impi: the private identity that registered it.
    :param contact: the Contact value as received, URI in ``<>`` with its header parameters
        (``expires`` removed), ready to be echoed in a 200 OK.
    :param uri: the Contact URI alone.
    :param instance_id: ``+sip.instance`` without quotes (RFC 5626), ``None`` when absent.
    :param reg_id: ``reg-id`` (RFC 5626), ``None`` when absent.
    :param q: the ``q`` preference (RFC 3841), ``None`` when absent.
    :param call_id: Call-ID of the REGISTER that last wrote it (RFC 3261 §10.3 step 7).
    :param cseq: CSeq number of that REGISTER.
    :param registered_at: when the device first registered (kept across refreshes).
    :param expires_at: when the binding expires.
    :param path: the Path header values of the REGISTER (RFC 3327), in order.
    :param flow: the flow the REGISTER came on.
    :param user_agent: the REGISTER's User-Agent, if any.
    :param reachable: ``False`` once contact qualification (OPTIONS pings) marked it unreachable.
    """

    aor: str
    impi: str
    contact: str
    uri: str
    expires_at: float
    registered_at: float
    call_id: str = ""
    cseq: int = 0
    instance_id: str | None = None
    reg_id: int | None = None
    q: float | None = None
    path: tuple[str, ...] = ()
    flow: FlowInfo | None = None
    user_agent: str | None = None
    reachable: bool = True
    extra: dict[str, str] = field(default_factory=dict)

    def remaining(self, now: float) -> int:
        """Whole seconds left before it expires (0 when expired)."""
        return max(0, math.ceil(self.expires_at - now))

    def expired(self, now: float) -> bool:
        return self.expires_at <= now

    def same_device(self, other: StoredBinding) -> bool:
        """RFC 5626 §6: the same ``+sip.instance`` (and reg-id) is the same device, whatever its
        contact address; without an instance, the same contact URI is."""
        if self.instance_id is not None and other.instance_id is not None:
            return self.instance_id == other.instance_id and self.reg_id == other.reg_id
        return self.uri == other.uri

    def hook_binding(self, now: float, registered_at: float | None = None) -> Binding:
        """The plain form the binding-policy hook sees (``expires`` = seconds remaining;
        ``registered_at`` replaced when given, e.g. 0 for an incoming binding)."""
        return Binding(
            contact=self.uri,
            expires=self.remaining(now),
            q=self.q,
            instance_id=self.instance_id,
            reg_id=self.reg_id,
            call_id=self.call_id,
            cseq=self.cseq,
            registered_at=self.registered_at if registered_at is None else registered_at,
            reachable=self.reachable,
            user_agent=self.user_agent,
            feature_tags=feature_tags(self.contact),
        )

    def refreshed(self, other: StoredBinding) -> StoredBinding:
        """This device's binding updated by a new REGISTER (first registration time kept; under
        the same Call-ID the first CSeq too, so earlier temporary GRUUs stay valid)."""
        first = self.extra.get(FIRST_CSEQ)
        if first is not None and other.call_id == self.call_id and FIRST_CSEQ in other.extra:
            return replace(
                other, registered_at=self.registered_at, extra={**other.extra, FIRST_CSEQ: first}
            )
        return replace(other, registered_at=self.registered_at)
