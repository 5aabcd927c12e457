"""Transports offered by plugins (SCTP …): the small protocol a provider implements.

A plugin hands a provider to the core through the ``ims_register_transports`` hook
(``registry.add("sctp", provider)``); :class:`~imscore.transport.Transports` then listens with it
when a profile listener names that transport. The provider owns its sockets and message boundaries:
it calls ``received(data, remote)`` once per complete SIP message (or keep-alive) read, and
:class:`~imscore.transport.Transports` does the rest exactly as for UDP (parse, check, stamp the Via,
hand the message to the handler, answer or drop bad input). Flows of a provider transport are reliable
unless the transport is named ``udp``: the core does not retransmit over them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeAlias, runtime_checkable

__all__ = ["ReceivedCallback", "TransportEndpoint", "TransportProvider"]

#: What a provider calls for every complete message read: ``received(data, remote)``, where
#: ``remote`` is the peer's ``(host, port)``, the address :meth:`TransportEndpoint.send` answers to.
ReceivedCallback: TypeAlias = Callable[[bytes, tuple[str, int]], None]


@runtime_checkable
class TransportEndpoint(Protocol):
    """One listening endpoint of a provider transport (e.g. one SCTP socket and its associations)."""

    @property
    def local(self) -> tuple[str, int]:
        """The address actually bound, ``(host, port)``."""
        ...

    def send(self, data: bytes, remote: tuple[str, int]) -> None:
        """Send one whole SIP message to ``remote``, opening an association to it if none is live.

        :raises TransportError: when it cannot be sent (or queued for sending).
        """
        ...

    async def close(self) -> None:
        """Stop listening and close every association; sending afterwards raises."""
        ...


@runtime_checkable
class TransportProvider(Protocol):
    """A transport a plugin offers under a name (``"sctp"``)."""

    async def listen(
        self, host: str, port: int, received: ReceivedCallback, *, max_message_size: int
    ) -> TransportEndpoint:
        """Start listening at ``host`` (an IP literal, no brackets) and ``port`` (``0``: any free one).

        :param received: called once per complete message read, with the peer address.
        :param max_message_size: the largest message to accept, in octets; larger ones may be dropped.
        :raises TransportError: (or :class:`OSError`) with a message saying why it cannot listen.
        """
        ...
