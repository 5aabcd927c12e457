"""The forking proxy over real loopback UDP: phones register for alice, a caller calls her.

Each test reads as a ladder: which device saw the INVITE and the CANCEL, what the caller got.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from sipua import Caller, Phone

from imscore.auth.digest import credentials
from imscore.profile import PolicyChoice, Profile, load_profile
from imscore.profile.model import ProxySettings, QualifySettings, Timers
from imscore.sip import Request, Response
from imscore.sip.transaction import ClientTransaction, build_ack
from imscore.testing import RunningServer, start_server

ALICE = "sip:alice@ims.example.test"
ALICE_TEL = "tel:+15551230001"
REASON = 'SIP;cause=200;text="Call completed elsewhere"'


def profile_with(forking: str = "parallel", options: dict | None = None, **changes: object) -> Profile:
    base = load_profile("multi-device")
    policies = dict(base.policies)
    policies["forking"] = PolicyChoice(forking, dict(options or {}))
    return replace(base, policies=policies, **changes)  # type: ignore[arg-type]


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    marker = request.node.get_closest_marker("proxy_profile")
    profile = marker.args[0] if marker else profile_with()
    running = start_server(profile, transports=("udp", "tcp"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def phones(server: RunningServer) -> Iterator[list[Phone]]:
    made = [Phone(server.address("udp"), name) for name in ("app", "softphone", "desk")]
    try:
        yield made
    finally:
        for phone in made:
            phone.close()


@pytest.fixture
def caller(server: RunningServer) -> Iterator[Caller]:
    agent = Caller(server.address("udp"))
    try:
        yield agent
    finally:
        agent.close()


def register_all(phones: list[Phone], **kwargs: object) -> None:
    for phone in phones:
        assert phone.register(**kwargs).status == 200  # type: ignore[arg-type]


def ack(caller: Caller, invite: Request, response: Response) -> None:
    caller.send(build_ack(invite, response))


def ring(phone: Phone) -> Request:
    invite = phone.expect("INVITE")
    assert isinstance(invite, Request)
    phone.reply(invite, 180)
    return invite


def test_parallel_rings_every_device_first_2xx_wins_others_cancelled(
    phones: list[Phone], caller: Caller
) -> None:
    register_all(phones)
    caller.invite(ALICE)
    assert caller.expect("100").status == 100  # type: ignore[union-attr]
    received = [ring(phone) for phone in phones]
    for phone, request in zip(phones, received, strict=True):
        assert str(request.uri) == phone.contact_uri  # retargeted to the registered contact
        assert request.max_forwards == 69
        assert len(request.via) == 2 and request.top_via.branch.startswith("z9hG4bK")
    ringing = {caller.expect("180").to.tag for _ in phones}  # type: ignore[union-attr]
    assert ringing == {"app-tag", "softphone-tag", "desk-tag"}
    phones[1].reply(received[1], 200)
    ok = caller.expect("200")
    assert isinstance(ok, Response) and ok.to.tag == "softphone-tag" and len(ok.via) == 1
    for loser, request in ((phones[0], received[0]), (phones[2], received[2])):
        cancel = loser.expect("CANCEL")
        assert isinstance(cancel, Request) and cancel.headers.get("Reason") == REASON
        assert cancel.top_via.branch == request.top_via.branch
        loser.reply(cancel, 200)
        loser.reply(request, 487)
        assert loser.expect("ACK").method == "ACK"  # type: ignore[union-attr]
    assert phones[1].quiet("CANCEL", 0.3)
    # only the 2xx went up: no 487 reaches the caller
    assert caller.quiet("487", 0.3)


def test_the_tel_impu_of_the_set_reaches_the_same_devices(phones: list[Phone], caller: Caller) -> None:
    register_all(phones[:2])
    caller.invite(ALICE_TEL)
    first, second = (phone.expect("INVITE") for phone in phones[:2])
    assert isinstance(first, Request) and isinstance(second, Request)
    assert str(first.uri) == phones[0].contact_uri and str(second.uri) == phones[1].contact_uri
    phones[0].reply(first, 486)
    phones[1].reply(second, 486)
    busy = caller.expect("final")
    assert isinstance(busy, Response) and busy.status == 486


def test_unknown_user_404_and_unregistered_user_480(caller: Caller) -> None:
    caller.invite("sip:nobody@ims.example.test")
    assert caller.expect("final").status == 404  # type: ignore[union-attr]
    caller.invite("sip:bob@ims.example.test")
    assert caller.expect("final").status == 480  # type: ignore[union-attr]


def test_max_forwards_zero_is_483_and_a_loop_is_482(server: RunningServer, caller: Caller) -> None:
    invite = caller.request("INVITE", ALICE, headers=[])
    invite.headers.set("Max-Forwards", 0)
    caller.send(invite)
    assert caller.expect("final").status == 483  # type: ignore[union-attr]
    # an in-dialog request routed twice through us (a dialog we stamped) comes back unchanged: a loop
    host, port = server.address("udp")
    looped = caller.request("INFO", "sip:x@192.0.2.1", to_tag="t1")
    assert server.server.proxying is not None
    stamp = server.server.proxying.stamp.make(looped.call_id, looped.from_.tag)
    route = f"<sip:{host}:{port};lr;dlg={stamp}>"
    looped.headers.set_list("Route", [route, route])
    caller.send(looped)
    assert caller.expect("final", 5).status == 482  # type: ignore[union-attr]


def test_all_busy_gives_the_best_final_response_and_6xx_wins(
    phones: list[Phone], caller: Caller
) -> None:
    register_all(phones[:2])
    invite = caller.invite(ALICE)
    first, second = (phone.expect("INVITE") for phone in phones[:2])
    assert isinstance(first, Request) and isinstance(second, Request)
    phones[0].reply(first, 180)
    phones[1].reply(second, 603)
    # a 6xx ends the fork: the ringing branch is cancelled, and the caller gets the 603
    cancel = phones[0].expect("CANCEL")
    assert isinstance(cancel, Request)
    phones[0].reply(cancel, 200)
    phones[0].reply(first, 487)
    final = caller.expect("final")
    assert isinstance(final, Response) and final.status == 603
    ack(caller, invite, final)


def test_caller_cancel_cancels_every_branch_and_gets_487(phones: list[Phone], caller: Caller) -> None:
    register_all(phones)
    invite = caller.invite(ALICE)
    received = [ring(phone) for phone in phones]
    caller.expect("180")
    caller.cancel(invite)
    assert caller.expect("200").status == 200  # type: ignore[union-attr]  # the CANCEL's answer
    for phone, request in zip(phones, received, strict=True):
        cancel = phone.expect("CANCEL")
        assert isinstance(cancel, Request) and cancel.headers.get("Reason") is None
        phone.reply(cancel, 200)
        phone.reply(request, 487)
    final = caller.expect("final")
    assert isinstance(final, Response) and final.status == 487 and final.cseq.method == "INVITE"


def test_message_forks_with_non_invite_rules(phones: list[Phone], caller: Caller) -> None:
    register_all(phones[:2])
    message = caller.request("MESSAGE", ALICE, headers=[("Content-Type", "text/plain")])
    message.body = b"hello"
    message.headers.set("Content-Length", 5)
    caller.send(message)
    first, second = (phone.expect("MESSAGE") for phone in phones[:2])
    assert isinstance(first, Request) and first.body == b"hello"
    phones[0].reply(first, 200)
    assert caller.expect("200").status == 200  # type: ignore[union-attr]
    assert isinstance(second, Request)
    phones[1].reply(second, 200)
    assert caller.quiet("200", 0.3)  # one final response per non-INVITE transaction
    assert phones[1].quiet("CANCEL", 0.2)  # a non-INVITE is never cancelled


@pytest.mark.proxy_profile(profile_with("hunt", {"ring_timeout": 0.6, "order": "oldest-first"}))
def test_hunt_rings_one_at_a_time_cancels_on_timeout_moves_on_at_486(
    phones: list[Phone], caller: Caller
) -> None:
    register_all(phones)
    invite = caller.invite(ALICE)
    started = time.monotonic()
    first = ring(phones[0])  # the oldest registration rings first, alone
    assert phones[1].quiet("INVITE", 0.2) and phones[2].quiet("INVITE", 0.01)
    cancel = phones[0].expect("CANCEL", 3)  # ring_timeout ran out
    waited = time.monotonic() - started
    assert 0.45 <= waited <= 2.5, waited
    assert isinstance(cancel, Request)
    phones[0].reply(cancel, 200)
    phones[0].reply(first, 487)
    second = phones[1].expect("INVITE")
    assert isinstance(second, Request)
    moved = time.monotonic()
    phones[1].reply(second, 486)  # busy: the hunt moves on at once
    third = phones[2].expect("INVITE")
    assert time.monotonic() - moved < 0.4
    assert isinstance(third, Request)
    phones[2].reply(third, 200)
    ok = caller.expect("2xx")
    assert isinstance(ok, Response) and ok.to.tag == "desk-tag"
    assert caller.quiet("486", 0.2)
    del invite


@pytest.mark.proxy_profile(profile_with("sequential", {"group_timeout": 5}))
def test_sequential_by_q_groups_in_order(phones: list[Phone], caller: Caller) -> None:
    phones[0].register(q=0.5)
    phones[1].register(q=1.0)
    phones[2].register(q=1.0)
    caller.invite(ALICE)
    top = [phones[i].expect("INVITE") for i in (1, 2)]  # q=1.0 together
    assert phones[0].quiet("INVITE", 0.3)
    for i, request in zip((1, 2), top, strict=True):
        assert isinstance(request, Request)
        phones[i].reply(request, 480)
    low = phones[0].expect("INVITE")
    assert isinstance(low, Request)
    phones[0].reply(low, 200)
    assert caller.expect("2xx").to.tag == "app-tag"  # type: ignore[union-attr]


@pytest.mark.proxy_profile(profile_with(timers=Timers(t1=0.02, t2=0.08, t4=0.1)))
def test_no_answer_anywhere_is_408(phones: list[Phone], caller: Caller) -> None:
    register_all(phones[:2])
    caller.invite(ALICE)
    for phone in phones[:2]:
        phone.expect("INVITE")  # and never answer: Timer B (64 * T1 = 1.28 s) runs out
    final = caller.expect("final", 6)
    assert isinstance(final, Response) and final.status == 408


def test_device_behind_nat_is_reached_on_its_registration_flow(
    phones: list[Phone], caller: Caller
) -> None:
    phone = phones[0]
    contact = "sip:app@10.0.0.7:5060"  # what the device believes its address is
    assert phone.register(contact=contact).status == 200
    caller.invite(ALICE)
    invite = phone.expect("INVITE")  # arrived on the socket the REGISTER came from
    assert isinstance(invite, Request) and str(invite.uri) == contact
    phone.reply(invite, 486)
    assert caller.expect("final").status == 486  # type: ignore[union-attr]


@pytest.mark.proxy_profile(profile_with(proxy=ProxySettings(record_route=True)))
def test_record_route_and_the_ack_for_2xx_routed_end_to_end(
    server: RunningServer, phones: list[Phone], caller: Caller
) -> None:
    register_all(phones[:1])
    invite = caller.invite(ALICE)
    received = phones[0].expect("INVITE")
    assert isinstance(received, Request)
    host, port = server.address("udp")
    (record,) = received.record_route
    stamp = server.server.proxying.stamp.make(invite.call_id, caller.tag)  # type: ignore[union-attr]
    assert str(record.uri) == f"sip:{host}:{port};transport=udp;lr;dlg={stamp}"
    phones[0].reply(received, 200)
    ok = caller.expect("2xx")
    assert isinstance(ok, Response) and [str(r.uri) for r in ok.record_route] == [str(record.uri)]
    ack_request = caller.request(
        "ACK",
        phones[0].contact_uri,
        call_id=invite.call_id,
        to_tag=ok.to.tag,
        headers=[("Route", f"<{record.uri}>")],
    )
    caller.send(ack_request)
    forwarded = phones[0].expect("ACK")
    assert isinstance(forwarded, Request) and str(forwarded.uri) == phones[0].contact_uri
    assert not forwarded.route and len(forwarded.via) == 2


def test_served_caller_must_authenticate_407_then_routed(
    server: RunningServer, phones: list[Phone]
) -> None:
    register_all(phones[:1])
    bob = Caller(server.address("udp"), "bob", from_uri="sip:bob@ims.example.test")
    try:
        invite = bob.invite(ALICE)
        challenge = bob.expect("407")
        assert isinstance(challenge, Response)
        (offered,) = challenge.proxy_authenticate
        ack(bob, invite, challenge)
        answer = credentials(
            offered, username="bob@ims.example.test", password="bob-secret", method="INVITE", uri=ALICE
        )
        authorised = bob.invite(
            ALICE, cseq=2, call_id=invite.call_id, headers=[("Proxy-Authorization", answer)]
        )
        received = phones[0].expect("INVITE")
        assert isinstance(received, Request)
        phones[0].reply(received, 486)
        busy = bob.expect("486")
        assert isinstance(busy, Response)
        ack(bob, authorised, busy)
        # wrong password: 403, never forwarded
        invite = bob.invite(ALICE, cseq=3)
        (offered,) = bob.expect("407").proxy_authenticate  # type: ignore[union-attr]
        wrong = credentials(
            offered, username="bob@ims.example.test", password="nope", method="INVITE", uri=ALICE
        )
        again = bob.invite(ALICE, cseq=4, headers=[("Proxy-Authorization", wrong)])
        # §22.3: wrong credentials get a fresh challenge, and nothing is forwarded
        rechallenge = bob.expect("407")
        assert isinstance(rechallenge, Response) and rechallenge.cseq.seq == 4
        ack(bob, again, rechallenge)
        assert phones[0].quiet("INVITE", 0.3)
    finally:
        bob.close()


def test_registered_device_calls_out_over_its_own_flow_without_challenge(
    server: RunningServer, phones: list[Phone]
) -> None:
    bob_phone = Phone(
        server.address("udp"),
        "bobphone",
        "bob@ims.example.test",
        "bob-secret",
        "sip:bob@ims.example.test",
    )
    try:
        assert bob_phone.register().status == 200
        register_all(phones[:1])
        bob_phone.invite(ALICE)  # from the socket it registered from: no challenge
        received = phones[0].expect("INVITE")
        assert isinstance(received, Request)
        phones[0].reply(received, 486)
        assert bob_phone.expect("486").status == 486  # type: ignore[union-attr]
    finally:
        bob_phone.close()


def test_relaying_to_other_domains_is_refused(caller: Caller) -> None:
    caller.invite("sip:someone@elsewhere.example")
    final = caller.expect("final")
    assert isinstance(final, Response) and final.status == 403


def test_options_to_the_server_is_still_answered_locally(server: RunningServer, caller: Caller) -> None:
    host, port = server.address("udp")
    caller.send(caller.request("OPTIONS", f"sip:{host}:{port}"))
    final = caller.expect("final")
    assert isinstance(final, Response) and final.status == 200
    assert final.cseq.method == "OPTIONS" and len(final.via) == 1


@pytest.mark.proxy_profile(
    profile_with(
        "hunt",
        {"ring_timeout": 5, "order": "oldest-first"},
        timers=Timers(t1=0.02, t2=0.08, t4=0.1),
        qualify=QualifySettings(interval=0.4, max_failures=2),
    )
)
def test_qualification_marks_silent_contacts_unreachable_and_hunt_skips_them(
    server: RunningServer, phones: list[Phone], caller: Caller
) -> None:
    app, soft, desk = phones
    register_all(phones)
    deadline = time.monotonic() + 8
    answered = 0
    while time.monotonic() < deadline:
        desk.sock.sendto(b"\r\n\r\n", desk.server)  # desk sends CRLF keep-alives: never pinged
        ping = soft.quiet("OPTIONS", 0.15) is False
        if not ping:
            continue
        # soft answers its pings
        request = soft.seen[-1]
        assert isinstance(request, Request) and request.method == "OPTIONS"
        soft.reply(request, 200)
        answered += 1
        bindings = server.call(server.server.store.all())  # type: ignore[union-attr]
        marks = {b.uri: b.reachable for b in bindings}
        if marks.get(app.contact_uri) is False and answered >= 2:
            break
    bindings = server.call(server.server.store.all())  # type: ignore[union-attr]
    marks = {b.uri: b.reachable for b in bindings}
    assert marks == {app.contact_uri: False, soft.contact_uri: True, desk.contact_uri: True}
    assert not [m for m in desk.seen if isinstance(m, Request) and m.method == "OPTIONS"]
    qualifier = server.server.qualifier
    assert qualifier is not None and qualifier.stats["keepalives"] > 0
    # the hunt (oldest first) skips the unreachable app and starts with the softphone
    caller.invite(ALICE)
    first = soft.expect("INVITE", 3)
    assert isinstance(first, Request)
    assert not [m for m in app.seen if isinstance(m, Request) and m.method == "INVITE"]
    soft.reply(first, 200)
    assert caller.expect("2xx").to.tag == "softphone-tag"  # type: ignore[union-attr]


@pytest.mark.proxy_profile(profile_with())
def test_tcp_device_gets_its_calls_over_its_own_connection(
    request: pytest.FixtureRequest, phones: list[Phone], caller: Caller
) -> None:
    server = request.getfixturevalue("server")
    tcp = Phone(server.address("tcp"), "tcpphone", transport="tcp")
    try:
        assert tcp.register().status == 200
        register_all(phones[:1])
        caller.invite(ALICE)
        over_tcp = tcp.expect("INVITE")
        over_udp = phones[0].expect("INVITE")
        assert isinstance(over_tcp, Request) and isinstance(over_udp, Request)
        assert over_tcp.top_via.transport.upper() == "TCP"
        assert over_udp.top_via.transport.upper() == "UDP"
        tcp.reply(over_tcp, 486)
        phones[0].reply(over_udp, 486)
        assert caller.expect("final").status == 486  # type: ignore[union-attr]
    finally:
        tcp.close()


def test_register_with_a_preloaded_route_to_us_reaches_the_registrar(
    server: RunningServer, phones: list[Phone]
) -> None:
    # a UE configured with an outbound proxy (baresip's outbound=, RFC 3261 §8.1.2) preloads a
    # Route naming imscore itself: the REGISTER is still the registrar's, never proxied
    host, port = server.address("udp")
    phone = phones[0]
    original = phone._register_request

    def with_route(*args: object) -> Request:
        request = original(*args)  # type: ignore[arg-type]
        request.headers.add("Route", f"<sip:{host}:{port};lr>")
        return request

    phone._register_request = with_route  # type: ignore[method-assign]
    ok = phone.register()
    assert ok.status == 200 and [str(c.uri) for c in ok.contacts] == [phone.contact_uri]


def test_a_branch_that_rings_after_the_winning_200_gets_cancel_with_the_reason(
    phones: list[Phone], caller: Caller
) -> None:
    register_all(phones[:2])
    caller.invite(ALICE)
    slow, fast = (phone.expect("INVITE") for phone in phones[:2])
    assert isinstance(slow, Request) and isinstance(fast, Request)
    phones[1].reply(fast, 200)  # answers before the other branch said anything
    assert caller.expect("2xx").to.tag == "softphone-tag"  # type: ignore[union-attr]
    assert phones[0].quiet("CANCEL", 0.3)  # §9.1: no CANCEL before a provisional response
    phones[0].reply(slow, 180)
    cancel = phones[0].expect("CANCEL")
    assert isinstance(cancel, Request) and cancel.headers.get("Reason") == REASON


@pytest.mark.proxy_profile(profile_with(timers=Timers(t1=0.02, t2=0.08, t4=0.1)))
def test_a_2xx_retransmitted_after_the_branch_ended_is_forwarded_statelessly(
    server: RunningServer, phones: list[Phone], caller: Caller
) -> None:
    register_all(phones[:1])
    caller.invite(ALICE)
    invite = phones[0].expect("INVITE")
    assert isinstance(invite, Request)
    ok = phones[0].reply(invite, 200)
    first = caller.expect("2xx")
    assert isinstance(first, Response)

    # wait until Timer M (64 x T1 = 1.28 s) ended the branch's client transaction
    async def client_transactions() -> int:
        layer = server.server.core.layer
        return sum(1 for t in layer.transactions() if isinstance(t, ClientTransaction))

    deadline = time.monotonic() + 10
    while server.call(client_transactions()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.call(client_transactions()) == 0
    phones[0].send(ok, server.address("udp"))  # the callee did not see an ACK: it retransmits
    again = caller.expect("2xx", 3)
    assert isinstance(again, Response) and again.to.tag == first.to.tag and len(again.via) == 1
    proxying = server.server.proxying
    assert proxying is not None
    deadline = time.monotonic() + 2  # the server thread counts it just after sending it
    while proxying.strays_forwarded == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxying.strays_forwarded == 1


def test_a_silent_branch_does_not_hold_back_the_answer_after_a_6xx_or_a_cancel(
    phones: list[Phone], caller: Caller
) -> None:
    register_all(phones[:2])  # phones[1] will never answer anything (switched off)
    invite = caller.invite(ALICE)
    declining, _silent = (phone.expect("INVITE") for phone in phones[:2])
    assert isinstance(declining, Request)
    started = time.monotonic()
    phones[0].reply(declining, 603)
    final = caller.expect("final", 5)
    assert isinstance(final, Response) and final.status == 603
    assert time.monotonic() - started < 2  # not Timer B (32 s) of the silent branch
    ack(caller, invite, final)
    # the same with the caller's CANCEL: the ringing branch answers 487 and the caller gets it
    invite = caller.invite(ALICE, cseq=5)
    ringing = ring(phones[0])
    phones[1].expect("INVITE")
    caller.expect("180")
    caller.cancel(invite)
    cancel = phones[0].expect("CANCEL")
    assert isinstance(cancel, Request)
    phones[0].reply(cancel, 200)
    started = time.monotonic()
    phones[0].reply(ringing, 487)
    final = caller.expect("487", 5)
    assert isinstance(final, Response) and time.monotonic() - started < 2


@pytest.mark.proxy_profile(profile_with("hunt", {"ring_timeout": 0.5, "order": "oldest-first"}))
def test_hunt_a_device_that_rings_after_its_turn_still_gets_its_cancel(
    phones: list[Phone], caller: Caller
) -> None:
    register_all(phones[:2])
    caller.invite(ALICE)
    late = phones[0].expect("INVITE")  # it says nothing during its 0.5 s
    assert isinstance(late, Request)
    second = phones[1].expect("INVITE", 3)  # the hunt moved on
    assert isinstance(second, Request)
    phones[0].reply(late, 180)  # now it rings, too late
    cancel = phones[0].expect("CANCEL", 3)
    assert isinstance(cancel, Request) and cancel.top_via.branch == late.top_via.branch
    phones[1].reply(second, 200)
    assert caller.expect("2xx").to.tag == "softphone-tag"  # type: ignore[union-attr]


def test_an_in_dialog_request_to_a_foreign_target_outside_our_dialogs_is_refused(
    caller: Caller,
) -> None:
    # a BYE with a To tag, no Route of ours, to an address imscore never forked to: no relaying
    caller.send(caller.request("BYE", "sip:victim@198.51.100.99:5060", to_tag="x1"))
    final = caller.expect("final")
    assert isinstance(final, Response) and final.status == 403 and final.reason == "Relaying denied"
