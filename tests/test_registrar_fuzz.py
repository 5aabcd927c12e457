"""Mutated REGISTERs (and SUBSCRIBEs) never break the registrar: every one gets a response."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from imscore.auth.digest import credentials
from imscore.plugin import create_plugin_manager
from imscore.profile import load_profile
from imscore.registrar import FlowInfo
from imscore.registrar.register import Registrar
from imscore.registrar.store import MemoryBindingStore
from imscore.sip import Request, SipError, parse_datagram
from imscore.sip.headers import parse_auth
from imscore.subscribers import MemorySubscriberStore, demo_subscribers_path

FLOW = FlowInfo("udp", ("192.0.2.10", 5062), ("127.0.0.1", 5060))
NOW = 1_800_000_000.0


def _registrar() -> Registrar:
    return Registrar(
        load_profile("default"),
        MemorySubscriberStore.from_file(demo_subscribers_path()),
        MemoryBindingStore(),
        create_plugin_manager(autoload=False),
    )


REGISTRAR = _registrar()


def _seeds() -> list[bytes]:
    head = (
        "REGISTER sip:ims.example.test SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKfuzz;rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@ims.example.test>;tag=f1\r\n"
        "To: <sip:alice@ims.example.test>\r\n"
        "Call-ID: fuzz@192.0.2.10\r\n"
        "CSeq: 7 REGISTER\r\n"
        'Contact: <sip:ue@192.0.2.10:5062>;expires=600;+sip.instance="<urn:uuid:1>";reg-id=1\r\n'
        "Supported: path\r\nPath: <sip:p@pcscf.test;lr>\r\n"
    )
    challenge = REGISTRAR.authenticator.challenge_for(
        asyncio.run(REGISTRAR.subscribers.get_by_impi("alice@ims.example.test")),  # type: ignore[arg-type]
        NOW,
    ).challenge
    assert challenge is not None
    answer = credentials(
        parse_auth(challenge, "WWW-Authenticate"),
        username="alice@ims.example.test",
        password="alice-secret",
        method="REGISTER",
        uri="sip:ims.example.test",
    )
    subscribe = head.replace("REGISTER", "SUBSCRIBE").replace("Supported: path", "Event: reg")
    return [
        (head + "Content-Length: 0\r\n\r\n").encode(),
        (head + f"Authorization: {answer}\r\nContent-Length: 0\r\n\r\n").encode(),
        (
            head.replace("Contact: <", "Contact: *, <") + "Expires: 0\r\nContent-Length: 0\r\n\r\n"
        ).encode(),
        (subscribe + "Content-Length: 0\r\n\r\n").encode(),
    ]


SEEDS = _seeds()
NOISE = [
    b";", b",", b'"', b"<", b">", b"=", b"0", b"99999999999", b"*", b"tel:+1", b"sip:", b"\r\n ",
    b"expires=", b"AKAv1-MD5", b"auts=", b'nonce=""', b"%00", b"\xff", b"reg-id=x", b"Expires: 5\r\n",
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 2))):
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.integers(0, 2))
        if op == 0:
            data[at:at] = draw(st.sampled_from(NOISE))
        elif op == 1:
            del data[at : draw(st.integers(at, min(len(data), at + 12)))]
        else:
            data[at] = draw(st.integers(32, 126))
    return bytes(data)


@given(mutated())
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_every_mutated_request_gets_a_response(data: bytes) -> None:
    try:
        message = parse_datagram(data)
        if not isinstance(message, Request):
            return
        message.check_framing_headers()
    except SipError:
        event("refused before the registrar")
        return  # the transport answers these; the registrar never sees them
    if message.method == "SUBSCRIBE":
        response, _ = asyncio.run(REGISTRAR.subscribe(message, FLOW, "<sip:127.0.0.1:5060>", NOW))
    elif message.method == "REGISTER":
        response = asyncio.run(REGISTRAR.register(message, FLOW, NOW)).response
    else:
        return
    event(f"{message.method} answered {response.status}")
    assert 200 <= response.status <= 699
    assert response.call_id == message.call_id
