"""Initial filter criteria (TS 29.228 Annex B, Annex C): a user's service profile, as plain data.

An :class:`Ifc` names an application server and the trigger point that sends a request to it; a
:class:`ServiceProfile` holds a user's iFCs in priority order. Everything here is a frozen dataclass
checked when it is made (the subscriber loader turns a ``ValueError`` into a message naming the file,
the entry and the key). The matching rules are in :mod:`imscore.ifc.match`; the S-CSCF asks them
through the ``ims_ifc_match`` hook.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "DEFAULT_AS_TIMEOUT",
    "DEFAULT_HANDLINGS",
    "NO_SERVICES",
    "PROFILE_PARTS",
    "REGISTRATION_TYPES",
    "SESSION_CASES",
    "SESSION_CONTINUED",
    "SESSION_TERMINATED",
    "SPT_KINDS",
    "ApplicationServer",
    "Ifc",
    "IfcFacts",
    "ServiceProfile",
    "Spt",
    "TriggerPoint",
]

#: session cases (TS 29.228 Annex B.2.2, SessionCase 0-4), as a profile writes them
ORIGINATING: Final = "originating"
TERMINATING_REGISTERED: Final = "terminating_registered"
TERMINATING_UNREGISTERED: Final = "terminating_unregistered"
ORIGINATING_UNREGISTERED: Final = "originating_unregistered"
ORIGINATING_CDIV: Final = "originating_cdiv"
SESSION_CASES: Final = (
    ORIGINATING,
    TERMINATING_REGISTERED,
    TERMINATING_UNREGISTERED,
    ORIGINATING_UNREGISTERED,
    ORIGINATING_CDIV,
)
#: RegistrationType values (the Extension of a REGISTER Method SPT, TS 29.228 Annex B.2.2)
REGISTRATION_TYPES: Final = ("initial", "re-registration", "de-registration")
#: DefaultHandling: what happens when the AS cannot be reached (TS 29.228 Annex B.2.3)
SESSION_CONTINUED: Final = "session-continued"
SESSION_TERMINATED: Final = "session-terminated"
DEFAULT_HANDLINGS: Final = (SESSION_CONTINUED, SESSION_TERMINATED)
#: how long a request routed to an AS waits for its first response (a 100 Trying counts) before
#: the AS counts as not reached (TS 24.229 §5.4.3.2 leaves the value to the operator)
DEFAULT_AS_TIMEOUT: Final = 2.0
#: ProfilePartIndicator: the iFC applies while the user is registered, or unregistered
PROFILE_PARTS: Final = ("registered", "unregistered")
#: the kinds of service point trigger (SIP-Interface is imscore's: the listener a request came on)
SPT_KINDS: Final = (
    "method",
    "request_uri",
    "header",
    "session_case",
    "session_description",
    "sip_interface",
)


def _regex(pattern: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"expected a regular expression for {what}, got {pattern!r} ({exc})") from None


@dataclass(frozen=True)
class Spt:
    """One service point trigger.

    :param kind: one of :data:`SPT_KINDS`.
    :param value: the method name (``method``), the Request-URI pattern (``request_uri``), the
        header name (``header``), the session case (``session_case``), the SDP line type, one
        letter such as ``m`` (``session_description``), the interface pattern (``sip_interface``,
        matched against ``transport:host:port`` of our listener).
    :param content: the pattern the header value or SDP line content must match (``header``,
        ``session_description``); ``None`` for ``header`` means "the header is present".
    :param registration_types: for ``method: REGISTER`` only, the registration types that match
        (empty: every REGISTER).
    :param negated: ConditionNegated: the SPT matches when its condition does not hold.
    :param groups: the Group numbers the SPT belongs to (TS 29.228 Annex C).
    :raises ValueError: for an unknown kind, a bad pattern or a value that kind does not take.
    """

    kind: str
    value: str
    content: str | None = None
    registration_types: tuple[str, ...] = ()
    negated: bool = False
    groups: tuple[int, ...] = (0,)
    _patterns: tuple[re.Pattern[str] | None, re.Pattern[str] | None] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if self.kind not in SPT_KINDS:
            raise ValueError(f"expected an SPT kind of {', '.join(SPT_KINDS)}, got {self.kind!r}")
        if not isinstance(self.value, str) or not self.value:
            raise ValueError(f"expected a non-empty string for {self.kind}")
        if not self.groups:
            raise ValueError("an SPT belongs to at least one group")
        value_re: re.Pattern[str] | None = None
        content_re: re.Pattern[str] | None = None
        if self.kind in ("request_uri", "sip_interface"):
            value_re = _regex(self.value, self.kind)
        if self.kind == "session_case" and self.value not in SESSION_CASES:
            raise ValueError(
                f"expected a session case of {', '.join(SESSION_CASES)}, got {self.value!r}"
            )
        if self.kind == "session_description" and not re.fullmatch(r"[a-z]", self.value):
            raise ValueError(f"expected an SDP line type, one letter (m, c, a ...), got {self.value!r}")
        if self.content is not None:
            if self.kind not in ("header", "session_description"):
                raise ValueError(f"'content' goes with header or session_description, not {self.kind}")
            content_re = _regex(self.content, "content")
        elif self.kind == "session_description":
            raise ValueError("a session_description SPT needs a content pattern")
        if self.registration_types:
            if self.kind != "method" or self.value != "REGISTER":
                raise ValueError("registration_type goes with method: REGISTER only")
            for kind in self.registration_types:
                if kind not in REGISTRATION_TYPES:
                    raise ValueError(
                        f"expected registration types of {', '.join(REGISTRATION_TYPES)}, got {kind!r}"
                    )
        object.__setattr__(self, "_patterns", (value_re, content_re))

    @property
    def value_pattern(self) -> re.Pattern[str] | None:
        """The compiled pattern of :attr:`value` (``request_uri``, ``sip_interface``)."""
        return self._patterns[0]

    @property
    def content_pattern(self) -> re.Pattern[str] | None:
        """The compiled pattern of :attr:`content`, when there is one."""
        return self._patterns[1]


@dataclass(frozen=True)
class TriggerPoint:
    """A trigger point: SPTs combined in conjunctive or disjunctive normal form (TS 29.228 Annex C).

    :param cnf: ConditionTypeCNF: ``True`` ANDs the groups, each the OR of its SPTs; ``False``
        (DNF) ORs the groups, each the AND of its SPTs.
    :param spts: the service point triggers, at least one.
    """

    cnf: bool
    spts: tuple[Spt, ...]

    def __post_init__(self) -> None:
        if not self.spts:
            raise ValueError("a trigger point needs at least one SPT (leave it out to match always)")

    def groups(self) -> dict[int, list[Spt]]:
        """The SPTs of each group number, groups in ascending order."""
        found: dict[int, list[Spt]] = {}
        for spt in self.spts:
            for group in spt.groups:
                found.setdefault(group, []).append(spt)
        return dict(sorted(found.items()))


@dataclass(frozen=True)
class ApplicationServer:
    """Where a matching request goes, and what the S-CSCF does when it cannot get there.

    :param uri: the AS's SIP URI (ServerName).
    :param default_handling: :data:`SESSION_CONTINUED` or :data:`SESSION_TERMINATED`.
    :param service_info: ServiceInfo, sent in the body of a third-party REGISTER
        (``application/3gpp-ims+xml``), or ``None``.
    :param include_register_request: a third-party REGISTER carries the UE's REGISTER
        (``message/sip``, TS 29.228 IncludeRegisterRequest).
    :param include_register_response: it carries our 200 OK to it (IncludeRegisterResponse).
    :param response_timeout: seconds a request routed to the AS waits for the AS's first response
        (a 100 Trying counts) before the AS counts as not reached and the default handling applies
        (``None``: only the transaction's own Timer B/F, 32 s by default).
    """

    uri: str
    default_handling: str = SESSION_CONTINUED
    service_info: str | None = None
    include_register_request: bool = False
    include_register_response: bool = False
    response_timeout: float | None = DEFAULT_AS_TIMEOUT

    def __post_init__(self) -> None:
        if self.default_handling not in DEFAULT_HANDLINGS:
            raise ValueError(f"expected {' or '.join(DEFAULT_HANDLINGS)}, got {self.default_handling!r}")
        timeout = self.response_timeout
        if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
            raise ValueError(f"expected a response timeout above 0 seconds, got {timeout!r}")


@dataclass(frozen=True)
class Ifc:
    """One initial filter criterion.

    :param priority: lower first (0 is the highest priority); unique within a profile.
    :param server: the application server.
    :param trigger: the trigger point; ``None`` matches every initial request.
    :param profile_part: ``"registered"``/``"unregistered"``: the iFC applies only in that state
        of the served user (ProfilePartIndicator); ``None`` in both.
    """

    priority: int
    server: ApplicationServer
    trigger: TriggerPoint | None = None
    profile_part: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.priority, bool) or not isinstance(self.priority, int) or self.priority < 0:
            raise ValueError(f"expected a priority of 0 or more, got {self.priority!r}")
        if self.profile_part is not None and self.profile_part not in PROFILE_PARTS:
            raise ValueError(f"expected a profile part of {', '.join(PROFILE_PARTS)}")


@dataclass(frozen=True)
class ServiceProfile:
    """A user's service profile: its iFCs, kept in priority order.

    :raises ValueError: when two iFCs share a priority (the order would be undefined).
    """

    ifcs: tuple[Ifc, ...] = ()

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.ifcs, key=lambda ifc: ifc.priority))
        for before, after in itertools.pairwise(ordered):
            if before.priority == after.priority:
                raise ValueError(f"two iFCs have priority {after.priority}; expected each once")
        object.__setattr__(self, "ifcs", ordered)

    def after(self, priority: int | None) -> tuple[Ifc, ...]:
        """The iFCs of lower priority than ``priority`` (all of them for ``None``), in order."""
        if priority is None:
            return self.ifcs
        return tuple(ifc for ifc in self.ifcs if ifc.priority > priority)


@dataclass(frozen=True, slots=True)
class IfcFacts:
    """What the matching rules need beside the request itself.

    :param session_case: one of :data:`SESSION_CASES`.
    :param registered: whether the served user has a live registration (ProfilePartIndicator).
    :param registration_type: for a REGISTER, ``initial``, ``re-registration`` or
        ``de-registration``; ``None`` otherwise.
    :param interface: our listener the request came on, ``transport:host:port`` (``""`` when it
        was not received, e.g. on expiry).
    """

    session_case: str
    registered: bool = True
    registration_type: str | None = None
    interface: str = ""


#: the empty service profile (no iFCs)
NO_SERVICES: Final = ServiceProfile()
