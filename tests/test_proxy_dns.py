"""Requests to other domains go where DNS says (RFC 3263), and fail over to the next target (§4.3)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from dnsmasq import free_udp_port, running_dnsmasq
from sipua import Agent, Caller

from imscore.profile import load_profile
from imscore.profile.model import DnsSettings, ProxySettings, Timers
from imscore.sip import Request, Response
from imscore.sip.transaction import build_ack
from imscore.testing import start_server

DOMAIN = "failover.test"


@pytest.fixture
def peers() -> Iterator[tuple[Agent, Agent]]:
    first, second = Agent(("127.0.0.1", 9), "peer1"), Agent(("127.0.0.1", 9), "peer2")
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def start(tmp_path: Path, records: list[str]):  # type: ignore[no-untyped-def]
    return running_dnsmasq(tmp_path, records, domain=DOMAIN, probe=f"probe.{DOMAIN}", ttl=30)


def proxy_for(dns_port: int):  # type: ignore[no-untyped-def]
    profile = replace(
        load_profile("multi-device"),
        timers=Timers(t1=0.02, t2=0.08, t4=0.1),  # Timer B = 64 x T1 = 1.28 s
        proxy=ProxySettings(trusted_peers=("127.0.0.1",)),  # the caller is a trusted peer
        dns=DnsSettings(nameservers=(("127.0.0.1", dns_port),), timeout=2.0),
    )
    return start_server(profile, transports=("udp",))


def test_a_silent_first_srv_target_times_out_and_the_second_gets_the_call(
    tmp_path: Path, peers: tuple[Agent, Agent]
) -> None:
    dead = free_udp_port()  # nothing listens there
    live = peers[1]
    records = [
        f"--srv-host=_sip._udp.{DOMAIN},dead.{DOMAIN},{dead},10,0",
        f"--srv-host=_sip._udp.{DOMAIN},live.{DOMAIN},{live.port},20,0",
        f"--host-record=dead.{DOMAIN},127.0.0.1",
        f"--host-record=live.{DOMAIN},127.0.0.1",
        f"--host-record=probe.{DOMAIN},127.0.0.1",
    ]
    with start(tmp_path, records) as dns_server:
        server = proxy_for(dns_server.port)
        caller = Caller(server.address("udp"))
        try:
            invite = caller.invite(f"sip:bob@{DOMAIN}")
            received = live.expect("INVITE", 8)
            assert isinstance(received, Request) and str(received.uri) == f"sip:bob@{DOMAIN}"
            response = received.make_response(486, None, to_tag="peer2")
            live.send(response, server.address("udp"))
            final = caller.expect("final", 5)
            assert isinstance(final, Response) and final.status == 486
            caller.send(build_ack(invite, final))
            proxying = server.server.proxying
            assert proxying is not None and proxying.core.stats["failovers"] == 1
        finally:
            caller.close()
            server.stop()


def test_a_503_moves_to_the_next_target_at_once(tmp_path: Path, peers: tuple[Agent, Agent]) -> None:
    first, second = peers
    records = [
        f"--srv-host=_sip._udp.{DOMAIN},one.{DOMAIN},{first.port},10,0",
        f"--srv-host=_sip._udp.{DOMAIN},two.{DOMAIN},{second.port},20,0",
        f"--host-record=one.{DOMAIN},127.0.0.1",
        f"--host-record=two.{DOMAIN},127.0.0.1",
        f"--host-record=probe.{DOMAIN},127.0.0.1",
    ]
    with start(tmp_path, records) as dns_server:
        server = proxy_for(dns_server.port)
        caller = Caller(server.address("udp"))
        try:
            caller.invite(f"sip:bob@{DOMAIN}")
            busy = first.expect("INVITE")
            assert isinstance(busy, Request)
            first.send(busy.make_response(503, None, to_tag="one"), server.address("udp"))
            retried = second.expect("INVITE", 2)
            assert isinstance(retried, Request)
            assert retried.top_via.branch != busy.top_via.branch  # a new client transaction
            second.send(retried.make_response(200, None, to_tag="two"), server.address("udp"))
            ok = caller.expect("2xx")
            assert isinstance(ok, Response) and ok.to.tag == "two"
            assert caller.quiet("503", 0.2)
        finally:
            caller.close()
            server.stop()


def test_a_name_that_does_not_exist_is_404_and_no_record_503(tmp_path: Path) -> None:
    records = [f"--host-record=probe.{DOMAIN},127.0.0.1"]
    with start(tmp_path, records) as dns_server:
        server = proxy_for(dns_server.port)
        caller = Caller(server.address("udp"))
        try:
            caller.invite(f"sip:bob@nowhere.{DOMAIN}")  # NXDOMAIN everywhere
            final = caller.expect("final", 5)
            assert isinstance(final, Response) and final.status == 404
        finally:
            caller.close()
            server.stop()
