"""imscore binding policy ``deskphone-plus-soft``: one desk phone plus up to N soft clients."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from imscore.plugin import hookimpl
from imscore.plugin.types import Binding, BindingDecision

POLICY = "deskphone-plus-soft"
DEFAULT_DESK_AGENTS = r"(?i)(desk|yealink|polycom|snom|grandstream|cisco)"
DESK_TAG = "+imscore.desk"


@hookimpl
def ims_policy_names() -> Mapping[str, Sequence[str]]:
    return {"binding_policy": [POLICY]}


def is_desk_phone(binding: Binding, pattern: re.Pattern[str]) -> bool:
    if any(name.lower() == DESK_TAG for name, _ in binding.feature_tags):
        return True
    return bool(binding.user_agent and pattern.search(binding.user_agent))


@hookimpl
def ims_binding_policy_apply(
    existing: Sequence[Binding], incoming: Sequence[Binding], policy: str, options: Mapping[str, Any]
) -> BindingDecision | None:
    if policy != POLICY:
        return None
    soft_limit = int(options.get("soft_clients", 2))
    reject_status = int(options.get("reject_status", 403))
    pattern = re.compile(str(options.get("desk_user_agents", DEFAULT_DESK_AGENTS)))

    kept = list(existing)
    removed: list[Binding] = []
    for new in incoming:
        same = [b for b in kept if b.same_binding(new)]
        for old in same:
            kept.remove(old)
        if new.expires == 0:
            removed.extend(same)
            continue
        if not same and is_desk_phone(new, pattern):
            desks = [b for b in kept if is_desk_phone(b, pattern)]
            for old in desks:  # the newest desk phone replaces the previous one
                kept.remove(old)
            removed.extend(desks)
        kept.append(new)
    soft = [b for b in kept if not is_desk_phone(b, pattern)]
    if len(soft) > soft_limit:
        return BindingDecision(
            tuple(existing),
            reject_status=reject_status,
            reject_reason=f"Too many soft clients (limit {soft_limit})",
        )
    return BindingDecision(tuple(kept), removed=tuple(removed))
