"""Cx with a pool of ``imscore serve`` nodes on one ``redis-server``: each node an S-CSCF process
with its own Diameter identity (``--node-id a`` is ``a.scscf.<domain>``), the pool one Server-Name,
and the registration state Cx acts on the shared store's.

Real processes on loopback: ``redis-server`` and two nodes (:mod:`redis_support`) with ``--subscribers
cx://…``, our HSS (:class:`test_hss_scscf.HssThread`) behind a recording Diameter relay, ``imscore
hss rtr``. A device registers through node A, refreshes through node B (SAR RE_REGISTRATION from B,
which the HSS then knows as the set's peer), is called through A, watches its reg event through A
and through B; the HSS's RTR reaches B, the bindings leave Redis, and both subscriptions — B's own
and A's through the pool's news — hear the same ``terminated`` with the RTR's reason
(``rejected``, contacts and Subscription-State); then a registration through A is SAR
REGISTRATION again, as after a de-registration through B.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cx_support import (
    ALICE,
    ALICE_IMPI,
    DOMAIN,
    RE_REGISTRATION,
    REGISTRATION,
    USER_DEREGISTRATION,
    V,
    assert_ended,
    assignment,
    cer_hosts,
    contact_states,
    eventually,
    final_notify,
    hss_command,
    rtas,
    rtr,
    sars,
    uar,
    wait_sars,
)
from diameter_relay import DiameterRelay
from redis_support import Node, RedisServer, nodes, redis_server, short_expiry_profile
from sipua import Caller, Phone
from test_hss_scscf import SUBSCRIBERS, HssThread, subscribe
from test_redis_pool import ring, stored

from imscore.diameter import dictionary as d
from imscore.diameter.hss import NOT_REGISTERED, REGISTERED
from imscore.sip import Request, Response

A, B = f"a.scscf.{DOMAIN}", f"b.scscf.{DOMAIN}"
SERVER_NAME = f"sip:scscf.{DOMAIN}"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def hss(tmp_path: Path) -> Iterator[tuple[HssThread, DiameterRelay]]:
    path = tmp_path / "subscribers.yaml"
    path.write_text(SUBSCRIBERS)
    running = HssThread(path, tmp_path / "hss.sock")
    relay = DiameterRelay(running.address).start()
    try:
        yield running, relay
    finally:
        relay.close()
        running.stop()


def test_register_on_a_refresh_on_b_rtr_and_deregistration_across_the_pool(
    redis: RedisServer, hss: tuple[HssThread, DiameterRelay], tmp_path: Path
) -> None:
    server, relay = hss
    cx = f"cx://127.0.0.1:{relay.port}"
    with nodes(redis.url, tmp_path / "nodes", ["a", "b"], "--subscribers", cx) as (a, b):
        # one Diameter peer per node, named after its --node-id
        assert eventually(lambda: sorted(cer_hosts(relay)), [A, B]) == [A, B], cer_hosts(relay)
        phone = Phone(a.udp, "alice-desk")
        caller = Caller(a.udp)
        try:
            assert phone.register().status == 200
            assert wait_sars(relay, 1) == [(REGISTRATION, A)]
            assert assignment(server) == (REGISTERED, SERVER_NAME, A)
            # the refresh goes through B: RE_REGISTRATION, and B is the set's peer now
            phone.server = b.udp
            assert phone.register().status == 200
            assert wait_sars(relay, 2)[1] == (RE_REGISTRATION, B)
            assert assignment(server) == (REGISTERED, SERVER_NAME, B)
            subsequent = ((d.SUBSEQUENT_REGISTRATION, V), SERVER_NAME)
            assert uar(server.address, "tel:+15551230001", ALICE_IMPI) == subsequent
            # a call through A rings the device (the one Server-Name: A may read the profile)
            caller.invite("tel:+15551230001")
            invite = ring(phone)
            assert str(invite.uri) == phone.contact_uri
            phone.reply(invite, 486)
            final = caller.expect("final")
            assert isinstance(final, Response) and final.status == 486
            # a changed profile pushed by the HSS (PPR) reaches B, which finds the set registered
            pushed = hss_command(server, "ppr")
            assert pushed["sent"] == [{"set": ALICE, "peer": B, "result": [2001, 0]}], pushed
            # the device watches its reg event through B and through A
            subscribe(phone)
            phone.server = a.udp
            subscribe(phone)
            _listening(redis, 2)
            # the HSS de-registers alice: the RTR goes to B, the bindings leave Redis, B's own
            # subscription and A's (through the pool's news) get their terminating NOTIFYs, both
            # with the RTR's reason, "rejected" (RFC 3680 §5.1), not "deactivated"
            reply = rtr(server)
            assert reply == {"ok": True, "sent": [{"set": ALICE, "peer": B, "result": [2001, 0]}]}
            assert rtas(relay) == [(B, (d.SUCCESS, 0))]
            assert stored(redis.url, ALICE) == []
            for notify in _finals(phone, a, b):
                assert_ended(notify, "rejected")
                assert f'aor="{ALICE}"' in notify.body.decode()
            assert assignment(server)[0] == NOT_REGISTERED
            deregistered = (d.ERROR_IDENTITY_NOT_REGISTERED, V)
            assert uar(server.address, ALICE, ALICE_IMPI, d.UAT_DE_REGISTRATION)[0] == deregistered
            # A made the first registration and did not take the RTR: still REGISTRATION now
            assert phone.register().status == 200
            assert wait_sars(relay, 3)[2] == (REGISTRATION, A)
            # de-registered through B, registered again through A
            phone.server = b.udp
            assert phone.register(expires=0).status == 200
            assert wait_sars(relay, 4)[3] == (USER_DEREGISTRATION, B)
            assert eventually(lambda: assignment(server)[0], NOT_REGISTERED) == NOT_REGISTERED
            assert stored(redis.url, ALICE) == []
            phone.server = a.udp
            assert phone.register().status == 200
            assert wait_sars(relay, 5)[4] == (REGISTRATION, A)
            assert assignment(server) == (REGISTERED, SERVER_NAME, A)
            (binding,) = stored(redis.url, ALICE)
            assert binding.uri == phone.contact_uri
        finally:
            phone.close()
            caller.close()
    assert len(sars(relay)) == 5, sars(relay)


def _finals(phone: Phone, *pool: Node) -> list[Request]:
    """The NOTIFYs ending the phone's two subscriptions, one from each node of ``pool``, which tell
    the same (Subscription-State, each contact's state and event)."""
    finals = [final_notify(lambda: phone.expect("NOTIFY", timeout=10), _ok(phone)) for _ in pool]
    assert finals[0].call_id != finals[1].call_id
    senders = sorted(n.top_via.port for n in finals)
    assert senders == sorted(node.udp[1] for node in pool), senders
    told = [(n.headers.get("Subscription-State"), contact_states(n)) for n in finals]
    assert told[0] == told[1], told
    return finals


def _listening(redis: RedisServer, count: int) -> None:
    """Wait (bounded) until ``count`` nodes listen on alice's news channel (``PUBSUB NUMSUB``)."""
    from imscore.registrar.regevent_pool import news_channel

    channel = news_channel(ALICE)

    def listeners() -> int:
        return int(redis.cli("pubsub", "numsub", channel).split()[-1])

    assert eventually(listeners, count) == count


def _watch_from(redis: RedisServer, phone: Phone, *pool: Node) -> None:
    """The phone subscribes to its reg event through each node of ``pool`` (the first last), and
    each node listens on the set's news channel."""
    for node in reversed(pool):
        phone.server = node.udp
        subscribe(phone)
    _listening(redis, len(pool))


def test_a_deregistration_and_an_expiry_notify_alike_on_both_nodes(
    redis: RedisServer, hss: tuple[HssThread, DiameterRelay], tmp_path: Path
) -> None:
    """A subscription on each node; a de-registration through B, then an expiry (claimed by
    whichever node sweeps first): the node that made the change (its own NOTIFY) and the other
    (through Redis) tell the same, ``unregistered`` and then ``expired``, each ending with
    ``terminated;reason=deactivated``; the SARs are the de-registration's and the expiry's."""
    server, relay = hss
    cx = f"cx://127.0.0.1:{relay.port}"
    profile = short_expiry_profile(tmp_path)
    with nodes(
        redis.url, tmp_path / "nodes", ["a", "b"], "--profile", str(profile), "--subscribers", cx
    ) as (a, b):
        phone = Phone(a.udp, "alice-desk")
        try:
            assert phone.register().status == 200
            _watch_from(redis, phone, a, b)
            phone.server = b.udp
            assert phone.register(expires=0).status == 200
            for notify in _finals(phone, a, b):
                assert_ended(notify, "deactivated", contacts="unregistered")
            assert phone.register(expires=3).status == 200
            _watch_from(redis, phone, a, b)
            for notify in _finals(phone, a, b):
                assert_ended(notify, "deactivated", contacts="expired")
            assert stored(redis.url, ALICE) == []
        finally:
            phone.close()
        kinds = [kind for kind, _ in wait_sars(relay, 4)]
        assert kinds == [REGISTRATION, USER_DEREGISTRATION, REGISTRATION, d.TIMEOUT_DEREGISTRATION]
        assert eventually(lambda: assignment(server)[0], NOT_REGISTERED) == NOT_REGISTERED


def _ok(phone: Phone) -> Callable[[Request], None]:
    def answer(notify: Request) -> None:
        phone.reply(notify, 200)

    return answer


class _Server:
    """What :mod:`imscore.diameter.sharing` reads of a server."""

    def __init__(
        self, *, pool: object = None, node_id: str | None = None, worker: object = None
    ) -> None:
        self.pool, self.node_id, self.worker = pool, node_id, worker


class _Worker:
    def __init__(self, index: int, count: int) -> None:
        self.index, self.count = index, count


def test_the_diameter_identity_and_server_name_of_each_process() -> None:
    from imscore.diameter.sharing import process_origin_host, serves_shared, shared_server_name

    alone = _Server()
    assert not serves_shared(alone)
    assert process_origin_host(alone, "", DOMAIN) == f"scscf.{DOMAIN}"
    assert process_origin_host(alone, "localhost", DOMAIN) == "localhost"
    assert shared_server_name(alone, "", DOMAIN) == f"sip:scscf.{DOMAIN}"
    assert shared_server_name(alone, "localhost", DOMAIN) == "sip:localhost"
    # a worker of two: its own Origin-Host, the one Server-Name; one worker is one process
    second = _Server(worker=_Worker(1, 2))
    assert serves_shared(second) and not serves_shared(_Server(worker=_Worker(0, 1)))
    assert process_origin_host(second, "localhost", DOMAIN) == "w1.localhost"
    assert shared_server_name(second, "localhost", DOMAIN) == "sip:localhost"
    # a pool node: named after its --node-id unless given a name; the pool's Server-Name either way
    node = _Server(pool=object(), node_id="Scscf-A")
    assert serves_shared(node)
    assert process_origin_host(node, "", DOMAIN) == f"scscf-a.scscf.{DOMAIN}"
    assert process_origin_host(node, "a.example.test", DOMAIN) == "a.example.test"
    assert shared_server_name(node, "a.example.test", DOMAIN) == f"sip:scscf.{DOMAIN}"
    both = _Server(pool=object(), node_id="b", worker=_Worker(0, 2))
    assert process_origin_host(both, "", DOMAIN) == f"w0.b.scscf.{DOMAIN}"


def test_an_rtr_while_redis_is_down_is_refused_and_the_hss_keeps_the_registration(
    redis: RedisServer, hss: tuple[HssThread, DiameterRelay], tmp_path: Path
) -> None:
    """The node cannot read or remove the set's bindings: RTA 5012 DIAMETER_UNABLE_TO_COMPLY (no
    traceback, no 2001 for bindings that stay), the HSS keeps the set registered; with Redis back,
    the same RTR de-registers it."""
    server, relay = hss
    cx = f"cx://127.0.0.1:{relay.port}"
    with nodes(redis.url, tmp_path / "nodes", ["a"], "--subscribers", cx) as (a,):
        phone = Phone(a.udp, "alice-desk")
        try:
            assert phone.register().status == 200
            redis.stop()
            refused = rtr(server)
            assert refused["sent"] == [
                {"set": ALICE, "peer": f"a.scscf.{DOMAIN}", "result": [d.UNABLE_TO_COMPLY, 0]}
            ], refused
            assert assignment(server)[0] == REGISTERED
            redis.start()
            assert stored(redis.url, ALICE) != []  # (appendfsync always: the binding survived)
            done = rtr(server)
            assert done["sent"] == [{"set": ALICE, "peer": f"a.scscf.{DOMAIN}", "result": [2001, 0]}]
            assert stored(redis.url, ALICE) == []
            assert assignment(server)[0] == NOT_REGISTERED
        finally:
            phone.close()
        assert "RTR: binding store" in a.log(), a.log()[-2000:]


def test_nodes_sharing_one_origin_host_still_act_on_an_rtr_for_the_pool(
    redis: RedisServer, hss: tuple[HssThread, DiameterRelay], tmp_path: Path
) -> None:
    """Two nodes given one ``origin_host`` (against the advice): the HSS sends the RTR on either
    connection, and the node it reaches removes the bindings whichever node made them — the state
    is Redis's. (Before, a node that had not registered the set answered 2001 and did nothing.)"""
    server, relay = hss
    cx = f"cx://127.0.0.1:{relay.port}?origin_host=scscf.{DOMAIN}"
    with nodes(redis.url, tmp_path / "nodes", ["a", "b"], "--subscribers", cx) as (a, b):
        assert eventually(lambda: cer_hosts(relay), [f"scscf.{DOMAIN}"] * 2) == [f"scscf.{DOMAIN}"] * 2
        for registrar in (a, b):
            phone = Phone(registrar.udp, "alice-desk")
            try:
                assert phone.register().status == 200
                assert assignment(server)[0] == REGISTERED
                reply = rtr(server)
                assert reply["sent"] == [{"set": ALICE, "peer": f"scscf.{DOMAIN}", "result": [2001, 0]}]
                assert stored(redis.url, ALICE) == []
                assert assignment(server)[0] == NOT_REGISTERED
            finally:
                phone.close()
        # each RTR was acted on once; the HSS picks one connection of the name for both, so one of
        # the two registrations was another node's
        taken = [n.log().count(f"de-registered {ALICE}") for n in (a, b)]
        assert sum(taken) == 2, taken
