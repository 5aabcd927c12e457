"""A pool of ``imscore serve`` nodes on one real ``redis-server`` (docs/deployment.rst).

Each node is its own process on its own loopback ports; the devices and callers are the UDP agents
of tests/sipua.py. Register on one node, be called through another; concurrent REGISTERs for one
implicit set on two nodes lose nothing and the binding limit holds across them; a nonce used on one
node is a replay on another; one expiry is handled once; Redis stopped means 503 with Retry-After,
and service comes back with it; a node killed with SIGKILL loses no registration that got a 200.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from redis_support import DOMAIN, RedisServer, nodes, redis_server
from sipua import Caller, Phone

from imscore.auth.digest import credentials
from imscore.registrar.model import StoredBinding
from imscore.sip import Request, Response

ALICE = f"sip:alice@{DOMAIN}"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


def stored(url: str, aor: str | None = None) -> list[StoredBinding]:
    """What the Redis store holds (read with a store of our own, as another node would)."""
    from imscore.registrar.redis_store import open_redis_store

    async def read() -> list[StoredBinding]:
        store = open_redis_store(url)
        try:
            return await (store.all() if aor is None else store.load(aor))
        finally:
            await store.close()

    return asyncio.run(read())


def ring(phone: Phone) -> Request:
    invite = phone.expect("INVITE")
    assert isinstance(invite, Request)
    phone.reply(invite, 180)
    return invite


def test_register_on_a_call_through_b_rings_the_device(redis: RedisServer, tmp_path: Path) -> None:
    with nodes(redis.url, tmp_path, ["a", "b"]) as (a, b):
        phone = Phone(a.udp, "alice-desk")
        caller = Caller(b.udp)
        try:
            ok = phone.register()
            assert ok.status == 200, ok
            (binding,) = stored(redis.url, ALICE)
            assert binding.uri == phone.contact_uri and binding.extra["node"] == "a"
            caller.invite(ALICE)
            invite = ring(phone)
            assert str(invite.uri) == phone.contact_uri
            sent_by = invite.top_via.port
            assert sent_by == b.udp[1]  # node B forked it: A is not on the path
            assert caller.expect("180").status == 180  # type: ignore[union-attr]
            phone.reply(invite, 486)
            assert caller.expect("final").status == 486  # type: ignore[union-attr]
        finally:
            phone.close()
            caller.close()
        # `imscore bindings` reads the pool's store
        listed = subprocess.run(
            [sys.executable, "-m", "imscore", "bindings", "--store", redis.url, "--json"],
            capture_output=True, text=True, timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        (aor,) = json.loads(listed.stdout)["aors"]
        assert aor["aor"] == ALICE and len(aor["bindings"]) == 1
        assert "[node a]" in a.log() and "[node b]" in b.log()


def _register_often(phones: list[Phone], servers: list[tuple[str, int]], times: int) -> list[int]:
    """REGISTER each of ``phones`` (one device) ``times`` times, alternately through each node."""
    statuses = []
    for phone in phones:
        for n in range(times):
            phone.server = servers[n % len(servers)]
            statuses.append(phone.register(expires=600).status)
    return statuses


def test_concurrent_registers_on_two_nodes_lose_nothing_and_the_limit_holds(
    redis: RedisServer, tmp_path: Path
) -> None:
    with nodes(redis.url, tmp_path, ["a", "b"]) as (a, b):
        servers = [a.udp, b.udp]
        # 12 devices of alice, each registering 25 times, alternately on A and B (the other way
        # round for every other device): 300 REGISTERs for one implicit set, 12 at a time; and 30
        # devices of carol, who may have 3, registering at the same time through both nodes
        alice = [Phone(servers[n % 2], f"a{n}") for n in range(12)]
        carol = [
            Phone(servers[n % 2], f"c{n}", impi=f"carol@{DOMAIN}", password="carol-secret",
                  impu=f"sip:carol@{DOMAIN}")
            for n in range(30)
        ]
        try:
            with ThreadPoolExecutor(18) as pool:
                alice_runs = [
                    pool.submit(_register_often, [p], servers[n % 2 :] + servers[: n % 2], 25)
                    for n, p in enumerate(alice)
                ]
                carol_runs = [
                    pool.submit(_register_often, carol[k::6], servers[k % 2 :] + servers[: k % 2], 1)
                    for k in range(6)
                ]
                alice_statuses = [run.result() for run in alice_runs]
                carol_statuses = [status for run in carol_runs for status in run.result()]
        finally:
            for phone in alice + carol:
                phone.close()
        # a REGISTER that lost the race too often is told to come back (503), never lost silently
        assert {s for run in alice_statuses for s in run} <= {200, 503}
        assert sum(s == 200 for run in alice_statuses for s in run) >= 290
        accepted = {p.contact_uri for p, run in zip(alice, alice_statuses, strict=True) if 200 in run}
        assert len(accepted) == 12
        assert {b.uri for b in stored(redis.url, ALICE)} == accepted  # every accepted binding is there
        # the limit holds across the pool: 3 accepted, the others refused, the 3 are the stored ones
        assert set(carol_statuses) <= {200, 403, 503}
        assert carol_statuses.count(200) == 3, carol_statuses
        carol_accepted = {
            p.contact_uri
            for k in range(6)
            for p, status in zip(carol[k::6], carol_runs[k].result(), strict=True)
            if status == 200
        }
        assert {b.uri for b in stored(redis.url, f"sip:carol@{DOMAIN}")} == carol_accepted


def test_a_nonce_used_on_one_node_is_a_replay_on_another(redis: RedisServer, tmp_path: Path) -> None:
    with nodes(redis.url, tmp_path, ["a", "b"]) as (a, b):
        phone = Phone(a.udp, "alice-desk")
        try:
            phone.send(phone._register_request(None, 600, None, None))
            challenge = phone.expect("final")
            assert isinstance(challenge, Response) and challenge.status == 401
            (offered,) = challenge.www_authenticate

            def answer(nc: int) -> str:
                return credentials(
                    offered, username=phone.impi, password=phone.password, method="REGISTER",
                    uri=f"sip:{DOMAIN}", nc=nc, cnonce="0a1b2c3d",
                )

            phone.send(phone._register_request(answer(1), 600, None, None))
            assert phone.expect("final").status == 200  # type: ignore[union-attr]
            # the same nonce and nonce-count, to node B: a replay, not accepted
            phone.send(phone._register_request(answer(1), 600, None, None), to=b.udp)
            replayed = phone.expect("final")
            assert isinstance(replayed, Response) and replayed.status != 200
            # the same nonce with the next count is fine on B: the secret and the count are shared
            phone.send(phone._register_request(answer(2), 600, None, None), to=b.udp)
            assert phone.expect("final").status == 200  # type: ignore[union-attr]
        finally:
            phone.close()


def test_redis_stopped_is_503_with_retry_after_and_service_comes_back(
    redis: RedisServer, tmp_path: Path
) -> None:
    with nodes(redis.url, tmp_path, ["a", "b"]) as (a, b):
        phone = Phone(a.udp, "alice-desk")
        caller = Caller(b.udp)
        try:
            assert phone.register().status == 200
            redis.stop()
            # the challenge needs no store (a Digest nonce is self-validating); the answer to it
            # gets 503 with Retry-After, not 500 and not a new challenge
            refused = phone.register()
            assert isinstance(refused, Response) and refused.status == 503, refused
            assert refused.headers.get("Retry-After") is not None
            # a call to a user whose bindings cannot be read: 503 too
            caller.invite(ALICE)
            busy = caller.expect("final")
            assert isinstance(busy, Response) and busy.status == 503
            assert busy.headers.get("Retry-After") is not None
            assert a.process.poll() is None and b.process.poll() is None
            redis.start()  # the same port and append-only file: the binding is still there
            deadline = time.monotonic() + 10
            while True:
                status = phone.register().status
                if status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert status == 200
            caller.invite(ALICE)
            ring(phone)
        finally:
            phone.close()
            caller.close()
        assert "Traceback" not in a.log() + b.log()


def test_one_expiry_is_handled_once_in_the_pool(redis: RedisServer, tmp_path: Path) -> None:
    profile = tmp_path / "short.yaml"
    shown = subprocess.run(
        [sys.executable, "-m", "imscore", "profile", "show", "default"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    profile.write_text(shown.replace("min_expires: 60", "min_expires: 1"))
    with nodes(redis.url, tmp_path, ["a", "b", "c"], "--profile", str(profile)) as pool:
        phones = [Phone(pool[n % 3].udp, f"d{n}") for n in range(6)]
        try:
            for phone in phones:
                assert phone.register(expires=2).status == 200
            # the writer of two of them is gone: the others still expire them
            pool[0].kill()
            deadline = time.monotonic() + 15
            while stored(redis.url, ALICE) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert stored(redis.url, ALICE) == []
            time.sleep(1.5)  # a sweep or two more on every node: nothing handled twice
        finally:
            for phone in phones:
                phone.close()
        lines = [
            line for node in pool for line in node.log().splitlines() if "binding expired:" in line
        ]
    assert sorted(line.rpartition("contact ")[2] for line in lines) == sorted(
        p.contact_uri for p in phones
    ), "\n".join(lines)


def test_sigkill_of_a_node_under_registrations_loses_no_200(redis: RedisServer, tmp_path: Path) -> None:
    with nodes(redis.url, tmp_path, ["a", "b"]) as (a, b):
        accepted: list[str] = []
        done = threading.Event()

        def load(start: int) -> None:
            n = start
            while not done.is_set() and n < start + 2000:
                phone = Phone(a.udp, f"k{n}", impi=f"dave@{DOMAIN}", password="dave-secret",
                              impu=f"sip:dave@{DOMAIN}")
                try:
                    if phone.register(expires=600).status == 200:
                        accepted.append(phone.contact_uri)
                except AssertionError:  # no answer: the node is gone
                    return
                finally:
                    phone.close()
                n += 8

        threads = [threading.Thread(target=load, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while len(accepted) < 150 and time.monotonic() < deadline:
            time.sleep(0.01)
        a.kill()  # in the middle of the run
        done.set()
        for thread in threads:
            thread.join(timeout=30)
        assert len(accepted) >= 150
        uris = {binding.uri for binding in stored(redis.url, f"sip:dave@{DOMAIN}")}
        assert set(accepted) <= uris  # every registration that got a 200 is in Redis
        # and node B goes on serving dave
        phone = Phone(b.udp, "after", impi=f"dave@{DOMAIN}", password="dave-secret",
                      impu=f"sip:dave@{DOMAIN}")
        try:
            assert phone.register().status == 200
        finally:
            phone.close()


def test_aka_sqns_of_two_nodes_never_repeat(redis: RedisServer) -> None:
    from imscore.registrar.redis_store import open_redis_store

    stores = [open_redis_store(redis.url) for _ in range(2)]
    issued: list[int] = []
    lock = threading.Lock()

    def issue(n: int) -> None:
        sqn = stores[n % 2].pool.sqn_store().issue(f"alice@{DOMAIN}", 1000)
        with lock:
            issued.append(sqn)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(issue, range(200)))
    assert len(set(issued)) == 200 and min(issued) > 1000
    for store in stores:
        asyncio.run(store.close())


def test_imscore_bindings_shows_the_temporary_gruu_read_from_redis(
    redis: RedisServer, tmp_path: Path
) -> None:
    """The temporary GRUU a pool node gave in its 200 OK is what ``imscore bindings`` shows for a
    Redis store (the GRUU key read from Redis, never created by the tool)."""
    from test_gruu import GruuPhone, _gruus

    listed_before = subprocess.run(
        [sys.executable, "-m", "imscore", "bindings", "--store", redis.url, "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert listed_before.returncode == 0, listed_before.stderr
    assert redis.cli("exists", "imscore:secret:gruu").strip() == "0"  # the tool made no key
    with nodes(redis.url, tmp_path, ["a"]) as (a,):
        desk = GruuPhone(a.udp, "desk")
        try:
            pub, temp = _gruus(desk.register(), desk)
        finally:
            desk.close()
    listed = subprocess.run(
        [sys.executable, "-m", "imscore", "bindings", "--store", redis.url, "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    (aor,) = json.loads(listed.stdout)["aors"]
    (shown,) = aor["bindings"]
    assert (shown["pub_gruu"], shown["temp_gruu"]) == (pub, temp)
    text = subprocess.run(
        [sys.executable, "-m", "imscore", "bindings", "--store", redis.url],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert f"Temporary GRUU: {temp}" in text


def _sipp_oks(trace: str) -> tuple[set[str], set[str]]:
    """From a SIPp ``-trace_msg`` log: the Call-IDs of the 200 OKs it received, and those of the
    calls it started (one per device)."""
    oks: set[str] = set()
    started: set[str] = set()
    for entry in trace.split("-----------------------------------------------"):
        head, _, message = entry.partition("\n\n")
        lines = message.strip().splitlines()
        call_ids = [
            line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("call-id:")
        ]
        if not lines or not call_ids:
            continue
        if "message sent" in head and lines[0].startswith("REGISTER "):
            started.add(call_ids[0])
        if "message received" in head and lines[0].startswith("SIP/2.0 200"):
            oks.add(call_ids[0])
    return oks, started


def test_sigkill_of_a_node_during_a_sipp_run_loses_no_200(redis: RedisServer, tmp_path: Path) -> None:
    """SIPp registers one new device of dave per call on node A (Digest, 100 calls/s); A is
    killed with SIGKILL two seconds in. Every device whose REGISTER SIPp saw answered 200 is in
    Redis; node B goes on serving."""
    from test_sipp_register import SCENARIOS, free_udp_port, sipp_binary

    binary = sipp_binary()
    with nodes(redis.url, tmp_path, ["a", "b"]) as (a, b):
        csv = tmp_path / "dave.csv"
        csv.write_text(
            f"SEQUENTIAL\ndave;{DOMAIN};[authentication username=dave@{DOMAIN} password=dave-secret]\n"
        )
        trace = tmp_path / "sipp-messages.log"
        port = free_udp_port()
        sipp = subprocess.Popen(
            [binary, f"{a.udp[0]}:{a.udp[1]}", "-sf", str(SCENARIOS / "register-devices.xml"),
             "-inf", str(csv), "-i", "127.0.0.1", "-p", str(port), "-auth_uri", DOMAIN,
             "-m", "1500", "-r", "100", "-recv_timeout", "2000", "-timeout", "6", "-nostdin",
             "-trace_msg", "-message_file", str(trace)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
        )
        try:
            time.sleep(2.0)
            a.kill()
            sipp.wait(timeout=30)
        finally:
            if sipp.poll() is None:
                sipp.kill()
                sipp.wait(timeout=10)
        oks, started = _sipp_oks(trace.read_text(errors="replace"))
        assert len(oks) >= 50, (len(oks), len(started))
        assert len(started) > len(oks)  # the kill came in the middle of the run
        contacts = {binding.uri for binding in stored(redis.url, f"sip:dave@{DOMAIN}")}
        # Call-ID N-PID@IP belongs to call N, whose device is sip:cN@127.0.0.1:PORT
        expected = {f"sip:c{call_id.split('-', 1)[0]}@127.0.0.1:{port}" for call_id in oks}
        assert expected <= contacts, sorted(expected - contacts)[:10]
        phone = Phone(b.udp, "after", impi=f"dave@{DOMAIN}", password="dave-secret",
                      impu=f"sip:dave@{DOMAIN}")
        try:
            assert phone.register().status == 200
        finally:
            phone.close()
