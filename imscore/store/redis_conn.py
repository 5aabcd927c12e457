"""Connections to the Redis that a pool of imscore nodes shares (``redis://`` and ``redis+cluster://``).

:func:`connect` parses a store URL and opens two clients of redis-py (the ``redis`` extra; hiredis
parses replies when it is installed): an asyncio one for the binding store, and a blocking one for
the few short calls that the authenticator makes from synchronous code (a nonce-count, an AKA
SQN, the shared secrets). Both have short timeouts, so a Redis that went away costs a request at
most about a second, never a hung server.

Every failure to reach Redis becomes :class:`StoreUnavailable` (a :class:`~imscore.store.StoreError`),
which the server answers with ``503`` and ``Retry-After``; redis-py reconnects on the next call, so
service comes back by itself with Redis.

URLs:

- ``redis://HOST[:PORT][/DB]`` (``rediss://`` for TLS): one Redis, or a primary behind Sentinel's
  address; the port defaults to 6379 and the database to 0;
- ``redis+cluster://HOST:PORT[,HOST:PORT...]``: a Redis Cluster, found from any of the nodes named.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from imscore.store import StoreError

__all__ = [
    "KEY_PREFIX",
    "RedisConnection",
    "RedisTarget",
    "StoreUnavailable",
    "connect",
    "hash_tagged",
    "parse_redis_url",
]

#: every key imscore writes starts with this
KEY_PREFIX: Final = "imscore:"
#: seconds to connect, and to wait for a reply
CONNECT_TIMEOUT: Final = 0.5
REPLY_TIMEOUT: Final = 1.0
#: connections to Redis each node's event loop keeps at most (a single-Redis store; requests beyond
#: them wait for one to be free)
MAX_CONNECTIONS: Final = 64

T = TypeVar("T")


class StoreUnavailable(StoreError):
    """Redis cannot be reached (refused, timed out, the connection dropped, a cluster slot not
    served): the request is answered ``503`` with ``Retry-After``, nothing was decided."""


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis store URL names."""

    url: str
    cluster: bool
    nodes: tuple[tuple[str, int], ...]
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = None


def parse_redis_url(url: str) -> RedisTarget:
    """``redis://HOST[:PORT][/DB]``, ``rediss://…`` or ``redis+cluster://HOST:PORT[,HOST:PORT…]``.

    :raises StoreError: naming the URL and what is wrong.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        raise StoreError(f"store {url!r}: expected redis://HOST[:PORT][/DB] or redis+cluster://HOST:PORT,...")
    cluster = scheme.endswith("+cluster")
    tls = scheme.startswith("rediss")
    authority, _, path = rest.partition("/")
    path = path.partition("?")[0]
    credentials, at, hosts = authority.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, secret = credentials.partition(":")
        username, password = (user or None, secret) if colon else (None, user)
    nodes: list[tuple[str, int]] = []
    for part in hosts.split(","):
        if not part:
            raise StoreError(f"store {url!r}: a host is missing")
        try:
            split = urlsplit(f"//{part}")
            host, port = split.hostname, split.port
        except ValueError as exc:
            raise StoreError(f"store {url!r}: bad address {part!r}: {exc}") from None
        if not host:
            raise StoreError(f"store {url!r}: bad address {part!r}")
        nodes.append((host, port or 6379))
    if not cluster and len(nodes) != 1:
        raise StoreError(f"store {url!r}: one HOST[:PORT] (several are for redis+cluster://)")
    db = 0
    if path:
        if cluster:
            raise StoreError(f"store {url!r}: a Redis Cluster has only database 0")
        if not path.isdigit():
            raise StoreError(f"store {url!r}: the database must be a number, got {path!r}")
        db = int(path)
    return RedisTarget(url, cluster, tuple(nodes), db, tls, username, password)


def hash_tagged(kind: str, name: str) -> str:
    """The key ``imscore:KIND:{NAME}``: Redis Cluster puts every key of one ``{NAME}`` (an implicit
    set's default IMPU) in one slot. Braces inside the name are escaped so the tag is the whole name."""
    safe = name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return f"{KEY_PREFIX}{kind}:{{{safe}}}"


def _errors() -> tuple[type[BaseException], ...]:
    import redis.exceptions as rex

    return (rex.ConnectionError, rex.TimeoutError, rex.ClusterDownError, OSError)


class RedisConnection:
    """The two clients of one Redis (or Redis Cluster) target; see the module's text.

    :param target: what the URL named.
    """

    def __init__(self, target: RedisTarget) -> None:
        try:
            import redis
            import redis.asyncio
            import redis.asyncio.cluster
            import redis.cluster
        except ImportError:
            raise StoreError(
                f"store {target.url!r}: the Redis store needs redis-py: pip install 'imscore[redis]'"
            ) from None
        self.target = target
        self.url = target.url
        self._unavailable = _errors()
        import redis.asyncio.retry
        import redis.backoff
        import redis.exceptions as rex
        import redis.retry

        self._redis_error: type[BaseException] = rex.RedisError
        # one immediate retry (a connection that went stale while Redis restarted), no backoff: a
        # Redis that is down is reported at once (503), not after seconds of retries
        sync_retry = redis.retry.Retry(redis.backoff.NoBackoff(), 1)
        aio_retry = redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 1)
        common: dict[str, Any] = {
            "socket_timeout": REPLY_TIMEOUT,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "username": target.username,
            "password": target.password,
            "ssl": target.tls,
        }
        self.aio: Any
        self.sync: Any
        if target.cluster:
            aio_nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in target.nodes]
            sync_nodes = [
                redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call]
                for h, p in target.nodes
            ]
            self.aio = redis.asyncio.cluster.RedisCluster(
                startup_nodes=aio_nodes, retry=aio_retry, **common
            )
            self.sync = redis.cluster.RedisCluster(startup_nodes=sync_nodes, retry=sync_retry, **common)
        else:
            host, port = target.nodes[0]
            # requests beyond the pool's connections wait for one (up to REPLY_TIMEOUT) rather than
            # fail at once with "Too many connections": a node under load has hundreds in flight
            tls = common.pop("ssl")
            connections = redis.asyncio.connection
            pool = redis.asyncio.BlockingConnectionPool(
                host=host,
                port=port,
                db=target.db,
                retry=aio_retry,
                max_connections=MAX_CONNECTIONS,
                timeout=REPLY_TIMEOUT,
                connection_class=connections.SSLConnection if tls else connections.Connection,
                **common,
            )
            common["ssl"] = tls
            self.aio = redis.asyncio.Redis(connection_pool=pool)
            self.sync = redis.Redis(host=host, port=port, db=target.db, retry=sync_retry, **common)

    def error(self, action: str, exc: BaseException) -> StoreError:
        """The :class:`StoreError` (or :class:`StoreUnavailable`) for a redis-py exception."""
        kind = StoreUnavailable if isinstance(exc, self._unavailable) else StoreError
        return kind(f"store {self.url!r}: cannot {action}: {exc or type(exc).__name__}")

    async def run(self, action: str, call: Awaitable[T]) -> T:
        """Await ``call`` (a redis-py command), turning its failures into :class:`StoreError`."""
        if asyncio.current_task() is None:  # started eagerly (imscore.server.eager): redis-py's
            await asyncio.sleep(0)  # timeouts need a task; this first wait makes the coroutine one
        try:
            return await call
        except StoreError:
            raise
        except (self._redis_error, *self._unavailable) as exc:
            raise self.error(action, exc) from None

    @contextlib.contextmanager
    def blocking(self, action: str) -> Iterator[Any]:
        """``with connection.blocking("…") as r:`` the blocking client; failures become
        :class:`StoreError`."""
        try:
            yield self.sync
        except StoreError:
            raise
        except (self._redis_error, *self._unavailable) as exc:
            raise self.error(action, exc) from None

    def secret(self, name: str) -> bytes:
        """A random 32-byte secret kept in Redis under ``imscore:secret:NAME``: made once (``SET NX``)
        by the first node that asks, the same for every node and after a restart of a node."""
        import secrets

        key = f"{KEY_PREFIX}secret:{name}"
        with self.blocking(f"read the {name} secret") as r:
            r.set(key, secrets.token_hex(32), nx=True)
            value = r.get(key)
        if value is None:
            raise StoreUnavailable(f"store {self.url!r}: the {name} secret vanished")
        return bytes.fromhex(value.decode("ascii") if isinstance(value, bytes) else str(value))

    def subscriber(self) -> Any:
        """A new redis-py asyncio ``PubSub`` for listening to channels (reg-event news); its
        ``connects`` counts the connections made (redis-py reconnects a PubSub by itself, and
        whatever was published meanwhile is lost). In a Cluster it is a connection to the first
        node named: classic ``PUBLISH`` reaches every node of a Redis Cluster, so any one of them
        hears all channels."""
        import redis.asyncio
        import redis.asyncio.client

        class CountingPubSub(redis.asyncio.client.PubSub):
            connects = 0

            async def on_connect(self, connection: Any) -> None:
                self.connects += 1
                await super().on_connect(connection)

        if self.target.cluster:
            host, port = self.target.nodes[0]
            client = redis.asyncio.Redis(
                host=host, port=port, socket_connect_timeout=CONNECT_TIMEOUT,
                username=self.target.username, password=self.target.password, ssl=self.target.tls,
            )
        else:
            client = self.aio
        return CountingPubSub(client.connection_pool)

    def existing_secret(self, name: str) -> bytes | None:
        """The secret :meth:`secret` keeps under ``name`` if a node made it, else ``None`` (read
        only: ``imscore bindings`` must not create one)."""
        with self.blocking(f"read the {name} secret") as r:
            value = r.get(f"{KEY_PREFIX}secret:{name}")
        if value is None:
            return None
        return bytes.fromhex(value.decode("ascii") if isinstance(value, bytes) else str(value))

    def ping(self) -> None:
        """Check that Redis answers (at start-up: a bad URL fails early, with the cause)."""
        with self.blocking("reach Redis") as r:
            r.ping()

    async def close(self) -> None:
        """Close both clients (twice is harmless)."""
        with contextlib.suppress(Exception):
            close = getattr(self.aio, "aclose", None) or self.aio.close
            await close()
        with contextlib.suppress(Exception):
            self.sync.close()


def connect(url: str) -> RedisConnection:
    """Parse ``url`` and make its clients (no round trip yet).

    :raises StoreError: a bad URL, or redis-py is not installed.
    """
    return RedisConnection(parse_redis_url(url))
