"""The Redis binding store: registrations shared by a pool of imscore nodes (``--store redis://…``).

Layout (every key starts with ``imscore:``; ``{AOR}`` is a Redis Cluster hash tag, so all the keys of
one implicit set — filed under its default IMPU — live in one slot):

- ``imscore:b:{AOR}``, a hash: ``b`` the bindings as a JSON list, ``e`` their expiry times, ``v`` the
  version (a random token, new at every write). A save is one Lua script that checks the version the
  registrar loaded and writes only if it is unchanged (:mod:`imscore.registrar.versioned`), so two
  nodes deciding REGISTERs for one set at the same moment never lose a binding;
- ``imscore:expiry``, a sorted set: each AOR that has bindings, scored by a time at or before its
  first expiry (a save lowers it with ``ZADD LT``; the sweep sets it exactly).

**Expiry happens once.** Every node sweeps each second: one Lua script takes the AORs that are due
(score ``<= now``) and moves their score to ``now + LEASE`` in the same step, so no other node takes
them in the meantime; for each, the node removes the expired bindings with a version-checked save —
only the node whose save succeeded reports them (one NOTIFY, one log line across the pool) — and sets
the AOR's score to its next expiry. A node that dies holding a claim leaves the lease to run out:
another node takes the AOR ``LEASE`` seconds later.

**A 200 OK is a promise:** the registrar answers only after the save's reply, that is after Redis
applied the write (what Redis itself keeps across its own restart depends on its append-only file:
docs/deployment.rst).

Every write also publishes the writer's token on the AOR's news channel, in the same script (reg-event
subscriptions held by other nodes: :mod:`imscore.registrar.regevent_pool`), with the reason when
the network ended the registration (:meth:`RedisBindingStore.save_with_news`,
:mod:`imscore.registrar.news`).

The bindings a node writes carry its name (``--node-id``) in ``extra["node"]``: the node that took
the device's last REGISTER, and so holds its flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from imscore.store import StoreError
from imscore.store.redis_conn import KEY_PREFIX, RedisConnection, connect, hash_tagged

from .model import FlowInfo, StoredBinding
from .news import SetNews, pool_message
from .regevent_pool import news_channel

__all__ = ["LEASE", "NodeFlow", "RedisBindingStore", "open_redis_store"]

log = logging.getLogger("imscore.registrar")

#: seconds a node holds an expiry it claimed before another node may take it over
LEASE: Final = 30.0
#: AORs one sweep claims at most (the rest wait for the next sweep, a second later)
CLAIM_BATCH: Final = 500
#: attempts to remove an AOR's expired bindings against concurrent writers
EXPIRE_ATTEMPTS: Final = 8
#: seconds between two background counts of the bindings (metrics)
COUNT_INTERVAL: Final = 10.0
EXPIRY_KEY: Final = f"{KEY_PREFIX}expiry"
BINDINGS_KIND: Final = "b"

# KEYS[1] the AOR's hash. ARGV: the version expected ("*": any), the new version, the bindings as
# JSON ("" deletes the AOR), their expiry times, the AOR's news channel and the writer's origin
# token (published there: imscore.registrar.regevent_pool). 1 when written, 0 when the version had
# changed.
_SAVE: Final = """
if ARGV[1] ~= '*' then
  local current = redis.call('HGET', KEYS[1], 'v') or ''
  if current ~= ARGV[1] then return 0 end
end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'b', ARGV[3], 'e', ARGV[4])
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""

# KEYS[1] the expiry index. ARGV: now, now + lease, batch. The AORs due, each re-scored to the lease
# end in the same step: whoever got an AOR back holds it.
_CLAIM: Final = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, aor in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], aor) end
return due
"""


def _flow_plain(flow: FlowInfo | None) -> dict[str, Any] | None:
    if flow is None:
        return None
    return {
        "transport": flow.transport,
        "remote": list(flow.remote),
        "local": list(flow.local),
        "connection": flow.connection,
    }


@dataclass(frozen=True, slots=True)
class NodeFlow(FlowInfo):
    """A flow read from the pool's store, with the node that holds it (the one that took the
    device's last REGISTER, ``extra["node"]``): only that node can send down it
    (:mod:`imscore.server.pool_nodes`)."""

    node: str = ""


def _flow_of(plain: Any, node: str | None = None) -> FlowInfo | None:
    if plain is None:
        return None
    connection = plain.get("connection")
    fields = (
        str(plain["transport"]),
        (str(plain["remote"][0]), int(plain["remote"][1])),
        (str(plain["local"][0]), int(plain["local"][1])),
        None if connection is None else int(connection),
    )
    return FlowInfo(*fields) if node is None else NodeFlow(*fields, node=node)


def _plain(b: StoredBinding) -> dict[str, Any]:
    return {
        "aor": b.aor,
        "impi": b.impi,
        "contact": b.contact,
        "uri": b.uri,
        "expires_at": float(b.expires_at),
        "registered_at": float(b.registered_at),
        "call_id": b.call_id,
        "cseq": b.cseq,
        "instance_id": b.instance_id,
        "reg_id": b.reg_id,
        "q": None if b.q is None else float(b.q),
        "path": list(b.path),
        "flow": _flow_plain(b.flow),
        "user_agent": b.user_agent,
        "reachable": b.reachable,
        "extra": dict(b.extra),
    }


def _binding(plain: dict[str, Any]) -> StoredBinding:
    return StoredBinding(
        aor=str(plain["aor"]),
        impi=str(plain["impi"]),
        contact=str(plain["contact"]),
        uri=str(plain["uri"]),
        expires_at=float(plain["expires_at"]),
        registered_at=float(plain["registered_at"]),
        call_id=str(plain["call_id"]),
        cseq=int(plain["cseq"]),
        instance_id=None if plain["instance_id"] is None else str(plain["instance_id"]),
        reg_id=None if plain["reg_id"] is None else int(plain["reg_id"]),
        q=None if plain["q"] is None else float(plain["q"]),
        path=tuple(str(p) for p in plain["path"]),
        flow=_flow_of(plain["flow"], plain["extra"].get("node")),
        user_agent=None if plain["user_agent"] is None else str(plain["user_agent"]),
        reachable=bool(plain["reachable"]),
        extra={str(k): str(v) for k, v in plain["extra"].items()},
    )


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


class RedisBindingStore:
    """A :class:`~imscore.registrar.store.BindingStore` and
    :class:`~imscore.registrar.versioned.VersionedStore` in Redis (see the module's text).

    :param connection: the clients (:func:`imscore.store.redis_conn.connect`).
    :param node_id: this node's name, written into ``extra["node"]`` of the bindings it saves.
    """

    def __init__(self, connection: RedisConnection, node_id: str | None = None) -> None:
        self.connection = connection
        self.url = connection.url
        self.node_id = node_id
        self._closed = False
        self._counts: tuple[int, int] | None = None
        self._counted_at = float("-inf")
        self._counting: asyncio.Task[None] | None = None
        #: this store's token in the news of its writes (its own node skips them)
        self.origin = secrets.token_hex(8)
        from .redis_auth import PoolState

        #: what else the nodes share through this Redis: secrets, nonce-counts, AKA SQNs
        self.pool = PoolState(connection)

    # -- keys and coding -----------------------------------------------------------------------------
    @staticmethod
    def key(aor: str) -> str:
        """The hash of ``aor``'s bindings: ``imscore:b:{AOR}``."""
        return hash_tagged(BINDINGS_KIND, aor)

    def _check(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.url!r}: closed")

    def _decode(self, aor: str, raw: Any) -> list[StoredBinding]:
        if raw is None:
            return []
        try:
            plains = json.loads(raw)
            bindings = [_binding(p) for p in plains]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            problem = f"the bindings of {aor!r} do not decode: {exc}"
            raise StoreError(f"store {self.url!r}: {problem}") from None
        bindings.sort(key=lambda b: b.registered_at)  # stable: ties keep the saved order
        return bindings

    def _stamped(self, bindings: Sequence[StoredBinding]) -> list[StoredBinding]:
        """``extra["node"]`` set on the bindings this node wrote (those without one: new or
        refreshed here); bindings of other nodes keep theirs."""
        if self.node_id is None:
            return list(bindings)
        from dataclasses import replace

        return [
            b if "node" in b.extra else replace(b, extra={**b.extra, "node": self.node_id})
            for b in bindings
        ]

    # -- BindingStore ---------------------------------------------------------------------------------
    async def load_versioned(self, aor: str) -> tuple[list[StoredBinding], str]:
        """See :meth:`~imscore.registrar.versioned.VersionedStore.load_versioned` (one ``HMGET``)."""
        self._check()
        aio = self.connection.aio
        version, raw = await self.connection.run(
            f"load {aor!r}", aio.hmget(self.key(aor), "v", "b")
        )
        return self._decode(aor, raw), _text(version)

    async def load(self, aor: str) -> list[StoredBinding]:
        """See :meth:`BindingStore.load`."""
        return (await self.load_versioned(aor))[0]

    async def _write(
        self, aor: str, bindings: Sequence[StoredBinding], expected: str, news: SetNews | None = None
    ) -> str | None:
        """Write if the version is ``expected`` (``*``: any): the new version (``""`` when the AOR
        was deleted), ``None`` when another writer came first. The news published says ``news``
        (an ordinary change when not given)."""
        self._check()
        for binding in bindings:
            if binding.aor != aor:
                raise ValueError(f"binding {binding.uri!r} is filed under {binding.aor!r}, not {aor!r}")
        stamped = self._stamped(bindings)
        body = json.dumps([_plain(b) for b in stamped], separators=(",", ":")) if stamped else ""
        expiries = " ".join(repr(float(b.expires_at)) for b in stamped)
        aio = self.connection.aio
        key = self.key(aor)
        version = secrets.token_hex(8) if stamped else ""
        message = self.origin if news is None else pool_message(self.origin, news)
        written = await self.connection.run(
            f"save {aor!r}",
            aio.eval(_SAVE, 1, key, expected, version, body, expiries, news_channel(aor), message),
        )
        if int(written) != 1:
            return None
        if stamped:  # after the write (the sweep's version check relies on this order)
            first = min(b.expires_at for b in stamped)
            await self.connection.run(
                f"index {aor!r}", aio.zadd(EXPIRY_KEY, {aor: first}, lt=True)
            )
        return version

    async def save_versioned(self, aor: str, bindings: Sequence[StoredBinding], version: str) -> bool:
        """See :meth:`~imscore.registrar.versioned.VersionedStore.save_versioned`."""
        return await self._write(aor, bindings, version) is not None

    async def save(self, aor: str, bindings: Sequence[StoredBinding]) -> None:
        """See :meth:`BindingStore.save` (unconditional: whatever another node wrote is replaced)."""
        await self._write(aor, bindings, "*")

    async def save_with_news(
        self, aor: str, bindings: Sequence[StoredBinding], news: SetNews
    ) -> None:
        """:meth:`save`, its news on the set's channel saying ``news`` (the network ended the
        registration: :mod:`imscore.registrar.news`)."""
        await self._write(aor, bindings, "*", news)

    async def _claim(self, now: float) -> list[str]:
        aio = self.connection.aio
        until = repr(now + LEASE)
        due = await self.connection.run(
            "claim expiries", aio.eval(_CLAIM, 1, EXPIRY_KEY, repr(now), until, CLAIM_BATCH)
        )
        return [_text(aor) for aor in due]

    async def _expire_aor(self, aor: str, now: float) -> list[StoredBinding]:
        """Remove ``aor``'s expired bindings (only what this node's save removed is returned) and
        set its expiry score from what is left, until no writer changed it meanwhile."""
        aio = self.connection.aio
        removed: list[StoredBinding] = []
        for _ in range(EXPIRE_ATTEMPTS):
            bindings, version = await self.load_versioned(aor)
            expired = [b for b in bindings if b.expires_at <= now]
            live = [b for b in bindings if b.expires_at > now]
            if expired:
                written = await self._write(aor, live, version)
                if written is None:
                    continue  # another node wrote: look again
                removed.extend(expired)
                version = written
            if live:
                first = min(b.expires_at for b in live)
                await self.connection.run(
                    f"index {aor!r}", aio.zadd(EXPIRY_KEY, {aor: first})
                )
            else:
                await self.connection.run(f"index {aor!r}", aio.zrem(EXPIRY_KEY, aor))
            now_version = await self.connection.run(
                f"load {aor!r}", aio.hget(self.key(aor), "v")
            )
            if _text(now_version) == version:
                break
        return removed

    async def expire(self, now: float) -> list[StoredBinding]:
        """See :meth:`BindingStore.expire`: the expired bindings this node removed (see the
        module's text: each expiry is returned by exactly one node of the pool)."""
        self._check()
        gone: list[StoredBinding] = []
        for aor in sorted(await self._claim(now)):
            removed = await self._expire_aor(aor, now)
            for binding in removed:  # one line per expiry across the pool: only the remover's
                log.info("binding expired: %s contact %s", aor, binding.uri)
            gone.extend(removed)
        return gone

    async def _keys(self) -> list[str]:
        aio = self.connection.aio
        pattern = f"{KEY_PREFIX}{BINDINGS_KIND}:{{*"

        async def scan() -> list[str]:
            return [_text(key) async for key in aio.scan_iter(match=pattern, count=1000)]

        return await self.connection.run("list bindings", scan())

    async def all(self) -> list[StoredBinding]:
        """See :meth:`BindingStore.all` (a ``SCAN`` of every AOR's hash: for tools, not hot paths)."""
        self._check()
        aio = self.connection.aio
        found: list[StoredBinding] = []
        for key in sorted(set(await self._keys())):
            raw = await self.connection.run("list bindings", aio.hget(key, "b"))
            found.extend(self._decode(key, raw))
        found.sort(key=lambda b: b.aor)  # stable: each AOR keeps its order
        return found

    async def _count(self, now: float) -> None:
        aio = self.connection.aio
        bindings = aors = 0
        try:
            for key in await self._keys():
                raw = await self.connection.run("count bindings", aio.hget(key, "e"))
                live = sum(1 for e in _text(raw).split() if float(e) > now)
                bindings += live
                aors += 1 if live else 0
        except (StoreError, ValueError):
            return
        self._counts = (bindings, aors)

    def counts(self, now: float) -> tuple[int, int]:
        """Live bindings and the AORs that have one, for metrics: the last background count (a
        ``SCAN`` at most every :data:`COUNT_INTERVAL` seconds), ``(0, 0)`` before the first.

        :raises StoreError: closed, or no count could be made yet.
        """
        self._check()
        running = self._counting is not None and not self._counting.done()
        if not running and time.monotonic() - self._counted_at >= COUNT_INTERVAL:
            self._counted_at = time.monotonic()
            with contextlib.suppress(RuntimeError):  # no loop (a tool): nothing to count with
                self._counting = asyncio.get_running_loop().create_task(self._count(now))
        if self._counts is None:
            raise StoreError(f"store {self.url!r}: bindings not counted yet")
        return self._counts

    async def close(self) -> None:
        """See :meth:`BindingStore.close`."""
        if self._closed:
            return
        self._closed = True
        if self._counting is not None:
            self._counting.cancel()
        await self.connection.close()


def open_redis_store(url: str) -> RedisBindingStore:
    """The provider of ``redis://`` and ``redis+cluster://`` (offered by the builtin plugin through
    ``ims_register_binding_stores``): connect and check that Redis answers, so a wrong URL stops
    start-up with the cause.

    :raises StoreError: a bad URL, redis-py missing, or Redis not reachable.
    """
    connection = connect(url)
    try:
        connection.ping()
    except StoreError:
        connection.sync.close()
        raise
    return RedisBindingStore(connection)
