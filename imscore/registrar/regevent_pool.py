"""reg-event across a pool of nodes: news of a change to an implicit set reaches the node that holds
a subscription for it (Redis pub/sub).

**Who owns what.** A reg-event subscription lives on the node that took its SUBSCRIBE: that node
holds the watcher's flow, sends every NOTIFY of the subscription and keeps its version counter
(RFC 3680 §5.2: a version is per subscription, so nothing about it needs sharing). A refresh or an
unsubscribe must reach the same node, which DNS SRV stickiness and the dialog's Contact (the
node's own address) give.

**News.** Every write of a set's bindings in Redis (a REGISTER, a de-registration, an expiry, a
qualification mark) publishes, in the same Lua script as the write, the writer's origin token on
the channel ``imscore:news:{AOR}`` (:func:`news_channel`). Each node subscribes to the channels of
the sets its subscriptions watch, and on a message from another writer reads the set again and
sends each of its subscriptions a full-state NOTIFY when what it told them last differs from what
is stored (:func:`differs`; a change of the reachability flag alone changes nothing a NOTIFY says).
The writer's own node notifies its subscriptions itself, as a single node does. So one change — and
one expiry, which one node claims (:mod:`imscore.registrar.redis_store`) — gives one NOTIFY per
subscription in the pool.

**News with a reason.** When the network ended the set's registration (an HSS's RTR reached the
writer), the message says so after the token (``TOKEN ended=rejected``,
:mod:`imscore.registrar.news`): the set cannot be read back for it, so each subscription here ends
at once with the NOTIFY the writer's own subscriptions got — every contact it knew ``terminated``
with that event, ``Subscription-State: terminated`` with that reason — without a store read. A
bare token (an older node, or any ordinary change) is read back as above.

**News missed.** Redis pub/sub keeps nothing for a subscriber that is away. When the node's
subscriber connection breaks (Redis restarted, the network cut), it connects again every
:data:`RECONNECT_PAUSE` seconds; once back, it reads every set it watches and sends a full-state
NOTIFY wherever the stored state differs from the last one sent. A set a node starts to watch is
read once right after its channel is subscribed, so a change between the first NOTIFY and the
subscription to the channel is not missed either. (A reason is lost with its message: an RTR
missed that way is told as any removal, ``unregistered`` and ``deactivated``.)

No SIP here: the node's registrar (:meth:`~imscore.registrar.register.Registrar.changed_elsewhere`
makes the NOTIFYs) and the runtime (sends them) are handed in as callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

from imscore.store import StoreError
from imscore.store.redis_conn import KEY_PREFIX, RedisConnection, hash_tagged

from .model import StoredBinding
from .news import SetNews, parse_pool_message
from .regevent import RegEventService

__all__ = [
    "NEWS_KIND",
    "RECONNECT_PAUSE",
    "RegEventNews",
    "aor_of_channel",
    "differs",
    "news_channel",
]

log = logging.getLogger("imscore.registrar")

NEWS_KIND: Final = "news"
#: seconds between two attempts to reconnect the subscriber connection
RECONNECT_PAUSE: Final = 0.5
#: seconds a wait for a message lasts before the watched sets are looked at again
POLL: Final = 0.2


def news_channel(aor: str) -> str:
    """The channel a write of ``aor``'s bindings is announced on: ``imscore:news:{AOR}``."""
    return hash_tagged(NEWS_KIND, aor)


def aor_of_channel(channel: str) -> str:
    """The AOR of a :func:`news_channel` name (the inverse of its escaping)."""
    prefix = f"{KEY_PREFIX}{NEWS_KIND}:{{"
    if not channel.startswith(prefix) or not channel.endswith("}"):
        raise ValueError(f"not a news channel: {channel!r}")
    inner = channel[len(prefix) : -1]
    return inner.replace("%7D", "}").replace("%7B", "{").replace("%25", "%")


def _state(bindings: Iterable[StoredBinding]) -> set[tuple[str, float, str | None, int | None]]:
    """What a NOTIFY says of a set's bindings: contact, expiry and instance."""
    return {(b.uri, b.expires_at, b.instance_id, b.reg_id) for b in bindings}


def differs(service: RegEventService, aor: str, bindings: Sequence[StoredBinding]) -> bool:
    """Whether a subscription here watching ``aor`` was last told something other than
    ``bindings`` (the live bindings as stored now)."""
    now_state = _state(bindings)
    return any(
        _state(s.known.values()) != now_state for s in service.subscriptions.values() if s.aor == aor
    )


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


class RegEventNews:
    """Listens for news of the sets this node's subscriptions watch (see the module's text).

    :param connection: the pool's Redis.
    :param origin: this node's writer token (the binding store's): its own news is skipped.
    :param service: this node's reg-event subscriptions.
    :param changed: ``await changed(aor)``: read the set and send the NOTIFYs due (the runtime's);
        ``await changed(aor, news)`` for news with a reason (:class:`~.news.SetNews`).
    :param load: ``await load(aor)``: the live bindings of ``aor`` as stored now.
    """

    def __init__(
        self,
        connection: RedisConnection,
        origin: str,
        service: RegEventService,
        changed: Callable[..., Awaitable[None]],
        load: Callable[[str], Awaitable[list[StoredBinding]]],
    ) -> None:
        self.connection = connection
        self.origin = origin
        self.service = service
        self.changed = changed
        self.load = load
        #: the sets whose channels are subscribed
        self.subscribed: set[str] = set()
        #: news handled (from other writers), sets read again after a (re)connect, reconnects
        self.stats = {"news": 0, "resyncs": 0, "reconnects": 0, "notified": 0}
        self._down = False

    def watched(self) -> set[str]:
        """The sets this node's subscriptions watch now."""
        return {s.aor for s in self.service.subscriptions.values()}

    async def run(self) -> None:
        """Listen until cancelled; a broken connection is made again (then every set re-read)."""
        while True:
            pubsub = self.connection.subscriber()
            try:
                await self._serve(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis gone, the connection cut: come back, re-read all
                if not self._down:
                    log.warning("reg-event news: %s; reconnecting", self.connection.error("listen", exc))
                self._down = True
            finally:
                self.subscribed = set()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(RECONNECT_PAUSE)

    async def _serve(self, pubsub: Any) -> None:
        handled = 0
        while True:
            wanted = self.watched()
            new = wanted - self.subscribed
            gone = self.subscribed - wanted
            if gone:
                await pubsub.unsubscribe(*(news_channel(aor) for aor in gone))
                self.subscribed -= gone
            if new:
                await pubsub.subscribe(*(news_channel(aor) for aor in new))
                self.subscribed |= new
            if pubsub.connects > handled:  # redis-py connected again by itself (not counted
                handled = pubsub.connects  # the first time): what was published meanwhile is lost
                self._reconnected(len(self.subscribed))
                await self._resync(set(self.subscribed))
            elif new:
                if self._down:  # a new connection after a failure: every set is new to it
                    self._reconnected(len(new))
                await self._resync(new)
            if not self.subscribed:
                await asyncio.sleep(POLL)
                continue
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL)
            while message is not None:
                await self._message(message)
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)

    def _reconnected(self, sets: int) -> None:
        self._down = False
        self.stats["reconnects"] += 1
        log.warning("reg-event news: connected again; re-reading %d sets", sets)

    async def _message(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        origin, news = parse_pool_message(_text(message.get("data")))
        if origin == self.origin:
            return
        try:
            aor = aor_of_channel(_text(message.get("channel")))
        except ValueError:
            return
        self.stats["news"] += 1
        if news.ordinary:
            await self._check(aor)
        else:
            await self._ended(aor, news)

    async def _ended(self, aor: str, news: SetNews) -> None:
        """The network ended ``aor``'s registration at another node: the subscriptions here end
        (no store read: what they were told is what the final NOTIFY reports)."""
        if self.service.watches(aor):
            self.stats["notified"] += 1
            await self.changed(aor, news)

    async def _resync(self, aors: Iterable[str]) -> None:
        for aor in sorted(aors):
            self.stats["resyncs"] += 1
            await self._check(aor)

    async def _check(self, aor: str) -> None:
        """Read ``aor``'s set; NOTIFY its watchers here when it differs from what they were told."""
        try:
            bindings = await self.load(aor)
        except StoreError as exc:
            log.warning("reg-event news for %s: %s", aor, exc)
            return
        if differs(self.service, aor, bindings):
            self.stats["notified"] += 1
            await self.changed(aor)
