"""imscore's default answers to the decision hooks.

Registered by :func:`imscore.plugin.create_plugin_manager` under the name ``"builtin"``; every
implementation here is ``trylast``, so any other plugin that answers wins. Each default answers only
for the policy or strategy names it owns and returns ``None`` for the rest, so an unknown name reaches
the caller as "nobody implements this".

Binding policies:

``multi``
    RFC 3261 §10.3 behaviour: an incoming binding replaces the existing one it updates (same
    ``+sip.instance``/``reg-id`` if both carry one, else the same contact URI), ``expires`` 0 removes
    it, anything else is added.
``replace-all``
    Legacy single registration: the incoming bindings (minus removals) become the whole set, and
    every existing binding is displaced — the newest device silently replaces the others.
``max-contacts``
    ``multi``, but a REGISTER that would leave more than ``options["max_contacts"]`` (default 1)
    bindings is refused with ``options.get("reject_status", 403)`` and nothing changes.

Fork strategies:

``parallel``
    One group holding every contact.
``sequential``
    One group per distinct ``q`` value, highest first (a missing ``q`` counts as 1.0, RFC 3841 §7.3);
    equal ``q`` values ring in parallel; each group waits ``options["group_timeout"]`` (default none).
``hunt``
    One contact per group, by descending ``q`` then registration order, each ringing for
    ``options["ring_timeout"]`` seconds (default 20).

Other defaults: the auth scheme is the subscriber's first allowed scheme; an IMPU resolves to the
subscriber whose implicit registration set contains it verbatim; the next hop is the first candidate.
The registry hooks add nothing here: providers come from the transport and store packages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import Any

from imscore.sip import Request, Uri

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


def _merge(existing: Sequence[Binding], incoming: Sequence[Binding]) -> BindingDecision:
    kept = list(existing)
    removed: list[Binding] = []
    for new in incoming:
        for i, old in enumerate(kept):
            if old.same_binding(new):
                if new.expires > 0:
                    kept[i] = new  # a refresh keeps the binding's place in registration order
                else:
                    del kept[i]
                    removed.append(old)
                break
        else:
            if new.expires > 0:
                kept.append(new)
    return BindingDecision(bindings=tuple(kept), removed=tuple(removed))


@hookimpl(trylast=True)
def ims_binding_policy_apply(
    existing: Sequence[Binding],
    incoming: Sequence[Binding],
    policy: str,
    options: Mapping[str, Any],
) -> BindingDecision | None:
    if policy == "multi":
        return _merge(existing, incoming)
    if policy == "replace-all":
        bindings = tuple(b for b in incoming if b.expires > 0)
        return BindingDecision(bindings=bindings, removed=tuple(existing))
    if policy == "max-contacts":
        limit = int(options.get("max_contacts", 1))
        decision = _merge(existing, incoming)
        if len(decision.bindings) > limit:
            return BindingDecision(
                bindings=tuple(existing),
                reject_status=int(options.get("reject_status", 403)),
                reject_reason=f"Too many registered contacts (limit {limit})",
            )
        return decision
    return None


def _q(binding: Binding) -> float:
    return 1.0 if binding.q is None else binding.q


@hookimpl(trylast=True)
def ims_fork_plan(
    request_uri: Uri,
    contacts: Sequence[Binding],
    strategy: str,
    options: Mapping[str, Any],
) -> ForkPlan | None:
    by_q = sorted(contacts, key=_q, reverse=True)  # stable: equal q keep registration order
    if strategy == "parallel":
        return (BranchGroup(targets=tuple(b.contact for b in contacts)),)
    if strategy == "sequential":
        timeout = options.get("group_timeout")
        return tuple(
            BranchGroup(
                targets=tuple(b.contact for b in group),
                timeout=None if timeout is None else float(timeout),
            )
            for _, group in groupby(by_q, key=_q)
        )
    if strategy == "hunt":
        ring = float(options.get("ring_timeout", DEFAULT_RING_TIMEOUT))
        return tuple(BranchGroup(targets=(b.contact,), timeout=ring) for b in by_q)
    return None


@hookimpl(trylast=True)
def ims_auth_select_scheme(subscriber: Subscriber, request: Request) -> str | None:
    return subscriber.auth_schemes[0] if subscriber.auth_schemes else None


@hookimpl(trylast=True)
def ims_identity_resolve(impu: str, subscribers: Sequence[Subscriber]) -> ResolvedIdentity | None:
    for subscriber in subscribers:
        for implicit_set in subscriber.implicit_sets:
            if impu in implicit_set:
                return ResolvedIdentity(subscriber=subscriber, implicit_set=implicit_set)
    return None


@hookimpl(trylast=True)
def ims_route_next_hop(request: Request, targets: Sequence[NextHop]) -> NextHop | None:
    return targets[0] if targets else None
