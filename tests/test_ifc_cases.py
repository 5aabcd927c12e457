"""The session cases originating_unregistered and originating_cdiv (TS 29.228 Annex B.2.2,
TS 24.229 §5.4.3.2-3): a table over the routing decisions (a real Router on a memory store), and
over real loopback UDP an AS that originates for an unregistered user and a terminating SIPp AS
whose retargeting runs the diverting user's originating-cdiv iFC."""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from sipua import Caller, Phone
from test_ifc_routing import ProxyAs, subscribers
from test_sipp_register import SCENARIOS, free_udp_port, sipp_binary

from imscore.ifc.odi import OdiStamp, OdiState, uri_digest
from imscore.ifc.routing import ServiceRouting
from imscore.plugin import create_plugin_manager
from imscore.profile import load_profile
from imscore.profile.model import Timers
from imscore.proxy.router import Decision, Router
from imscore.registrar.model import StoredBinding
from imscore.registrar.store import MemoryBindingStore
from imscore.sip import Request, Response
from imscore.sip.transaction import build_ack
from imscore.testing import RunningServer, start_server

DOMAIN = "ims.example.test"
ALICE = f"sip:alice@{DOMAIN}"
BOB = f"sip:bob@{DOMAIN}"
NOW = 1_000_000.0


def case_ifc(priority: int, case: str, uri: str) -> str:
    return (
        f"        - priority: {priority}\n"
        f"          trigger: {{spts: [{{session_case: {case}}}]}}\n"
        f"          application_server: {{uri: '{uri}'}}\n"
    )


#: alice's profile: one iFC per session case, each to its own AS (the port says which)
ALICE_IFCS = (
    case_ifc(0, "originating", "sip:127.0.0.1:7000")
    + case_ifc(1, "originating_unregistered", "sip:127.0.0.1:7001")
    + case_ifc(2, "terminating_registered", "sip:127.0.0.1:7002")
    + case_ifc(3, "terminating_unregistered", "sip:127.0.0.1:7003")
    + case_ifc(4, "originating_cdiv", "sip:127.0.0.1:7004")
    + case_ifc(5, "originating_cdiv", "sip:127.0.0.1:7005")
)


def invite(uri: str, caller: str) -> Request:
    return Request(
        "INVITE",
        uri,
        [
            ("Via", "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKcases"),
            ("Max-Forwards", 70),
            ("From", f"<{caller}>;tag=c"),
            ("To", f"<{uri}>"),
            ("Call-ID", "cases@test"),
            ("CSeq", "1 INVITE"),
        ],
    )


def routing_for(tmp_path: Path, registered: tuple[str, ...]) -> tuple[Router, ServiceRouting]:
    store = MemoryBindingStore()
    for user in registered:
        aor = f"sip:{user}@{DOMAIN}"
        binding = StoredBinding(
            aor, f"{user}@{DOMAIN}", f"<sip:{user}@127.0.0.1:6000>", f"sip:{user}@127.0.0.1:6000",
            NOW + 600, NOW,
        )  # fmt: skip
        asyncio.run(store.save(aor, [binding]))
    plugins = create_plugin_manager()
    router = Router(
        load_profile("multi-device"),
        subscribers(tmp_path, ALICE_IFCS),
        store,
        plugins,
        None,  # type: ignore[arg-type]  # no request here is authorised
        lambda: [("127.0.0.1", 5060)],
    )
    services = ServiceRouting(plugins, OdiStamp(b"k" * 32), lambda token: f"<sip:us;lr;odi={token}>")
    router.services = services
    return router, services


def as_of(decision: Decision | None) -> str:
    """Which AS a decision sends to (its port), or what else it does."""
    if decision is None:
        return "none"
    if decision.status is not None:
        return str(decision.status)
    (targets, _), *_ = decision.groups
    if decision.kind != "as":
        return f"{decision.kind} {targets[0].uri}"
    return targets[0].route[0].split(":")[-1].split(";")[0]


async def originate(router: Router, services: ServiceRouting, after: int | None) -> Decision | None:
    request = invite(BOB, ALICE)
    caller = await router.subscribers.get_by_impi(f"alice@{DOMAIN}")
    assert caller is not None
    return await services.originate(router, request, caller, None, NOW, after)


@pytest.mark.parametrize(
    ("registered", "after", "expected"),
    [
        (("alice",), None, "7000"),  # registered: originating
        (("alice",), 0, "none"),  # originating_unregistered does not apply to a registered user
        ((), None, "7001"),  # no live binding (an AS originating for her): originating_unregistered
        ((), 1, "none"),  # the cdiv iFCs are not for her own originating requests
    ],
)
def test_originating_and_originating_unregistered(
    tmp_path: Path, registered: tuple[str, ...], after: int | None, expected: str
) -> None:
    router, services = routing_for(tmp_path, registered)
    assert as_of(asyncio.run(originate(router, services, after))) == expected


def resume(router: Router, services: ServiceRouting, state: OdiState, uri: str) -> Decision:
    request = invite(uri, "sip:carol@other.example.test")
    return asyncio.run(services.resume(router, request, None, NOW, state))


@pytest.mark.parametrize(
    ("registered", "case", "priority", "uri", "expected"),
    [
        # alice's terminating AS sent the INVITE back unchanged: her next terminating iFC, then
        # her contacts (registered) or a 480
        (("alice",), "term", 2, ALICE, "terminating sip:alice@127.0.0.1:6000"),
        ((), "term", 3, ALICE, "480"),
        # it retargeted the INVITE to bob (§5.4.3.3): alice's originating-cdiv iFCs first,
        # in priority order, then bob's terminating side
        (("alice", "bob"), "term", 2, BOB, "7004"),
        (("bob",), "term", 3, BOB, "7004"),  # whether or not alice is registered
        (("alice", "bob"), "cdiv", 4, BOB, "7005"),
        (("alice", "bob"), "cdiv", 5, BOB, "terminating sip:bob@127.0.0.1:6000"),
        # retargeted out of the domain: after the cdiv iFCs, out
        (
            ("alice",),
            "cdiv",
            5,
            "sip:dave@other.example.test",
            "originating sip:dave@other.example.test",
        ),
    ],
)
def test_terminating_and_originating_cdiv(
    tmp_path: Path,
    registered: tuple[str, ...],
    case: str,
    priority: int,
    uri: str,
    expected: str,
) -> None:
    router, services = routing_for(tmp_path, registered)
    state = OdiState(case, priority, ALICE, uri_digest(ALICE if case == "term" else uri), int(NOW))
    decision = resume(router, services, state, uri)
    assert as_of(decision) == expected
    if decision.kind == "as":  # a cdiv AS: alice is the served user, the new target is kept
        (targets, _), *_ = decision.groups
        token = targets[0].route[1].split("odi=")[1].rstrip(">")
        read = services.read(token, NOW)
        assert read is not None and (read.case, read.served) == ("cdiv", ALICE)
        assert read.uri == uri_digest(uri) and targets[0].uri == uri


# -- over the wire -----------------------------------------------------------------------------------


def server(tmp_path: Path, ifcs: str, trusted: tuple[str, ...] = ()) -> RunningServer:
    profile = load_profile("multi-device")
    profile = replace(
        profile,
        timers=Timers(t1=0.05, t2=0.4, t4=0.5),
        proxy=replace(profile.proxy, trusted_peers=trusted),
    )
    return start_server(profile, transports=("udp",), subscribers=subscribers(tmp_path, ifcs))


def test_an_as_originating_for_an_unregistered_user(tmp_path: Path) -> None:
    unreg_as = ProxyAs(("127.0.0.1", 9), "unreg-as")
    ifcs = case_ifc(0, "originating", "sip:127.0.0.1:9") + case_ifc(
        1, "originating_unregistered", unreg_as.uri
    )
    running = server(tmp_path, ifcs, trusted=("127.0.0.1",))
    origin = Caller(running.address("udp"))  # an AS (a trusted peer) calling bob for alice
    origin.from_uri = ALICE
    bob = Phone(running.address("udp"), "bob", f"bob@{DOMAIN}", "bob-secret", BOB)
    try:
        assert bob.register().status == 200
        sent = origin.invite(BOB)
        hop = unreg_as.forward()  # alice has no binding: her originating_unregistered iFC
        assert hop.call_id == sent.call_id and str(hop.uri) == BOB
        ringing = bob.expect("INVITE")
        assert isinstance(ringing, Request) and ringing.call_id == sent.call_id
        bob.reply(ringing, 486)
        assert unreg_as.relay("486").status == 486
        busy = origin.expect("final")
        assert isinstance(busy, Response) and busy.status == 486
        origin.send(build_ack(sent, busy))
    finally:
        for agent in (origin, bob, unreg_as):
            agent.close()
        running.stop()


def test_a_retargeting_terminating_as_runs_the_originating_cdiv_ifc(tmp_path: Path) -> None:
    sipp = sipp_binary()
    port = free_udp_port()
    targets = tmp_path / "targets.csv"
    targets.write_text(f"SEQUENTIAL\n{BOB}\n")
    cdiv_as = ProxyAs(("127.0.0.1", 9), "cdiv-as")
    ifcs = (
        "        - priority: 0\n"
        "          trigger: {spts: [{session_case: terminating_registered, group: 0}, "
        "{method: INVITE, group: 1}]}\n"
        f"          application_server: {{uri: 'sip:127.0.0.1:{port}'}}\n"
    ) + case_ifc(1, "originating_cdiv", cdiv_as.uri)
    running = server(tmp_path, ifcs)
    alice = Phone(running.address("udp"), "alice")
    bob = Phone(running.address("udp"), "bob", f"bob@{DOMAIN}", "bob-secret", BOB)
    caller = Caller(running.address("udp"))
    redirect = subprocess.Popen(
        [
            sipp, "-sf", str(SCENARIOS / "as-redirect.xml"), "-inf", str(targets), "-i", "127.0.0.1",
            "-p", str(port), "-m", "1", "-nostdin", "-timeout", "30", "-timeout_error",
        ],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert alice.register().status == 200 and bob.register().status == 200
        caller.invite(ALICE)
        hop = cdiv_as.forward()  # retargeted to bob: alice's originating-cdiv AS
        assert str(hop.uri) == BOB
        ringing = bob.expect("INVITE", timeout=10)
        assert isinstance(ringing, Request) and str(ringing.uri) == bob.contact_uri
        bob.reply(ringing, 486)
        assert cdiv_as.relay("486").status == 486
        busy = caller.expect("final", timeout=10)
        assert isinstance(busy, Response) and busy.status == 486
        assert alice.quiet("INVITE", 0.3)
        redirect.communicate(timeout=30)
        assert redirect.returncode == 0
    finally:
        if redirect.poll() is None:
            redirect.kill()
            redirect.wait(timeout=10)
        for agent in (alice, bob, caller, cdiv_as):
            agent.close()
        running.stop()
