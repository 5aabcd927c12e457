"""What resolution gives: :class:`Target`, the failover :class:`TargetList`, :class:`RoutingError`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_PORTS", "ROUTING_TRANSPORTS", "RoutingError", "Target", "TargetList"]

#: Transports a :class:`Target` may carry, lower case.
ROUTING_TRANSPORTS: Final = ("udp", "tcp", "tls", "sctp")
#: The port used when neither the URI nor an SRV record gives one (RFC 3261 §19.1.2).
DEFAULT_PORTS: Final = {"udp": 5060, "tcp": 5060, "sctp": 5060, "tls": 5061}


@dataclass(frozen=True, slots=True)
class Target:
    """One place to send a request: a transport, an IP address and a port.

    :param transport: ``"udp"``, ``"tcp"``, ``"tls"`` or ``"sctp"``.
    :param host: the name the address came from (an SRV target, the URI host, or the literal).
    :param address: an IP address literal (IPv6 without brackets).
    :param port: the port.
    :param source: how it was found, e.g. ``NAPTR SIP+D2T -> SRV _sip._tcp.example.test -> A``.
    """

    transport: str
    host: str
    address: str
    port: int
    source: str

    def __post_init__(self) -> None:
        if self.transport not in ROUTING_TRANSPORTS:
            raise ValueError(
                f"unknown transport {self.transport!r}; expected one of: {', '.join(ROUTING_TRANSPORTS)}"
            )
        if not 0 < self.port <= 65535:
            raise ValueError(f"port {self.port} out of range; expected an integer 1-65535")

    @property
    def key(self) -> tuple[str, str, int]:
        """``(transport, address, port)``: two targets with the same key are the same destination."""
        return (self.transport, self.address, self.port)

    def __str__(self) -> str:
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.transport}:{address}:{self.port} ({self.host} via {self.source})"


class RoutingError(Exception):
    """No target can be found for a URI.

    :param status: the SIP status the proxy answers with: ``404`` when DNS says the name does not
        exist (every lookup gave NXDOMAIN), ``416`` for a URI that is not ``sip:``/``sips:``,
        ``503`` for everything else (server failure, timeout, loops, bad data, no usable target).
    :param reason: the reason phrase to answer with.
    :param detail: one line naming the DNS names that failed and how (for the log, not the wire).
    """

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail


class TargetList:
    """The failover list of one transaction (RFC 3263 §4.3).

    The proxy calls :meth:`next` for the first target, and again after a transport error, a timeout
    or a 503 from the current one (after calling :meth:`mark_failed`, or not: :meth:`next` moves on
    either way). Targets already marked failed, and destinations already tried, are skipped.

    :param targets: the ordered targets, as :meth:`Resolver.resolve` gives them.
    """

    def __init__(self, targets: Iterable[Target]) -> None:
        self.targets: tuple[Target, ...] = tuple(targets)
        self.current: Target | None = None
        self._position = 0
        self._failed: set[tuple[str, str, int]] = set()
        self._tried: set[tuple[str, str, int]] = set()

    def mark_failed(self, target: Target | None = None) -> None:
        """Mark ``target`` (default: the current one) as failed; it will not be returned again."""
        target = target if target is not None else self.current
        if target is not None:
            self._failed.add(target.key)

    def next(self) -> Target | None:
        """The next target to try, or ``None`` when every target was tried or failed."""
        while self._position < len(self.targets):
            target = self.targets[self._position]
            self._position += 1
            if target.key in self._failed or target.key in self._tried:
                continue
            self._tried.add(target.key)
            self.current = target
            return target
        self.current = None
        return None

    @property
    def exhausted(self) -> bool:
        """True when :meth:`next` would return ``None``."""
        return not any(
            t.key not in self._failed and t.key not in self._tried
            for t in self.targets[self._position :]
        )

    @property
    def failed(self) -> frozenset[tuple[str, str, int]]:
        """Keys (:attr:`Target.key`) of the targets marked failed."""
        return frozenset(self._failed)

    def __iter__(self) -> Iterator[Target]:
        """Iterate by calling :meth:`next` until it gives ``None``."""
        while (target := self.next()) is not None:
            yield target

    def __len__(self) -> int:
        return len(self.targets)
