"""The Redis binding store and the shared auth state against a real ``redis-server`` (in-process
stores; the pool of ``imscore serve`` nodes is tests/test_redis_pool.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_support import RedisServer, free_port, redis_server

from imscore.auth.digest import NonceUse
from imscore.registrar.model import FlowInfo, StoredBinding
from imscore.registrar.redis_store import (
    EXPIRY_KEY,
    LEASE,
    NodeFlow,
    RedisBindingStore,
    open_redis_store,
)
from imscore.store import StoreError
from imscore.store.redis_conn import StoreUnavailable, hash_tagged, parse_redis_url


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def url(redis: RedisServer) -> str:
    redis.cli("flushall")
    return redis.url


def binding(aor: str, n: int, expires_at: float, **extra: object) -> StoredBinding:
    return StoredBinding(
        aor=aor, impi="alice@ims.example.test", contact=f"<sip:d{n}@127.0.0.1:5070>",
        uri=f"sip:d{n}@127.0.0.1:5070", expires_at=expires_at, registered_at=expires_at - 600 + n,
        call_id=f"c{n}", cseq=n, instance_id=f"urn:uuid:{n}", reg_id=1, q=0.5, path=("<sip:p;lr>",),
        flow=FlowInfo("udp", ("127.0.0.1", 5070), ("127.0.0.1", 5060)), user_agent="ua",
        extra={str(k): str(v) for k, v in extra.items()},
    )


def test_urls_parse_or_say_what_is_wrong() -> None:
    plain = parse_redis_url("redis://127.0.0.1:7000/3")
    assert (plain.cluster, plain.nodes, plain.db) == (False, (("127.0.0.1", 7000),), 3)
    assert parse_redis_url("redis://h").nodes == (("h", 6379),)
    cluster = parse_redis_url("redis+cluster://a:1,b:2")
    assert cluster.cluster and cluster.nodes == (("a", 1), ("b", 2))
    assert parse_redis_url("rediss://u:pw@[::1]:6380").tls
    for bad, why in [
        ("redis://h/x", "must be a number"),
        ("redis://a:1,b:2", r"several are for redis\+cluster"),
        ("redis+cluster://a:1/2", "only database 0"),
        ("redis://", "a host is missing"),
        ("redis://h:99999", "bad address"),
    ]:
        with pytest.raises(StoreError, match=why):
            parse_redis_url(bad)
    # the hash tag is the whole AOR, braces and all
    assert hash_tagged("b", "sip:a{x}@h") == "imscore:b:{sip:a%7Bx%7D@h}"


def test_bindings_round_trip_and_a_stale_version_is_refused(url: str) -> None:
    async def run() -> None:
        a, b = open_redis_store(url), open_redis_store(url)
        a.node_id = "a"
        aor, now = "sip:alice@ims.example.test", time.time()
        try:
            assert await a.load_versioned(aor) == ([], "")
            saved = [binding(aor, 1, now + 60), binding(aor, 2, now + 90, node="b")]
            assert await a.save_versioned(aor, saved, "")
            got, version = await b.load_versioned(aor)
            assert [g.uri for g in got] == [s.uri for s in saved]  # oldest registration first
            held = NodeFlow("udp", ("127.0.0.1", 5070), ("127.0.0.1", 5060), None, node="a")
            assert got[0] == saved[0].__class__(
                **{**vars_of(saved[0]), "extra": {"node": "a"}, "flow": held}
            )  # the flow read back names the node that holds it
            assert got[1].extra == {"node": "b"}  # written by another node: its name is kept
            assert isinstance(got[1].flow, NodeFlow) and got[1].flow.node == "b"
            assert version
            assert not await a.save_versioned(aor, saved[:1], "")  # someone wrote since
            assert await b.save_versioned(aor, saved[:1], version)
            assert not await a.save_versioned(aor, [], version)  # that version is gone
            with pytest.raises(ValueError, match="filed under"):
                await a.save(aor, [binding("sip:other@h", 3, now + 60)])
            await a.save(aor, [])
            assert await b.load(aor) == [] and await b.all() == []
        finally:
            await a.close()
            await b.close()
        with pytest.raises(StoreError, match="closed"):
            await a.load(aor)

    asyncio.run(run())


def vars_of(b: StoredBinding) -> dict[str, object]:
    return {name: getattr(b, name) for name in b.__dataclass_fields__}


def test_two_stores_sweeping_at_once_report_each_expiry_once(url: str) -> None:
    async def run() -> None:
        stores = [open_redis_store(url) for _ in range(3)]
        now = time.time()
        try:
            expected = set()
            for k in range(40):
                aor = f"sip:u{k}@ims.example.test"
                bindings = [binding(aor, n, now + (1 if n < 2 else 600)) for n in range(3)]
                await stores[k % 3].save(aor, bindings)
                expected |= {(aor, b.uri) for b in bindings[:2]}
            later = now + 2
            results = await asyncio.gather(*(s.expire(later) for s in stores for _ in range(3)))
            reported = [(b.aor, b.uri) for result in results for b in result]
            assert len(reported) == len(set(reported)) == 80  # each once, none twice
            assert set(reported) == expected
            assert len(await stores[0].all()) == 40  # the live ones stay
            # the index now holds each AOR at its next expiry: nothing is due before it
            assert await stores[1].expire(now + 300) == []
            assert {b.uri for b in await stores[2].expire(now + 601)} == {"sip:d2@127.0.0.1:5070"}
            assert await stores[0].all() == []
            assert await stores[0].connection.aio.zcard(EXPIRY_KEY) == 0
        finally:
            for store in stores:
                await store.close()

    asyncio.run(run())


def test_a_claim_held_by_a_dead_node_is_taken_over_after_the_lease(url: str) -> None:
    async def run() -> None:
        dead, alive = open_redis_store(url), open_redis_store(url)
        aor, now = "sip:alice@ims.example.test", time.time()
        try:
            await alive.save(aor, [binding(aor, 1, now + 1)])
            assert await dead._claim(now + 2) == [aor]  # claimed, then the node died
            assert await alive.expire(now + 2) == []  # held by its lease
            (gone,) = await alive.expire(now + 2 + LEASE + 0.1)
            assert gone.aor == aor and await alive.load(aor) == []
        finally:
            await dead.close()
            await alive.close()

    asyncio.run(run())


def test_a_refresh_during_a_claim_keeps_the_binding_indexed(url: str) -> None:
    async def run() -> None:
        sweeper, writer = open_redis_store(url), open_redis_store(url)
        aor, now = "sip:alice@ims.example.test", time.time()
        try:
            await writer.save(aor, [binding(aor, 1, now + 1)])
            assert await sweeper._claim(now + 2) == [aor]
            await writer.save(aor, [binding(aor, 1, now + 100)])  # refreshed meanwhile
            assert await sweeper._expire_aor(aor, now + 2) == []
            score = await sweeper.connection.aio.zscore(EXPIRY_KEY, aor)
            assert score == pytest.approx(now + 100)
        finally:
            await sweeper.close()
            await writer.close()

    asyncio.run(run())


def test_counts_come_from_a_background_count(url: str) -> None:
    async def run() -> None:
        store = open_redis_store(url)
        now = time.time()
        try:
            two = [binding("sip:a@h", 1, now + 60), binding("sip:a@h", 2, now - 1)]
            await store.save("sip:a@h", two)
            await store.save("sip:b@h", [binding("sip:b@h", 1, now - 1)])
            with pytest.raises(StoreError, match="not counted yet"):
                store.counts(now)
            assert store._counting is not None
            await store._counting
            assert store.counts(now) == (1, 1)
        finally:
            await store.close()

    asyncio.run(run())


def test_unreachable_redis_is_store_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot reach Redis"):
        open_redis_store(f"redis://127.0.0.1:{free_port()}/0")
    server = RedisServer(tmp_path / "r")
    server.start()
    store = open_redis_store(server.url)
    counter = store.pool.nonce_counter(300)
    sqns = store.pool.sqn_store()
    now = time.time()
    assert counter.use("n", 1, issued=now, now=now) is NonceUse.FRESH
    server.stop()

    async def load() -> None:
        with pytest.raises(StoreUnavailable):
            await store.load("sip:alice@ims.example.test")

    asyncio.run(load())
    with pytest.raises(StoreUnavailable):
        counter.use("n", 2, issued=now, now=now)
    with pytest.raises(StoreUnavailable):
        sqns.issue("alice@ims.example.test", 1)
    server.start()  # the same port: the next call reconnects
    assert counter.use("n", 1, issued=now, now=now) is NonceUse.REPLAY  # kept in the AOF
    assert counter.use("n", 2, issued=now, now=now) is NonceUse.FRESH
    asyncio.run(store.close())
    server.stop()


def test_the_secret_is_made_once_for_every_node(url: str) -> None:
    stores = [open_redis_store(url) for _ in range(2)]
    secrets = {store.pool.secret("nonce") for store in stores}
    assert len(secrets) == 1 and len(secrets.pop()) == 32
    assert stores[0].pool.secret("record-route") != stores[0].pool.secret("nonce")
    for store in stores:
        asyncio.run(store.close())


def test_key_of_an_aor_is_tagged() -> None:
    key = RedisBindingStore.key("sip:alice@ims.example.test")
    assert key == "imscore:b:{sip:alice@ims.example.test}"


def test_two_nodes_removing_one_aor_at_once_report_each_expiry_once(url: str) -> None:
    # a lease that ran out while its node was still at work: both remove, one reports
    async def run() -> None:
        a, b = open_redis_store(url), open_redis_store(url)
        now = time.time()
        try:
            aors = [f"sip:u{k}@ims.example.test" for k in range(30)]
            for aor in aors:
                await a.save(aor, [binding(aor, n, now + 1) for n in range(2)])
            results = await asyncio.gather(
                *(store._expire_aor(aor, now + 2) for aor in aors for store in (a, b))
            )
            reported = [(g.aor, g.uri) for result in results for g in result]
            assert len(reported) == len(set(reported)) == 60
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())


def test_hundreds_of_requests_waiting_on_redis_at_once_all_get_their_answer(url: str) -> None:
    """A burst (an overloaded node has hundreds of REGISTERs in flight) waits for a connection of the
    pool instead of failing with redis-py's "Too many connections" (which became 503s)."""

    async def run() -> None:
        store = open_redis_store(url)
        now = time.time()
        try:
            aors = [f"sip:burst{i}@ims.example.test" for i in range(400)]
            saved = await asyncio.gather(
                *(store.save_versioned(a, [binding(a, 1, now + 60)], "") for a in aors)
            )
            assert all(saved)
            loaded = await asyncio.gather(*(store.load_versioned(a) for a in aors))
            assert [len(bindings) for bindings, _ in loaded] == [1] * len(aors)
        finally:
            await store.close()

    asyncio.run(run())
