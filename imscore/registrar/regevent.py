"""The registration event package (RFC 3680) as the S-CSCF serves it (3GPP TS 24.229 §5.4.2.1.2).

A UE subscribes to ``reg`` for one of its public identities; the subscription covers the whole
implicit registration set. Every NOTIFY carries the full state of the set as
``application/reginfo+xml`` with a version that grows by one per NOTIFY; the first comes right after
the 200 to the SUBSCRIBE, then one on every change of the set's bindings, and a final one with
``Subscription-State: terminated`` when the subscription ends (it expired, the UE unsubscribed, or
the network de-registered the set).

No I/O and no clock: methods take ``now`` and return the NOTIFY requests to send with the flow to
send each on.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Final
from xml.sax.saxutils import escape, quoteattr

from imscore.sip import Request, SipError, SipUri, Uri, parse_uri

from .gruu import Gruus, first_cseq, public_gruu
from .model import FlowInfo, StoredBinding

__all__ = ["CONTENT_TYPE", "RegEventService", "Subscription", "reginfo_xml"]

CONTENT_TYPE: Final = "application/reginfo+xml"
NAMESPACE: Final = "urn:ietf:params:xml:ns:reginfo"
#: the GRUU extension of reginfo (RFC 5628 §3)
GRUU_NAMESPACE: Final = "urn:ietf:params:xml:ns:gruuinfo"
DEFAULT_EXPIRES: Final = 3600
MAX_EXPIRES: Final = 7200
MIN_EXPIRES: Final = 60


@dataclass(frozen=True)
class ContactState:
    """One ``<contact>`` element: its id, state (active/terminated), event and remaining expires."""

    id: str
    uri: str
    state: str
    event: str
    expires: int
    #: the binding's ``+sip.instance`` (its public GRUU is made per registration's AOR)
    instance: str | None = None
    #: the latest temporary GRUU and the CSeq it counts from (RFC 5628 ``first-cseq``)
    temp_gruu: str | None = None
    first_cseq: int | None = None


def reginfo_xml(
    version: int,
    registrations: Sequence[tuple[str, str, Sequence[ContactState]]],
) -> bytes:
    """A full-state reginfo document (RFC 3680 §5.3): ``(aor, state, contacts)`` per registration;
    an active contact with an instance carries its ``gr:pub-gruu`` for that AOR (a SIP one) and
    its latest ``gr:temp-gruu`` (RFC 5628 §3)."""
    gruus = any(c.instance is not None for _, _, contacts in registrations for c in contacts)
    namespaces = f' xmlns:gr="{GRUU_NAMESPACE}"' if gruus else ""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<reginfo xmlns="{NAMESPACE}"{namespaces} version="{version}" state="full">',
    ]
    for index, (aor, state, contacts) in enumerate(registrations):
        lines.append(f'  <registration aor={quoteattr(aor)} id="r{index}" state="{state}">')
        for contact in contacts:
            expires = f' expires="{contact.expires}"' if contact.state == "active" else ""
            lines.append(
                f'    <contact id={quoteattr(contact.id)} state="{contact.state}" '
                f'event="{contact.event}"{expires}>'
            )
            lines.append(f"      <uri>{escape(contact.uri)}</uri>")
            lines.extend(_gruu_lines(aor, contact))
            lines.append("    </contact>")
        lines.append("  </registration>")
    lines.append("</reginfo>")
    return ("\n".join(lines) + "\n").encode()


def _gruu_lines(aor: str, contact: ContactState) -> list[str]:
    if contact.instance is None or contact.state != "active":
        return []
    out: list[str] = []
    try:
        uri = parse_uri(aor)
    except SipError:
        uri = None
    if isinstance(uri, SipUri):
        out.append(f"      <gr:pub-gruu uri={quoteattr(public_gruu(uri, contact.instance))}/>")
    if contact.temp_gruu is not None:
        first = "" if contact.first_cseq is None else f' first-cseq="{contact.first_cseq}"'
        out.append(f"      <gr:temp-gruu uri={quoteattr(contact.temp_gruu)}{first}/>")
    return out


@dataclass
class Subscription:
    """One reg-event subscription: its dialog and what it watches."""

    aor: str  # the implicit set's binding key
    impus: tuple[str, ...]  # the set's public identities (the registrations reported)
    call_id: str
    remote_uri: str  # the subscriber (From of the SUBSCRIBE)
    remote_tag: str
    local_uri: str  # the watched IMPU (To of the SUBSCRIBE)
    local_tag: str
    remote_target: str  # the SUBSCRIBE's Contact
    local_contact: str
    flow: FlowInfo
    expires_at: float
    cseq: int = 0
    version: int = 0
    known: dict[str, StoredBinding] = field(default_factory=dict)  # contact id -> binding
    contact_ids: dict[str, str] = field(default_factory=dict)  # binding device key -> contact id

    @property
    def key(self) -> tuple[str, str]:
        return (self.call_id, self.remote_tag)


def _device_key(binding: StoredBinding) -> str:
    if binding.instance_id is not None:
        return f"{binding.instance_id}|{binding.reg_id}"
    return binding.uri


def same_sender(registered: FlowInfo, flow: FlowInfo) -> bool:
    """Whether ``flow`` comes from the element that sent a REGISTER on ``registered``: over UDP
    the same address and port (an edge proxy sends from its listening socket), over TCP, TLS or
    SCTP the same host (a proxy opens connections from ports of its own choosing)."""
    if flow.transport == "udp":
        return registered.transport == "udp" and registered.remote == flow.remote
    return registered.remote[0] == flow.remote[0]


class RegEventService:
    """The reg-event subscriptions of one registrar."""

    def __init__(self, max_per_set: int = 16, max_per_watcher: int = 8) -> None:
        self.subscriptions: dict[tuple[str, str], Subscription] = {}
        self._ids = itertools.count(1)
        #: at most this many subscriptions watch one implicit set (a SUBSCRIBE past it gets 403)
        self.max_per_set = max_per_set
        #: at most this many of them from one source address (one device cannot take them all)
        self.max_per_watcher = max_per_watcher
        #: new subscriptions refused by those limits
        self.refused = 0
        #: subscriptions ended because their NOTIFY failed (timeout, 481 …: RFC 6665 §4.2.2)
        self.dropped = 0
        #: makes the temporary GRUUs the NOTIFYs carry (the registrar's; ``None``: no temp-gruu)
        self.gruus: Gruus | None = None

    def _full(self, aor: str, flow: FlowInfo) -> str | None:
        """Why a new subscription to the set filed under ``aor`` from ``flow`` is refused, if it is."""
        per_set = per_watcher = 0
        for subscription in self.subscriptions.values():
            if subscription.aor == aor:
                per_set += 1
                if subscription.flow.remote[0] == flow.remote[0]:
                    per_watcher += 1
        if per_set >= self.max_per_set:
            return f"Too many reg-event subscriptions for this user (at most {self.max_per_set})"
        if per_watcher >= self.max_per_watcher:
            return f"Too many reg-event subscriptions from this address (at most {self.max_per_watcher})"
        return None

    def notify_failed(self, notify: Request, status: int) -> bool:
        """The NOTIFY of a subscription got ``status`` (0: no answer, or the flow failed). A timeout,
        a 481 or another failure other than an authentication challenge ends the subscription
        (RFC 6665 §4.2.2) without a further NOTIFY; returns whether one ended."""
        if 200 <= status < 300 or status in (401, 407):
            return False
        key = (notify.call_id, notify.to.tag or "")
        if self.subscriptions.pop(key, None) is None:
            return False
        self.dropped += 1
        return True

    # -- SUBSCRIBE ---------------------------------------------------------------------------------
    def authorised(
        self,
        flow: FlowInfo,
        bindings: Sequence[StoredBinding],
        *,
        own: bool = True,
        trusted: bool = False,
        servers: Collection[str] = (),
    ) -> bool:
        """Whether a reg-event SUBSCRIBE arriving on ``flow`` may watch the set whose live
        bindings are ``bindings``. The watchers of TS 24.229 §5.4.2.1.2:

        - **the UE** (``own``: its From is an IMPU of the subscriber, which the registrar checks
          first through ``ims_identity_resolve``) from the flow of one of the set's registered
          devices — its own flow, or the flow of the edge proxy (P-CSCF) it registered through;
        - **the P-CSCF** the set registered through, whatever its From (its own SIP URI, §5.2.3):
          the request comes from the sender of a REGISTER with a Path (RFC 3327) that made one of
          the set's bindings (:func:`same_sender`);
        - **an application server** of the subscriber's initial filter criteria (after its
          third-party registration): the request comes from an AS's address (``servers``: the IP
          addresses its URIs name, or that DNS gives for their host names, which the registrar
          resolves);
        - any watcher from a ``trusted`` peer (the profile's ``proxy.trusted_peers``).
        """
        if trusted:
            return True
        remote = flow.remote
        for binding in bindings:
            seen = binding.flow
            if seen is None:
                continue
            if own and seen.remote == remote:
                return True
            if binding.path and same_sender(seen, flow):
                return True
        return remote[0].strip("[]") in servers

    def subscribe(
        self,
        request: Request,
        flow: FlowInfo,
        impus: Sequence[Uri],
        aor: str,
        bindings: Sequence[StoredBinding],
        local_contact: str,
        now: float,
    ) -> tuple[int, list[tuple[str, object]], str, Request | None]:
        """Create, refresh or end (``Expires: 0``) a subscription.

        Returns the status for the SUBSCRIBE, extra response headers, the To tag to answer with, and
        the NOTIFY to send (``None`` when none is due).
        """
        requested = request.expires
        expires = DEFAULT_EXPIRES if requested is None else min(requested, MAX_EXPIRES)
        if 0 < expires < MIN_EXPIRES:
            return 423, [("Min-Expires", MIN_EXPIRES)], secrets.token_hex(6), None
        remote_tag = request.from_.tag or ""
        key = (request.call_id, remote_tag)
        existing = self.subscriptions.get(key)
        if existing is None and request.to.tag:
            return 481, [], request.to.tag, None  # a refresh of a subscription we do not know
        contacts = request.contacts
        if existing is None:
            if not contacts:
                return 400, [], secrets.token_hex(6), None
            # (a fetch, Expires: 0, keeps no subscription: RFC 6665 §4.4.3)
            if expires != 0 and (why := self._full(aor, flow)) is not None:
                self.refused += 1
                return 403, [("Reason", f'SIP;cause=403;text="{why}"')], secrets.token_hex(6), None
            existing = Subscription(
                aor=aor,
                impus=tuple(str(u) for u in impus),
                call_id=request.call_id,
                remote_uri=str(request.from_.uri),
                remote_tag=remote_tag,
                local_uri=str(request.to.uri),
                local_tag=secrets.token_hex(6),
                remote_target=str(contacts[0].uri),
                local_contact=local_contact,
                flow=flow,
                expires_at=now + expires,
            )
            self.subscriptions[key] = existing
        else:
            existing.expires_at = now + expires
            existing.flow = flow
            if contacts:
                existing.remote_target = str(contacts[0].uri)
        headers: list[tuple[str, object]] = [("Expires", expires), ("Contact", local_contact)]
        if expires == 0:
            del self.subscriptions[key]
            notify = self._notify(existing, bindings, now, terminated="timeout")
        else:
            notify = self._notify(existing, bindings, now)
        return 200, headers, existing.local_tag, notify

    # -- changes -----------------------------------------------------------------------------------
    def watches(self, aor: str) -> bool:
        """Whether any subscription here watches the set filed under ``aor``."""
        return any(s.aor == aor for s in self.subscriptions.values())

    def changed(
        self, aor: str, bindings: Sequence[StoredBinding], now: float, *, deregistered: bool = False
    ) -> list[tuple[Request, FlowInfo]]:
        """The set filed under ``aor`` changed: a NOTIFY per subscription watching it. When the set
        has no binding left after a de-registration, the subscriptions end (RFC 3680 §3.2)."""
        out: list[tuple[Request, FlowInfo]] = []
        for key, subscription in list(self.subscriptions.items()):
            if subscription.aor != aor:
                continue
            if deregistered and not bindings:
                del self.subscriptions[key]
                out.append(
                    (
                        self._notify(subscription, bindings, now, terminated="deactivated"),
                        subscription.flow,
                    )
                )
            else:
                out.append((self._notify(subscription, bindings, now), subscription.flow))
        return out

    def network_terminated(
        self, aor: str, bindings: Sequence[StoredBinding] | None, now: float, event: str
    ) -> list[tuple[Request, FlowInfo]]:
        """The network ended the registration of the set filed under ``aor`` (an HSS's RTR,
        TS 24.229 §5.4.1.5): each subscription watching it gets a final NOTIFY in which every
        contact, the set's ``bindings`` as they were, is ``terminated`` with ``event``
        (``rejected``, or ``deactivated`` when the UE should register again, RFC 3680 §5.1), and
        ends with that reason. ``bindings`` ``None`` (the news of another process, whose store
        holds nothing any more): each subscription's contacts as it was last told them, those
        past their time ``expired`` as they would be where the RTR arrived."""
        out: list[tuple[Request, FlowInfo]] = []
        for key, subscription in list(self.subscriptions.items()):
            if subscription.aor == aor:
                del self.subscriptions[key]
                told = bindings
                if told is None:
                    told = [b for b in subscription.known.values() if not b.expired(now)]
                final = self._notify(subscription, told, now, terminated=event)
                out.append((final, subscription.flow))
        return out

    def expire(self, now: float) -> list[tuple[Request, FlowInfo]]:
        """Subscriptions whose time is up end with a final NOTIFY (reason ``timeout``)."""
        out: list[tuple[Request, FlowInfo]] = []
        for key, subscription in list(self.subscriptions.items()):
            if subscription.expires_at <= now:
                del self.subscriptions[key]
                final = self._notify(
                    subscription, list(subscription.known.values()), now, terminated="timeout"
                )
                out.append((final, subscription.flow))
        return out

    # -- NOTIFY ------------------------------------------------------------------------------------
    def _states(
        self, subscription: Subscription, bindings: Sequence[StoredBinding], now: float
    ) -> list[ContactState]:
        states: list[ContactState] = []
        seen: set[str] = set()
        for binding in bindings:
            device = _device_key(binding)
            contact_id = subscription.contact_ids.get(device)
            if contact_id is None:
                contact_id = subscription.contact_ids[device] = f"c{next(self._ids)}"
                event = "registered"
            else:
                old = subscription.known.get(contact_id)
                if old is None or old.expires_at == binding.expires_at:
                    event = "registered"
                elif binding.expires_at > old.expires_at:
                    event = "refreshed"
                else:
                    event = "shortened"
            seen.add(contact_id)
            subscription.known[contact_id] = binding
            temp = None if self.gruus is None else self.gruus.temporary(binding)
            states.append(
                ContactState(
                    contact_id,
                    binding.uri,
                    "active",
                    event,
                    binding.remaining(now),
                    binding.instance_id,
                    temp,
                    None if temp is None else first_cseq(binding),
                )
            )
        for contact_id, old in list(subscription.known.items()):
            if contact_id not in seen:
                event = "expired" if old.expires_at <= now else "unregistered"
                states.append(ContactState(contact_id, old.uri, "terminated", event, 0))
                del subscription.known[contact_id]
        return states

    def _notify(
        self,
        subscription: Subscription,
        bindings: Sequence[StoredBinding],
        now: float,
        *,
        terminated: str | None = None,
    ) -> Request:
        states = self._states(subscription, bindings, now)
        if terminated is not None:
            states = [
                s if s.state == "terminated" else ContactState(s.id, s.uri, "terminated", terminated, 0)
                for s in states
            ]
        active = any(s.state == "active" for s in states)
        registration_state = "active" if active else ("terminated" if terminated or states else "init")
        body = reginfo_xml(
            subscription.version,
            [(impu, registration_state, states) for impu in subscription.impus],
        )
        subscription.version += 1
        subscription.cseq += 1
        remaining = max(0, int(subscription.expires_at - now))
        state = (
            f"terminated;reason={terminated}"
            if terminated is not None
            else f"active;expires={remaining}"
        )
        host, port = subscription.flow.local
        transport = subscription.flow.transport.upper()
        sent_by = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return Request(
            "NOTIFY",
            subscription.remote_target,
            [
                ("Via", f"SIP/2.0/{transport} {sent_by};branch=z9hG4bK{secrets.token_hex(10)};rport"),
                ("Max-Forwards", 70),
                ("From", f"<{subscription.local_uri}>;tag={subscription.local_tag}"),
                ("To", f"<{subscription.remote_uri}>;tag={subscription.remote_tag}"),
                ("Call-ID", subscription.call_id),
                ("CSeq", f"{subscription.cseq} NOTIFY"),
                ("Contact", subscription.local_contact),
                ("Event", "reg"),
                ("Subscription-State", state),
                ("Content-Type", CONTENT_TYPE),
            ],
            body,
        )
