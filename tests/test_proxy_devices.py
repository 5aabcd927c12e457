"""SIPp devices called THROUGH imscore's forking proxy (tests/devices.py; the proxy: docs/proxy.rst).

Three SIPp devices register for alice at a server started with ``imscore.testing.start_server``
(multi-device profile, the forking strategy under test); a SIPp caller with an external From (no
credentials needed to call a served user) sends its INVITE to sip:alice@ims.example.test through
imscore. Each test asserts, from the devices' own message traces, which device saw the INVITE and
the CANCEL, in what order and when, and what final status the caller got. The ACK and BYE of an
answered call go end to end: there is no Record-Route, so the caller sends them to the callee's
Contact (through imscore, which forwards them statelessly by Request-URI).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from devices import SippCaller, SippDevice, TracedMessage, stop_all

from imscore.profile import PolicyChoice, Profile, load_profile
from imscore.sip import Request
from imscore.testing import RunningServer, start_server

ALICE = "sip:alice@ims.example.test"
CAROL = "sip:carol@example.org"  # not served here: calling alice needs no credentials
REASON = 'SIP;cause=200;text="Call completed elsewhere"'


def profile_with(forking: str, options: dict[str, Any] | None = None) -> Profile:
    """The multi-device profile with another forking strategy (``policies.forking``)."""
    base = load_profile("multi-device")
    policies = dict(base.policies)
    policies["forking"] = PolicyChoice(forking, dict(options or {}))
    return replace(base, policies=policies)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """imscore on a free loopback UDP port; the profile from the ``proxy_profile`` marker."""
    marker = request.node.get_closest_marker("proxy_profile")
    running = start_server(marker.args[0] if marker else profile_with("parallel"), transports=("udp",))
    try:
        yield running
    finally:
        running.stop()


def register(devices: list[SippDevice]) -> None:
    """Start and register the devices one after another (so their registration order is theirs)."""
    for device in devices:
        device.start().wait_registered(5)


def call(server: RunningServer, workdir: Path, expect: int) -> SippCaller:
    """A SIPp caller calling alice through imscore, expecting final status ``expect``."""
    return SippCaller(
        "caller", server.address("udp"), ALICE, workdir, caller=CAROL, expect=expect, timeout=12
    )


def place_call(
    server: RunningServer, tmp_path: Path, answer: int, devices: list[SippDevice]
) -> SippCaller:
    """Register ``devices`` (in order), place one call expecting ``answer``, let everyone finish and
    stop them; the caller, for its trace."""
    caller = call(server, tmp_path, answer)
    try:
        register(devices)
        caller.start()
        caller.finish(10)
        for device in devices:
            device.finish(5)
    finally:
        stop_all([caller, *devices])
    return caller


def first(device: SippDevice, method: str) -> TracedMessage:
    """The first request of ``method`` the device received (fails the test when there is none)."""
    found = device.received(method)
    assert found, f"{device.name} received no {method}\n{device.diagnostics()}"
    return found[0]


def sent_status(device: SippDevice, status: int) -> TracedMessage:
    """The first response with ``status`` the device sent."""
    found = [m for m in device.messages() if m.direction == "sent" and m.status == status]
    assert found, f"{device.name} sent no {status}\n{device.diagnostics()}"
    return found[0]


def at(message: TracedMessage) -> float:
    """When the device traced the message (SIPp's trace timestamp)."""
    assert message.when is not None, message.start_line
    return message.when


def final_response(caller: SippCaller) -> TracedMessage:
    """The final response the caller got for its INVITE."""
    finals = [
        m
        for m in caller.messages()
        if m.direction == "received" and m.method == "INVITE" and (m.status or 0) >= 200
    ]
    assert finals, caller.diagnostics()
    return finals[0]


def answered_by(caller: SippCaller) -> str:
    """The Contact URI of the caller's final response, without its parameters (the callee)."""
    (contact,) = final_response(caller).parse().contacts
    return str(contact.uri).split(";", 1)[0]


def test_parallel_one_answers_and_the_two_ringing_get_cancel_with_reason(
    server: RunningServer, tmp_path: Path
) -> None:
    registrar = server.address("udp")
    desk = SippDevice("desk", "answer", registrar, tmp_path, ring_ms=300, timeout=20)
    soft = SippDevice("soft", "noanswer", registrar, tmp_path, timeout=20)
    app = SippDevice("app", "noanswer", registrar, tmp_path, timeout=20)
    devices = [desk, soft, app]
    caller = place_call(server, tmp_path, 200, devices)

    # every device rang at once (retargeted to its own contact), the desk answered after 300 ms
    invites = {device.name: first(device, "INVITE") for device in devices}
    for device in devices:
        assert invites[device.name].start_line == f"INVITE {device.contact} SIP/2.0"
        assert len(invites[device.name].parse().via) == 2  # the caller's and imscore's
    times = [at(invite) for invite in invites.values()]
    assert max(times) - min(times) < 0.5, times
    assert desk.received_methods() == ["INVITE", "ACK", "BYE"]  # ACK and BYE end to end
    for loser in (soft, app):
        assert loser.received_methods() == ["INVITE", "CANCEL", "ACK"]
        cancel = first(loser, "CANCEL")
        assert cancel.header("Reason") == REASON
        assert cancel.parse().top_via.branch == invites[loser.name].parse().top_via.branch
        assert at(cancel) >= at(sent_status(desk, 200)) - 0.05  # cancelled once the desk answered
    # the caller: 100, a 180 from each device, the desk's 200 (no 487 comes up)
    assert sorted(caller.responses()) == [100, 180, 180, 180, 200]
    ok = final_response(caller)
    assert ok.status == 200 and answered_by(caller) == desk.contact
    assert [m.method for m in caller.messages() if m.direction == "sent"] == ["INVITE", "ACK", "BYE"]


@pytest.mark.proxy_profile(profile_with("hunt", {"ring_timeout": 1, "order": "oldest-first"}))
def test_hunt_no_answer_is_cancelled_after_ring_timeout_busy_moves_on_third_answers(
    server: RunningServer, tmp_path: Path
) -> None:
    registrar = server.address("udp")
    mobile = SippDevice("mobile", "noanswer", registrar, tmp_path, timeout=20)
    soft = SippDevice("soft", "busy", registrar, tmp_path, timeout=20)
    desk = SippDevice("desk", "answer", registrar, tmp_path, timeout=20)
    devices = [mobile, soft, desk]  # registered in this order: the hunt's order (oldest first)
    caller = place_call(server, tmp_path, 200, devices)

    assert mobile.received_methods() == ["INVITE", "CANCEL", "ACK"]
    assert soft.received_methods() == ["INVITE", "ACK"]
    assert desk.received_methods() == ["INVITE", "ACK", "BYE"]
    rang = at(first(mobile, "INVITE"))
    cancelled = at(first(mobile, "CANCEL"))
    assert 0.8 <= cancelled - rang <= 3.0, cancelled - rang  # ring_timeout: 1 s
    assert first(mobile, "CANCEL").header("Reason") == ""  # a timeout, not "completed elsewhere"
    second = at(first(soft, "INVITE"))
    assert 0.8 <= second - rang <= 3.0, second - rang  # only after the mobile's ring_timeout
    assert second >= cancelled - 0.05
    busy = at(sent_status(soft, 486))
    third = at(first(desk, "INVITE"))
    assert 0 <= third - busy < 0.5, third - busy  # 486: the hunt moves on at once
    # the caller heard the mobile ring, then the desk answer; the 486 and the 487 stayed in imscore
    assert caller.final_status() == 200
    assert 486 not in caller.responses() and 487 not in caller.responses()
    assert answered_by(caller) == desk.contact


@pytest.mark.proxy_profile(profile_with("sequential", {"group_timeout": 1}))
def test_sequential_rings_by_q_equal_q_together_then_the_lower_q(
    server: RunningServer, tmp_path: Path
) -> None:
    registrar = server.address("udp")
    # the lowest q registers first: the order comes from q, not from the registration
    app = SippDevice("app", "answer", registrar, tmp_path, q=0.5, timeout=20)
    soft = SippDevice("soft", "noanswer", registrar, tmp_path, q=1.0, timeout=20)
    desk = SippDevice("desk", "busy", registrar, tmp_path, q=1.0, timeout=20)
    devices = [app, soft, desk]
    caller = place_call(server, tmp_path, 200, devices)

    assert soft.received_methods() == ["INVITE", "CANCEL", "ACK"]
    assert desk.received_methods() == ["INVITE", "ACK"]
    assert app.received_methods() == ["INVITE", "ACK", "BYE"]
    top = [at(first(soft, "INVITE")), at(first(desk, "INVITE"))]
    assert max(top) - min(top) < 0.5, top  # q=1.0: together
    low = at(first(app, "INVITE"))
    # the desk's 486 does not end the group: the soft rings on until group_timeout (1 s)
    assert 0.8 <= low - min(top) <= 3.0, low - min(top)
    assert low >= at(first(soft, "CANCEL")) - 0.05
    assert caller.final_status() == 200
    assert answered_by(caller) == app.contact


def test_all_busy_gives_486_to_the_caller_and_nobody_is_cancelled(
    server: RunningServer, tmp_path: Path
) -> None:
    registrar = server.address("udp")
    devices = [SippDevice(name, "busy", registrar, tmp_path, timeout=20) for name in ("a", "b", "c")]
    caller = place_call(server, tmp_path, 486, devices)
    for device in devices:
        assert device.received_methods() == ["INVITE", "ACK"]  # the ACK for its 486, from imscore
        ack = first(device, "ACK")
        assert ack.parse().top_via.branch == first(device, "INVITE").parse().top_via.branch
    assert caller.final_status() == 486
    assert caller.responses().count(486) == 1  # one best answer, not one per device
    assert [m.method for m in caller.messages() if m.direction == "sent"] == ["INVITE", "ACK"]


def test_a_deferred_cancel_keeps_the_completed_elsewhere_reason(server: RunningServer) -> None:
    # seen with three auto-answering baresip phones (one phone's 180 reached imscore after another
    # phone's 200, and its CANCEL came without Reason; fixed since). The ladder with sipua.py's UAs:
    from sipua import Caller, Phone

    app, desk = Phone(server.address("udp"), "app"), Phone(server.address("udp"), "desk")
    caller = Caller(server.address("udp"))
    try:
        assert app.register().status == 200 and desk.register().status == 200
        caller.invite(ALICE)
        to_app, to_desk = app.expect("INVITE"), desk.expect("INVITE")
        assert isinstance(to_app, Request) and isinstance(to_desk, Request)
        app.reply(to_app, 200)  # the app answers while the desk has sent nothing yet
        assert caller.expect("2xx").status == 200  # type: ignore[union-attr]
        assert desk.quiet("CANCEL", 0.3)  # §9.1: no CANCEL before a provisional response
        desk.reply(to_desk, 180)
        cancel = desk.expect("CANCEL")
        assert isinstance(cancel, Request)
        assert cancel.headers.get("Reason") == REASON
    finally:
        for agent in (app, desk, caller):
            agent.close()


def test_the_ack_reaches_a_device_whose_2xx_contact_has_uri_parameters(
    server: RunningServer, tmp_path: Path
) -> None:
    # registered as sip:desk@127.0.0.1:PORT, answers with Contact <sip:desk@127.0.0.1:PORT;transport=UDP>
    desk = SippDevice("desk", "answer", server.address("udp"), tmp_path, timeout=10)
    caller = call(server, tmp_path, 200)
    try:
        register([desk])
        caller.start()
        caller.finish(10)
        desk.finish(5)
    finally:
        stop_all([caller, desk])
    assert desk.received_methods() == ["INVITE", "ACK", "BYE"]
