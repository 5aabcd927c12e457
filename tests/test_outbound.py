"""SIP Outbound (RFC 5626) with the registrar as the first hop: Require: outbound and Flow-Timer in
the 200 OK, requests bound to the device's flows (one branch per instance), the next reg-id's flow
when one is gone, and 430 Flow Failed when none is left. Over real loopback UDP and TCP."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest
from sipua import Caller, Phone

from imscore.profile import load_profile
from imscore.registrar.outbound import FLOW_TIMER_STREAM, FLOW_TIMER_UDP
from imscore.sip import Request, Response
from imscore.sip.transaction import build_ack
from imscore.testing import RunningServer, start_server

ALICE = "sip:alice@ims.example.test"
ALICE_AOR = "sip:alice@ims.example.test"


class OutboundPhone(Phone):
    """A Phone whose REGISTER uses outbound: ``reg-id`` on its Contact, ``Supported: outbound``
    (and ``Require: outbound`` when asked)."""

    def __init__(
        self,
        *args: object,
        reg_id: int,
        require: bool = False,
        path: tuple[str, ...] = (),
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.reg_id = reg_id
        self.require = require
        self.path = path  # Path values as edge proxies would have put them (the edge's last)

    def _register_request(
        self, authorization: str | None, expires: int, q: float | None, contact: str | None
    ) -> Request:
        request = super()._register_request(authorization, expires, q, contact)
        value = request.headers.get("Contact")
        assert value is not None
        request.headers.set("Contact", f"{value};reg-id={self.reg_id}")
        request.headers.add("Supported", "outbound, path")
        if self.require:
            request.headers.add("Require", "outbound")
        for hop in self.path:
            request.headers.add("Path", hop)
        return request


@pytest.fixture
def server() -> Iterator[RunningServer]:
    running = start_server("multi-device", transports=("udp", "tcp"))
    try:
        yield running
    finally:
        running.stop()


def _final(agent: Caller) -> Response:
    answer = agent.expect("final")
    assert isinstance(answer, Response)
    return answer


def _wait_closed(server: RunningServer, phone: Phone) -> None:
    """Until the server saw the phone's TCP connection close (bounded)."""
    transports = server.server.transports
    assert transports is not None
    deadline = time.monotonic() + 5
    while transports.open_connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert transports.open_connections == 0, f"{phone.name}'s connection still open"


def test_register_with_outbound_gets_require_and_flow_timer(server: RunningServer) -> None:
    udp = OutboundPhone(server.address("udp"), "desk", reg_id=1, require=True)
    tcp = OutboundPhone(server.address("tcp"), "desk", reg_id=2, transport="tcp")
    plain = Phone(server.address("udp"), "plain")
    try:
        ok = udp.register()
        assert ok.status == 200  # Require: outbound is ours: no 420
        assert ok.headers.get("Require") == "outbound"
        assert ok.headers.get("Flow-Timer") == str(FLOW_TIMER_UDP)
        tcp.instance = udp.instance
        ok = tcp.register()
        assert ok.status == 200
        assert ok.headers.get("Require") == "outbound"
        assert ok.headers.get("Flow-Timer") == str(FLOW_TIMER_STREAM)
        ok = plain.register()  # no reg-id, no Supported: outbound: a plain registration
        assert ok.status == 200
        assert "Require" not in ok.headers and "Flow-Timer" not in ok.headers
    finally:
        udp.close()
        tcp.close()
        plain.close()


def test_two_flows_of_one_instance_then_one_gone_then_both(server: RunningServer) -> None:
    udp = OutboundPhone(server.address("udp"), "desk", reg_id=1)
    tcp = OutboundPhone(server.address("tcp"), "desk", reg_id=2, transport="tcp")
    tcp.instance = udp.instance
    caller = Caller(server.address("udp"))
    contact = f"sip:desk@127.0.0.1:{udp.port}"  # one device, one Contact, two flows
    try:
        assert udp.register(contact=contact).status == 200
        assert tcp.register(contact=contact).status == 200  # the newest flow: tried first
        bindings = server.call(server.server.registrar.bindings.load(ALICE_AOR))
        assert sorted(b.reg_id for b in bindings) == [1, 2]

        # both flows up: one branch for the instance, on the newest flow (TCP), not forked
        caller.invite(ALICE, cseq=1)
        invite = tcp.expect("INVITE")
        assert isinstance(invite, Request)
        tcp.reply(invite, 486)
        assert _final(caller).status == 486
        assert udp.quiet("INVITE", 0.3), "the same instance was rung twice"

        # the TCP connection is gone: the same instance is reached on its UDP flow
        tcp.close()
        _wait_closed(server, tcp)
        caller.invite(ALICE, cseq=2)
        invite = udp.expect("INVITE")
        assert isinstance(invite, Request)
        udp.reply(invite, 486)
        assert _final(caller).status == 486

        # the UDP flow is gone too (qualification marked it unreachable): 430, not the Contact
        store = server.server.registrar.bindings
        gone = [dataclasses.replace(b, reachable=False) for b in server.call(store.load(ALICE_AOR))]
        server.call(store.save(ALICE_AOR, gone))
        caller.invite(ALICE, cseq=3)
        failed = _final(caller)
        assert (failed.status, failed.reason) == (430, "Flow Failed")
        assert udp.quiet("INVITE", 0.3), "a flow-bound request fell back to the Contact"
    finally:
        udp.close()
        caller.close()


def test_through_an_edge_proxy_with_and_without_outbound(server: RunningServer) -> None:
    """RFC 5626 §6: through a Path, the edge proxy (the first hop, whose Path value is the last)
    must do outbound (``ob``), else 439; with it, Require: outbound and no Flow-Timer of ours."""
    lacking = OutboundPhone(server.address("udp"), "edge1", reg_id=1, path=("<sip:edge.test;lr>",))
    doing = OutboundPhone(
        server.address("udp"),
        "edge2",
        reg_id=1,
        path=("<sip:core.test;lr>", "<sip:edge.test;lr;ob>"),  # only the edge's needs ob
    )
    wrong_hop = OutboundPhone(
        server.address("udp"), "edge3", reg_id=1, path=("<sip:core.test;lr;ob>", "<sip:edge.test;lr>")
    )
    try:
        refused = lacking.register()
        assert (refused.status, refused.reason) == (439, "First Hop Lacks Outbound Support")
        assert wrong_hop.register().status == 439
        ok = doing.register()
        assert ok.status == 200
        assert ok.headers.get("Require") == "outbound"
        assert "Flow-Timer" not in ok.headers  # the edge proxy keeps the flow, not us
    finally:
        for phone in (lacking, doing, wrong_hop):
            phone.close()


def test_a_flow_that_does_not_answer_moves_the_branch_to_the_next_flow() -> None:
    """RFC 5626 §5.3: the newest flow (UDP, its NAT binding silently gone) gets the INVITE and
    never answers; at Timer B the branch goes down the instance's other flow (TCP). When that one
    is gone too, the branch ends with 430 Flow Failed. T1 is 20 ms so Timer B is 1.28 s."""
    profile = load_profile("multi-device")
    profile = dataclasses.replace(profile, timers=dataclasses.replace(profile.timers, t1=0.02))
    running = start_server(profile, transports=("udp", "tcp"))
    tcp = OutboundPhone(running.address("tcp"), "desk", reg_id=2, transport="tcp")
    udp = OutboundPhone(running.address("udp"), "desk", reg_id=1)
    udp.instance = tcp.instance
    caller = Caller(running.address("udp"))
    contact = f"sip:desk@127.0.0.1:{udp.port}"
    try:
        assert tcp.register(contact=contact).status == 200
        assert udp.register(contact=contact).status == 200  # the newest: tried first
        first = caller.invite(ALICE, cseq=1)
        assert isinstance(udp.expect("INVITE"), Request)  # sent there, never answered
        invite = tcp.expect("INVITE", 5)  # then, at Timer B, on the other flow
        assert isinstance(invite, Request)
        tcp.reply(invite, 486)
        busy = _final(caller)
        assert busy.status == 486
        caller.send(build_ack(first, busy))
        assert running.server.proxying is not None
        assert running.server.proxying.core.stats["failovers"] >= 1

        tcp.close()  # now the TCP flow is gone and the UDP one still does not answer
        _wait_closed(running, tcp)
        second = caller.invite(ALICE, cseq=2)
        failed = _final(caller)
        while failed.call_id != second.call_id:  # a retransmission of the 486 before its ACK
            failed = _final(caller)
        assert (failed.status, failed.reason) == (430, "Flow Failed")
    finally:
        udp.close()
        caller.close()
        running.stop()
