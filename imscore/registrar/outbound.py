"""SIP Outbound (RFC 5626) as the registrar and the proxy use it, without the edge proxy role.

A REGISTER uses outbound when a Contact has ``+sip.instance`` and ``reg-id`` and its Supported
lists ``outbound`` (§6). When it came straight to us (no Path: we are the first hop, the "edge"),
the flow it arrived on is the device's flow for that reg-id: the 200 OK says ``Require: outbound``
and ``Flow-Timer`` (§4.4.1, §6), and requests for the device go down that flow only, never to the
Contact address; when no flow of the instance is left, the branch fails with ``430 Flow Failed``
(§5.3). Behind a Path (a P-CSCF or another edge proxy) the flow is the edge's business: the
registration is kept as a plain one when the edge proxy does outbound (``ob`` on its Path), and
refused with ``439 First Hop Lacks Outbound Support`` when it does not (§6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from imscore.sip import Contact, Request, SipUri

from .model import FlowInfo, StoredBinding

__all__ = [
    "FLOW_TIMER_STREAM",
    "FLOW_TIMER_UDP",
    "OUTBOUND_MARK",
    "FlowCursor",
    "FlowSet",
    "first_hop_lacks_outbound",
    "flow_set",
    "flow_timer",
    "is_outbound",
    "through_outbound_edge",
    "uses_outbound",
]

#: ``Flow-Timer`` (seconds) for a flow over UDP: under the 30 s many NATs keep a UDP mapping; the
#: UA sends a STUN keep-alive every 80-100 % of it (RFC 5626 §4.4.1)
FLOW_TIMER_UDP: Final = 29
#: ``Flow-Timer`` for a TCP or TLS flow (a CRLF ping, RFC 5626 §4.4.1 suggests 95-120 s)
FLOW_TIMER_STREAM: Final = 120
#: the key in :attr:`StoredBinding.extra` that marks a binding registered with outbound
OUTBOUND_MARK: Final = "outbound"


def uses_outbound(request: Request, contact: Contact) -> bool:
    """RFC 5626 §6: this Contact of a REGISTER that came without a Path registers a flow."""
    if contact.instance is None or contact.reg_id is None:
        return False
    if "outbound" not in [t.lower() for t in request.supported]:
        return False
    return "Path" not in request.headers


def _edge_hop(request: Request, contact: Contact) -> SipUri | bool | None:
    """The URI of the Path the first hop added when this Contact asks for outbound through an
    edge proxy; ``False`` when it does not ask for outbound or came without a Path; ``None`` when
    that Path is not a SIP URI."""
    if contact.instance is None or contact.reg_id is None:
        return False
    if "outbound" not in [t.lower() for t in request.supported]:
        return False
    hops = request.path
    if not hops:
        return False  # no Path: we are the first hop, and we do outbound
    uri = hops[-1].uri
    return uri if isinstance(uri, SipUri) else None


def through_outbound_edge(request: Request, contact: Contact) -> bool:
    """This Contact registers a flow kept by an edge proxy that does outbound (``ob`` on the Path
    it added, RFC 5626 §5.1): the 200 OK says ``Require: outbound``; requests go through the Path."""
    hop = _edge_hop(request, contact)
    return isinstance(hop, SipUri) and "ob" in hop.params


def first_hop_lacks_outbound(request: Request, contact: Contact) -> bool:
    """RFC 5626 §6, §11.6: this Contact asks for outbound (``+sip.instance``, ``reg-id``,
    ``Supported: outbound``) but the REGISTER came through an edge proxy that does not do it:
    the Path value the first hop added (the last one: each proxy puts its own on top) has no
    ``ob`` parameter. The registrar answers ``439 First Hop Lacks Outbound Support``."""
    hop = _edge_hop(request, contact)
    return hop is None or (isinstance(hop, SipUri) and "ob" not in hop.params)


def flow_timer(transport: str) -> int:
    """The ``Flow-Timer`` we ask for on a flow of this transport."""
    return FLOW_TIMER_UDP if transport.lower() == "udp" else FLOW_TIMER_STREAM


def is_outbound(binding: StoredBinding) -> bool:
    """The binding was registered with outbound: requests for it are bound to its flow."""
    return (
        binding.extra.get(OUTBOUND_MARK) == "1"
        and binding.flow is not None
        and binding.instance_id is not None
        and binding.reg_id is not None
    )


@dataclass(frozen=True, slots=True)
class FlowSet:
    """The flows of one outbound instance, in the order to try them (a branch's destination).

    :param instance_id: the ``+sip.instance`` they belong to.
    :param flows: one flow per reg-id, the most recently registered first; a flow that is gone
        (connection closed) is skipped, and when none is left the branch fails with ``430``.
    """

    instance_id: str
    flows: tuple[FlowInfo, ...]


@dataclass(slots=True)
class FlowCursor:
    """The flow of a :class:`FlowSet` a branch was last sent on (its ``index``): an attempt that
    failed (a transport error, no answer before Timer B/F, a 503) moves the branch to the next
    flow; when every flow failed the branch gets ``430 Flow Failed`` (RFC 5626 §5.3)."""

    flows: tuple[FlowInfo, ...]
    index: int = 0

    def can_move(self) -> bool:
        """Another attempt is due: a flow after this one, or the 430 that ends the branch."""
        return self.index < len(self.flows)


def flow_set(bindings: Sequence[StoredBinding]) -> FlowSet | None:
    """The usable flows of these outbound bindings of one instance (UDP flows that contact
    qualification marked unreachable are gone), newest registration first (possibly none left:
    the branch then fails with 430); ``None`` when the bindings have no instance."""
    usable = [
        b
        for b in bindings
        if is_outbound(b) and (b.reachable or (b.flow is not None and b.flow.connection is not None))
    ]
    usable.sort(key=lambda b: b.registered_at, reverse=True)
    flows = tuple(b.flow for b in usable if b.flow is not None)
    instance = bindings[0].instance_id if bindings else None
    return FlowSet(instance, flows) if instance is not None else None
