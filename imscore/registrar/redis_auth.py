"""What the authenticators of a pool of nodes share through Redis besides the bindings.

- **The Digest nonce secret** (``imscore:secret:nonce``): made once with ``SET NX`` by the first node,
  so a nonce made on node A validates on node B (and the proxy's dialog-stamp key,
  ``imscore:secret:record-route``, so an in-dialog request may come back through any node).
- **Nonce-counts** (:class:`RedisNonceCounter`): the highest ``nc`` accepted per nonce, in
  ``imscore:nc:DIGEST`` with the nonce's remaining lifetime as TTL; the check and the update are
  one Lua script, so a nonce used on node A is refused as a replay on node B.
- **AKA SQNs** (:class:`RedisSqnStore`): the last SQN issued per IMPI in ``imscore:sqn:{IMPI}``,
  advanced with a compare-and-set script (retried when another node moved it first), so two nodes
  never issue the same SQN.

These are called from the authenticator's synchronous code, so they use the blocking client: one
short round trip each (a challenge answered, a vector made), bounded by the connection's timeouts.
A failure raises :class:`~imscore.store.redis_conn.StoreUnavailable`: the REGISTER gets ``503``,
never a new challenge.

Not shared yet: the AKA vectors a node sent (the expected RES lives in the node that challenged, so
a UE must answer an AKA challenge to the node that sent it; docs/deployment.rst).
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from typing import Final

from imscore.auth.digest import NonceCounter, NonceUse
from imscore.store import StoreError
from imscore.store.redis_conn import KEY_PREFIX, RedisConnection, hash_tagged

from .sqn import _next

__all__ = ["PoolState", "RedisNonceCounter", "RedisSqnStore"]

#: compare-and-set attempts for one SQN before giving up (StoreError)
SQN_ATTEMPTS: Final = 64

# KEYS[1] the nonce's counter. ARGV: nc, TTL in ms. 1 when nc is above every accepted one (stored).
_USE_NC: Final = """
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1] a value. ARGV: the value expected ("" for none), the new one. 1 when replaced.
_CAS: Final = """
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


def _text(value: object) -> str:
    if value is None:
        return ""
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


class RedisNonceCounter(NonceCounter):
    """A :class:`~imscore.auth.digest.NonceCounter` whose state lives in Redis, for every node of
    the pool (see the module's text). There is no per-process table, so no ``max_nonces`` or
    ``per_owner`` room to run out of: entries cost Redis memory for the nonce's lifetime, and only a
    right response creates one. Nonces are never "unknown": what a node did not see, Redis did.

    :param connection: the Redis clients.
    :param lifetime: the nonce lifetime, seconds.
    """

    def __init__(self, connection: RedisConnection, lifetime: float = 300.0) -> None:
        super().__init__(lifetime)
        self.connection = connection

    def start(self, now: float) -> None:
        """Nothing to do: the counts of nonces made before this node started are in Redis."""

    @staticmethod
    def _redis_key(nonce: str) -> str:
        digest = hashlib.blake2b(nonce.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
        return f"{KEY_PREFIX}nc:{digest}"

    def use(self, nonce: str, nc: int, *, issued: float, now: float, owner: str = "") -> NonceUse:
        """See :meth:`NonceCounter.use`; one script in Redis.

        :raises StoreError: Redis cannot be reached (the request gets 503, not a challenge).
        """
        if nc < 1:
            return NonceUse.REPLAY
        ttl = max(1.0, issued + self.lifetime - now + self._width) * 1000
        with self.connection.blocking("check a nonce-count") as r:
            fresh = r.eval(_USE_NC, 1, self._redis_key(nonce), nc, int(ttl))
        return NonceUse.FRESH if int(fresh) == 1 else NonceUse.REPLAY

    def last(self, nonce: str) -> int | None:
        """See :meth:`NonceCounter.last`."""
        with self.connection.blocking("read a nonce-count") as r:
            value = r.get(self._redis_key(nonce))
        return None if value is None else int(_text(value))

    def held(self, owner: str) -> int:
        """Not counted per owner in Redis: 0."""
        return 0

    def __len__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"RedisNonceCounter({self.connection.url})"


class RedisSqnStore:
    """An :class:`~imscore.registrar.sqn.SqnStore` in Redis (see the module's text)."""

    def __init__(self, connection: RedisConnection) -> None:
        self.connection = connection
        self.url = connection.url
        #: one issue at a time in this process: the compare-and-set then only races other nodes
        self._lock = threading.Lock()

    @staticmethod
    def key(impi: str) -> str:
        """``imscore:sqn:{IMPI}``."""
        return hash_tagged("sqn", impi)

    @staticmethod
    def _parse(text: str) -> tuple[int, int] | None:
        if not text:
            return None
        sqn, _, file_sqn = text.partition(" ")
        return int(sqn), int(file_sqn)

    def issue(self, impi: str, initial: int, sqn_ms: int | None = None) -> int:
        """See :meth:`SqnStore.issue` (read, advance, compare-and-set; again if another node
        moved it first)."""
        key = self.key(impi)
        with self._lock, self.connection.blocking(f"record the AKA SQN of {impi!r}") as r:
            for attempt in range(SQN_ATTEMPTS):
                if attempt:  # another node moved it first: a short random pause, then again
                    time.sleep(random.uniform(0.0, 0.0005 * min(attempt, 8)))
                current = _text(r.get(key))
                try:
                    stored = self._parse(current)
                except ValueError:
                    bad = f"bad AKA SQN record {current!r} of {impi!r}"
                    raise StoreError(f"store {self.url!r}: {bad}") from None
                sqn = _next(stored, initial, sqn_ms)
                if int(r.eval(_CAS, 1, key, current, f"{sqn} {initial}")) == 1:
                    return sqn
        raise StoreError(f"store {self.url!r}: the AKA SQN of {impi!r} is too contended")

    def last(self, impi: str) -> int | None:
        """See :meth:`SqnStore.last`."""
        with self.connection.blocking(f"read the AKA SQN of {impi!r}") as r:
            stored = self._parse(_text(r.get(self.key(impi))))
        return None if stored is None else stored[0]


class PoolState:
    """The shared state a Redis binding store hands the server: what a pool's nodes agree on."""

    def __init__(self, connection: RedisConnection) -> None:
        self.connection = connection

    def secret(self, name: str) -> bytes:
        """A secret all nodes share (made once): ``nonce`` for Digest, ``record-route`` for stamps."""
        return self.connection.secret(name)

    def sqn_store(self) -> RedisSqnStore:
        """The AKA SQN store of the pool."""
        return RedisSqnStore(self.connection)

    def nonce_counter(self, lifetime: float) -> RedisNonceCounter:
        """The nonce-count state of the pool, for nonces of ``lifetime`` seconds."""
        return RedisNonceCounter(self.connection, lifetime)
