"""The Cx User-Data AVP: the user profile as TS 29.228 Annex E (``IMSSubscription``) XML.

What an SAA carries for a public identity: the private identity, then one ``ServiceProfile`` with
every IMPU of that identity's implicit registration set (TS 29.228 §6.1.2: the whole set goes to
the S-CSCF), the default IMPU first, each barred one with ``<BarringIndication>1``, and the
subscriber's initial filter criteria (Annex B) when it has any. A ``tel:`` IMPU and a SIP IMPU are
both ``IdentityType`` 0 (a public user identity).

Service point triggers of imscore's own ``sip_interface`` kind have no Annex B element and are left
out of the XML (their iFC keeps its other triggers).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from typing import Final

from imscore.ifc.model import (
    REGISTRATION_TYPES,
    SESSION_CASES,
    SESSION_CONTINUED,
    SESSION_TERMINATED,
    ApplicationServer,
    Ifc,
    ServiceProfile,
    Spt,
    TriggerPoint,
)
from imscore.subscribers import ImplicitSet, Subscriber

__all__ = ["parse_ifcs", "parse_user_data", "user_data_xml"]

log = logging.getLogger("imscore.diameter.userdata")

_SPT_ELEMENT: Final = {
    "method": "Method",
    "request_uri": "RequestURI",
    "header": "SIPHeader",
    "session_case": "SessionCase",
    "session_description": "SessionDescription",
}


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = text
    return element


def _spt(parent: ET.Element, spt: Spt) -> None:
    tag = _SPT_ELEMENT.get(spt.kind)
    if tag is None:
        return
    element = ET.SubElement(parent, "SPT")
    _text(element, "ConditionNegated", "1" if spt.negated else "0")
    for group in spt.groups:
        _text(element, "Group", str(group))
    if spt.kind == "header":
        header = ET.SubElement(element, "SIPHeader")
        _text(header, "Header", spt.value)
        if spt.content is not None:
            _text(header, "Content", spt.content)
    elif spt.kind == "session_description":
        sdp = ET.SubElement(element, "SessionDescription")
        _text(sdp, "Line", spt.value)
        if spt.content is not None:
            _text(sdp, "Content", spt.content)
    elif spt.kind == "session_case":
        _text(element, "SessionCase", str(SESSION_CASES.index(spt.value)))
    else:
        _text(element, tag, spt.value)
    if spt.registration_types:
        extension = ET.SubElement(element, "Extension")
        for kind in spt.registration_types:
            _text(extension, "RegistrationType", str(REGISTRATION_TYPES.index(kind)))


def _ifc(parent: ET.Element, ifc: Ifc) -> None:
    element = ET.SubElement(parent, "InitialFilterCriteria")
    _text(element, "Priority", str(ifc.priority))
    if ifc.trigger is not None:
        trigger = ET.SubElement(element, "TriggerPoint")
        _text(trigger, "ConditionTypeCNF", "1" if ifc.trigger.cnf else "0")
        for spt in ifc.trigger.spts:
            _spt(trigger, spt)
    server = ET.SubElement(element, "ApplicationServer")
    _text(server, "ServerName", ifc.server.uri)
    handling = "1" if ifc.server.default_handling == SESSION_TERMINATED else "0"
    _text(server, "DefaultHandling", handling)
    if ifc.server.service_info is not None:
        _text(server, "ServiceInfo", ifc.server.service_info)
    if ifc.server.include_register_request or ifc.server.include_register_response:
        extension = ET.SubElement(server, "Extension")
        if ifc.server.include_register_request:
            ET.SubElement(extension, "IncludeRegisterRequest")
        if ifc.server.include_register_response:
            ET.SubElement(extension, "IncludeRegisterResponse")
    if ifc.profile_part is not None:
        _text(element, "ProfilePartIndicator", "1" if ifc.profile_part == "unregistered" else "0")


def user_data_xml(subscriber: Subscriber, implicit_set: ImplicitSet) -> bytes:
    """The ``IMSSubscription`` document for one implicit set of ``subscriber`` (UTF-8 octets)."""
    root = ET.Element("IMSSubscription")
    _text(root, "PrivateID", subscriber.impi)
    profile = ET.SubElement(root, "ServiceProfile")
    for uri in implicit_set.impus:
        identity = ET.SubElement(profile, "PublicIdentity")
        if subscriber.is_barred(uri):
            _text(identity, "BarringIndication", "1")
        _text(identity, "Identity", str(uri))
        extension = ET.SubElement(identity, "Extension")
        _text(extension, "IdentityType", "0")
    for ifc in subscriber.service_profile.ifcs:
        _ifc(profile, ifc)
    body = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode("utf-8")


def _root(data: bytes) -> ET.Element:
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(f"User-Data is not XML: {exc}") from None
    if root.tag != "IMSSubscription":
        raise ValueError(f"User-Data root is <{root.tag}>, not <IMSSubscription>")
    return root


def parse_user_data(data: bytes) -> tuple[str | None, list[tuple[str, bool]]]:
    """Read the private identity and ``(IMPU, barred)`` pairs, in order, from User-Data XML.

    :raises ValueError: the octets are not an ``IMSSubscription`` document.
    """
    root = _root(data)
    private = root.findtext("PrivateID")
    identities: list[tuple[str, bool]] = []
    for identity in root.iter("PublicIdentity"):
        text = identity.findtext("Identity")
        if text:
            identities.append((text.strip(), identity.findtext("BarringIndication") == "1"))
    return private, identities


def _flag(element: ET.Element, tag: str) -> bool:
    return (element.findtext(tag) or "0").strip() == "1"


def _read_spt(element: ET.Element) -> Spt | None:
    """One SPT, or ``None`` for a kind imscore does not know (Annex B's RegistrationType-only
    or an unknown element)."""
    negated = _flag(element, "ConditionNegated")
    groups = tuple(int((g.text or "0").strip()) for g in element.findall("Group")) or (0,)
    types = tuple(
        REGISTRATION_TYPES[int((t.text or "").strip())]
        for t in element.findall("Extension/RegistrationType")
    )
    common = {"negated": negated, "groups": groups, "registration_types": types}
    method = element.findtext("Method")
    if method is not None:
        return Spt("method", method.strip(), **common)  # type: ignore[arg-type]
    uri = element.findtext("RequestURI")
    if uri is not None:
        return Spt("request_uri", uri.strip(), **common)  # type: ignore[arg-type]
    header = element.find("SIPHeader")
    if header is not None:
        content = header.findtext("Content")
        name = (header.findtext("Header") or "").strip()
        return Spt("header", name, content, **common)  # type: ignore[arg-type]
    case = element.findtext("SessionCase")
    if case is not None:
        return Spt("session_case", SESSION_CASES[int(case.strip())], **common)  # type: ignore[arg-type]
    sdp = element.find("SessionDescription")
    if sdp is not None:
        line = (sdp.findtext("Line") or "").strip()
        return Spt("session_description", line, sdp.findtext("Content"), **common)  # type: ignore[arg-type]
    return None


def _read_ifc(element: ET.Element) -> Ifc:
    trigger: TriggerPoint | None = None
    point = element.find("TriggerPoint")
    if point is not None:
        spts = [spt for spt in map(_read_spt, point.findall("SPT")) if spt is not None]
        if not spts:
            raise ValueError("a TriggerPoint without an SPT imscore knows")
        trigger = TriggerPoint(_flag(point, "ConditionTypeCNF"), tuple(spts))
    server = element.find("ApplicationServer")
    name = None if server is None else server.findtext("ServerName")
    if server is None or not name:
        raise ValueError("an iFC without ApplicationServer/ServerName")
    handling = SESSION_TERMINATED if _flag(server, "DefaultHandling") else SESSION_CONTINUED
    part = element.findtext("ProfilePartIndicator")
    return Ifc(
        priority=int((element.findtext("Priority") or "0").strip()),
        server=ApplicationServer(
            name.strip(),
            default_handling=handling,
            service_info=server.findtext("ServiceInfo"),
            include_register_request=server.find("Extension/IncludeRegisterRequest") is not None,
            include_register_response=server.find("Extension/IncludeRegisterResponse") is not None,
        ),
        trigger=trigger,
        profile_part=None if part is None else ("unregistered" if part.strip() == "1" else "registered"),
    )


def parse_ifcs(data: bytes) -> ServiceProfile:
    """The initial filter criteria of User-Data XML (every ``ServiceProfile``'s), as
    :func:`user_data_xml` writes them (TS 29.228 Annex B/E). An iFC that cannot be read (an
    unknown trigger, a bad number) is left out and logged; the others are kept. The AS's
    ``response_timeout`` has no Annex B element and takes its default.

    :raises ValueError: the octets are not an ``IMSSubscription`` document, or two iFCs share a
        priority.
    """
    ifcs: list[Ifc] = []
    for element in _root(data).iter("InitialFilterCriteria"):
        try:
            ifcs.append(_read_ifc(element))
        except (ValueError, IndexError) as exc:
            log.warning("User-Data: an iFC left out: %s", exc)
    return ServiceProfile(tuple(ifcs))
