"""Plain data exchanged through imscore's hooks.

These are deliberately small placeholders: the registrar, proxy and HSS-lite layers will grow richer
types, and these are the shapes the decision hooks agree on until then. Everything here is immutable
plain data, so a decision hook can only answer, never reach into a store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .errors import PluginError

P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class Binding:
    """One registered contact of an address-of-record.

    :param contact: the Contact URI, as text.
    :param expires: seconds the binding lives; ``0`` in an incoming REGISTER asks for its removal.
    :param q: the Contact's ``q`` preference (RFC 3261 §10.2.1.2), ``None`` when absent.
    :param instance_id: the ``+sip.instance`` value (RFC 5626), ``None`` when absent.
    :param reg_id: the ``reg-id`` value (RFC 5626), ``None`` when absent.
    :param call_id: Call-ID of the REGISTER that created or last refreshed the binding.
    :param cseq: CSeq number of that REGISTER.
    :param registered_at: when the device first registered (seconds on the registrar's clock; 0 for
        an incoming binding).
    :param reachable: ``False`` when contact qualification marked the device unreachable.
    :param user_agent: the User-Agent of the REGISTER that wrote it, ``None`` when absent.
    :param feature_tags: the Contact's feature-tag parameters (RFC 3840, e.g. ``+g.3gpp.icsi-ref``,
        ``+sip.instance`` excluded), as ``(name, value)`` pairs with values as written.
    """

    contact: str
    expires: int
    q: float | None = None
    instance_id: str | None = None
    reg_id: int | None = None
    call_id: str = ""
    cseq: int = 0
    registered_at: float = 0.0
    reachable: bool = True
    user_agent: str | None = None
    feature_tags: tuple[tuple[str, str | None], ...] = ()

    def same_binding(self, other: Binding) -> bool:
        """True when ``other`` updates this binding: same instance and reg-id if both carry an
        instance (RFC 5626 §6), otherwise the same contact URI text."""
        if self.instance_id is not None and other.instance_id is not None:
            return self.instance_id == other.instance_id and self.reg_id == other.reg_id
        return self.contact == other.contact


@dataclass(frozen=True, slots=True)
class BindingDecision:
    """What a binding policy decided for one REGISTER.

    :param bindings: the complete set of bindings of the address-of-record after the REGISTER.
    :param removed: existing bindings the policy dropped (expired by request or displaced), so the
        registrar can tell reg-event subscribers (RFC 3680).
    :param reject_status: when not ``None``, the REGISTER is refused with this status and nothing
        changes; ``bindings`` then repeats the existing set.
    :param reject_reason: the reason phrase to send with ``reject_status``.
    """

    bindings: tuple[Binding, ...]
    removed: tuple[Binding, ...] = ()
    reject_status: int | None = None
    reject_reason: str = ""


@dataclass(frozen=True, slots=True)
class BranchGroup:
    """Contacts tried together as parallel branches of a forked request.

    :param targets: the contact URIs forked to at once.
    :param timeout: seconds to wait for a final answer before moving to the next group; ``None``
        waits until the transaction itself times out.
    """

    targets: tuple[str, ...]
    timeout: float | None = None


#: An ordered fork plan: groups are tried one after another, branches within a group in parallel.
ForkPlan = tuple[BranchGroup, ...]


@dataclass(frozen=True, slots=True)
class Subscriber:
    """A subscriber record as the HSS-lite subscriber store hands it over.

    :param impi: the private identity (TS 23.003 §13.3).
    :param implicit_sets: the implicit registration sets: each a tuple of public identities (IMPUs)
        registered together (TS 24.229 §5.4.1.1).
    :param auth_schemes: names of the authentication schemes allowed for this IMPI, preferred first;
        the names key the auth-scheme registry.
    """

    impi: str
    implicit_sets: tuple[tuple[str, ...], ...] = ()
    auth_schemes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ResolvedIdentity:
    """The owner of a public identity and the implicit registration set it belongs to."""

    subscriber: Subscriber
    implicit_set: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where to send a request next.

    :param uri: the URI the hop was derived from (a Route entry, Path entry or the Request-URI).
    :param host: host name or address literal.
    :param port: port, ``None`` to let RFC 3263 resolution choose.
    :param transport: ``"udp"``, ``"tcp"``, ``"tls"`` or ``"sctp"``; ``None`` to let resolution choose.
    """

    uri: str
    host: str
    port: int | None = None
    transport: str | None = None


@dataclass
class ProviderRegistry(Generic[P]):
    """Named providers of one kind (transports, binding stores, subscriber stores, auth schemes).

    A registry hook receives one of these and calls :meth:`add` for each provider its plugin offers.
    A provider is whatever the consuming layer expects (an async store object, a factory, a class);
    it is where the I/O lives, since hooks themselves cannot await.

    :param kind: what is registered, used in error messages (``"transport"``, ``"binding store"`` …).
    """

    kind: str
    _providers: dict[str, P] = field(default_factory=dict, repr=False)

    def add(self, name: str, provider: P) -> None:
        """Offer ``provider`` under ``name``; a second provider under the same name is an error."""
        if name in self._providers:
            raise PluginError(f"{self.kind} {name!r} is registered twice")
        self._providers[name] = provider

    def get(self, name: str) -> P:
        """The provider registered as ``name``; :class:`PluginError` listing the known names if none."""
        try:
            return self._providers[name]
        except KeyError:
            known = ", ".join(sorted(self._providers)) or "none"
            raise PluginError(f"no {self.kind} named {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._providers)

    def __contains__(self, name: object) -> bool:
        return name in self._providers

    def __iter__(self) -> Iterator[str]:
        return iter(self._providers)

    def __len__(self) -> int:
        return len(self._providers)
