"""Requests routed through the application servers of matching iFCs (TS 24.229 §5.4.3.2-3), over
real loopback UDP: proxy ASs that send the request back along our odi Route, a SIPp AS that
retargets an INVITE by changing its Request-URI, and the odi token's own rules."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sipua import Agent, Caller, Phone, new_branch
from test_ifc_thirdparty import DOMAIN, server_for
from test_sipp_register import SCENARIOS, free_udp_port, sipp_binary

from imscore.ifc.odi import ODI_LIFETIME, OdiStamp, OdiState, uri_digest
from imscore.sip import Request, Response, SipUri
from imscore.sip.transaction import build_ack
from imscore.subscribers import MemorySubscriberStore, load_subscribers

ALICE = f"sip:alice@{DOMAIN}"
BOB = f"sip:bob@{DOMAIN}"


class ProxyAs(Agent):
    """An AS acting as a proxy: takes a request, removes its own Route, adds its Via and sends
    it on to the next Route (ours, with the odi token); relays responses back."""

    @property
    def uri(self) -> str:
        return f"sip:127.0.0.1:{self.port}"

    def forward(self, method: str = "INVITE", new_uri: str | None = None) -> Request:
        request = self.expect(method)
        assert isinstance(request, Request)
        routes = request.headers.values("Route")
        assert request.route[0].uri == SipUri.parse(self.uri + ";lr")
        back = request.route[1].uri
        assert isinstance(back, SipUri) and "odi" in back.params
        request.headers.set_list("Route", routes[1:])
        if new_uri is not None:
            request.uri = SipUri.parse(new_uri)
        request.headers.set("Max-Forwards", (request.max_forwards or 70) - 1)
        request.headers.prepend("Via", f"{self.via_sent_by()};branch={new_branch()}")
        self.send(request, (back.host, back.port or 5060))
        return request

    def relay(self, kind: str) -> Response:
        response = self.expect(kind)
        assert isinstance(response, Response)
        response.headers.pop_first("Via")
        via = response.top_via
        self.send(response, (via.received or via.host, via.rport or via.port or 5060))
        return response


def subscribers(tmp_path: Path, alice_ifcs: str, bob_ifcs: str = "") -> MemorySubscriberStore:
    def entry(user: str, ifcs: str) -> str:
        text = (
            f"  - impi: {user}@{DOMAIN}\n    password: {user}-secret\n"
            f"    implicit_sets: [[sip:{user}@{DOMAIN}]]\n"
        )
        return text + ("    service_profile:\n      ifcs:\n" + ifcs if ifcs else "")

    path = tmp_path / "subscribers.yaml"
    path.write_text("subscribers:\n" + entry("alice", alice_ifcs) + entry("bob", bob_ifcs))
    return MemorySubscriberStore(load_subscribers(path))


def ifc(priority: int, uri: str, *spts: str) -> str:
    trigger = f"          trigger: {{spts: [{', '.join(spts)}]}}\n" if spts else ""
    return f"        - priority: {priority}\n{trigger}          application_server: {{uri: '{uri}'}}\n"


@pytest.fixture
def ases() -> Iterator[list[ProxyAs]]:
    made: list[ProxyAs] = []
    yield made
    for agent in made:
        agent.close()


def proxy_as(ases: list[ProxyAs], name: str) -> ProxyAs:
    agent = ProxyAs(("127.0.0.1", 9), name)
    ases.append(agent)
    return agent


def test_originating_then_terminating_ases_in_priority_order(
    tmp_path: Path, ases: list[ProxyAs]
) -> None:
    orig_a, orig_b, term_c = (proxy_as(ases, n) for n in ("orig-a", "orig-b", "term-c"))
    originating = "{session_case: originating}"
    alice_ifcs = (
        ifc(2, orig_b.uri, originating)
        + ifc(0, orig_a.uri, originating, "{method: INVITE}")
        + ifc(1, "sip:127.0.0.1:9", "{method: MESSAGE}")  # does not match an INVITE
        + ifc(3, "sip:127.0.0.1:9", "{session_case: terminating_registered}")
    )
    bob_ifcs = ifc(0, term_c.uri, "{session_case: terminating_registered}")
    running = server_for(subscribers(tmp_path, alice_ifcs, bob_ifcs))
    alice = Phone(running.address("udp"), "alice")
    bob = Phone(running.address("udp"), "bob", "bob@ims.example.test", "bob-secret", BOB)
    try:
        assert alice.register().status == 200 and bob.register().status == 200
        invite = alice.invite(BOB)  # from her registered flow: no challenge
        hops = [orig_a.forward(), orig_b.forward(), term_c.forward()]
        assert all(str(hop.uri) == BOB for hop in hops)  # the ASs see the Request-URI unchanged
        ringing = bob.expect("INVITE")
        assert isinstance(ringing, Request) and str(ringing.uri) == bob.contact_uri
        assert ringing.call_id == invite.call_id and "Route" not in ringing.headers
        bob.reply(ringing, 486)
        for agent in (term_c, orig_b, orig_a):
            assert agent.relay("486").status == 486
        busy = alice.expect("final")
        assert isinstance(busy, Response) and busy.status == 486
        alice.send(build_ack(invite, busy))
    finally:
        alice.close()
        bob.close()
        running.stop()


def test_a_forged_or_replayed_odi_is_not_ours(tmp_path: Path, ases: list[ProxyAs]) -> None:
    orig = proxy_as(ases, "orig")
    running = server_for(subscribers(tmp_path, ifc(0, orig.uri, "{session_case: originating}")))
    alice = Phone(running.address("udp"), "alice")
    try:
        assert alice.register().status == 200
        alice.invite(BOB)
        request = orig.expect("INVITE")
        assert isinstance(request, Request)
        back = request.route[1].uri
        assert isinstance(back, SipUri)
        token = back.params.get("odi") or ""
        forged = token[:-1] + ("0" if token[-1] != "0" else "1")
        routes = request.headers.values("Route")
        request.headers.set_list("Route", [routes[1].replace(token, forged)])
        request.headers.prepend("Via", f"{orig.via_sent_by()};branch={new_branch()}")
        orig.send(request, (back.host, back.port or 5060))
        # not a request we sent to an AS: the same request seen again is a loop (§16.3 step 4);
        # it is not routed through the next iFC, nor on to bob
        refused = orig.expect("final")
        assert isinstance(refused, Response) and refused.status == 482
    finally:
        alice.close()
        running.stop()


def test_odi_tokens_are_unforgeable_and_expire() -> None:
    stamp = OdiStamp(b"k" * 32)
    state = OdiState("term", 3, "sip:alice@ims.example.test", uri_digest(ALICE), 1000)
    token = stamp.make(state)
    assert stamp.read(token, 1000.5) == state
    assert stamp.read(token, 1000 + ODI_LIFETIME) is None  # too old
    assert OdiStamp(b"x" * 32).read(token, 1000.5) is None  # another key
    head, rest = token.split(".", 1)
    assert stamp.read("o" + head[1:] + "." + rest, 1000.5) is None  # the case changed
    assert stamp.read("t9." + rest, 1000.5) is None  # the priority changed
    assert stamp.read("garbage", 1000.5) is None and stamp.read(None, 1000.5) is None


def test_a_terminating_as_that_changes_the_request_uri_retargets_the_call(tmp_path: Path) -> None:
    sipp = sipp_binary()
    port = free_udp_port()
    targets = tmp_path / "targets.csv"
    targets.write_text(f"SEQUENTIAL\n{BOB}\n")
    alice_ifcs = ifc(
        0,
        f"sip:127.0.0.1:{port}",
        "{session_case: terminating_registered}",
        "{method: INVITE, group: 1}",
    )
    running = server_for(subscribers(tmp_path, alice_ifcs))
    alice = Phone(running.address("udp"), "alice")
    bob = Phone(running.address("udp"), "bob", "bob@ims.example.test", "bob-secret", BOB)
    caller = Caller(running.address("udp"))
    redirect = subprocess.Popen(
        [
            sipp, "-sf", str(SCENARIOS / "as-redirect.xml"), "-inf", str(targets), "-i", "127.0.0.1",
            "-p", str(port), "-m", "1", "-nostdin", "-timeout", "30", "-timeout_error",
            "-trace_err", "-error_file", str(tmp_path / "errors.log"),
        ],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert alice.register().status == 200 and bob.register().status == 200
        caller.invite(ALICE)
        ringing = bob.expect("INVITE", timeout=10)  # retargeted by the AS to bob (§5.4.3.3)
        assert isinstance(ringing, Request) and str(ringing.uri) == bob.contact_uri
        assert str(ringing.to.uri) == ALICE  # the To stays the caller's
        bob.reply(ringing, 486)
        busy = caller.expect("final", timeout=10)
        assert isinstance(busy, Response) and busy.status == 486
        assert alice.quiet("INVITE", 0.3)  # alice's devices never rang
        out, err = redirect.communicate(timeout=30)
        errors = (tmp_path / "errors.log").read_text() if (tmp_path / "errors.log").exists() else ""
        assert redirect.returncode == 0, (out[-2000:], err[-2000:], errors[-2000:])
    finally:
        if redirect.poll() is None:
            redirect.kill()
            redirect.wait(timeout=10)
        for agent in (alice, bob, caller):
            agent.close()
        running.stop()
