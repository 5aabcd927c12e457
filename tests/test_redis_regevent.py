"""reg-event across a pool of ``imscore serve`` nodes on one real ``redis-server``
(imscore/registrar/regevent_pool.py, docs/deployment.rst).

A watcher subscribes on node C; the devices of the same implicit set register, re-register and
expire through nodes A and B. Every change reaches the watcher as one NOTIFY from C (the node that
holds the subscription), one expiry gives one NOTIFY however many nodes sweep, and a change made
while C's subscriber connection to Redis was cut still arrives once it is back.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_support import RedisServer, nodes, redis_server, short_expiry_profile
from sipua import Phone
from test_regevent_limits import _notifies, _subscribe

from imscore.sip import Request

NS = "{urn:ietf:params:xml:ns:reginfo}"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


def contacts(notify: Request) -> dict[str, tuple[str, str]]:
    """contact URI -> (state, event) of a reginfo NOTIFY (its first registration)."""
    root = ET.fromstring(notify.body)
    registration = root.find(f"{NS}registration")
    assert registration is not None
    return {
        (c.findtext(f"{NS}uri") or ""): (c.get("state") or "", c.get("event") or "")
        for c in registration.findall(f"{NS}contact")
    }


def test_a_watcher_on_c_hears_of_changes_made_on_a_and_b(redis: RedisServer, tmp_path: Path) -> None:
    profile = short_expiry_profile(tmp_path)
    with nodes(redis.url, tmp_path, ["a", "b", "c"], "--profile", str(profile)) as (a, b, c):
        watcher = Phone(c.udp, "watcher")
        desk = Phone(a.udp, "desk")
        app = Phone(b.udp, "app")
        try:
            assert watcher.register(expires=600).status == 200
            assert _subscribe(watcher) == 200
            time.sleep(0.5)  # C has subscribed to the set's news channel
            # a registration on A: one NOTIFY, from C, with the desk registered
            assert desk.register(expires=600).status == 200
            (first,) = _notifies(watcher, 1.5)
            assert first.top_via.port == c.udp[1]
            assert contacts(first)[desk.contact_uri] == ("active", "registered")
            # a short registration on B, then its expiry (whichever node claims it): one NOTIFY
            # each, the expiry's saying "expired"
            assert app.register(expires=2).status == 200
            (second,) = _notifies(watcher, 1.5)
            assert contacts(second)[app.contact_uri] == ("active", "registered")
            expired = _notifies(watcher, 5.0)
            assert [contacts(n).get(app.contact_uri) for n in expired] == [("terminated", "expired")]
            # a de-registration on A
            assert desk.register(expires=0).status == 200
            (third,) = _notifies(watcher, 1.5)
            assert contacts(third)[desk.contact_uri] == ("terminated", "unregistered")
            versions = [int(ET.fromstring(n.body).get("version") or -1)
                        for n in (first, second, *expired, third)]
            assert versions == list(range(versions[0], versions[0] + 4))
        finally:
            for phone in (watcher, desk, app):
                phone.close()
        assert "Traceback" not in a.log() + b.log() + c.log()


def test_one_expiry_gives_one_notify_across_three_sweeping_nodes(
    redis: RedisServer, tmp_path: Path
) -> None:
    profile = short_expiry_profile(tmp_path)
    with nodes(redis.url, tmp_path, ["a", "b", "c"], "--profile", str(profile)) as pool:
        watcher = Phone(pool[2].udp, "watcher")
        devices = [Phone(pool[n % 3].udp, f"d{n}") for n in range(6)]
        try:
            assert watcher.register(expires=600).status == 200
            assert _subscribe(watcher) == 200
            time.sleep(0.5)
            for device in devices:
                assert device.register(expires=2).status == 200
            registered = _notifies(watcher, 1.5)
            assert len(registered) == len(devices)
            later = _notifies(watcher, 6.0)
        finally:
            for phone in (watcher, *devices):
                phone.close()
    # each device's expiry is told exactly once, in NOTIFYs C sent
    gone = ("terminated", "expired")
    told = [uri for n in later for uri, state in contacts(n).items() if state == gone]
    assert sorted(told) == sorted(d.contact_uri for d in devices)
    assert all(n.top_via.port == pool[2].udp[1] for n in later)


def test_a_change_made_while_the_news_connection_was_cut_still_arrives(
    redis: RedisServer, tmp_path: Path
) -> None:
    with nodes(redis.url, tmp_path, ["a", "c"]) as (a, c):
        watcher = Phone(c.udp, "watcher")
        desk = Phone(a.udp, "desk")
        try:
            assert watcher.register(expires=600).status == 200
            assert _subscribe(watcher) == 200
            time.sleep(0.5)
            # cut C's subscriber connection and register on A before C is back: the news itself
            # is lost (pub/sub keeps nothing), C reads the set again when it reconnects
            redis.cli("client", "kill", "type", "pubsub")
            assert desk.register(expires=600).status == 200
            (notify,) = _notifies(watcher, 3.0)
            assert contacts(notify)[desk.contact_uri] == ("active", "registered")
        finally:
            watcher.close()
            desk.close()
        assert "reg-event news: connected again; re-reading 1 sets" in c.log()


def test_after_a_reconnect_every_watched_set_is_read_again(redis: RedisServer) -> None:
    """News missed while the subscriber connection was down (here: nothing was published at all)
    is made up for: once connected again the listener reads each watched set, and NOTIFYs only
    where it differs from what the subscription was told last."""
    from imscore.registrar.model import FlowInfo, StoredBinding
    from imscore.registrar.regevent import RegEventService, Subscription
    from imscore.registrar.regevent_pool import RegEventNews
    from imscore.store.redis_conn import connect

    aor = "sip:alice@ims.example.test"
    flow = FlowInfo("udp", ("127.0.0.1", 5999), ("127.0.0.1", 5060))
    service = RegEventService()
    service.subscriptions[("call", "tag")] = Subscription(
        aor, (aor,), "call", aor, "tag", aor, "ours", "sip:w@127.0.0.1:5999", "<sip:s>", flow, 1e12
    )
    binding = StoredBinding(aor, "alice@ims.example.test", "<sip:d@127.0.0.1:5998>",
                            "sip:d@127.0.0.1:5998", 1e12, 0.0)
    stored: list[StoredBinding] = []
    changed: list[str] = []

    async def load(name: str) -> list[StoredBinding]:
        return list(stored)

    async def on_changed(name: str) -> None:
        changed.append(name)
        service.subscriptions[("call", "tag")].known = {"c1": binding}  # as a NOTIFY would

    async def scenario() -> None:
        connection = connect(redis.url)
        news = RegEventNews(connection, "me", service, on_changed, load)
        task = asyncio.ensure_future(news.run())
        try:
            for _ in range(50):  # subscribed, the set read once: nothing to tell
                await asyncio.sleep(0.05)
                if news.subscribed and news.stats["resyncs"]:
                    break
            assert news.subscribed == {aor} and changed == []
            stored.append(binding)  # a change whose news never comes
            await asyncio.to_thread(redis.cli, "client", "kill", "type", "pubsub")
            for _ in range(60):
                await asyncio.sleep(0.05)
                if changed:
                    break
            assert changed == [aor] and news.stats["reconnects"] >= 1
            await asyncio.sleep(0.3)
            assert changed == [aor]  # told once: the set now matches what was told
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await connection.close()

    asyncio.run(scenario())
