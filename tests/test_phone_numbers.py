"""A user=phone SIP URI is the tel number it stands for (RFC 3261 §19.1.6, TS 24.229), and an
unknown user's 404 says what was looked up (issue 16). Over real loopback UDP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sipua import Caller, Phone

from imscore.registrar.identity import phone_number
from imscore.sip import SipUri
from imscore.testing import RunningServer, start_server

PHONE_FORM = "sip:+15551230001@ims.example.test;user=phone"


@pytest.fixture
def server() -> Iterator[RunningServer]:
    running = start_server("multi-device", transports=("udp",))
    try:
        yield running
    finally:
        running.stop()


def test_the_number_of_a_user_phone_uri() -> None:
    assert str(phone_number(SipUri.parse(PHONE_FORM))) == "tel:+15551230001"
    assert str(phone_number(SipUri.parse("sip:+1-555-123-0001@x;user=phone"))) == "tel:+1-555-123-0001"
    assert phone_number(SipUri.parse("sip:+15551230001@ims.example.test")) is None  # no user=phone
    assert phone_number(SipUri.parse("sip:5551230001@ims.example.test;user=phone")) is None  # local
    assert phone_number(SipUri.parse("sip:alice@ims.example.test;user=phone")) is None


def test_calling_alice_the_way_phones_dial_rings_her(server: RunningServer) -> None:
    phone = Phone(server.address("udp"), "app")
    caller = Caller(server.address("udp"))
    try:
        assert phone.register().status == 200
        caller.invite(PHONE_FORM)
        invite = phone.expect("INVITE")
        phone.reply(invite, 486)  # type: ignore[arg-type]
        assert caller.expect("final").status == 486  # type: ignore[union-attr]
        caller.invite("sip:+15559999999@ims.example.test;user=phone", cseq=2)
        unknown = caller.expect("final")
        assert unknown.status == 404  # type: ignore[union-attr]
        expected = "Not Found: no user has sip:+15559999999@ims.example.test;user=phone"
        assert unknown.reason == expected  # type: ignore[union-attr]
    finally:
        phone.close()
        caller.close()


def test_registering_the_user_phone_form_registers_alices_set(server: RunningServer) -> None:
    phone = Phone(server.address("udp"), "app", impu=PHONE_FORM)
    try:
        ok = phone.register()
        assert ok.status == 200
        associated = [str(a.uri) for a in ok.p_associated_uri]
        assert "tel:+15551230001" in associated and "sip:alice@ims.example.test" in associated
    finally:
        phone.close()


def test_a_404_says_what_was_looked_up(server: RunningServer) -> None:
    """baresip with auth_user unset answers the challenge with username "alice": the 404 says
    which private identity was looked up and what is expected."""
    phone = Phone(server.address("udp"), "app", impi="alice")
    try:
        refused = phone.register()  # 401 (alice's To is known), then credentials for "alice"
        assert refused.status == 404
        assert refused.reason == (
            "Unknown user: no private identity 'alice' (the username is the full private identity, "
            "user@realm)"
        )
    finally:
        phone.close()
