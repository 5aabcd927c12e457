"""Where requests for other domains go: RFC 3263 server location (NAPTR, SRV, A, AAAA).

:class:`Resolver` gives the ordered failover list of :class:`Target` for a SIP URI; a
:class:`TargetList` walks it for one transaction (next target on transport error, timeout or 503);
:class:`RoutingError` carries the status to answer when nothing is usable. See ``docs/routing.rst``.
"""

from __future__ import annotations

from .cache import CacheEntry, DnsCache
from .model import DEFAULT_PORTS, ROUTING_TRANSPORTS, RoutingError, Target, TargetList
from .resolver import DnsFailure, Resolver, ResolverStats
from .select import NAPTR_SERVICES, Naptr, Srv, order_naptr, order_srv, srv_name, weighted_order

__all__ = [
    "DEFAULT_PORTS",
    "NAPTR_SERVICES",
    "ROUTING_TRANSPORTS",
    "CacheEntry",
    "DnsCache",
    "DnsFailure",
    "Naptr",
    "Resolver",
    "ResolverStats",
    "RoutingError",
    "Srv",
    "Target",
    "TargetList",
    "order_naptr",
    "order_srv",
    "srv_name",
    "weighted_order",
]
