"""imscore behind a P-CSCF (issue 17): who may watch a user's reg event (TS 24.229 §5.4.2.1.2 — the
UE, the P-CSCF it registered through, an application server of its iFCs, a trusted peer), and
P-Asserted-Identity on originating requests (RFC 3325, TS 24.229 §5.4.3.2): believed from the
P-CSCF a user registered through or a trusted peer, removed when anyone else sends it.

Over real loopback UDP. The "P-CSCF" is a socket that sends the user's REGISTER with a Path, as an
edge proxy does, and later its own requests from the same address.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from dnsmasq import running_dnsmasq
from sipua import Agent, Phone

from imscore.profile import load_profile
from imscore.sip import Request, Response
from imscore.sip.transaction import build_ack
from imscore.subscribers import MemorySubscriberStore, load_subscribers
from imscore.testing import RunningServer, start_server

DOMAIN = "ims.example.test"
ALICE = f"sip:alice@{DOMAIN}"
PCSCF = "sip:pcscf.visited.example.test"
SERVICE_ROUTE = f"<sip:orig@{DOMAIN};lr>"


class EdgePhone(Phone):
    """Alice's REGISTERs as her P-CSCF forwards them: with a Path naming the P-CSCF (this socket)."""

    def _register_request(
        self, authorization: str | None, expires: int, q: float | None, contact: str | None
    ) -> Request:
        request = super()._register_request(authorization, expires, q, contact)
        request.headers.add("Path", f"<sip:term@{self.host}:{self.port};lr>")
        request.headers.add("Supported", "path")
        return request


def _rebind(agent: Agent, host: str) -> None:
    """Move ``agent``'s UDP socket to another loopback address (127.0.0.0/8 is all loopback)."""
    agent.sock.close()
    agent.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    agent.sock.bind((host, 0))
    agent.host, agent.port = agent.sock.getsockname()


def _subscribe(agent: Agent, watcher: str, expires: int = 600) -> Response:
    """A reg-event SUBSCRIBE for alice from ``watcher`` (a P-CSCF asserts its own URI)."""
    agent.from_uri = watcher  # type: ignore[attr-defined]
    agent.tag = "watch"  # type: ignore[attr-defined]
    request = agent.request(
        "SUBSCRIBE",
        ALICE,
        headers=[
            ("Event", "reg"),
            ("Accept", "application/reginfo+xml"),
            ("Expires", expires),
            ("P-Asserted-Identity", f"<{watcher}>"),
        ],
    )
    agent.send(request)
    final = agent.expect("final")
    assert isinstance(final, Response)
    return final


def _notify(agent: Agent) -> str:
    notify = agent.expect("NOTIFY")
    assert isinstance(notify, Request)
    agent.send(
        notify.make_response(200, None, to_tag=None), (notify.top_via.host, notify.top_via.port or 5060)
    )
    return notify.body.decode()


@pytest.fixture
def server() -> Iterator[RunningServer]:
    running = start_server("multi-device", transports=("udp",))
    yield running
    running.stop()


def test_the_pcscf_a_user_registered_through_watches_her_reg_event(server: RunningServer) -> None:
    edge = EdgePhone(server.address("udp"), "edge")
    stranger = Agent(server.address("udp"), "stranger")
    try:
        assert edge.register().status == 200
        # the P-CSCF's own subscription (From and P-Asserted-Identity: its own URI), from the
        # address the REGISTER came from
        final = _subscribe(edge, PCSCF)
        assert final.status == 200, final.reason
        body = _notify(edge)
        assert 'state="active"' in body
        assert ALICE in body and "tel:+15551230001" in body  # every IMPU of the set
        assert "edge@" in body  # the contact the UE registered
        # the same claim from an address no REGISTER came from is refused
        refused = _subscribe(stranger, PCSCF)
        assert refused.status == 403
        assert "P-CSCF" in refused.reason
        # the user de-registers through the P-CSCF: it hears that the registration ended
        assert edge.register(expires=0).status == 200
        body = _notify(edge)
        assert 'state="terminated"' in body
    finally:
        edge.close()
        stranger.close()


def test_a_ue_may_still_watch_itself_and_a_registration_without_path_names_no_pcscf(
    server: RunningServer,
) -> None:
    phone = Phone(server.address("udp"), "app")  # registered directly: no Path
    other = Agent(server.address("udp"), "other")
    try:
        assert phone.register().status == 200
        assert _subscribe(phone, ALICE).status == 200
        assert 'state="active"' in _notify(phone)
        # another address claiming to be alice, or to be her P-CSCF: neither is a watcher
        assert _subscribe(other, ALICE).status == 403
        assert _subscribe(other, PCSCF).status == 403
    finally:
        phone.close()
        other.close()


def test_a_trusted_peer_may_watch_any_user() -> None:
    profile = load_profile("multi-device")
    profile = replace(profile, proxy=replace(profile.proxy, trusted_peers=("127.0.0.1",)))
    running = start_server(profile, transports=("udp",))
    phone = Phone(running.address("udp"), "app")
    peer = Agent(running.address("udp"), "peer")
    try:
        assert phone.register().status == 200
        assert _subscribe(peer, "sip:monitor@peer.example.test").status == 200
        assert "app@" in _notify(peer)
    finally:
        phone.close()
        peer.close()
        running.stop()


def test_an_application_server_of_the_users_ifcs_may_watch(tmp_path: Path) -> None:
    path = tmp_path / "subscribers.yaml"
    path.write_text(
        "subscribers:\n"
        f"  - impi: alice@{DOMAIN}\n    password: alice-secret\n"
        f"    implicit_sets: [[{ALICE}, tel:+15551230001]]\n"
        "    service_profile:\n      ifcs:\n"
        "        - priority: 0\n"
        "          trigger: {spts: [{method: MESSAGE}]}\n"
        "          application_server: {uri: 'sip:127.0.0.2:5099'}\n"
    )
    subscribers = MemorySubscriberStore(load_subscribers(path))
    running = start_server("multi-device", transports=("udp",), subscribers=subscribers)
    phone = Phone(running.address("udp"), "app")
    server_as = Agent(running.address("udp"), "as")
    elsewhere = Agent(running.address("udp"), "elsewhere")
    try:
        _rebind(server_as, "127.0.0.2")
        _rebind(elsewhere, "127.0.0.3")
        assert phone.register().status == 200
        assert _subscribe(server_as, "sip:as@127.0.0.2:5099").status == 200
        assert "app@" in _notify(server_as)
        assert _subscribe(elsewhere, "sip:as@127.0.0.2:5099").status == 403
    finally:
        for agent in (phone, server_as, elsewhere):
            agent.close()
        running.stop()


def test_an_application_server_named_by_dns_may_watch(tmp_path: Path) -> None:
    """An AS whose iFC URI names a host (as.apps.test): DNS (a real dnsmasq) gives its address,
    and a SUBSCRIBE from there is the AS's; from another address, or for a name DNS does not
    know, it is not."""
    path = tmp_path / "subscribers.yaml"
    path.write_text(
        "subscribers:\n"
        f"  - impi: alice@{DOMAIN}\n    password: alice-secret\n"
        f"    implicit_sets: [[{ALICE}, tel:+15551230001]]\n"
        "    service_profile:\n      ifcs:\n"
        "        - priority: 0\n"
        "          trigger: {spts: [{method: MESSAGE}]}\n"
        "          application_server: {uri: 'sip:as.apps.test:5099'}\n"
        "        - priority: 1\n"
        "          trigger: {spts: [{method: OPTIONS}]}\n"
        "          application_server: {uri: 'sip:gone.apps.test:5099'}\n"
    )
    records = ["--host-record=as.apps.test,127.0.0.2", "--host-record=probe.apps.test,127.0.0.1"]
    with running_dnsmasq(tmp_path, records, domain="apps.test", probe="probe.apps.test") as dns:
        profile = load_profile("multi-device")
        profile = replace(
            profile, dns=replace(profile.dns, nameservers=(("127.0.0.1", dns.port),), timeout=2.0)
        )
        subscribers = MemorySubscriberStore(load_subscribers(path))
        running = start_server(profile, transports=("udp",), subscribers=subscribers)
        phone = Phone(running.address("udp"), "app")
        server_as = Agent(running.address("udp"), "as")
        elsewhere = Agent(running.address("udp"), "elsewhere")
        try:
            _rebind(server_as, "127.0.0.2")
            _rebind(elsewhere, "127.0.0.3")
            assert phone.register().status == 200
            assert _subscribe(elsewhere, "sip:as@apps.test").status == 403
            assert _subscribe(server_as, "sip:as@apps.test").status == 200
            assert "app@" in _notify(server_as)
        finally:
            for agent in (phone, server_as, elsewhere):
                agent.close()
            running.stop()


# -- P-Asserted-Identity -----------------------------------------------------------------------


def _invite_bob(agent: Agent, from_uri: str, asserted: str | None) -> Response:
    """An INVITE to bob on the Service-Route (as a P-CSCF sends an originating request); its final
    response, ACKed (bob's phone, when it rings, says 486)."""
    agent.from_uri = from_uri  # type: ignore[attr-defined]
    agent.tag = "caller"  # type: ignore[attr-defined]
    headers: list[tuple[str, object]] = [("Route", SERVICE_ROUTE)]
    if asserted is not None:
        headers.append(("P-Asserted-Identity", f"<{asserted}>"))
    invite = agent.request("INVITE", f"sip:bob@{DOMAIN}", headers=headers)
    agent.send(invite)
    final = agent.expect("final")
    assert isinstance(final, Response)
    agent.send(build_ack(invite, final))
    return final


def _answered_by_bob(bob: Phone, caller: Agent, from_uri: str, asserted: str) -> Request:
    """The INVITE bob's phone receives for a call from ``caller``; bob is busy (486)."""
    got: list[Request] = []

    def ring() -> None:
        invite = bob.expect("INVITE")
        assert isinstance(invite, Request)
        got.append(invite)
        bob.reply(invite, 486)

    ringer = threading.Thread(target=ring)
    ringer.start()
    final = _invite_bob(caller, from_uri, asserted)
    ringer.join(10)
    assert final.status == 486
    (invite,) = got
    return invite


def test_p_asserted_identity_is_believed_only_from_the_users_pcscf(server: RunningServer) -> None:
    edge = EdgePhone(server.address("udp"), "edge")
    bob = Phone(
        server.address("udp"),
        "bob",
        impi=f"bob@{DOMAIN}",
        password="bob-secret",
        impu=f"sip:bob@{DOMAIN}",
    )
    stranger = Agent(server.address("udp"), "stranger")
    try:
        assert edge.register().status == 200
        assert bob.register().status == 200
        # from alice's P-CSCF, with a From that hides her (privacy): the asserted identity stays
        invite = _answered_by_bob(bob, edge, "sip:anonymous@anonymous.invalid", ALICE)
        assert [str(a.uri) for a in invite.p_asserted_identity] == [ALICE]
        # the same from an address no REGISTER of alice came from: removed (RFC 3325 §5)
        invite = _answered_by_bob(bob, stranger, "sip:carol@example.org", ALICE)
        assert invite.p_asserted_identity == []
        # the P-CSCF asserts a barred identity of alice's: that user may not originate
        final = _invite_bob(edge, "sip:anonymous@anonymous.invalid", f"sip:alice.old@{DOMAIN}")
        assert final.status == 403 and "Barred" in final.reason
    finally:
        edge.close()
        bob.close()
        stranger.close()


# -- where a request to a device behind a Path goes ---------------------------------------------


def test_a_request_follows_the_path_when_its_first_hop_is_not_where_the_register_came_from() -> None:
    from imscore.proxy.router import nat_decision
    from imscore.registrar.model import FlowInfo, StoredBinding

    def binding(path: tuple[str, ...], remote: tuple[str, int]) -> StoredBinding:
        flow = FlowInfo("udp", remote, ("127.0.0.1", 5060))
        return StoredBinding(
            aor=ALICE, impi=f"alice@{DOMAIN}", contact="<sip:a@10.0.0.7>", uri="sip:a@10.0.0.7",
            expires_at=600.0, registered_at=0.0, path=path, flow=flow,
        )  # fmt: skip

    # the P-CSCF sent the REGISTER itself: its flow (the same address)
    flow, why = nat_decision(binding(("<sip:term@192.0.2.5:5062;lr>",), ("192.0.2.5", 5062)))
    assert flow is not None and "Path" in why
    # an I-CSCF (192.0.2.9) sent it: the Path's first hop, not the I-CSCF
    flow, why = nat_decision(binding(("<sip:term@192.0.2.5:5062;lr>",), ("192.0.2.9", 5060)))
    assert flow is None and "192.0.2.5:5062" in why
    # a first hop named by a host name cannot be compared: the flow, as before
    flow, _ = nat_decision(binding(("<sip:term@pcscf.example.test;lr>",), ("192.0.2.9", 5060)))
    assert flow is not None
