"""Default handling of requests routed to an application server that is not reached (TS 24.229
§5.4.3.2 step 4, §5.4.3.3; TS 23.218 §6.4): a SIPp AS that never answers, a proxy AS that answers
500 before any provisional response, and an AS nothing listens on, under session-continued (the
next iFC, then the destination) and session-terminated (the caller gets the failure); the AS's
own short response timeout rather than Timer B. Real loopback UDP/TCP."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sipua import Phone
from test_ifc_routing import ProxyAs, subscribers
from test_ifc_thirdparty import SippAs

from imscore.profile import load_profile
from imscore.sip import Request, Response
from imscore.sip.transaction import build_ack
from imscore.testing import RunningServer, start_server

DOMAIN = "ims.example.test"
BOB = f"sip:bob@{DOMAIN}"
ORIGINATING = "{session_case: originating}"


def as_ifc(priority: int, uri: str, handling: str, timeout: float | None = 0.5) -> str:
    """An originating INVITE iFC to ``uri`` with a default handling and a response timeout."""
    shown = "null" if timeout is None else str(timeout)
    return (
        f"        - priority: {priority}\n"
        f"          trigger: {{spts: [{ORIGINATING}, {{method: INVITE, group: 1}}]}}\n"
        f"          application_server: {{uri: '{uri}', default_handling: {handling}, "
        f"response_timeout: {shown}}}\n"
    )


def server(tmp_path: Path, alice_ifcs: str) -> RunningServer:
    # the default timers: Timer B is 32 s, far beyond every wait of these tests
    return start_server(
        load_profile("multi-device"), transports=("udp",), subscribers=subscribers(tmp_path, alice_ifcs)
    )


@pytest.fixture
def phones() -> Iterator[list[Phone]]:
    made: list[Phone] = []
    yield made
    for phone in made:
        phone.close()


def alice_and_bob(running: RunningServer, phones: list[Phone]) -> tuple[Phone, Phone]:
    alice = Phone(running.address("udp"), "alice")
    bob = Phone(running.address("udp"), "bob", f"bob@{DOMAIN}", "bob-secret", BOB)
    phones += [alice, bob]
    assert alice.register().status == 200 and bob.register().status == 200
    return alice, bob


@pytest.fixture
def closed_tcp_port() -> Iterator[int]:
    """A loopback TCP port bound but not listening for the whole test: a connection to it is
    refused, and no other process can take it meanwhile (a port closed before use could be, and
    another server's answer would come back instead)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


def bob_busy(alice: Phone, bob: Phone, invite: Request) -> None:
    ringing = bob.expect("INVITE", timeout=5)
    assert isinstance(ringing, Request) and str(ringing.uri) == bob.contact_uri
    bob.reply(ringing, 486)
    busy = alice.expect("final", timeout=5)
    assert isinstance(busy, Response) and busy.status == 486
    alice.send(build_ack(invite, busy))


def test_session_continued_skips_a_silent_as_after_its_response_timeout(
    tmp_path: Path, phones: list[Phone]
) -> None:
    silent = SippAs("as-silent.xml", tmp_path)
    next_as = ProxyAs(("127.0.0.1", 9), "next-as")
    try:
        running = server(
            tmp_path,
            as_ifc(0, silent.uri, "session-continued") + as_ifc(1, next_as.uri, "session-continued"),
        )
        try:
            alice, bob = alice_and_bob(running, phones)
            invite = alice.invite(BOB)
            (seen,) = silent.wait_for("INVITE", 1)
            assert seen.call_id == invite.call_id
            # 0.5 s without a response: the next iFC's AS gets the call (not after Timer B's 32 s)
            hop = next_as.forward()
            assert hop.call_id == invite.call_id and str(hop.uri) == BOB
            ringing = bob.expect("INVITE", timeout=5)
            assert isinstance(ringing, Request) and ringing.call_id == invite.call_id
            bob.reply(ringing, 486)
            assert next_as.relay("486").status == 486
            busy = alice.expect("final", timeout=5)
            assert isinstance(busy, Response) and busy.status == 486  # not the silent AS's 408
            alice.send(build_ack(invite, busy))
        finally:
            running.stop()
    finally:
        next_as.close()
        silent.stop()


def test_session_terminated_answers_408_when_the_as_is_silent(
    tmp_path: Path, phones: list[Phone]
) -> None:
    silent = SippAs("as-silent.xml", tmp_path)
    try:
        running = server(tmp_path, as_ifc(0, silent.uri, "session-terminated"))
        try:
            alice, bob = alice_and_bob(running, phones)
            invite = alice.invite(BOB)
            final = alice.expect("final", timeout=5)  # the AS's 0.5 s, not Timer B
            assert isinstance(final, Response) and final.status == 408
            alice.send(build_ack(invite, final))
            assert bob.quiet("INVITE", 0.5)
            assert len(silent.received("INVITE")) == 1
        finally:
            running.stop()
    finally:
        silent.stop()


def test_without_a_response_timeout_a_silent_as_holds_the_call(
    tmp_path: Path, phones: list[Phone]
) -> None:
    silent = SippAs("as-silent.xml", tmp_path)
    try:
        running = server(tmp_path, as_ifc(0, silent.uri, "session-continued", timeout=None))
        try:
            alice, bob = alice_and_bob(running, phones)
            alice.invite(BOB)
            silent.wait_for("INVITE", 1)
            assert bob.quiet("INVITE", 1.5)  # waits for Timer B (32 s) before moving on
        finally:
            running.stop()
    finally:
        silent.stop()


@pytest.mark.parametrize("handling", ["session-continued", "session-terminated"])
def test_a_500_before_any_provisional_response(
    tmp_path: Path, phones: list[Phone], handling: str
) -> None:
    failing = ProxyAs(("127.0.0.1", 9), "failing-as")
    try:
        running = server(tmp_path, as_ifc(0, failing.uri, handling))
        try:
            alice, bob = alice_and_bob(running, phones)
            invite = alice.invite(BOB)
            request = failing.expect("INVITE")
            assert isinstance(request, Request)
            failing.send(
                request.make_response(500, None, to_tag="as"),
                (request.top_via.received or request.top_via.host, request.top_via.port or 5060),
            )
            if handling == "session-continued":
                bob_busy(alice, bob, invite)
            else:
                final = alice.expect("final", timeout=5)
                assert isinstance(final, Response) and final.status == 500
                alice.send(build_ack(invite, final))
                assert bob.quiet("INVITE", 0.5)
        finally:
            running.stop()
    finally:
        failing.close()


def test_a_5xx_after_a_provisional_response_is_the_callers(tmp_path: Path, phones: list[Phone]) -> None:
    failing = ProxyAs(("127.0.0.1", 9), "failing-as")
    try:
        running = server(tmp_path, as_ifc(0, failing.uri, "session-continued"))
        try:
            alice, bob = alice_and_bob(running, phones)
            invite = alice.invite(BOB)
            request = failing.expect("INVITE")
            assert isinstance(request, Request)
            where = (request.top_via.received or request.top_via.host, request.top_via.port or 5060)
            failing.send(request.make_response(180, None, to_tag="as"), where)
            failing.send(request.make_response(503, None, to_tag="as"), where)
            final = alice.expect("final", timeout=5)  # the AS was reached: its answer stands
            assert isinstance(final, Response) and final.status == 500
            alice.send(build_ack(invite, final))
            assert bob.quiet("INVITE", 0.5)
        finally:
            running.stop()
    finally:
        failing.close()


@pytest.mark.parametrize(
    ("handling", "status"), [("session-continued", 486), ("session-terminated", 500)]
)
def test_an_as_nothing_listens_on(
    tmp_path: Path, phones: list[Phone], handling: str, status: int, closed_tcp_port: int
) -> None:
    uri = f"sip:127.0.0.1:{closed_tcp_port};transport=tcp"
    running = server(tmp_path, as_ifc(0, uri, handling))
    try:
        alice, bob = alice_and_bob(running, phones)
        invite = alice.invite(BOB)
        if status == 486:
            bob_busy(alice, bob, invite)  # the connection is refused: on to bob
        else:
            final = alice.expect("final", timeout=5)  # a transport failure: 500 (§16.7 step 6)
            assert isinstance(final, Response) and final.status == status
            alice.send(build_ack(invite, final))
            assert bob.quiet("INVITE", 0.5)
    finally:
        running.stop()
