"""What the registrar stores: one binding per registered device of an implicit registration set."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import cast

from imscore.plugin.types import Binding
from imscore.sip import SipError

__all__ = [
    "FIRST_CSEQ",
    "FlowInfo",
    "StoredBinding",
    "binding_with",
    "feature_tags",
    "new_binding",
    "new_flow",
]

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
        draft = _BindingDraft()  # Binding(contact=self.uri, ...), built as new_binding builds
        draft.contact = self.uri
        draft.expires = self.remaining(now)
        draft.q = self.q
        draft.instance_id = self.instance_id
        draft.reg_id = self.reg_id
        draft.call_id = self.call_id
        draft.cseq = self.cseq
        draft.registered_at = self.registered_at if registered_at is None else registered_at
        draft.reachable = self.reachable
        draft.user_agent = self.user_agent
        draft.feature_tags = feature_tags(self.contact)
        draft.__class__ = Binding  # type: ignore[assignment]
        return cast(Binding, draft)

    def refreshed(self, other: StoredBinding) -> StoredBinding:
        """This device's binding updated by a new REGISTER (first registration time kept; under
        the same Call-ID the first CSeq too, so earlier temporary GRUUs stay valid)."""
        first = self.extra.get(FIRST_CSEQ)
        extra = other.extra
        if first is not None and other.call_id == self.call_id and FIRST_CSEQ in extra:
            extra = {**extra, FIRST_CSEQ: first}
        return binding_with(other, other.aor, self.registered_at, other.flow, other.user_agent, extra)


# -- building without the dataclass __init__ ------------------------------------------------------
# A frozen dataclass's __init__ stores each field with object.__setattr__ (about 1,500 instructions
# a field under CPython 3.11: StoredBinding(...) costs some 31,000, dataclasses.replace of one some
# 52,000). A draft class with the same __slots__ and no frozen guard takes plain attribute stores
# (a few dozen instructions each); assigning its __class__ then makes it the frozen class itself.
# CPython allows that between two classes whose instances have the same layout (same base, same
# slots, no __dict__), checked here at import: the object is then the one the __init__ would
# have made, field for field (tests/test_registrar_model_build.py).


class _StoredDraft:
    """A :class:`StoredBinding` being built (see above)."""

    __slots__ = StoredBinding.__slots__
    aor: str
    impi: str
    contact: str
    uri: str
    expires_at: float
    registered_at: float
    call_id: str
    cseq: int
    instance_id: str | None
    reg_id: int | None
    q: float | None
    path: tuple[str, ...]
    flow: FlowInfo | None
    user_agent: str | None
    reachable: bool
    extra: dict[str, str]


class _BindingDraft:
    """A :class:`imscore.plugin.types.Binding` being built (see above)."""

    __slots__ = Binding.__slots__
    contact: str
    expires: int
    q: float | None
    instance_id: str | None
    reg_id: int | None
    call_id: str
    cseq: int
    registered_at: float
    reachable: bool
    user_agent: str | None
    feature_tags: tuple[tuple[str, str | None], ...]


class _FlowDraft:
    """A :class:`FlowInfo` being built (see above)."""

    __slots__ = FlowInfo.__slots__
    transport: str
    remote: tuple[str, int]
    local: tuple[str, int]
    connection: int | None


def _check_drafts() -> None:
    """Fail at import, not on the first REGISTER, when a draft cannot become its class (a field
    added or renamed is a slot of both; a class that lost ``slots=True`` has a ``__dict__``)."""
    drafts = ((_StoredDraft, StoredBinding), (_BindingDraft, Binding), (_FlowDraft, FlowInfo))
    for draft, frozen in drafts:
        names = tuple(f.name for f in fields(frozen))
        if draft.__slots__ != names:
            raise TypeError(f"{draft.__name__} does not match {frozen.__name__}")
        draft().__class__ = frozen  # type: ignore[assignment]  # TypeError when the layouts differ


def new_binding(
    aor: str,
    impi: str,
    contact: str,
    uri: str,
    expires_at: float,
    registered_at: float,
    call_id: str,
    cseq: int,
    instance_id: str | None,
    reg_id: int | None,
    q: float | None,
    path: tuple[str, ...],
    flow: FlowInfo | None,
    user_agent: str | None,
    reachable: bool,
    extra: dict[str, str],
) -> StoredBinding:
    """``StoredBinding(aor, impi, ...)`` with every field given, in the order of the class: the same
    object, built without the dataclass's ``__init__`` (about 4,000 instructions, not 31,000)."""
    draft = _StoredDraft()
    draft.aor = aor
    draft.impi = impi
    draft.contact = contact
    draft.uri = uri
    draft.expires_at = expires_at
    draft.registered_at = registered_at
    draft.call_id = call_id
    draft.cseq = cseq
    draft.instance_id = instance_id
    draft.reg_id = reg_id
    draft.q = q
    draft.path = path
    draft.flow = flow
    draft.user_agent = user_agent
    draft.reachable = reachable
    draft.extra = extra
    draft.__class__ = StoredBinding  # type: ignore[assignment]
    return cast(StoredBinding, draft)


def new_flow(
    transport: str, remote: tuple[str, int], local: tuple[str, int], connection: int | None
) -> FlowInfo:
    """``FlowInfo(transport, remote, local, connection)``, built as :func:`new_binding` builds."""
    draft = _FlowDraft()
    draft.transport = transport
    draft.remote = remote
    draft.local = local
    draft.connection = connection
    draft.__class__ = FlowInfo  # type: ignore[assignment]
    return cast(FlowInfo, draft)


def binding_with(
    binding: StoredBinding,
    aor: str,
    registered_at: float,
    flow: FlowInfo | None,
    user_agent: str | None,
    extra: dict[str, str],
) -> StoredBinding:
    """``dataclasses.replace(binding, aor=aor, registered_at=..., flow=..., user_agent=...,
    extra=extra)``, built as :func:`new_binding` builds (about 4,000 instructions, not 52,000): the
    copies the stores make and a refreshed binding."""
    b = binding
    return new_binding(
        aor, b.impi, b.contact, b.uri, b.expires_at, registered_at, b.call_id, b.cseq,
        b.instance_id, b.reg_id, b.q, b.path, flow, user_agent, b.reachable, extra,
    )  # fmt: skip


_check_drafts()
