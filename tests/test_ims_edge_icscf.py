"""imscore behind a P-CSCF *and* an I-CSCF (issue 17's whole path): the REGISTER reaches imscore
from the I-CSCF, with the Path the P-CSCF added, while the user's originating requests come from
the P-CSCF itself, along the Service-Route. The P-CSCF is then the Path's first hop, not the
REGISTER's sender, and it is still the element that may assert the user's identity (RFC 3325,
TS 24.229 §5.4.3.2) and whose requests from the user are authorised by her registration.

Over real loopback UDP: the "I-CSCF" is the socket that sends alice's REGISTER with a Path naming
the "P-CSCF", another socket; tests/test_ims_edge.py has the case of a P-CSCF that sent the
REGISTER itself. (Kamailio's P-CSCF and I-CSCF do this for real in
tests/test_kamailio_ims_path.py.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sipua import Agent, Phone
from test_ims_edge import _answered_by_bob, _invite_bob

from imscore.proxy.router import from_path_hop
from imscore.registrar.model import FlowInfo, StoredBinding
from imscore.sip import Request
from imscore.testing import RunningServer, start_server

DOMAIN = "ims.example.test"
ALICE = f"sip:alice@{DOMAIN}"


class RelayedPhone(Phone):
    """Alice's REGISTERs as an I-CSCF relays them: from this socket, with the Path of a P-CSCF
    elsewhere (``path_hop``, its address)."""

    def __init__(self, server: tuple[str, int], name: str, path_hop: tuple[str, int]) -> None:
        super().__init__(server, name)
        self.path_hop = path_hop

    def _register_request(
        self, authorization: str | None, expires: int, q: float | None, contact: str | None
    ) -> Request:
        request = super()._register_request(authorization, expires, q, contact)
        request.headers.add("Path", f"<sip:term@{self.path_hop[0]}:{self.path_hop[1]};lr>")
        request.headers.add("Supported", "path")
        return request


@pytest.fixture
def server() -> Iterator[RunningServer]:
    running = start_server("multi-device", transports=("udp",))
    yield running
    running.stop()


def test_the_pcscf_behind_an_icscf_asserts_its_user_and_originates_for_her(
    server: RunningServer,
) -> None:
    pcscf = Agent(server.address("udp"), "pcscf")
    icscf = RelayedPhone(server.address("udp"), "icscf", (pcscf.host, pcscf.port))
    bob = Phone(
        server.address("udp"), "bob", impi=f"bob@{DOMAIN}", password="bob-secret",
        impu=f"sip:bob@{DOMAIN}",
    )  # fmt: skip
    stranger = Agent(server.address("udp"), "stranger")
    try:
        assert icscf.register().status == 200
        assert bob.register().status == 200
        # the P-CSCF (the Path's first hop) asserts alice behind an anonymous From: believed
        invite = _answered_by_bob(bob, pcscf, "sip:anonymous@anonymous.invalid", ALICE)
        assert [str(a.uri) for a in invite.p_asserted_identity] == [ALICE]
        # alice's own call through it (From and P-Asserted-Identity alice): authorised by her
        # registration, not challenged (407) as a request from an unknown element would be
        invite = _answered_by_bob(bob, pcscf, ALICE, ALICE)
        assert [str(a.uri) for a in invite.p_asserted_identity] == [ALICE]
        # anyone else asserting alice: removed, and a From of alice's is challenged
        invite = _answered_by_bob(bob, stranger, "sip:carol@example.org", ALICE)
        assert invite.p_asserted_identity == []
        assert _invite_bob(stranger, ALICE, ALICE).status == 407
        # once alice is de-registered, her P-CSCF no longer speaks for her
        assert icscf.register(expires=0).status == 200
        invite = _answered_by_bob(bob, pcscf, "sip:anonymous@anonymous.invalid", ALICE)
        assert invite.p_asserted_identity == []
    finally:
        for agent in (pcscf, icscf, bob, stranger):
            agent.close()


def _binding(path: tuple[str, ...]) -> StoredBinding:
    flow = FlowInfo("udp", ("192.0.2.9", 5060), ("127.0.0.1", 5060))  # the I-CSCF's
    return StoredBinding(
        aor=ALICE, impi=f"alice@{DOMAIN}", contact="<sip:a@10.0.0.7>", uri="sip:a@10.0.0.7",
        expires_at=600.0, registered_at=0.0, path=path, flow=flow,
    )  # fmt: skip


def test_from_path_hop_compares_the_first_entry_by_address() -> None:
    path = ("<sip:term@192.0.2.5:5062;lr>", "<sip:other@192.0.2.6;lr>")
    udp = FlowInfo("udp", ("192.0.2.5", 5062), ("127.0.0.1", 5060))
    assert from_path_hop(_binding(path), udp)
    # over UDP the port counts (an edge proxy sends from its listening socket) ...
    assert not from_path_hop(_binding(path), FlowInfo("udp", ("192.0.2.5", 5063), udp.local))
    # ... over TCP only the address (a proxy connects from a port of its own choosing)
    assert from_path_hop(_binding(path), FlowInfo("tcp", ("192.0.2.5", 40001), udp.local))
    # only the first entry is the hop next to us; no Path, or a host name, matches nothing
    assert not from_path_hop(_binding(path), FlowInfo("udp", ("192.0.2.6", 5060), udp.local))
    assert not from_path_hop(_binding(()), udp)
    named = ("<sip:term@pcscf.example.test:5062;lr>",)
    assert not from_path_hop(_binding(named), udp)
    # the default port of the scheme when the entry names none
    assert from_path_hop(
        _binding(("<sip:term@192.0.2.5;lr>",)), FlowInfo("udp", ("192.0.2.5", 5060), udp.local)
    )
