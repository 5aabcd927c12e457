"""The ``service_profile`` key of a subscriber entry: its initial filter criteria.

Validated as the rest of the file is: a problem is reported through the entry's ``fail`` with the
key path (``service_profile.ifcs[0].trigger.spts[1].group``) and what was expected. The format::

    service_profile:
      ifcs:
        - priority: 0                       # 0 first; each priority once
          profile_part: registered          # optional: registered | unregistered
          trigger:                          # optional: without it every initial request matches
            condition: cnf                  # cnf (AND of groups, each an OR) | dnf (OR of ANDs)
            spts:
              - {method: REGISTER, registration_type: [initial, de-registration]}
              - {session_case: originating, negated: true, group: [0, 1]}
              - {request_uri: '^sip:\\+1555'}
              - {header: Accept-Contact, content: video}
              - {session_description: m, content: '^audio'}
              - {sip_interface: '^tcp:'}
          application_server:
            uri: sip:as.example.test:5070
            default_handling: session-continued   # or session-terminated
            service_info: '<x>...</x>'            # optional: body of the third-party REGISTER
            include_register_request: false
            include_register_response: false
            response_timeout: 2                   # s for the AS's first response (null: Timer B)

(see ``docs/ifc.rst``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, NoReturn

from imscore.ifc.model import (
    DEFAULT_AS_TIMEOUT,
    DEFAULT_HANDLINGS,
    PROFILE_PARTS,
    REGISTRATION_TYPES,
    SESSION_CASES,
    SPT_KINDS,
    ApplicationServer,
    Ifc,
    ServiceProfile,
    Spt,
    TriggerPoint,
)
from imscore.sip import ParseError, SipUri, parse_uri

__all__ = ["PROFILE_KEYS", "parse_service_profile"]

PROFILE_KEYS: Final = ("ifcs",)
IFC_KEYS: Final = ("priority", "profile_part", "trigger", "application_server")
TRIGGER_KEYS: Final = ("condition", "spts")
SPT_EXTRA_KEYS: Final = ("content", "registration_type", "negated", "group")
AS_KEYS: Final = (
    "uri",
    "default_handling",
    "service_info",
    "include_register_request",
    "include_register_response",
    "response_timeout",
)

Fail = Callable[[str, str], NoReturn]
Describe = Callable[[object], str]


def _mapping(
    value: object, keys: tuple[str, ...], where: str, fail: Fail, describe: Describe
) -> dict[object, object]:
    if not isinstance(value, dict):
        fail(f"expected a mapping with keys: {', '.join(keys)}, got {describe(value)}", where)
    for key in value:
        if key not in keys:
            fail("unknown key; expected one of: " + ", ".join(keys), f"{where}.{key}")
    return value


def _text(value: object, where: str, fail: Fail, describe: Describe) -> str:
    if not isinstance(value, str) or not value:
        fail(f"expected a non-empty string, got {describe(value)}", where)
    return value


def _flag(value: object, where: str, fail: Fail, describe: Describe) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        fail(f"expected true or false, got {describe(value)}", where)
    return value


def parse_service_profile(value: object, fail: Fail, describe: Describe) -> ServiceProfile:
    """Validate the ``service_profile`` value of one entry (``None``: an empty profile).

    :param fail: reports a problem: ``fail(detail, key)`` and does not return.
    :param describe: a short phrase for a value found in the file.
    """
    if value is None:
        return ServiceProfile()
    where = "service_profile"
    data = _mapping(value, PROFILE_KEYS, where, fail, describe)
    ifcs = data.get("ifcs")
    if ifcs is None:
        return ServiceProfile()
    if not isinstance(ifcs, list):
        fail(f"expected a list of initial filter criteria, got {describe(ifcs)}", f"{where}.ifcs")
    parsed: list[Ifc] = []
    seen: dict[int, int] = {}
    for index, entry in enumerate(ifcs):
        key = f"{where}.ifcs[{index}]"
        ifc = _ifc(entry, key, fail, describe)
        if ifc.priority in seen:
            fail(
                f"expected each priority once, already {where}.ifcs[{seen[ifc.priority]}]",
                f"{key}.priority",
            )
        seen[ifc.priority] = index
        parsed.append(ifc)
    return ServiceProfile(tuple(parsed))


def _ifc(value: object, where: str, fail: Fail, describe: Describe) -> Ifc:
    data = _mapping(value, IFC_KEYS, where, fail, describe)
    priority = data.get("priority")
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        missing = "required key missing; " if priority is None else ""
        got = "" if priority is None else f", got {describe(priority)}"
        fail(
            f"{missing}expected an integer 0 or more (0 is the highest priority){got}",
            f"{where}.priority",
        )
    part = data.get("profile_part")
    if part is not None and part not in PROFILE_PARTS:
        fail(f"expected {' or '.join(PROFILE_PARTS)}, got {describe(part)}", f"{where}.profile_part")
    if data.get("application_server") is None:
        fail("required key missing; expected a mapping with a 'uri'", f"{where}.application_server")
    server = _server(data["application_server"], f"{where}.application_server", fail, describe)
    trigger = None
    if data.get("trigger") is not None:
        trigger = _trigger(data["trigger"], f"{where}.trigger", fail, describe)
    return Ifc(priority=int(priority), server=server, trigger=trigger, profile_part=part)


def _server(value: object, where: str, fail: Fail, describe: Describe) -> ApplicationServer:
    data = _mapping(value, AS_KEYS, where, fail, describe)
    if data.get("uri") is None:
        fail("required key missing; expected the AS's SIP URI", f"{where}.uri")
    uri = _text(data["uri"], f"{where}.uri", fail, describe)
    try:
        parsed = parse_uri(uri)
    except ParseError:
        parsed = None
    if not isinstance(parsed, SipUri):
        fail(f"expected a sip: or sips: URI, got {describe(uri)}", f"{where}.uri")
    handling = data.get("default_handling", DEFAULT_HANDLINGS[0])
    if handling not in DEFAULT_HANDLINGS:
        fail(
            f"expected {' or '.join(DEFAULT_HANDLINGS)}, got {describe(handling)}",
            f"{where}.default_handling",
        )
    info = data.get("service_info")
    if info is not None:
        info = _text(info, f"{where}.service_info", fail, describe)
    timeout: object = data.get("response_timeout", DEFAULT_AS_TIMEOUT)
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 64
    ):
        fail(
            "expected seconds above 0 and at most 64 to wait for the AS's first response "
            f"(null: the transaction's Timer B), got {describe(timeout)}",
            f"{where}.response_timeout",
        )
    return ApplicationServer(
        uri=uri,
        default_handling=handling,
        service_info=info,
        response_timeout=None if timeout is None else float(timeout),
        include_register_request=_flag(
            data.get("include_register_request"), f"{where}.include_register_request", fail, describe
        ),
        include_register_response=_flag(
            data.get("include_register_response"), f"{where}.include_register_response", fail, describe
        ),
    )


def _trigger(value: object, where: str, fail: Fail, describe: Describe) -> TriggerPoint:
    data = _mapping(value, TRIGGER_KEYS, where, fail, describe)
    condition = data.get("condition", "cnf")
    if condition not in ("cnf", "dnf"):
        fail(
            f"expected cnf (AND of groups of ORs) or dnf (OR of groups of ANDs), "
            f"got {describe(condition)}",
            f"{where}.condition",
        )
    spts = data.get("spts")
    if not isinstance(spts, list) or not spts:
        got = "an empty list" if spts == [] else describe(spts)
        fail(
            "expected a list of service point triggers (leave 'trigger' out to match always), "
            f"got {got}",
            f"{where}.spts",
        )
    return TriggerPoint(
        cnf=condition == "cnf",
        spts=tuple(_spt(s, f"{where}.spts[{i}]", fail, describe) for i, s in enumerate(spts)),
    )


def _spt(value: object, where: str, fail: Fail, describe: Describe) -> Spt:
    keys = (*SPT_KINDS, *SPT_EXTRA_KEYS)
    data = _mapping(value, keys, where, fail, describe)
    kinds = [k for k in SPT_KINDS if k in data]
    if len(kinds) != 1:
        got = "none" if not kinds else ", ".join(kinds)
        fail(f"expected exactly one of: {', '.join(SPT_KINDS)}, got {got}", where)
    kind = kinds[0]
    spt_value = _text(data[kind], f"{where}.{kind}", fail, describe)
    if kind == "session_case" and spt_value not in SESSION_CASES:
        fail(
            f"expected one of: {', '.join(SESSION_CASES)}, got {describe(spt_value)}", f"{where}.{kind}"
        )
    content = data.get("content")
    if content is not None:
        content = _text(content, f"{where}.content", fail, describe)
    types = data.get("registration_type")
    registration_types: tuple[str, ...] = ()
    if types is not None:
        listed = types if isinstance(types, list) else [types]
        for item in listed:
            if item not in REGISTRATION_TYPES:
                fail(
                    f"expected registration types of: {', '.join(REGISTRATION_TYPES)}, "
                    f"got {describe(item)}",
                    f"{where}.registration_type",
                )
        registration_types = tuple(str(item) for item in listed)
    group = data.get("group", 0)
    groups = group if isinstance(group, list) else [group]
    if not groups or any(isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in groups):
        fail(
            f"expected a group number 0 or more, or a list of them, got {describe(group)}",
            f"{where}.group",
        )
    negated = _flag(data.get("negated"), f"{where}.negated", fail, describe)
    problem: str | None = None
    try:
        return Spt(
            kind=kind,
            value=spt_value,
            content=content,
            registration_types=registration_types,
            negated=negated,
            groups=tuple(g for g in groups if isinstance(g, int)),
        )
    except ValueError as exc:  # a pattern that does not compile, content on the wrong kind ...
        problem = str(exc)
    fail(problem, where)
