"""A server that is one node of a pool sharing a Redis store: what runs beside its SIP work.

- reg-event news from the other nodes (:mod:`imscore.registrar.regevent_pool`): NOTIFYs for the
  subscriptions this node holds when another node changed the set they watch (the same NOTIFYs
  that node sent its own, the reason of an RTR included: :mod:`imscore.registrar.news`);
- the node's entry in Redis (:mod:`imscore.server.pool_nodes`): its SIP addresses, refreshed while
  it lives, so another node can send a request through it to a flow it holds (RFC 5626), or answer
  ``430 Flow Failed`` once it is gone.

:func:`start_pool` is called by the runtime when its binding store has a ``pool`` (Redis); nothing
of this exists for the memory and SQLite stores.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from imscore.registrar.model import StoredBinding
from imscore.registrar.news import ORDINARY, SetNews
from imscore.registrar.regevent_pool import RegEventNews
from imscore.store import StoreError

from .pool_nodes import NodeDirectory

if TYPE_CHECKING:
    from .runtime import Server

__all__ = ["PoolNode", "start_pool"]

log = logging.getLogger("imscore.server")


class PoolNode:
    """The pool side of one running server (see the module's text)."""

    def __init__(self, server: Server, store: Any) -> None:
        self.server = server
        self.store = store
        registrar = server.registrar
        assert registrar is not None
        self.news = RegEventNews(
            store.connection, store.origin, registrar.regevent, self._changed, self._load
        )
        #: the nodes of the pool and their addresses (this one's kept fresh while it runs)
        self.nodes = NodeDirectory(store.connection, server.node_id, self._addresses)

    def _addresses(self) -> list[tuple[str, str, int]]:
        return self.server.addresses

    async def _load(self, aor: str) -> list[StoredBinding]:
        now = self.server.clock()
        return [b for b in await self.store.load(aor) if not b.expired(now)]

    async def _changed(self, aor: str, news: SetNews = ORDINARY) -> None:
        registrar = self.server.registrar
        if registrar is None:
            return
        try:
            notes = await registrar.changed_elsewhere(aor, self.server.clock(), news)
        except StoreError as exc:
            log.warning("reg-event news for %s: %s", aor, exc)
            return
        self.server.notify(notes)

    def start(self) -> None:
        """Start listening for news and announcing this node."""
        self.server.spawn(self.news.run())
        if self.nodes.name is not None:
            self.server.spawn(self.nodes.run())

    async def leave(self) -> None:
        """The node stops: its entry goes at once (its flows are gone: other nodes answer 430)."""
        await self.nodes.leave()


def start_pool(server: Server) -> PoolNode | None:
    """The pool side of ``server``, started; ``None`` when its store is not a pool's."""
    store = server.store
    if getattr(store, "pool", None) is None or server.registrar is None:
        return None
    node = PoolNode(server, store)
    node.start()
    return node
