"""Contact qualification: OPTIONS pings to registered contacts, keep-alives counted as signs of life.

Every ``qualify.interval`` seconds each live binding whose flow showed no sign of life since the
last round (a keep-alive, a request or a response on it) gets an OPTIONS. Any final response means
the device is there (even 404 or 405: something answered); a timeout or a transport failure counts
as one failure, and after ``qualify.max_failures`` failures in a row the binding is marked
unreachable in the binding store (``imscore bindings`` shows it, the ``evict-unreachable-first``
binding policy and the hunt and sequential strategies use it). A later answer marks it reachable
again. In a pool of nodes on one Redis, each node qualifies only the contacts whose flow it holds
(the bindings it wrote: ``extra["node"]``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from imscore.proxy.core import Destination
from imscore.proxy.router import flow_for
from imscore.registrar.model import StoredBinding
from imscore.routing import RoutingError
from imscore.sip import Request, SipError
from imscore.sip.transaction import new_branch
from imscore.transport import Flow, TransportError

if TYPE_CHECKING:
    from .runtime import Server

__all__ = ["Qualifier"]

log = logging.getLogger("imscore.qualify")

Key = tuple[str, str]  # (aor, contact uri)


class Qualifier:
    """Pings the contacts of one server.

    :param server: the running server (its store, core, transports and proxy).
    :param interval: seconds between rounds.
    :param max_failures: failed pings in a row that mark a contact unreachable.
    """

    def __init__(self, server: Server, interval: float, max_failures: int) -> None:
        self.server = server
        self.interval = interval
        self.max_failures = max_failures
        self.failures: dict[Key, int] = {}
        self._outstanding: set[Key] = set()
        self._alive: set[tuple[str, tuple[str, int]]] = set()
        #: pings sent, answered and failed, for logs and tests
        self.stats = {"sent": 0, "answered": 0, "failed": 0, "marked_unreachable": 0, "keepalives": 0}
        #: whether a Call-ID may be used for a ping: a worker process takes only Call-IDs whose
        #: answers its parent hands back to it (see imscore.server.workers)
        self.accept_call_id: Callable[[str], bool] = lambda call_id: True

    def _call_id(self, domain: str) -> str:
        while True:
            call_id = f"{secrets.token_hex(8)}@{domain}"
            if self.accept_call_id(call_id):
                return call_id

    def seen(self, flow: Flow) -> None:
        """Traffic or a keep-alive arrived on ``flow``: its device is alive this round."""
        self._alive.add((flow.transport, flow.remote))

    def keepalive(self, flow: Flow) -> None:
        """A keep-alive (CRLF, RFC 5626 ping) arrived on ``flow``."""
        self.stats["keepalives"] += 1
        self.seen(flow)

    async def run(self) -> None:
        """Ping every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.round()
            except Exception:  # the store failed this once: log it, keep going
                log.exception("contact qualification round failed")

    async def round(self) -> None:
        """One round: ping each live binding not heard from since the last round."""
        server = self.server
        assert server.store is not None
        now = server.clock()
        alive, self._alive = self._alive, set()
        for binding in await server.store.all():
            if binding.expired(now) or not self._holds(binding):
                continue
            key = (binding.aor, binding.uri)
            if key in self._outstanding:
                continue
            flow = binding.flow
            if flow is not None and (flow.transport, flow.remote) in alive:
                await self._result(binding, True)
                continue
            await self._ping(binding)

    def _holds(self, binding: StoredBinding) -> bool:
        """In a pool, a contact is qualified by the node holding its flow, the one that took its
        last REGISTER (``extra["node"]``); the others leave it alone."""
        node = binding.extra.get("node")
        return node is None or node == self.server.node_id

    async def _ping(self, binding: StoredBinding) -> None:
        server = self.server
        proxying = server.proxying
        assert proxying is not None
        key = (binding.aor, binding.uri)
        try:
            flow = await proxying.flow_for(Destination(binding.uri, flow_for(binding)))
        except (TransportError, SipError, LookupError, RoutingError) as exc:
            log.info("cannot ping %s: %s", binding.uri, exc)
            await self._result(binding, False)
            return
        transport, host, port = proxying.sent_by(flow)
        domain = server.profile.domains[0]
        request = Request(
            "OPTIONS",
            binding.uri,
            [
                ("Via", f"SIP/2.0/{transport.upper()} {host}:{port};branch={new_branch()};rport"),
                ("Max-Forwards", 70),
                ("From", f"<sip:qualify@{domain}>;tag={secrets.token_hex(4)}"),
                ("To", f"<{binding.uri}>"),
                ("Call-ID", self._call_id(domain)),
                ("CSeq", "1 OPTIONS"),
            ],
        )
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()

        def finished(status: int) -> None:
            if not done.done():
                done.set_result(status)

        self._outstanding.add(key)
        self.stats["sent"] += 1
        try:
            server.emit(
                server.core.send_request(request, flow, flow.reliable, server.now(), on_final=finished)
            )
            status = await done
        finally:
            self._outstanding.discard(key)
        await self._result(binding, status != 0)  # 0: nothing answered (timeout, transport)

    async def _result(self, binding: StoredBinding, answered: bool) -> None:
        key = (binding.aor, binding.uri)
        if answered:
            self.stats["answered"] += 1
            self.failures.pop(key, None)
            if not binding.reachable:
                await self._mark(binding, True)
            return
        self.stats["failed"] += 1
        count = self.failures[key] = self.failures.get(key, 0) + 1
        if count >= self.max_failures and binding.reachable:
            self.stats["marked_unreachable"] += 1
            log.info("%s of %s unreachable after %d failed pings", binding.uri, binding.aor, count)
            await self._mark(binding, False)

    async def _mark(self, binding: StoredBinding, reachable: bool) -> None:
        store = self.server.store
        assert store is not None
        current = await store.load(binding.aor)
        changed = [replace(b, reachable=reachable) if b.uri == binding.uri else b for b in current]
        if changed != current:
            await store.save(binding.aor, changed)
