"""Pure ordering rules: NAPTR order/preference (RFC 3403) and SRV priority/weight (RFC 2782)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Final

__all__ = [
    "NAPTR_SERVICES",
    "Naptr",
    "Srv",
    "order_naptr",
    "order_srv",
    "srv_name",
    "weighted_order",
]

#: NAPTR services of RFC 3263 §4.1 (and RFC 4168 for SCTP) and the transport each means.
NAPTR_SERVICES: Final = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls", "SIP+D2S": "sctp"}


@dataclass(frozen=True, slots=True)
class Naptr:
    """The fields of a NAPTR record that SIP uses (names lower case, without the final dot)."""

    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str


@dataclass(frozen=True, slots=True)
class Srv:
    """An SRV record (target lower case, without the final dot; ``""`` for the root ``.``)."""

    priority: int
    weight: int
    port: int
    target: str


def order_naptr(records: Iterable[Naptr]) -> list[Naptr]:
    """NAPTR records by ``order``, then ``preference``, both ascending (RFC 3403 §4.1); stable."""
    return sorted(records, key=lambda r: (r.order, r.preference))


def weighted_order(weights: Sequence[int], draw: Callable[[int, int], int]) -> list[int]:
    """The RFC 2782 weighted selection over one priority: a permutation of ``range(len(weights))``.

    Zero-weight entries go first in the list (so they keep a small chance), then repeatedly: sum the
    weights left, draw an integer in ``[0, sum]``, take the first entry whose running sum is at least
    the draw, remove it.

    :param draw: ``random.Random.randint``-like, inclusive at both ends.
    """
    left = sorted(range(len(weights)), key=lambda i: weights[i] != 0)  # stable: zeros first
    out: list[int] = []
    while left:
        total = sum(weights[i] for i in left)
        pick = draw(0, total)
        running = 0
        chosen = left[-1]
        for index in left:
            running += weights[index]
            if running >= pick:
                chosen = index
                break
        out.append(chosen)
        left.remove(chosen)
    return out


def order_srv(records: Iterable[Srv], rng: random.Random) -> list[Srv]:
    """SRV records by priority ascending, weighted random order within a priority (RFC 2782).

    Records whose target is ``.`` (:attr:`Srv.target` ``""``) are dropped: the service is not
    available there.
    """
    usable = sorted((r for r in records if r.target), key=lambda r: r.priority)
    out: list[Srv] = []
    for _, group in groupby(usable, key=lambda r: r.priority):
        members = list(group)
        out.extend(members[i] for i in weighted_order([m.weight for m in members], rng.randint))
    return out


def srv_name(transport: str, host: str) -> str:
    """The SRV owner name for a transport (RFC 3263 §4.2): ``_sips._tcp`` for TLS, else ``_sip._X``."""
    if transport == "tls":
        return f"_sips._tcp.{host}"
    return f"_sip._{transport}.{host}"
