"""An in-process UDP network for lab runs: the real server's transports with no sockets.

:class:`VirtualNetwork` carries datagrams between addresses after a fixed one-way delay (on the
loop's clock, so in virtual time it costs nothing) and records each one as a
:class:`~imscore.capture.MessageRecord` for the ladder and the pcap. :class:`VirtualTransports` is the
server's :class:`~imscore.transport.Transports` with its UDP listeners bound to the network instead
of sockets: everything above — framing, Via stamping, response routing, the core, the proxy, the
registrar — runs unchanged.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from imscore.capture import MessageRecord
from imscore.transport import TransportError, Transports
from imscore.transport.transports import _DatagramEndpoint

__all__ = ["VirtualNetwork", "VirtualTransports"]

Address = tuple[str, int]
Receiver = Callable[[bytes, Address], None]


class VirtualNetwork:
    """Datagrams between addresses, delivered after ``delay`` seconds, recorded in order.

    :param delay: one-way delay of every datagram, in seconds.
    :param clock: what a record's time is (the loop's time by default).
    """

    def __init__(self, delay: float = 0.005, clock: Callable[[], float] | None = None) -> None:
        self.delay = delay
        self._clock = clock
        self._receivers: dict[Address, Receiver] = {}
        self._down: set[Address] = set()
        #: every datagram sent, in order
        self.records: list[MessageRecord] = []
        #: datagrams sent to an address nobody (or an offline device) listens on
        self.lost = 0

    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def attach(self, address: Address, receiver: Receiver) -> None:
        """Listen at ``address``: ``receiver(data, source)`` gets each datagram sent there."""
        if address in self._receivers:
            raise TransportError(f"address {address[0]}:{address[1]} is already in use")
        self._receivers[address] = receiver

    def detach(self, address: Address) -> None:
        self._receivers.pop(address, None)

    def set_down(self, address: Address, down: bool = True) -> None:
        """An offline device: datagrams to it are lost, and it sends nothing."""
        if down:
            self._down.add(address)
        else:
            self._down.discard(address)

    def send(self, source: Address, destination: Address, data: bytes) -> None:
        """Send one datagram; it is recorded (unless its sender is down) and delivered later."""
        if source in self._down:
            return
        self.records.append(MessageRecord(self.now(), "udp", source, destination, data))
        asyncio.get_running_loop().call_later(self.delay, self._deliver, source, destination, data)

    def _deliver(self, source: Address, destination: Address, data: bytes) -> None:
        receiver = self._receivers.get(destination)
        if receiver is None or destination in self._down:
            self.lost += 1
            return
        receiver(data, source)


class _NetworkDatagramTransport(asyncio.DatagramTransport):
    """What a :class:`_DatagramEndpoint` writes to: the network instead of a socket."""

    def __init__(self, network: VirtualNetwork, local: Address) -> None:
        super().__init__()
        self._network = network
        self._local = local
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        host, port = addr[0], addr[1]
        if host.startswith("::ffff:"):
            host = host[7:]
        self._network.send(self._local, (host, port), bytes(data))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True
        self._network.detach(self._local)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class VirtualTransports(Transports):
    """:class:`~imscore.transport.Transports` whose UDP listeners are on a :class:`VirtualNetwork`."""

    def __init__(self, network: VirtualNetwork, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.network = network

    async def listen(self, transport: str, host: str, port: int) -> tuple[str, int]:
        if transport.lower() != "udp":
            raise TransportError(f"the lab network carries udp only, not {transport!r}")
        local = (host.strip("[]"), port)
        endpoint = _DatagramEndpoint(self)
        endpoint.local = local
        endpoint.family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
        endpoint.connection_made(_NetworkDatagramTransport(self.network, local))
        self.network.attach(local, lambda data, source: endpoint.datagram_received(data, source))
        self._endpoints[local] = endpoint
        self._listening.append(("udp", local[0], local[1]))
        return local
