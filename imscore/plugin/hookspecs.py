"""Every hook imscore calls. This module is the single source of hook specifications.

Conventions (as pytest and tox do it):

* names are ``ims_<area>_<verb>``;
* *registry* hooks are called on every plugin: each may add providers to the registry it is given;
* *decision* hooks are ``firstresult``: plugins are asked in order (``tryfirst`` plugins, then the
  others, newest registration first, then the ``trylast`` builtin defaults) and the call stops at
  the first non-``None`` result; ``None`` means "no opinion, ask the next plugin";
* every hook is synchronous. pluggy cannot await: a hook implementation written ``async def`` is
  refused when the plugin is registered, and a coroutine returned at call time is an error. Work
  that needs I/O belongs in a provider object handed over by a registry hook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pluggy

from imscore.ifc.model import Ifc, IfcFacts
from imscore.sip import Request, Uri

from .types import (
    Binding,
    BindingDecision,
    ForkPlan,
    NextHop,
    ProviderRegistry,
    ResolvedIdentity,
    Subscriber,
)

#: Marks a function as an imscore hook specification (used only in this module).
hookspec = pluggy.HookspecMarker("imscore")


# --- registry hooks: hand providers (the things that do I/O) to the core -------------------------


@hookspec
def ims_register_transports(registry: ProviderRegistry[Any]) -> None:
    """Offer transport providers (UDP, TCP, TLS, SCTP …).

    Fires once while the server is assembled, before any transport starts; every plugin is called.

    :param registry: the transport registry; call ``registry.add(name, provider)`` once per transport
        this plugin offers. A profile later picks transports by these names. The provider follows
        :class:`imscore.transport.TransportProvider`; ``udp``, ``tcp`` and ``tls`` are built in and
        cannot be offered, and a name offered by two plugins stops start-up.
    """


@hookspec
def ims_register_binding_stores(registry: ProviderRegistry[Any]) -> None:
    """Offer binding store providers (memory, SQLite, Redis …) keeping registrations.

    Fires once while the server is assembled; every plugin is called.

    :param registry: the binding store registry; call ``registry.add(name, provider)`` per store.
    """


@hookspec
def ims_register_subscriber_stores(registry: ProviderRegistry[Any]) -> None:
    """Offer subscriber store providers (the HSS-lite holding IMPIs, IMPUs and credentials).

    Fires once while the server is assembled; every plugin is called.

    :param registry: the subscriber store registry; call ``registry.add(name, provider)`` per store.
    """


@hookspec
def ims_register_auth_schemes(registry: ProviderRegistry[Any]) -> None:
    """Offer authentication scheme providers (Digest MD5/SHA-256, Digest-AKAv1/v2 …).

    Fires once while the server is assembled; every plugin is called.

    :param registry: the auth scheme registry; call ``registry.add(name, provider)`` per scheme.
        The names are those listed in :attr:`Subscriber.auth_schemes`.
    """


@hookspec
def ims_policy_names() -> Mapping[str, Sequence[str]] | None:
    """Name the policies this plugin implements, so profiles may select them.

    Fires when a profile is validated (``imscore profile check``, ``imscore serve``); every plugin is
    called and the names are merged with the builtin ones.

    :returns: decision (``"binding_policy"``, ``"forking"``, ``"auth"``) to the policy names this
        plugin answers for in the matching decision hook; ``None`` (or an empty mapping) for none.
    """


# --- decision hooks: firstresult, synchronous, over data the core already fetched ----------------


@hookspec(firstresult=True)
def ims_binding_policy_apply(
    existing: Sequence[Binding],
    incoming: Sequence[Binding],
    policy: str,
    options: Mapping[str, Any],
) -> BindingDecision | None:
    """Decide the bindings of an address-of-record when a REGISTER adds, refreshes or removes contacts.

    Fires for every REGISTER that carries Contact headers, after authentication, before the binding
    store is written. Stops at the first non-``None`` result.

    :param existing: the bindings the store holds for the address-of-record, oldest first.
    :param incoming: the bindings the REGISTER asks for, in Contact header order (``expires`` 0 means
        "remove this one").
    :param policy: the binding policy name the profile selected (e.g. ``"max-contacts"``).
    :param options: that policy's options from the profile.
    :returns: the decision, or ``None`` when this plugin does not implement ``policy``. If every
        plugin answers ``None`` the policy is unknown and the registrar refuses the REGISTER.
    """


@hookspec(firstresult=True)
def ims_fork_plan(
    request_uri: Uri,
    contacts: Sequence[Binding],
    strategy: str,
    options: Mapping[str, Any],
) -> ForkPlan | None:
    """Plan how a request to a registered user forks to its contacts.

    Fires when the proxy has looked up the bindings of the Request-URI's address-of-record and
    there is at least one. Stops at the first non-``None`` result.

    :param request_uri: the Request-URI being retargeted.
    :param contacts: the live bindings of that address-of-record, oldest first.
    :param strategy: the forking strategy the profile selected (e.g. ``"parallel"``, ``"sequential"``,
        ``"hunt"``).
    :param options: that strategy's options from the profile.
    :returns: an ordered tuple of branch groups (groups tried one after another, the targets of a
        group in parallel), or ``None`` when this plugin does not implement ``strategy``.
    """


@hookspec(firstresult=True)
def ims_auth_select_scheme(subscriber: Subscriber, request: Request) -> str | None:
    """Choose how to challenge or verify a request from a subscriber.

    Fires for a REGISTER (or other request needing authentication) once the subscriber record of the
    private identity is known. Stops at the first non-``None`` result.

    :param subscriber: the subscriber record of the private identity.
    :param request: the request being authenticated (its Authorization header, if any, included).
    :returns: the name of a registered auth scheme, or ``None`` for no opinion. If every plugin
        answers ``None`` no scheme fits and the request is refused (403).
    """


@hookspec(firstresult=True)
def ims_identity_resolve(impu: str, subscribers: Sequence[Subscriber]) -> ResolvedIdentity | None:
    """Find which subscriber owns a public identity, and the implicit registration set it is in.

    Fires when a REGISTER's To URI (for the challenge, and again once the IMPI is authenticated), a
    reg-event SUBSCRIBE's target (and its From, when it is none of the owner's own IMPUs), a
    terminating request's Request-URI or an originating request's From names a public identity,
    after the subscriber store returned its candidate record. Stops at the first non-``None``
    result.

    :param impu: the public identity as text (``sip:`` or ``tel:`` URI).
    :param subscribers: the candidate records: the authenticated subscriber on a REGISTER, else the
        store's record for ``impu`` (empty when the store has none: a plugin may still resolve an
        alias, a wildcard identity or a number range it knows itself).
    :returns: the owner and the implicit registration set, or ``None`` when this plugin cannot tell;
        if every plugin answers ``None`` the identity is unknown (403 on a REGISTER, 404 on a
        request). The owner is found again by its IMPI in the subscriber store, and the set is the
        owner's set that contains the first IMPU of ``implicit_set``; an answer whose IMPI or set
        the store does not have is logged and counts as ``None``.
    """


@hookspec(firstresult=True)
def ims_route_next_hop(request: Request, targets: Sequence[NextHop]) -> NextHop | None:
    """Pick the next hop a request is sent to.

    Fires after the proxy has worked out the candidate hops (Route set, Path, Request-URI, RFC 3263
    results), before the request is handed to a transport. Stops at the first non-``None`` result.

    :param request: the request about to be forwarded.
    :param targets: candidate hops, in the order the core would try them.
    :returns: the chosen hop, or ``None`` for no opinion; if every plugin answers ``None`` the
        request cannot be routed (the proxy answers 502 / 503).
    """


@hookspec(firstresult=True)
def ims_ifc_match(request: Request, ifcs: Sequence[Ifc], facts: IfcFacts) -> Sequence[Ifc] | None:
    """Decide which initial filter criteria of the served user apply to a request.

    Fires when the S-CSCF evaluates a service profile (TS 29.228 Annex B, TS 24.229 §5.4.3.2 and
    §5.4.3.3): for an out-of-dialog request from a served caller (originating) or to a served
    identity (terminating), again each time the request comes back from an application server
    (with the iFCs of lower priority than the one just executed), and for a REGISTER, a
    de-registration or an expiry (third-party registration, TS 24.229 §5.4.1.7). Stops at the first
    non-``None`` result.

    :param request: the request as it is now (for a registration event without one, e.g. an
        expiry, a REGISTER the S-CSCF made up with ``Expires: 0``). Read it, do not change it.
    :param ifcs: the candidate iFCs (:class:`imscore.ifc.Ifc`), in priority order.
    :param facts: :class:`imscore.ifc.IfcFacts`: the session case, whether the served user is
        registered, the registration type of a REGISTER and the interface the request came on.
    :returns: the iFCs that apply, in the order their application servers are visited (an empty
        sequence for none); ``None`` for no opinion. The builtin default applies the 3GPP rules
        (:mod:`imscore.ifc.match`).
    """


# --- lifecycle -----------------------------------------------------------------------------------


@hookspec
def ims_server_started(server: Any) -> None:
    """Tell plugins the server is up: transports listen and stores are open.

    Fires once after start-up completes; every plugin is called. Return value ignored.

    :param server: the running server object.
    """


@hookspec
def ims_server_stopping(server: Any) -> None:
    """Tell plugins the server is about to stop: transports still listen, stores are still open.

    Fires once at the start of shutdown; every plugin is called. Return value ignored.

    :param server: the server object being stopped.
    """
