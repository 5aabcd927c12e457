"""Mutated requests through the proxy never break the server: it keeps answering and routing.

A running server (real loopback UDP) with a registered device receives a few hundred mutated
INVITEs, CANCELs, ACKs, BYEs and MESSAGEs (seeded, so a failure reproduces); afterwards it must
still answer OPTIONS, still route a good INVITE to the device, and have logged no unhandled
exception. ``IMSCORE_FUZZ_COUNT`` raises the count for a longer opt-in run.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import replace

import pytest
from sipua import Agent, Caller, Phone

from imscore.profile import load_profile
from imscore.profile.model import ProxySettings, Timers
from imscore.sip import Request, Response
from imscore.testing import start_server

COUNT = int(os.environ.get("IMSCORE_FUZZ_COUNT", "300"))

NOISE = [
    b";", b",", b'"', b"<", b">", b"=", b"0", b"99999999999", b"*", b"tel:+1", b"sip:", b"\r\n ",
    b"%00", b"\xff", b"branch=", b"z9hG4bK", b"Route: <sip:127.0.0.1;lr>\r\n", b"Max-Forwards: 0\r\n",
    b"To: <sip:x@y>;tag=1\r\n", b"CSeq: 1 CANCEL\r\n", b"Via: SIP/2.0/UDP 127.0.0.1:9\r\n", b"\r\n\r\n",
    b"Content-Length: 99\r\n", b"Proxy-Require: foo\r\n", b"Record-Route: <sip:[::1];lr>\r\n",
]  # fmt: skip


def seeds(caller: Caller, target: str, device_uri: str) -> list[bytes]:
    out = []
    for method, uri, extra in [
        ("INVITE", target, []),
        ("MESSAGE", target, [("Content-Type", "text/plain")]),
        ("INVITE", "tel:+15551230001", []),
        ("BYE", device_uri, []),
        ("ACK", device_uri, []),
        ("CANCEL", target, []),
        ("OPTIONS", target, []),
        ("INFO", "sip:other@elsewhere.test", []),
    ]:
        request = caller.request(
            method, uri, headers=extra, to_tag="t1" if method in ("BYE", "ACK") else None
        )
        out.append(request.to_bytes())
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        action = rng.random()
        at = rng.randrange(len(out) + 1)
        if action < 0.4:
            out[at:at] = rng.choice(NOISE)
        elif action < 0.7 and out:
            del out[at : at + rng.randint(1, 12)]
        elif out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
    return bytes(out)


def test_mutated_requests_leave_the_proxy_serving(caplog: pytest.LogCaptureFixture) -> None:
    profile = replace(
        load_profile("multi-device"),
        timers=Timers(t1=0.02, t2=0.08, t4=0.1),
        proxy=ProxySettings(record_route=True),
    )
    running = start_server(profile, transports=("udp",))
    phone = Phone(running.address("udp"), "device")
    caller = Caller(running.address("udp"))
    noise_sink = Agent(running.address("udp"), "sink")  # sends the mutations, ignores answers
    phone.strict = False  # it gets fuzzed requests the proxy forwards (a bad Contact is not its job)
    try:
        assert phone.register().status == 200
        rng = random.Random(20261124)
        corpus = seeds(noise_sink, "sip:alice@ims.example.test", phone.contact_uri)
        with caplog.at_level(logging.ERROR):
            for _ in range(COUNT):
                noise_sink.sock.sendto(mutate(rng, rng.choice(corpus)), noise_sink.server)
            time.sleep(0.5)  # let the last ones be handled
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors[:5]]
        # still serving: OPTIONS to the server itself, and a good INVITE routed to the device
        host, port = running.address("udp")
        caller.send(caller.request("OPTIONS", f"sip:{host}:{port}"))
        assert caller.expect("200", 5).status == 200  # type: ignore[union-attr]
        caller.invite("sip:alice@ims.example.test")
        while True:  # the device also saw (and ignores) fuzzed INVITEs: find the good one
            invite = phone.expect("INVITE", 5)
            assert isinstance(invite, Request)
            if invite.call_id.endswith("@caller") and invite.from_.tag == caller.tag:
                break
        phone.reply(invite, 486)
        final = caller.expect("final", 5)
        assert isinstance(final, Response) and final.status == 486
    finally:
        for agent in (phone, caller, noise_sink):
            agent.close()
        running.stop()
