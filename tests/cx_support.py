"""Helpers for the tests of Cx with several S-CSCF processes (tests/test_cx_workers.py,
tests/test_cx_pool.py).

The HSS is :class:`test_hss_scscf.HssThread` (our ``CxHss`` and ``HssServer`` on a loopback TCP
port, with the control socket ``imscore hss rtr`` talks to); a :class:`~diameter_relay.DiameterRelay`
sits between it and the S-CSCF processes and records every Diameter message, so that a test reads
the Server-Assignment-Type and Origin-Host of each SAR and the Destination-Host of each RTR as they
went over the wire. The HSS's own view is read from its state and asked by UAR with our own
:class:`~imscore.diameter.client.CxClient` (a second peer, as an I-CSCF would).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

from diameter_relay import DiameterRelay
from test_hss_scscf import HssThread

from imscore.diameter import dictionary as d
from imscore.diameter.client import CxClient
from imscore.diameter.messages import result_of
from imscore.sip import Request, Response

V = d.VENDOR_3GPP
DOMAIN = "ims.example.test"
ALICE = f"sip:alice@{DOMAIN}"
ALICE_IMPI = f"alice@{DOMAIN}"
#: the Server-Assignment-Types the tests read
REGISTRATION, RE_REGISTRATION = d.REGISTRATION, d.RE_REGISTRATION
USER_DEREGISTRATION = d.USER_DEREGISTRATION
REGINFO = "{urn:ietf:params:xml:ns:reginfo}"


def cer_hosts(relay: DiameterRelay) -> list[str]:
    """The Origin-Host of every CER the S-CSCF processes sent, in order."""
    hosts = []
    for message in relay.messages("up"):
        if message.request and message.command == d.CER:
            found = message.find(d.ORIGIN_HOST)
            hosts.append("" if found is None else found.as_str())
    return hosts


def sars(relay: DiameterRelay) -> list[tuple[int, str]]:
    """(Server-Assignment-Type, Origin-Host) of every SAR sent other than NO_ASSIGNMENT lookups."""
    out = []
    for message in relay.messages("up"):
        if not (message.request and message.command == d.SAR):
            continue
        kind = message.find(d.SERVER_ASSIGNMENT_TYPE, V)
        host = message.find(d.ORIGIN_HOST)
        if kind is not None and kind.as_u32() != d.NO_ASSIGNMENT:
            out.append((kind.as_u32(), "" if host is None else host.as_str()))
    return out


def wait_sars(relay: DiameterRelay, count: int, timeout: float = 10.0) -> list[tuple[int, str]]:
    """The SARs once there are ``count`` of them (bounded in time)."""
    deadline = time.monotonic() + timeout
    while len(sars(relay)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return sars(relay)


def rtas(relay: DiameterRelay) -> list[tuple[str, object]]:
    """(Origin-Host, result) of every RTA the S-CSCF processes answered."""
    out = []
    for message in relay.messages("up"):
        if not message.request and message.command == d.RTR:
            host = message.find(d.ORIGIN_HOST)
            out.append(("" if host is None else host.as_str(), result_of(message)))
    return out


def assignment(hss: HssThread, impu: str = ALICE) -> tuple[str, str | None, str | None]:
    """The HSS's (state, Server-Name, Diameter host of the S-CSCF) for ``impu``'s set."""

    async def read() -> tuple[str, str | None, str | None]:
        subscriber = await hss.hss.store.get_by_impu(impu)
        assert subscriber is not None
        implicit_set = subscriber.implicit_set_of(impu)
        assert implicit_set is not None
        state = hss.hss.assignment(subscriber, implicit_set)
        return state.state, state.server_name, state.peer_host

    result: tuple[str, str | None, str | None] = hss.call(read())
    return result


def uar(
    address: tuple[str, int], impu: str, impi: str, kind: int = d.UAT_REGISTRATION
) -> tuple[Any, str | None]:
    """Ask the HSS by UAR, as an I-CSCF would: its result and Server-Name."""

    async def main() -> tuple[Any, str | None]:
        client = await CxClient.connect(
            *address,
            origin_host="icscf.ims.example.test",
            origin_realm=DOMAIN,
            destination_realm=DOMAIN,
        )
        try:
            answer = await client.uar(impu, impi, kind=kind)
        finally:
            await client.close()
        name = answer.find(d.SERVER_NAME, V)
        return result_of(answer), None if name is None else name.as_str()

    return asyncio.run(asyncio.wait_for(main(), 10))


def hss_command(hss: HssThread, command: str, impi: str = ALICE_IMPI) -> dict[str, Any]:
    """``imscore hss rtr|ppr --impi IMPI`` through the HSS's control socket; its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-m", "imscore", "hss", command, "--control", hss.control, "--impi", impi],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


def rtr(hss: HssThread, impi: str = ALICE_IMPI) -> dict[str, Any]:
    """``imscore hss rtr --impi IMPI``; its JSON answer."""
    return hss_command(hss, "rtr", impi)


def eventually(check: Callable[[], object], expected: object, seconds: float = 10.0) -> object:
    """``check()`` until it returns ``expected`` (bounded in time); the last value."""
    deadline = time.monotonic() + seconds
    value = check()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        value = check()
    return value


def final_notify(
    receive: Callable[[], Request | Response], answer: Callable[[Request], None]
) -> Request:
    """Read messages until a NOTIFY whose Subscription-State is terminated (each NOTIFY answered
    200); that one."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        message = receive()
        if isinstance(message, Request) and message.method == "NOTIFY":
            answer(message)
            if (message.headers.get("Subscription-State") or "").startswith("terminated"):
                return message
    raise AssertionError("no terminating NOTIFY")


def contact_states(notify: Request) -> list[tuple[str, str]]:
    """(state, event) of every ``<contact>`` of every registration of a reginfo NOTIFY."""
    root = ET.fromstring(notify.body)
    return [
        (contact.get("state") or "", contact.get("event") or "")
        for registration in root.findall(f"{REGINFO}registration")
        for contact in registration.findall(f"{REGINFO}contact")
    ]


def assert_ended(notify: Request, reason: str, contacts: str | None = None) -> None:
    """``notify`` ends its subscription with ``reason`` (RFC 6665 §4.2.2), and every contact it
    names (in each registration of the set) is terminated with the event ``contacts`` — the same
    as ``reason`` unless given, as after an RTR (RFC 3680 §5.1)."""
    state = notify.headers.get("Subscription-State")
    assert state == f"terminated;reason={reason}", (state, notify.body.decode())
    states = contact_states(notify)
    event = reason if contacts is None else contacts
    assert states and set(states) == {("terminated", event)}, notify.body.decode()
