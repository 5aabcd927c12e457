"""Flows held by other nodes of a pool: which nodes are alive and where, and the token that tells a
node which of its flows a relayed request is for (RFC 5626 §5.3 in a pool).

A binding stored in Redis names the node that took its device's last REGISTER (``extra["node"]``,
:mod:`imscore.registrar.redis_store`); read back, its flow is a
:class:`~imscore.registrar.redis_store.NodeFlow` carrying that name. That node holds the flow: the
TCP/TLS connection the device keeps open, or the UDP socket a NAT binding was learnt on. A request
for such a device arriving on another node is sent to the holder with a Route of its own on top,
``<sip:HOST:PORT;transport=T;lr;pflow=TOKEN>``; the holder pops it, checks the token (an HMAC
under the pool's shared key: only a pool node can make one) and sends the request down that flow,
or answers ``430 Flow Failed`` when the flow is gone. When the holder itself is gone (its entry in
Redis ran out or it left), the node that has the request answers ``430`` at once.

Each node announces itself in ``imscore:node:NAME`` (its SIP listeners, as JSON), refreshed every
:data:`HEARTBEAT` seconds with a lifetime of :data:`NODE_TTL` seconds, and deleted when it stops
cleanly; a node killed with SIGKILL is taken for gone ``NODE_TTL`` seconds later at most.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Sequence
from typing import Final

from imscore.registrar.model import FlowInfo
from imscore.store import StoreError
from imscore.store.redis_conn import KEY_PREFIX, RedisConnection

__all__ = [
    "FLOW_PARAM",
    "HEARTBEAT",
    "NODE_TTL",
    "FlowToken",
    "NodeDirectory",
    "held_by",
    "relay_listener",
]

log = logging.getLogger("imscore.server")

#: the Route parameter carrying a flow token
FLOW_PARAM: Final = "pflow"
#: seconds between two refreshes of a node's entry, and how long one lives without a refresh
HEARTBEAT: Final = 1.0
NODE_TTL: Final = 4
#: bytes of HMAC-SHA-256 a token keeps
_MAC_SIZE: Final = 16
#: the transports a request is relayed to a node over, in order of preference
_RELAY_TRANSPORTS: Final = ("tcp", "udp", "tls")


def held_by(flow: object) -> str | None:
    """The node that holds ``flow`` (a :class:`~imscore.registrar.redis_store.NodeFlow`), if
    one is named."""
    node = getattr(flow, "node", None)
    return node if isinstance(node, str) and node else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FlowToken:
    """Names one of a node's flows inside a Route parameter (see the module's text).

    :param secret: the pool's shared key (the dialog stamps' key, kept in Redis).
    """

    def __init__(self, secret: bytes) -> None:
        self._key = hmac.digest(secret, b"imscore pool flow token", "sha256")

    def _mac(self, payload: bytes) -> bytes:
        return hmac.digest(self._key, payload, hashlib.sha256)[:_MAC_SIZE]

    def make(self, flow: FlowInfo) -> str:
        """The token of ``flow`` (URI-parameter safe: base64url and a dot)."""
        plain = [flow.transport, *flow.remote, *flow.local, flow.connection]
        payload = json.dumps(plain, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def read(self, token: str) -> FlowInfo | None:
        """The flow a token names; ``None`` for one that is not ours (forged, broken)."""
        try:
            body, _, mac = token.partition(".")
            payload = _unb64(body)
            if not hmac.compare_digest(_unb64(mac), self._mac(payload)):
                return None
            transport, rhost, rport, lhost, lport, connection = json.loads(payload)
            return FlowInfo(
                str(transport),
                (str(rhost), int(rport)),
                (str(lhost), int(lport)),
                None if connection is None else int(connection),
            )
        except (ValueError, TypeError):
            return None


def relay_listener(addresses: Sequence[Sequence[object]]) -> tuple[str, str, int] | None:
    """The listener of a node to relay a request to: TCP, else UDP, else TLS."""
    for transport in _RELAY_TRANSPORTS:
        for entry in addresses:
            name, host, port = entry
            if name == transport and isinstance(host, str) and isinstance(port, int):
                return transport, host, port
    return None


class NodeDirectory:
    """The pool's nodes in Redis (see the module's text).

    :param connection: the pool's Redis.
    :param name: this node's ``--node-id`` (``None``: it announces nothing, holds no named flow).
    :param addresses: this node's listeners ``(transport, host, port)``.
    """

    def __init__(
        self,
        connection: RedisConnection,
        name: str | None,
        addresses: Callable[[], Sequence[tuple[str, str, int]]],
    ) -> None:
        self.connection = connection
        self.name = name
        self.addresses = addresses
        self._failing = False

    @staticmethod
    def key(name: str) -> str:
        return f"{KEY_PREFIX}node:{name}"

    async def announce(self) -> None:
        """Write this node's entry once (with its lifetime)."""
        if self.name is None:
            return
        value = json.dumps({"addresses": [list(a) for a in self.addresses()]})
        aio = self.connection.aio
        await self.connection.run("announce the node", aio.set(self.key(self.name), value, ex=NODE_TTL))

    async def run(self) -> None:
        """Announce every :data:`HEARTBEAT` seconds until cancelled."""
        while True:
            try:
                await self.announce()
                if self._failing:
                    log.warning("pool: node %s announced again", self.name)
                self._failing = False
            except StoreError as exc:
                if not self._failing:
                    log.warning("pool: cannot announce node %s: %s", self.name, exc)
                self._failing = True
            await asyncio.sleep(HEARTBEAT)

    async def leave(self) -> None:
        """Remove this node's entry (a clean stop)."""
        if self.name is None:
            return
        try:
            await self.connection.run("remove the node", self.connection.aio.delete(self.key(self.name)))
        except StoreError as exc:
            log.warning("pool: cannot remove node %s: %s", self.name, exc)

    async def listeners(self, name: str) -> list[tuple[str, str, int]] | None:
        """The listeners of node ``name``, ``None`` when it is gone.

        :raises StoreError: Redis cannot be reached.
        """
        raw = await self.connection.run(
            f"look up node {name}", self.connection.aio.get(self.key(name))
        )
        if raw is None:
            return None
        try:
            plain = json.loads(raw)
            return [(str(t), str(h), int(p)) for t, h, p in plain["addresses"]]
        except (ValueError, TypeError, KeyError):
            return None
