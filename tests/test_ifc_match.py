"""The iFC matching rules (TS 29.228 Annex B/C) as a table, the ``service_profile`` of a subscriber
file, and the ``ims_ifc_match`` hook a vendor may replace."""

from __future__ import annotations

from pathlib import Path

import pytest

from imscore.ifc import ApplicationServer, Ifc, IfcFacts, ServiceProfile, Spt, TriggerPoint
from imscore.ifc.match import matching_ifcs
from imscore.plugin import create_plugin_manager, hookimpl
from imscore.sip import Request
from imscore.subscribers import SubscriberError, load_subscribers

AS = ApplicationServer("sip:as.example.test")
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=video 4000 RTP/AVP 96\r\n"
)


def request(method: str = "INVITE", uri: str = "sip:bob@ims.example.test", **headers: str) -> Request:
    fields: list[tuple[str, object]] = [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKabc"),
        ("From", "<sip:alice@ims.example.test>;tag=a"),
        ("To", f"<{uri}>"),
        ("Call-ID", "c@x"),
        ("CSeq", f"1 {method}"),
        ("Max-Forwards", 70),
    ]
    fields.extend((name.replace("_", "-"), value) for name, value in headers.items())
    return Request(method, uri, fields)


def spt(kind: str, value: str, **extra: object) -> Spt:
    return Spt(kind, value, **extra)  # type: ignore[arg-type]


ORIG = IfcFacts("originating", interface="udp:127.0.0.1:5060")
TERM = IfcFacts("terminating_registered", interface="tcp:127.0.0.1:5060")
UNREG = IfcFacts("terminating_unregistered", registered=False)
INITIAL = IfcFacts("originating", registration_type="initial")
DEREG = IfcFacts("originating", registration_type="de-registration")

with_sdp = request(Content_Type="application/sdp")
with_sdp.body = SDP

#: (what, trigger (None: always), request, facts, matches)
TABLE: list[tuple[str, TriggerPoint | None, Request, IfcFacts, bool]] = [
    ("no trigger point: every initial request", None, request(), ORIG, True),
    ("method equal", TriggerPoint(True, (spt("method", "INVITE"),)), request(), ORIG, True),
    ("method differs", TriggerPoint(True, (spt("method", "INVITE"),)), request("MESSAGE"), ORIG, False),
    ("method is case-sensitive", TriggerPoint(True, (spt("method", "invite"),)), request(), ORIG, False),
    (
        "negated method",
        TriggerPoint(True, (spt("method", "INVITE", negated=True),)),
        request("MESSAGE"),
        ORIG,
        True,
    ),
    (
        "REGISTER of the type listed",
        TriggerPoint(True, (spt("method", "REGISTER", registration_types=("initial",)),)),
        request("REGISTER"),
        INITIAL,
        True,
    ),
    (
        "REGISTER of another type",
        TriggerPoint(True, (spt("method", "REGISTER", registration_types=("initial",)),)),
        request("REGISTER"),
        DEREG,
        False,
    ),
    (
        "REGISTER without types: any",
        TriggerPoint(True, (spt("method", "REGISTER"),)),
        request("REGISTER"),
        DEREG,
        True,
    ),
    (
        "Request-URI pattern found",
        TriggerPoint(True, (spt("request_uri", "^sip:bob@"),)),
        request(),
        ORIG,
        True,
    ),
    (
        "Request-URI pattern not found",
        TriggerPoint(True, (spt("request_uri", r"^tel:\+1"),)),
        request(),
        ORIG,
        False,
    ),
    (
        "header present",
        TriggerPoint(True, (spt("header", "Subject"),)),
        request(Subject="hi"),
        ORIG,
        True,
    ),
    (
        "header present, compact form",
        TriggerPoint(True, (spt("header", "Subject"),)),
        request(s="hi"),
        ORIG,
        True,
    ),
    ("header absent", TriggerPoint(True, (spt("header", "Subject"),)), request(), ORIG, False),
    (
        "negated header without content: absence",
        TriggerPoint(True, (spt("header", "Subject", negated=True),)),
        request(),
        ORIG,
        True,
    ),
    (
        "header content matches",
        TriggerPoint(True, (spt("header", "Accept-Contact", content="video"),)),
        request(Accept_Contact="*;video"),
        ORIG,
        True,
    ),
    (
        "header content does not",
        TriggerPoint(True, (spt("header", "Accept-Contact", content="video"),)),
        request(Accept_Contact="*;audio"),
        ORIG,
        False,
    ),
    (
        "session case equal",
        TriggerPoint(True, (spt("session_case", "originating"),)),
        request(),
        ORIG,
        True,
    ),
    (
        "session case differs",
        TriggerPoint(True, (spt("session_case", "originating"),)),
        request(),
        TERM,
        False,
    ),
    (
        "terminating unregistered",
        TriggerPoint(True, (spt("session_case", "terminating_unregistered"),)),
        request(),
        UNREG,
        True,
    ),
    (
        "SDP line content",
        TriggerPoint(True, (spt("session_description", "m", content="^video"),)),
        with_sdp,
        ORIG,
        True,
    ),
    (
        "SDP line of another type",
        TriggerPoint(True, (spt("session_description", "m", content="^audio"),)),
        with_sdp,
        ORIG,
        False,
    ),
    (
        "SDP without a body",
        TriggerPoint(True, (spt("session_description", "m", content="video"),)),
        request(),
        ORIG,
        False,
    ),
    ("SIP interface", TriggerPoint(True, (spt("sip_interface", "^tcp:"),)), request(), TERM, True),
    (
        "SIP interface differs",
        TriggerPoint(True, (spt("sip_interface", "^tcp:"),)),
        request(),
        ORIG,
        False,
    ),
    (
        "SIP interface unknown (expiry)",
        TriggerPoint(True, (spt("sip_interface", ".*"),)),
        request(),
        UNREG,
        False,
    ),
    # CNF: every group needs one SPT; DNF: one group needs every SPT
    (
        "CNF: (INVITE or MESSAGE) and originating",
        TriggerPoint(
            True,
            (
                spt("method", "INVITE", groups=(0,)),
                spt("method", "MESSAGE", groups=(0,)),
                spt("session_case", "originating", groups=(1,)),
            ),
        ),
        request("MESSAGE"),
        ORIG,
        True,
    ),
    (
        "CNF: one group fails",
        TriggerPoint(
            True,
            (
                spt("method", "INVITE", groups=(0,)),
                spt("method", "MESSAGE", groups=(0,)),
                spt("session_case", "originating", groups=(1,)),
            ),
        ),
        request("MESSAGE"),
        TERM,
        False,
    ),
    (
        "DNF: (INVITE and originating) or (MESSAGE and terminating)",
        TriggerPoint(
            False,
            (
                spt("method", "INVITE", groups=(0,)),
                spt("session_case", "originating", groups=(0,)),
                spt("method", "MESSAGE", groups=(1,)),
                spt("session_case", "terminating_registered", groups=(1,)),
            ),
        ),
        request("MESSAGE"),
        TERM,
        True,
    ),
    (
        "DNF: no group holds whole",
        TriggerPoint(
            False,
            (
                spt("method", "INVITE", groups=(0,)),
                spt("session_case", "originating", groups=(0,)),
                spt("method", "MESSAGE", groups=(1,)),
                spt("session_case", "terminating_registered", groups=(1,)),
            ),
        ),
        request("MESSAGE"),
        ORIG,
        False,
    ),
    (
        "an SPT in two groups (CNF)",
        TriggerPoint(
            True, (spt("method", "INVITE", groups=(0, 1)), spt("header", "Subject", groups=(1,)))
        ),
        request(),
        ORIG,
        True,
    ),
    (
        "CNF: a group without a matching SPT fails",
        TriggerPoint(
            True, (spt("method", "INVITE", groups=(0,)), spt("header", "Subject", groups=(1,)))
        ),
        request(),
        ORIG,
        False,
    ),
    (
        "same SPTs as DNF differ from CNF",
        TriggerPoint(
            False, (spt("method", "MESSAGE", groups=(0,)), spt("method", "INVITE", groups=(0,)))
        ),
        request(),
        ORIG,
        False,
    ),
]


@pytest.mark.parametrize(
    ("what", "trigger", "message", "facts", "expected"), TABLE, ids=[r[0] for r in TABLE]
)
def test_matching_rules(
    what: str, trigger: TriggerPoint | None, message: Request, facts: IfcFacts, expected: bool
) -> None:
    ifc = Ifc(0, AS, trigger)
    assert matching_ifcs(message, [ifc], facts) == ((ifc,) if expected else ())


def test_profile_part_and_priority_order() -> None:
    first = Ifc(0, ApplicationServer("sip:a.example.test"), profile_part="registered")
    second = Ifc(5, ApplicationServer("sip:b.example.test"), profile_part="unregistered")
    third = Ifc(7, ApplicationServer("sip:c.example.test"))
    profile = ServiceProfile((third, second, first))
    assert profile.ifcs == (first, second, third)
    assert matching_ifcs(request(), profile.ifcs, ORIG) == (first, third)
    assert matching_ifcs(request(), profile.ifcs, UNREG) == (second, third)
    assert profile.after(0) == (second, third) and profile.after(None) == profile.ifcs
    with pytest.raises(ValueError, match="priority 0"):
        ServiceProfile((first, Ifc(0, AS)))


def test_the_hook_uses_the_3gpp_rules_and_a_plugin_may_replace_them() -> None:
    ifcs = (Ifc(0, AS, TriggerPoint(True, (spt("method", "MESSAGE"),))), Ifc(1, AS))
    plugins = create_plugin_manager()
    assert tuple(plugins.hook.ims_ifc_match(request=request(), ifcs=ifcs, facts=ORIG)) == ifcs[1:]

    class OnlyTheFirst:
        @hookimpl
        def ims_ifc_match(
            self, request: Request, ifcs: tuple[Ifc, ...], facts: IfcFacts
        ) -> tuple[Ifc, ...]:
            return ifcs[:1]

    plugins.register(OnlyTheFirst())
    assert tuple(plugins.hook.ims_ifc_match(request=request(), ifcs=ifcs, facts=ORIG)) == ifcs[:1]


GOOD = """\
subscribers:
  - impi: alice@ims.example.test
    password: x
    implicit_sets: [[sip:alice@ims.example.test]]
    service_profile:
      ifcs:
        - priority: 10
          trigger:
            condition: dnf
            spts:
              - {method: REGISTER, registration_type: [initial, de-registration]}
              - {header: Subject, content: '^x', negated: true, group: [0, 1]}
          application_server:
            uri: sip:127.0.0.1:5070
            default_handling: session-terminated
            service_info: <x/>
            include_register_request: true
        - priority: 2
          profile_part: unregistered
          application_server: {uri: 'sip:vm@127.0.0.1:5071'}
"""


def test_a_service_profile_is_read_from_the_subscriber_file(tmp_path: Path) -> None:
    path = tmp_path / "subs.yaml"
    path.write_text(GOOD)
    (alice,) = load_subscribers(path)
    first, second = alice.service_profile.ifcs
    assert (first.priority, first.profile_part, first.trigger) == (2, "unregistered", None)
    assert first.server == ApplicationServer("sip:vm@127.0.0.1:5071")
    assert second.server == ApplicationServer(
        "sip:127.0.0.1:5070", "session-terminated", "<x/>", include_register_request=True
    )
    assert second.trigger is not None and not second.trigger.cnf
    register, subject = second.trigger.spts
    assert register == Spt("method", "REGISTER", registration_types=("initial", "de-registration"))
    assert subject == Spt("header", "Subject", content="^x", negated=True, groups=(0, 1))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "priority: 2\n",
            "priority: 10\n",
            "key 'service_profile.ifcs[1].priority': expected each priority once, already",
        ),
        (
            "priority: 2\n",
            "priority: -1\n",
            "key 'service_profile.ifcs[1].priority': expected an integer 0 or more",
        ),
        (
            "condition: dnf",
            "condition: and",
            "key 'service_profile.ifcs[0].trigger.condition': expected cnf (AND of groups of ORs)",
        ),
        (
            "{method: REGISTER,",
            "{method: REGISTER, request_uri: x,",
            "key 'service_profile.ifcs[0].trigger.spts[0]': expected exactly one of: method",
        ),
        (
            "initial, de-registration",
            "initial, refresh",
            "key 'service_profile.ifcs[0].trigger.spts[0].registration_type': expected",
        ),
        (
            "content: '^x'",
            "content: '(x'",
            "key 'service_profile.ifcs[0].trigger.spts[1]': expected a regular expression for content",
        ),
        (
            "group: [0, 1]",
            "group: [0, one]",
            "key 'service_profile.ifcs[0].trigger.spts[1].group': expected a group number 0 or more",
        ),
        (
            "uri: sip:127.0.0.1:5070",
            "uri: tel:+1555",
            "key 'service_profile.ifcs[0].application_server.uri': expected a sip: or sips: URI",
        ),
        (
            "default_handling: session-terminated",
            "default_handling: drop",
            "key 'service_profile.ifcs[0].application_server.default_handling': expected session-",
        ),
        (
            "include_register_request: true",
            "include_register_request: 1",
            "key 'service_profile.ifcs[0].application_server.include_register_request': expected true",
        ),
        (
            "profile_part: unregistered",
            "profile_part: roaming",
            "key 'service_profile.ifcs[1].profile_part': expected registered or unregistered",
        ),
        (
            "          application_server: {uri: 'sip:vm@127.0.0.1:5071'}\n",
            "",
            "key 'service_profile.ifcs[1].application_server': required key missing",
        ),
        (
            "    service_profile:\n      ifcs:",
            "    service_profile:\n      ifc:",
            "key 'service_profile.ifc': unknown key; expected one of: ifcs",
        ),
    ],
)
def test_a_bad_service_profile_names_the_file_entry_key_and_what_was_expected(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    path = tmp_path / "subs.yaml"
    assert old in GOOD
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(SubscriberError) as caught:
        load_subscribers(path)
    assert str(caught.value).startswith(f"{path}: subscribers[0] (alice@ims.example.test): {message}")
