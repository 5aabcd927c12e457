"""Flows in a pool of ``imscore serve`` nodes on one real ``redis-server`` (RFC 5626 §5.3;
imscore/server/pool_nodes.py, docs/deployment.rst).

A device keeps a TCP connection to node A (or is behind a NAT whose UDP binding A learnt); a call
arriving on node B must reach it through A, which holds the flow. With A gone, B answers
``430 Flow Failed``. Only A qualifies the contacts whose flows it holds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_support import RedisServer, nodes, redis_server
from sipua import Caller, Phone

from imscore.sip import Request, Response

ALICE = "sip:alice@ims.example.test"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


def _final(caller: Caller, invite: Request) -> Response:
    while True:
        answer = caller.expect("final", 10.0)
        assert isinstance(answer, Response)
        if answer.call_id == invite.call_id and answer.cseq.method == invite.method:
            return answer


def test_a_call_through_b_rings_a_tcp_device_on_a_then_430_when_a_is_gone(
    redis: RedisServer, tmp_path: Path
) -> None:
    with nodes(redis.url, tmp_path, ["a", "b"], transports=("udp", "tcp")) as (a, b):
        desk = Phone(a.tcp, "desk", transport="tcp")  # its connection to A is its flow
        # behind a NAT: its Contact is a private address nobody can reach, A learnt the UDP flow
        natted = Phone(a.udp, "natted")
        caller = Caller(b.udp)
        try:
            assert desk.register().status == 200
            assert natted.register(contact="sip:natted@10.7.7.7:5060").status == 200
            invite = caller.invite(ALICE)
            got = {}
            for phone in (desk, natted):
                ringing = phone.expect("INVITE")
                assert isinstance(ringing, Request)
                vias = ringing.headers.values("Via")
                # A sent it down the flow (its Via on top), B had it from the caller
                assert ringing.top_via.port == (a.tcp if phone is desk else a.udp)[1], vias
                assert any(f":{b.udp[1]};" in via or f":{b.tcp[1]};" in via for via in vias), vias
                assert not any("pflow" in route for route in ringing.headers.values("Route"))
                phone.reply(ringing, 180)
                got[phone.name] = ringing
            assert caller.expect("180").status == 180  # type: ignore[union-attr]
            for phone in (desk, natted):
                phone.reply(got[phone.name], 486)
            assert _final(caller, invite).status == 486
            # a CANCEL through B reaches the device through A as well
            invite = caller.invite(ALICE)
            ringing = desk.expect("INVITE")
            assert isinstance(ringing, Request)
            desk.reply(ringing, 180)
            other = natted.expect("INVITE")
            assert isinstance(other, Request)
            natted.reply(other, 180)  # (a branch is cancelled once it answered: RFC 3261 §9.1)
            assert caller.expect("180").status == 180  # type: ignore[union-attr]
            caller.cancel(invite)
            for phone, request in ((desk, ringing), (natted, other)):
                cancel = phone.expect("CANCEL")
                assert isinstance(cancel, Request)
                phone.reply(cancel, 200)
                phone.reply(request, 487)
            assert _final(caller, invite).status == 487
            # A is killed: its entry in Redis runs out, and B answers 430 for its flows
            a.kill()
            deadline = time.monotonic() + 10
            while redis.cli("exists", "imscore:node:a").strip() != "0":
                assert time.monotonic() < deadline, "node a's entry did not run out"
                time.sleep(0.2)
            invite = caller.invite(ALICE)
            answer = _final(caller, invite)
            assert answer.status == 430, answer
        finally:
            for agent in (desk, natted, caller):
                agent.close()
        assert "Traceback" not in b.log()


def test_a_relayed_request_with_a_forged_flow_token_is_not_relayed(
    redis: RedisServer, tmp_path: Path
) -> None:
    with nodes(redis.url, tmp_path, ["a"], transports=("udp", "tcp")) as (a,):
        desk = Phone(a.tcp, "desk", transport="tcp")
        stranger = Caller(a.udp, "stranger")
        try:
            assert desk.register().status == 200
            forged = stranger.request(
                "INVITE", desk.contact_uri,
                headers=[("Route", f"<sip:127.0.0.1:{a.udp[1]};transport=udp;lr;pflow=eyJ4Ijox.AAAA>")],
            )
            stranger.send(forged)
            answer = _final(stranger, forged)
            assert answer.status == 403, answer
            assert desk.quiet("INVITE", 0.5)
        finally:
            desk.close()
            stranger.close()


def test_only_the_node_holding_the_flow_qualifies_the_contact(
    redis: RedisServer, tmp_path: Path
) -> None:
    import subprocess
    import sys

    profile = tmp_path / "qualify.yaml"
    shown = subprocess.run(
        [sys.executable, "-m", "imscore", "profile", "show", "default"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    shown = shown.replace("interval: 0.0", "interval: 0.5").replace("max_failures: 3", "max_failures: 1")
    profile.write_text(shown)
    with nodes(redis.url, tmp_path, ["a", "b"], "--profile", str(profile),
               transports=("udp", "tcp")) as (a, b):
        desk = Phone(a.tcp, "desk", transport="tcp")
        try:
            assert desk.register().status == 200
            pings = 0
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                try:
                    options = desk.expect("OPTIONS", 0.5)
                except AssertionError:
                    continue
                assert isinstance(options, Request)
                desk.reply(options, 200)
                pings += 1
            assert pings >= 2  # A pings it down its connection
            from test_redis_pool import stored

            # read while the phone is still there: once it closes, A's next ping fails and marks
            # it unreachable (max_failures 1), which is right but not what this test is about
            (binding,) = stored(redis.url, ALICE)
        finally:
            desk.close()
        assert binding.reachable  # B did not try (and fail) to reach a flow it does not hold
        assert "cannot ping" not in b.log() and "unreachable" not in b.log()


def test_flow_tokens_round_trip_and_refuse_what_the_pool_did_not_make() -> None:
    from imscore.registrar.model import FlowInfo
    from imscore.server.pool_nodes import FlowToken, relay_listener

    flow = FlowInfo("tcp", ("2001:db8::7", 40001), ("2001:db8::1", 5060), 17)
    ours = FlowToken(b"k" * 32)
    token = ours.make(flow)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert ours.read(token) == flow
    assert FlowToken(b"x" * 32).read(token) is None  # another pool's key
    body, _, mac = token.partition(".")
    assert ours.read(body[:-2] + "AA." + mac) is None  # a changed flow
    assert ours.read("garbage") is None and ours.read("") is None and ours.read("a.b.c") is None
    udp = FlowInfo("udp", ("192.0.2.9", 5060), ("192.0.2.1", 5060))
    assert ours.read(ours.make(udp)) == udp
    assert relay_listener([("udp", "10.0.0.1", 5060), ("tcp", "10.0.0.1", 5060)]) == (
        "tcp", "10.0.0.1", 5060,
    )
    assert relay_listener([("sctp", "10.0.0.1", 5060)]) is None


def test_news_channels_name_their_set() -> None:
    from imscore.registrar.regevent_pool import aor_of_channel, news_channel

    for aor in ("sip:alice@ims.example.test", "sip:a{b}%7B@h", "tel:+15551230001"):
        channel = news_channel(aor)
        assert channel.startswith("imscore:news:{") and aor_of_channel(channel) == aor
    with pytest.raises(ValueError):
        aor_of_channel("imscore:b:{x}")


def test_a_record_routed_call_through_b_to_a_tcp_device_on_a_ends_with_a_bye(
    redis: RedisServer, tmp_path: Path
) -> None:
    """With ``proxy.record_route`` on, both nodes record-route the relayed INVITE: the caller's
    ACK and BYE, sent along the 200's route set, go through B, then A, down the device's
    connection."""
    import subprocess
    import sys

    profile = tmp_path / "rr.yaml"
    shown = subprocess.run(
        [sys.executable, "-m", "imscore", "profile", "show", "default"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "record_route: false" in shown
    profile.write_text(shown.replace("record_route: false", "record_route: true"))
    with nodes(redis.url, tmp_path, ["a", "b"], "--profile", str(profile),
               transports=("udp", "tcp")) as (a, b):
        desk = Phone(a.tcp, "desk", transport="tcp")
        caller = Caller(b.udp)
        try:
            assert desk.register().status == 200
            invite = caller.invite(ALICE)
            received = desk.expect("INVITE")
            assert isinstance(received, Request)
            assert len(received.record_route) == 2  # A's on top of B's
            desk.reply(received, 200)
            ok = caller.expect("2xx")
            assert isinstance(ok, Response)
            routes = [f"<{r.uri}>" for r in reversed(ok.record_route)]  # §12.1.2: B first
            ack = caller.request(
                "ACK", desk.contact_uri, call_id=invite.call_id, cseq=1, to_tag=ok.to.tag,
                headers=[("Route", r) for r in routes],
            )
            caller.send(ack)
            assert desk.expect("ACK").call_id == invite.call_id
            bye = caller.request(
                "BYE", desk.contact_uri, call_id=invite.call_id, cseq=2, to_tag=ok.to.tag,
                headers=[("Route", r) for r in routes],
            )
            caller.send(bye)
            got = desk.expect("BYE")
            assert isinstance(got, Request) and got.call_id == invite.call_id
            desk.reply(got, 200)
            assert _final(caller, bye).status == 200
        finally:
            desk.close()
            caller.close()
