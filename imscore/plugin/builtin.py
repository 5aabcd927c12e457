"""imscore's default answers to the decision hooks.

Registered by :func:`imscore.plugin.create_plugin_manager` under the name ``"builtin"``; every
implementation here is ``trylast``, so any other plugin that answers wins. Each default answers only
for the policy or strategy names it owns and returns ``None`` for the rest, so an unknown name reaches
the caller as "nobody implements this".

Binding policies (the names of :data:`imscore.profile.model.BUILTIN_PLUGINS`). Common to all three:
an incoming binding *matches* an existing one when :meth:`Binding.same_binding` says so (the same
``+sip.instance`` and ``reg-id`` when both carry an instance, RFC 5626 §6, else the same contact URI),
so a device that re-registers from a new address or port updates its binding and never counts as
another device; the update keeps the binding's place in registration order. An incoming binding with
``expires`` 0 removes the existing one it matches (and is ignored when it matches none). ``Contact: *``
is the registrar's business and never reaches a policy.

``unlimited``
    Plain RFC 3261 §10.3: matching bindings are updated or removed, every other incoming binding is
    added; no limit. Takes no options.
``replace-all``
    Legacy single registration ("one device, the newest wins"): when the REGISTER carries at least
    one contact with ``expires`` > 0, the last such contact is the user's only binding afterwards, and
    every other existing binding is displaced (reported in ``removed``). A REGISTER carrying only
    removals removes what it matches. Takes no options.
``max-contacts``
    ``unlimited`` up to ``options["max_contacts"]`` bindings (default 10). Only a REGISTER that adds a
    new device is limited: refreshes and removals are always accepted, even when the user is above
    the limit (a lowered limit applies from the next new device). When the new devices would exceed
    the limit, ``options["at_limit"]`` says what happens: ``reject`` (default) refuses the REGISTER
    with ``options["reject_status"]`` (default 403) and nothing changes; ``evict-oldest`` (first
    registration time), ``evict-soonest-to-expire`` (fewest seconds left) and
    ``evict-unreachable-first`` (unreachable ones, then the oldest) displace existing bindings this
    REGISTER did not touch, in the order each names, until the result fits (ties: older first). When
    even evicting every such binding would not make room (the REGISTER alone brings more new devices
    than the limit) it is refused as under ``reject``.

Options are checked by :func:`imscore.profile.model.check_binding_policy_options`; a bad option makes
the policy refuse every REGISTER with 500 and a reason naming the option. The registrar passes a
subscriber's ``max_devices`` as ``options["max_contacts"]``, overriding the profile's; ``replace-all``
and ``unlimited`` ignore that key.

Fork strategies:

``parallel``
    One group holding every contact.
``parallel``
    (continued) ``options["ring_timeout"]`` bounds the ringing (default: Timer C, 180 s).
``sequential``
    One group per distinct ``q`` value, highest first (a missing ``q`` counts as 1.0, RFC 3841 §7.3);
    equal ``q`` values ring in parallel; each group waits ``options["group_timeout"]`` (default none).
    Contacts marked unreachable by qualification are skipped (unless all are).
``hunt``
    One contact per group, each ringing for ``options["ring_timeout"]`` seconds (default 20), in
    ``options["order"]``: ``q`` (descending q, then registration order; the default),
    ``newest-first`` or ``oldest-first`` (by first registration). Unreachable contacts are skipped
    (unless all are).

Other defaults: the auth scheme is the subscriber's first allowed scheme (AKA before Digest; the
registrar uses a plugin's choice only when the profile allows that scheme, else the profile's
order); the next hop is the first candidate (DNS order). ``ims_identity_resolve``: an IMPU resolves
to the candidate subscriber with an implicit registration set containing it, compared as
addresses-of-record (:attr:`imscore.sip.Uri.aor`: a SIP URI's scheme, user and host without
parameters, the host in lower case; a tel URI's number without visual separators), as the
subscriber store indexes them. ``ims_ifc_match``: the initial filter criteria rules of TS
29.228 Annex B/C (:mod:`imscore.ifc.match`). The registry hooks add nothing here: providers come from the
transport and store packages.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import Any

from imscore.ifc.match import matching_ifcs
from imscore.ifc.model import Ifc, IfcFacts
from imscore.profile.model import (
    BUILTIN_PLUGINS,
    OptionValue,
    PolicyOptionError,
    check_binding_policy_options,
)
from imscore.sip import Request, SipError, Uri
from imscore.sip.uri import aor_of

from .markers import hookimpl
from .types import (
    Binding,
    BindingDecision,
    BranchGroup,
    ForkPlan,
    NextHop,
    ResolvedIdentity,
    Subscriber,
)

DEFAULT_RING_TIMEOUT = 20.0


def _merge(
    existing: Sequence[Binding], incoming: Sequence[Binding]
) -> tuple[list[Binding], list[Binding], int, list[bool]]:
    """Apply the common rules. Returns the bindings after the REGISTER (existing ones in place, new
    devices appended), the existing bindings removed by request, how many new devices were added, and
    for each existing binding whether this REGISTER touched (refreshed or removed) it."""
    kept = list(existing)
    origin: list[int | None] = list(range(len(existing)))  # index into existing, None for new ones
    touched = [False] * len(existing)
    removed: list[Binding] = []
    for new in incoming:
        for i, old in enumerate(kept):
            if old.same_binding(new):
                index = origin[i]
                if index is not None:
                    touched[index] = True
                if new.expires > 0:
                    kept[i] = new  # an update keeps the binding's place in registration order
                else:
                    del kept[i], origin[i]
                    if index is not None:
                        removed.append(old)
                break
        else:
            if new.expires > 0:
                kept.append(new)
                origin.append(None)
    return kept, removed, origin.count(None), touched


def _refuse(existing: Sequence[Binding], status: int, reason: str) -> BindingDecision:
    return BindingDecision(bindings=tuple(existing), reject_status=status, reject_reason=reason)


def _replace_all(existing: Sequence[Binding], incoming: Sequence[Binding]) -> BindingDecision:
    live = [b for b in incoming if b.expires > 0]
    if not live:  # only removals
        kept, removed, _, _ = _merge(existing, incoming)
        return BindingDecision(bindings=tuple(kept), removed=tuple(removed))
    newest = live[-1]
    return BindingDecision(
        bindings=(newest,), removed=tuple(b for b in existing if not b.same_binding(newest))
    )


def _eviction_order(candidates: list[Binding], at_limit: str) -> list[Binding]:
    """``candidates`` (oldest registration first) in the order they are evicted; sorts are stable,
    so ties keep registration order."""
    if at_limit == "evict-soonest-to-expire":
        return sorted(candidates, key=lambda b: (b.expires, b.registered_at))
    if at_limit == "evict-unreachable-first":
        return sorted(candidates, key=lambda b: (b.reachable, b.registered_at))
    return sorted(candidates, key=lambda b: b.registered_at)  # evict-oldest


def _max_contacts(
    existing: Sequence[Binding], incoming: Sequence[Binding], options: Mapping[str, OptionValue]
) -> BindingDecision:
    limit, at_limit, status = options["max_contacts"], options["at_limit"], options["reject_status"]
    assert isinstance(limit, int) and isinstance(at_limit, str) and isinstance(status, int)
    kept, removed, added, touched = _merge(existing, incoming)
    if added == 0 or len(kept) <= limit:
        return BindingDecision(bindings=tuple(kept), removed=tuple(removed))
    reason = f"Too many registered contacts (limit {limit})"
    if at_limit == "reject":
        return _refuse(existing, status, reason)
    candidates = [b for b, hit in zip(existing, touched, strict=True) if not hit]
    excess = len(kept) - limit
    if excess > len(candidates):
        return _refuse(existing, status, reason)
    evicted = _eviction_order(candidates, at_limit)[:excess]
    bindings = tuple(b for b in kept if not any(b is e for e in evicted))
    return BindingDecision(bindings=bindings, removed=(*removed, *evicted))


#: options already checked, by policy and options (the same few for every REGISTER)
_CHECKED: dict[tuple[str, tuple[tuple[str, Any], ...]], dict[str, Any]] = {}


def _checked_options(policy: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`check_binding_policy_options`, remembered for hashable options (by their items in
    the order given: the registrar gives the same options in the same order every time, and the
    same options in another order only take another entry)."""
    try:
        key = (policy, tuple(options.items()))
        hash(key)
    except TypeError:  # an unhashable value (a plugin's list, say): check it every time
        return check_binding_policy_options(policy, options)
    found = _CHECKED.get(key)
    if found is None:
        found = check_binding_policy_options(policy, options)
        if len(_CHECKED) >= 256:
            _CHECKED.clear()
        _CHECKED[key] = found
    return dict(found)


@hookimpl(trylast=True)
def ims_binding_policy_apply(
    existing: Sequence[Binding],
    incoming: Sequence[Binding],
    policy: str,
    options: Mapping[str, Any],
) -> BindingDecision | None:
    if policy not in BUILTIN_PLUGINS["binding_policy"]:
        return None
    if policy != "max-contacts":  # the registrar's per-subscriber limit means nothing here
        options = {k: v for k, v in options.items() if k != "max_contacts"}
    try:
        checked = _checked_options(policy, options)
    except PolicyOptionError as exc:
        return _refuse(
            existing, 500, f"Bad option {exc.option!r} of binding policy {policy}: {exc.message}"
        )
    if policy == "unlimited":
        kept, removed, _, _ = _merge(existing, incoming)
        return BindingDecision(bindings=tuple(kept), removed=tuple(removed))
    if policy == "replace-all":
        return _replace_all(existing, incoming)
    return _max_contacts(existing, incoming, checked)


def _q(binding: Binding) -> float:
    return 1.0 if binding.q is None else binding.q


def _reachable_first(contacts: Sequence[Binding]) -> list[Binding]:
    """The reachable contacts; all of them when none is known reachable (better to try than to
    give up on a stale mark)."""
    reachable = [b for b in contacts if b.reachable]
    return reachable or list(contacts)


def _timeout(options: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = options.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"forking option {key!r}: expected a number of seconds > 0, got {value!r}")
    return float(value)


@hookimpl(trylast=True)
def ims_fork_plan(
    request_uri: Uri,
    contacts: Sequence[Binding],
    strategy: str,
    options: Mapping[str, Any],
) -> ForkPlan | None:
    if strategy == "parallel":
        ring = _timeout(options, "ring_timeout", None)
        return (BranchGroup(targets=tuple(b.contact for b in contacts), timeout=ring),)
    if strategy == "sequential":
        timeout = _timeout(options, "group_timeout", None)
        by_q = sorted(_reachable_first(contacts), key=_q, reverse=True)  # stable within a q
        return tuple(
            BranchGroup(targets=tuple(b.contact for b in group), timeout=timeout)
            for _, group in groupby(by_q, key=_q)
        )
    if strategy == "hunt":
        ring = _timeout(options, "ring_timeout", DEFAULT_RING_TIMEOUT)
        order = options.get("order", "q")
        candidates = _reachable_first(contacts)
        if order == "newest-first":
            ordered = sorted(candidates, key=lambda b: b.registered_at, reverse=True)
        elif order == "oldest-first":
            ordered = sorted(candidates, key=lambda b: b.registered_at)
        elif order == "q":
            ordered = sorted(candidates, key=_q, reverse=True)
        else:  # the profile loader checked the options; a plugin caller may not have
            raise ValueError(f"forking option 'order': unknown order {order!r}")
        return tuple(BranchGroup(targets=(b.contact,), timeout=ring) for b in ordered)
    return None


@hookimpl(trylast=True)
def ims_auth_select_scheme(subscriber: Subscriber, request: Request) -> str | None:
    return subscriber.auth_schemes[0] if subscriber.auth_schemes else None


@functools.lru_cache(maxsize=65536)
def _aor_key(text: str) -> str | None:
    """The address-of-record key of a URI written as text, ``None`` if it is not a URI (cached:
    the subscribers' IMPUs are asked about again and again)."""
    try:
        return aor_of(text)  # (parse_uri(text).aor, from the URI layer's memory of recent texts)
    except SipError:
        return None


@hookimpl(trylast=True)
def ims_identity_resolve(impu: str, subscribers: Sequence[Subscriber]) -> ResolvedIdentity | None:
    key = _aor_key(impu)
    if key is None:
        return None
    for subscriber in subscribers:
        for implicit_set in subscriber.implicit_sets:
            if any(_aor_key(member) == key for member in implicit_set):
                return ResolvedIdentity(subscriber=subscriber, implicit_set=implicit_set)
    return None


@hookimpl(trylast=True)
def ims_route_next_hop(request: Request, targets: Sequence[NextHop]) -> NextHop | None:
    return targets[0] if targets else None


@hookimpl(trylast=True)
def ims_ifc_match(request: Request, ifcs: Sequence[Ifc], facts: IfcFacts) -> Sequence[Ifc] | None:
    """The 3GPP rules of TS 29.228 Annex B/C (:func:`imscore.ifc.match.matching_ifcs`)."""
    return matching_ifcs(request, ifcs, facts)
