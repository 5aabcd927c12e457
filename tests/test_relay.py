"""The relay rules (issue 15, item 1): nobody uses imscore to reach a third party from outside a
dialog it record-routed.

An unauthenticated source that never registered sends in-dialog-looking requests (a To tag) with a
Route or Request-URI naming a "victim" — a loopback socket of the test — in every shape an attacker
would try. Nothing reaches the victim and each attempt is answered 403 (or 481/404 for a target we
serve). The same shapes with a valid dialog stamp, from a trusted peer, or over a registered flow
are forwarded. :func:`relay_verdict` is also checked as a table.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace

import pytest
from sipua import Caller, Phone

from imscore.profile import load_profile
from imscore.proxy.relay import RelayFacts, relay_verdict
from imscore.sip import Request, Response, parse_datagram
from imscore.testing import RunningServer, start_server

DOMAIN = "ims.example.test"
ALICE = f"sip:alice@{DOMAIN}"
METHODS = ["BYE", "INVITE", "MESSAGE", "NOTIFY", "INFO", "UPDATE", "PRACK", "REFER"]


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    profile = load_profile("multi-device")
    profile = replace(profile, proxy=replace(profile.proxy, record_route=True))
    running = start_server(profile, transports=("udp", "tcp"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def victim() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


def _shapes(us: str, victim: str) -> list[tuple[str, str, list[str]]]:
    """(label, Request-URI, Route values) of a relay attempt."""
    far = f"sip:bob@{victim}"
    return [
        ("route-to-victim", far, [f"<sip:{victim};lr>"]),
        ("our-route-then-victim", far, [f"<sip:{us};lr>", f"<sip:{victim};lr>"]),
        ("our-route-by-domain-then-victim", far, [f"<sip:{DOMAIN};lr>", f"<sip:{victim};lr>"]),
        ("our-route-tcp-then-victim", far, [f"<sip:{us};transport=tcp;lr>", f"<sip:{victim};lr>"]),
        ("our-route-only", far, [f"<sip:{us};lr>"]),
        ("our-strict-route-then-victim", far, [f"<sip:{us}>", f"<sip:{victim}>"]),
        ("strict-ruri-us", f"sip:{us}", [f"<sip:{victim}>"]),
        ("strict-ruri-us-lr", f"sip:{us};lr", [f"<sip:{far[4:]}>"]),
        ("no-route", far, []),
        ("forged-stamp", far, [f"<sip:{us};lr;dlg=0123456789abcdef0123>"]),
        ("tcp-to-victim", far + ";transport=tcp", [f"<sip:{us};lr>"]),
    ]


def _attempt(agent: Caller, method: str, uri: str, routes: list[str]) -> Request:
    request = agent.request(method, uri, to_tag="forged", headers=[("Route", r) for r in routes])
    if method == "NOTIFY":
        request.headers.add("Event", "reg")
        request.headers.add("Subscription-State", "active")
    return request


def _reached(victim: socket.socket, wait: float) -> list[Request]:
    victim.settimeout(wait)
    got = []
    try:
        while True:
            data, _ = victim.recvfrom(65535)
            message = parse_datagram(data)
            if isinstance(message, Request):
                got.append(message)
            victim.settimeout(0.05)
    except TimeoutError:
        return got


@pytest.mark.parametrize("method", METHODS)
def test_no_in_dialog_shape_relays_an_unauthenticated_source(
    server: RunningServer, victim: socket.socket, method: str
) -> None:
    host, port = server.address("udp")
    us = f"{host}:{port}"
    target = f"127.0.0.1:{victim.getsockname()[1]}"
    attacker = Caller(server.address("udp"), "mallory", from_uri="sip:mallory@evil.example")
    try:
        answers = {}
        for label, uri, routes in _shapes(us, target):
            attacker.send(_attempt(attacker, method, uri, routes))
            final = attacker.expect("final", 5)
            assert isinstance(final, Response)
            answers[label] = final.status
        assert _reached(victim, 0.3) == [], answers
        assert all(status in (403, 404, 481) for status in answers.values()), answers
        assert answers["our-route-then-victim"] == 403
    finally:
        attacker.close()


def test_a_registered_users_own_identity_from_a_foreign_socket_is_not_a_registered_flow(
    server: RunningServer, victim: socket.socket
) -> None:
    """Claiming a served From without being on its flow proves nothing."""
    host, port = server.address("udp")
    target = f"127.0.0.1:{victim.getsockname()[1]}"
    phone = Phone(server.address("udp"), "app")
    attacker = Caller(server.address("udp"), "mallory", from_uri=ALICE)
    try:
        assert phone.register().status == 200
        attacker.send(_attempt(attacker, "MESSAGE", f"sip:bob@{target}", [f"<sip:{host}:{port};lr>"]))
        assert attacker.expect("final").status == 403  # type: ignore[union-attr]
        assert _reached(victim, 0.3) == []
    finally:
        phone.close()
        attacker.close()


def test_a_stamped_dialog_is_loose_routed(server: RunningServer, victim: socket.socket) -> None:
    """A request inside a dialog we record-routed (its stamp, for its Call-ID and tags) goes on."""
    host, port = server.address("udp")
    target = f"127.0.0.1:{victim.getsockname()[1]}"
    attacker = Caller(server.address("udp"), "peer", from_uri="sip:carol@example.org")
    assert server.server.proxying is not None
    try:
        request = _attempt(attacker, "BYE", f"sip:bob@{target}", [])
        stamp = server.server.proxying.stamp.make(request.call_id, request.from_.tag)
        request.headers.set("Route", f"<sip:{host}:{port};lr;dlg={stamp}>")
        attacker.send(request)
        (reached,) = _reached(victim, 3)
        assert reached.method == "BYE" and not reached.route
        # the callee's direction: the caller's tag is now the To tag
        reverse = attacker.request("BYE", f"sip:bob@{target}", to_tag=request.from_.tag)
        reverse.headers.set("From", f"<sip:bob@{target}>;tag=other")
        stamp = server.server.proxying.stamp.make(reverse.call_id, request.from_.tag)
        reverse.headers.set("Route", f"<sip:{host}:{port};lr;dlg={stamp}>")
        attacker.send(reverse)
        assert [m.method for m in _reached(victim, 3)] == ["BYE"]
        # the same stamp on another Call-ID proves nothing
        other = _attempt(attacker, "BYE", f"sip:bob@{target}", [f"<sip:{host}:{port};lr;dlg={stamp}>"])
        attacker.send(other)
        assert attacker.expect("final").status == 403  # type: ignore[union-attr]
        assert _reached(victim, 0.3) == []
    finally:
        attacker.close()


def test_a_record_routed_call_then_bye_through_us(server: RunningServer) -> None:
    """The real thing: alice's device answers a call we record-routed; the caller's BYE, with the
    route set of the 200, reaches the device."""
    phone = Phone(server.address("udp"), "desk")
    caller = Caller(server.address("udp"))
    try:
        assert phone.register().status == 200
        invite = caller.invite(ALICE)
        received = phone.expect("INVITE")
        assert isinstance(received, Request) and received.record_route
        phone.reply(received, 200)
        ok = caller.expect("2xx")
        assert isinstance(ok, Response)
        routes = [f"<{r.uri}>" for r in ok.record_route]
        bye = caller.request(
            "BYE", phone.contact_uri, call_id=invite.call_id, cseq=2, to_tag=ok.to.tag,
            headers=[("Route", r) for r in routes],
        )
        caller.send(bye)
        got = phone.expect("BYE")
        assert isinstance(got, Request) and got.call_id == invite.call_id
    finally:
        phone.close()
        caller.close()


def test_a_trusted_peer_may_loose_route(victim: socket.socket) -> None:
    profile = load_profile("multi-device")
    profile = replace(profile, proxy=replace(profile.proxy, trusted_peers=("127.0.0.1",)))
    running = start_server(profile, transports=("udp",))
    peer = Caller(running.address("udp"), "pcscf")
    try:
        target = f"127.0.0.1:{victim.getsockname()[1]}"
        peer.send(_attempt(peer, "INFO", f"sip:bob@{target}", [f"<sip:{target};lr>"]))
        assert [m.method for m in _reached(victim, 3)] == ["INFO"]
    finally:
        peer.close()
        running.stop()


# the rules as a table: facts -> (action, status)
TABLE = [
    (RelayFacts(in_dialog=False), "router", None),
    (RelayFacts(in_dialog=False, onward_route=True), "refuse", 403),
    (RelayFacts(in_dialog=False, onward_route=True, trusted_peer=True), "route", None),
    (RelayFacts(in_dialog=True), "refuse", 403),
    (RelayFacts(in_dialog=True, onward_route=True), "refuse", 403),
    (RelayFacts(in_dialog=True, to_served=True), "refuse", 481),
    (RelayFacts(in_dialog=True, to_known_device=True), "in-dialog", None),
    (RelayFacts(in_dialog=True, to_known_device=True, onward_route=True), "refuse", 403),
    (RelayFacts(in_dialog=True, stamped=True), "in-dialog", None),
    (RelayFacts(in_dialog=True, stamped=True, onward_route=True), "route", None),
    (RelayFacts(in_dialog=True, stamped=True, to_served=True), "in-dialog", None),
    (RelayFacts(in_dialog=True, trusted_peer=True, onward_route=True), "route", None),
    (RelayFacts(in_dialog=True, trusted_peer=True, to_served=True), "refuse", 481),
    (RelayFacts(in_dialog=True, registered_flow=True), "in-dialog", None),
    (RelayFacts(in_dialog=True, registered_flow=True, onward_route=True), "route", None),
]


@pytest.mark.parametrize(("facts", "action", "status"), TABLE)
def test_relay_rules_table(facts: RelayFacts, action: str, status: int | None) -> None:
    verdict = relay_verdict(facts)
    assert (verdict.action, verdict.status) == (action, status)


def test_a_barred_identity_may_not_originate(server: RunningServer) -> None:
    """TS 24.229 §5.4.3.2: alice's barred IMPU, even from her registered device, gets 403."""
    phone = Phone(server.address("udp"), "app")
    try:
        assert phone.register().status == 200
        phone.from_uri = f"sip:alice.old@{DOMAIN}"
        phone.send(phone.request("MESSAGE", f"sip:alice@{DOMAIN}"))
        final = phone.expect("final")
        assert isinstance(final, Response) and final.status == 403
        assert "Barred" in (final.reason or "")
        # her own unbarred identity from the same device is delivered (to her own device here)
        phone.from_uri = ALICE
        phone.send(phone.request("MESSAGE", f"sip:alice@{DOMAIN}"))
        delivered = phone.expect("MESSAGE")
        assert isinstance(delivered, Request)
    finally:
        phone.close()


def test_dialog_stamps_survive_a_restart_on_the_same_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The stamp key is kept in the SQLite file: a BYE of a call set up before a restart is still
    in a dialog of ours; another file (or the memory store) gives another key."""
    url = f"sqlite:{tmp_path / 'one.db'}"
    stamps = []
    for store in (url, url, f"sqlite:{tmp_path / 'two.db'}", "memory:"):
        running = start_server("multi-device", transports=("udp",), store_url=store)
        try:
            assert running.server.proxying is not None
            stamps.append(running.server.proxying.stamp.make("call-1@x", "tag-1"))
        finally:
            running.stop()
    assert stamps[0] == stamps[1]
    assert len({stamps[0], stamps[2], stamps[3]}) == 3
