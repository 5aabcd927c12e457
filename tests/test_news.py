"""The news of a changed set between processes says why (imscore/registrar/news.py).

Encoding and decoding of the workers' line and of the pool's Redis message, the old forms (a
process that predates the reason) and garbled ones; the final NOTIFY another process makes from
news of an RTR equals the one made where the RTR arrived; and, on a real ``redis-server``, a
store's write with news reaches a listening node as that news, an older node's bare token as an
ordinary change, and the node's own news not at all.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis_support import redis_server

from imscore.registrar.model import FlowInfo, StoredBinding
from imscore.registrar.news import (
    ENDINGS,
    ORDINARY,
    SetNews,
    parse_pool_message,
    parse_worker_line,
    pool_message,
    worker_line,
)
from imscore.registrar.regevent import RegEventService, Subscription
from imscore.sip import Request

AOR = "sip:alice@ims.example.test"
IMPI = "alice@ims.example.test"
FLOW = FlowInfo("udp", ("127.0.0.1", 5999), ("127.0.0.1", 5060))


# --- the workers' line ---
@pytest.mark.parametrize("news", [ORDINARY, *(SetNews(e) for e in sorted(ENDINGS))])
def test_a_worker_line_reads_back_as_it_was_written(news: SetNews) -> None:
    assert parse_worker_line(worker_line(AOR, news)) == (AOR, news)


def test_the_worker_line_forms() -> None:
    assert worker_line(AOR) == b"changed " + AOR.encode()  # an ordinary change: as before
    assert worker_line(AOR, SetNews("rejected")) == b"ended rejected " + AOR.encode()
    # the old line is an ordinary change; bytes that are not UTF-8 survive the round trip
    assert parse_worker_line(b"changed " + AOR.encode()) == (AOR, ORDINARY)
    odd = "sip:\udcffx@ims.example.test"
    assert parse_worker_line(worker_line(odd, SetNews("deactivated"))) == (odd, SetNews("deactivated"))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"ready", None),  # not news
        (b"changed ", None),  # no AOR
        (b"changed", None),
        (b"ended rejected", None),
        (b"ended rejected ", None),
        (b"ended bogus " + AOR.encode(), (AOR, ORDINARY)),  # an ending not known: read it back
        (b"ended \xff\xfe " + AOR.encode(), (AOR, ORDINARY)),
        (b"gossip " + AOR.encode(), None),
    ],
)
def test_a_garbled_worker_line_is_no_news_or_an_ordinary_change(
    line: bytes, expected: tuple[str, SetNews] | None
) -> None:
    assert parse_worker_line(line) == expected


# --- the pool's message ---
def test_pool_messages_and_their_old_form() -> None:
    assert pool_message("0123abcd") == "0123abcd"  # an ordinary change: the bare token, as before
    assert pool_message("0123abcd", SetNews("rejected")) == "0123abcd ended=rejected"
    for news in (ORDINARY, *(SetNews(e) for e in ENDINGS)):
        assert parse_pool_message(pool_message("0123abcd", news)) == ("0123abcd", news)
    # an older node's message; fields not known here are skipped; an unknown ending is ordinary
    assert parse_pool_message("0123abcd") == ("0123abcd", ORDINARY)
    later = "0123abcd why=rtr ended=deactivated at=12.5"
    assert parse_pool_message(later) == ("0123abcd", SetNews("deactivated"))
    assert parse_pool_message("0123abcd ended=nonsense") == ("0123abcd", ORDINARY)
    assert parse_pool_message("0123abcd ended") == ("0123abcd", ORDINARY)
    assert parse_pool_message("") == ("", ORDINARY)


def test_only_an_ending_event_is_news_with_a_reason() -> None:
    assert ORDINARY.ordinary and not SetNews("rejected").ordinary
    for wrong in ("unregistered", "expired", "timeout", "", "Rejected"):
        with pytest.raises(ValueError, match="not an ending event"):
            SetNews(wrong)


# --- the NOTIFY another process makes of news of an RTR ---
def _binding(uri: str, expires_at: float) -> StoredBinding:
    return StoredBinding(AOR, IMPI, f"<{uri}>", uri, expires_at, 0.0)


def _watching(bindings: list[StoredBinding], now: float) -> RegEventService:
    """A service with one subscription to AOR that was told ``bindings`` at ``now``."""
    service = RegEventService()
    service.subscriptions[("call", "tag")] = Subscription(
        AOR, (AOR, "tel:+15551230001"), "call", AOR, "tag", AOR, "ours",
        "sip:w@127.0.0.1:5999", "<sip:scscf@127.0.0.1:5060>", FLOW, now + 600,
    )  # fmt: skip
    assert len(service.changed(AOR, bindings, now)) == 1
    return service


def _told(notify: Request) -> tuple[str | None, bytes]:
    return notify.headers.get("Subscription-State"), notify.body


@pytest.mark.parametrize("event", sorted(ENDINGS))
def test_an_rtr_heard_as_news_notifies_as_where_it_arrived(event: str) -> None:
    desk, app = _binding("sip:desk@127.0.0.1:5998", 1000.0), _binding("sip:app@127.0.0.1:5997", 150.0)
    here, there = _watching([desk, app], 100.0), _watching([desk, app], 100.0)
    # at 200 the app's binding has expired (not swept yet): where the RTR arrived the live
    # bindings are the desk's; elsewhere only what the subscription was told is known
    (local,) = here.network_terminated(AOR, [desk], 200.0, event)
    (remote,) = there.network_terminated(AOR, None, 200.0, event)
    assert _told(local[0]) == _told(remote[0])
    assert local[0].headers.get("Subscription-State") == f"terminated;reason={event}"
    body = remote[0].body.decode()
    assert f'state="terminated" event="{event}"' in body and "sip:desk@" in body
    assert 'state="terminated" event="expired"' in body and "sip:app@" in body
    assert not here.subscriptions and not there.subscriptions


# --- through a real redis-server ---
def test_news_through_redis_from_a_store_and_from_an_older_node(tmp_path: Path) -> None:
    from imscore.registrar.redis_store import RedisBindingStore
    from imscore.registrar.regevent_pool import RegEventNews, news_channel
    from imscore.store.redis_conn import connect

    with redis_server(tmp_path / "redis") as redis:
        service = _watching([_binding("sip:desk@127.0.0.1:5998", 1e12)], 0.0)
        heard: list[tuple[str, SetNews]] = []
        loads: list[str] = []

        async def changed(aor: str, news: SetNews = ORDINARY) -> None:
            heard.append((aor, news))

        async def load(aor: str) -> list[StoredBinding]:
            loads.append(aor)
            return []  # differs from what the subscription was told: an ordinary change NOTIFYs

        async def until(check: object, seconds: float = 3.0) -> None:
            for _ in range(int(seconds / 0.05)):
                if callable(check) and check():
                    return
                await asyncio.sleep(0.05)

        async def scenario() -> None:
            listening, writing = connect(redis.url), connect(redis.url)
            writer = RedisBindingStore(writing)
            news = RegEventNews(listening, "me", service, changed, load)
            task = asyncio.ensure_future(news.run())
            try:
                # subscribed, the set read once (it differs from what was told: one NOTIFY due)
                await until(lambda: news.subscribed == {AOR} and heard)
                assert news.subscribed == {AOR} and heard == [(AOR, ORDINARY)] and loads == [AOR]
                heard.clear()
                loads.clear()
                # this node's own news is skipped, whatever it says
                await writing.aio.publish(news_channel(AOR), "me ended=rejected")
                # another node's RTR: the news says so, and no store read is made for it
                await writer.save_with_news(AOR, [], SetNews("rejected"))
                await until(lambda: heard)
                assert heard == [(AOR, SetNews("rejected"))] and loads == []
                # an older node's bare token: read back, an ordinary change
                await writing.aio.publish(news_channel(AOR), "0123abcdef012345")
                await until(lambda: len(heard) == 2)
                assert heard[1] == (AOR, ORDINARY) and loads == [AOR]
                # a write without a reason: the bare token, as before
                await writer.save(AOR, [])
                await until(lambda: len(heard) == 3)
                assert heard[2] == (AOR, ORDINARY) and loads == [AOR, AOR]
                assert news.stats["news"] == 3
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await listening.close()
                await writing.close()

        asyncio.run(scenario())
