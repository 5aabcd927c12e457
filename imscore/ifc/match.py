"""The 3GPP matching rules of initial filter criteria (TS 29.228 Annex B.2.2 and Annex C).

No I/O, no clock. :func:`matching_ifcs` is what the builtin ``ims_ifc_match`` answers:

* an iFC whose ``profile_part`` is ``registered`` (``unregistered``) applies only while the served
  user is (is not) registered;
* an iFC without a trigger point matches every initial request;
* a trigger point in CNF (``ConditionTypeCNF`` true) matches when *every* group has *at least
  one* matching SPT; in DNF when *at least one* group has *all* its SPTs matching; an SPT may
  sit in several groups;
* an SPT's result is inverted by ``negated`` (ConditionNegated);
* ``method`` compares the method name exactly (SIP methods are case-sensitive, RFC 3261 §7.1); with
  ``registration_type`` a REGISTER matches only for those types (initial, re-registration,
  de-registration);
* ``request_uri``, ``header`` content, ``session_description`` content and ``sip_interface`` are
  regular expressions searched anywhere in the text (anchor them with ``^``/``$``);
  ``header`` without content matches when the header is present (any spelling, compact forms
  included), and with content when one of its header lines matches;
* ``session_description`` looks at the lines ``<type>=<content>`` of an ``application/sdp`` body;
* ``session_case`` compares with the case of the request (originating, terminating registered ...).
"""

from __future__ import annotations

from collections.abc import Sequence

from imscore.sip import Request, SipError

from .model import Ifc, IfcFacts, Spt, TriggerPoint

__all__ = ["ifc_matches", "matching_ifcs", "spt_matches", "trigger_matches"]


def _sdp_lines(request: Request, kind: str) -> list[str]:
    try:
        media = request.content_type
    except SipError:
        return []
    if media is None or media.mime != "application/sdp":
        return []
    text = request.body.decode("utf-8", "replace")
    prefix = f"{kind}="
    return [line[2:] for line in text.splitlines() if line.startswith(prefix)]


def spt_matches(spt: Spt, request: Request, facts: IfcFacts) -> bool:
    """Whether one SPT holds for ``request`` (ConditionNegated applied)."""
    kind = spt.kind
    if kind == "method":
        found = request.method == spt.value
        if found and spt.registration_types:
            found = facts.registration_type in spt.registration_types
    elif kind == "request_uri":
        pattern = spt.value_pattern
        found = pattern is not None and pattern.search(str(request.uri)) is not None
    elif kind == "header":
        values = request.headers.get_all(spt.value)
        content = spt.content_pattern
        if content is None:
            found = bool(values)
        else:
            found = any(content.search(value) is not None for value in values)
    elif kind == "session_case":
        found = facts.session_case == spt.value
    elif kind == "session_description":
        content = spt.content_pattern
        found = content is not None and any(
            content.search(line) is not None for line in _sdp_lines(request, spt.value)
        )
    else:  # sip_interface
        pattern = spt.value_pattern
        found = (
            bool(facts.interface) and pattern is not None and pattern.search(facts.interface) is not None
        )
    return found != spt.negated


def trigger_matches(trigger: TriggerPoint, request: Request, facts: IfcFacts) -> bool:
    """Whether a trigger point holds: CNF (AND of ORs) or DNF (OR of ANDs) over its groups."""
    groups = trigger.groups().values()
    if trigger.cnf:
        return all(any(spt_matches(s, request, facts) for s in group) for group in groups)
    return any(all(spt_matches(s, request, facts) for s in group) for group in groups)


def ifc_matches(ifc: Ifc, request: Request, facts: IfcFacts) -> bool:
    """Whether one iFC applies to ``request`` (its profile part, then its trigger point)."""
    if ifc.profile_part == "registered" and not facts.registered:
        return False
    if ifc.profile_part == "unregistered" and facts.registered:
        return False
    return ifc.trigger is None or trigger_matches(ifc.trigger, request, facts)


def matching_ifcs(request: Request, ifcs: Sequence[Ifc], facts: IfcFacts) -> tuple[Ifc, ...]:
    """The iFCs of ``ifcs`` that apply to ``request``, in priority order (lowest number first)."""
    ordered = sorted(ifcs, key=lambda ifc: ifc.priority)
    return tuple(ifc for ifc in ordered if ifc_matches(ifc, request, facts))
