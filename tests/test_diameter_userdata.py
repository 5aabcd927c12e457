"""User-Data XML (TS 29.228 Annex E) built from a subscriber: the implicit set, barring, iFCs."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import yaml

from imscore.diameter.userdata import parse_user_data, user_data_xml
from imscore.subscribers import subscribers_from_data

SUBSCRIBERS = """\
subscribers:
  - impi: alice@ims.example.test
    password: x
    implicit_sets:
      - [sip:alice@ims.example.test, sip:alice.old@ims.example.test, tel:+15551230001]
      - [sip:alice.work@ims.example.test]
    barred: [sip:alice.old@ims.example.test]
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


def test_user_data_lists_the_implicit_set_with_barring_and_the_ifcs() -> None:
    (alice,) = subscribers_from_data(yaml.safe_load(SUBSCRIBERS), source="t")
    first, second = alice.implicit_sets
    raw = user_data_xml(alice, first)
    assert raw.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<IMSSubscription>')
    assert parse_user_data(raw) == (
        "alice@ims.example.test",
        [
            ("sip:alice@ims.example.test", False),
            ("sip:alice.old@ims.example.test", True),
            ("tel:+15551230001", False),
        ],
    )
    assert parse_user_data(user_data_xml(alice, second))[1] == [
        ("sip:alice.work@ims.example.test", False)
    ]
    root = ET.fromstring(raw)
    barred = root.find("ServiceProfile/PublicIdentity[2]")
    assert barred is not None
    # tPublicIdentity: BarringIndication before Identity (Annex E)
    assert [child.tag for child in barred] == ["BarringIndication", "Identity", "Extension"]
    ifcs = root.findall("ServiceProfile/InitialFilterCriteria")
    assert [ifc.findtext("Priority") for ifc in ifcs] == ["2", "10"]
    unregistered, register = ifcs
    assert unregistered.findtext("ProfilePartIndicator") == "1"
    assert unregistered.find("TriggerPoint") is None
    assert register.findtext("TriggerPoint/ConditionTypeCNF") == "0"
    method, header = register.findall("TriggerPoint/SPT")
    assert method.findtext("Method") == "REGISTER"
    assert [e.text for e in method.findall("Extension/RegistrationType")] == ["0", "2"]
    assert header.findtext("ConditionNegated") == "1"
    assert [g.text for g in header.findall("Group")] == ["0", "1"]
    assert header.findtext("SIPHeader/Header") == "Subject"
    assert header.findtext("SIPHeader/Content") == "^x"
    server = register.find("ApplicationServer")
    assert server is not None
    assert server.findtext("ServerName") == "sip:127.0.0.1:5070"
    assert server.findtext("DefaultHandling") == "1"
    assert server.findtext("ServiceInfo") == "<x/>"
    assert server.find("Extension/IncludeRegisterRequest") is not None


def test_user_data_that_is_not_an_ims_subscription_is_refused() -> None:
    import pytest

    with pytest.raises(ValueError, match="not XML"):
        parse_user_data(b"<IMSSubscription>")
    with pytest.raises(ValueError, match="not <IMSSubscription>"):
        parse_user_data(b"<x/>")
