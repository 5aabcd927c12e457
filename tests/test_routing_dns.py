"""RFC 3263 resolution against a real dnsmasq on a loopback port (Debian package dnsmasq-base)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from dnsmasq import Dnsmasq, free_udp_port, running_dnsmasq

from imscore.routing import Resolver, RoutingError, Target

TTL = 30  # --local-ttl: what dnsmasq gives its local records
NEG_TTL = 15  # the resolver's negative_ttl (dnsmasq's local negative answers carry no SOA)

#: The zone. BIND equivalents are in docs/routing.rst.
RECORDS = [
    # NAPTR order/preference: tls (10/10), tcp (10/20), udp (20/10); sctp is not enabled
    "--naptr-record=example.test,20,10,s,SIP+D2U,,_sip._udp.example.test",
    "--naptr-record=example.test,10,20,s,SIP+D2T,,_sip._tcp.example.test",
    "--naptr-record=example.test,10,10,s,SIPS+D2T,,_sips._tcp.example.test",
    "--naptr-record=example.test,5,10,s,SIP+D2S,,_sip._sctp.example.test",
    "--srv-host=_sips._tcp.example.test,tls1.example.test,5061,10,0",
    "--srv-host=_sip._tcp.example.test,tcp1.example.test,5060,10,0",
    "--srv-host=_sip._udp.example.test,udp1.example.test,5060,10,0",
    "--srv-host=_sip._sctp.example.test,udp1.example.test,5060,10,0",
    "--host-record=tls1.example.test,127.0.0.11",
    "--host-record=tcp1.example.test,127.0.0.12,::12",
    "--host-record=udp1.example.test,127.0.0.13",
    # SRV priority and weights (explicit transport=udp)
    "--srv-host=_sip._udp.weights.example.test,w60.example.test,5060,10,60",
    "--srv-host=_sip._udp.weights.example.test,w30.example.test,5060,10,30",
    "--srv-host=_sip._udp.weights.example.test,w10.example.test,5060,10,10",
    "--srv-host=_sip._udp.weights.example.test,backup.example.test,5060,20,0",
    "--host-record=w60.example.test,127.0.1.60",
    "--host-record=w30.example.test,127.0.1.30",
    "--host-record=w10.example.test,127.0.1.10",
    "--host-record=backup.example.test,127.0.1.99",
    # failover: two SRV targets of different priority
    "--srv-host=_sip._tcp.failover.example.test,first.example.test,5070,10,0",
    "--srv-host=_sip._tcp.failover.example.test,second.example.test,5071,20,0",
    "--host-record=first.example.test,127.0.2.1",
    "--host-record=second.example.test,127.0.2.2",
    # no NAPTR: SRV queries per transport
    "--srv-host=_sip._udp.srvonly.example.test,udp1.example.test,5062,10,0",
    "--srv-host=_sips._tcp.srvonly.example.test,tls1.example.test,5063,10,0",
    # no NAPTR, no SRV: A/AAAA on the default port
    "--host-record=plain.example.test,127.0.3.1,::31",
    # a 1 s TTL, for a real expiry
    "--host-record=short.example.test,127.0.3.2,1",
    # broken data
    "--naptr-record=loop.example.test,10,10,,SIP+D2T,,loop2.example.test",
    "--naptr-record=loop2.example.test,10,10,,SIP+D2T,,loop.example.test",
    "--srv-host=_sip._udp.noaddr.example.test,missing.example.test,5060,10,0",
    "--srv-host=_sip._tcp.half.example.test,missing.example.test,5060,10,0",
    "--srv-host=_sip._tcp.half.example.test,udp1.example.test,5064,20,0",
    "--srv-host=_sip._udp.dot.example.test",  # target '.': service not available
    "--host-record=dot.example.test,127.0.3.3",
]


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    """dnsmasq serving :data:`RECORDS` on 127.0.0.1 at a free port; stopped by PID at the end."""
    folder = tmp_path_factory.mktemp("dnsmasq")
    with running_dnsmasq(
        folder, RECORDS, domain="example.test", probe="plain.example.test", ttl=TTL
    ) as server:
        yield server


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver_for(server: Dnsmasq, **kwargs: object) -> Resolver:
    options: dict[str, object] = {"timeout": 2.0, "negative_ttl": NEG_TTL}
    options.update(kwargs)
    return Resolver([("127.0.0.1", server.port)], **options)  # type: ignore[arg-type]


def resolve(resolver: Resolver, uri: str) -> list[Target]:
    return asyncio.run(resolver.resolve(uri))


def failure(resolver: Resolver, uri: str) -> RoutingError:
    with pytest.raises(RoutingError) as info:
        resolve(resolver, uri)
    return info.value


# --------------------------------------------------------------------------------------------------
# Ordering


def test_naptr_order_and_preference(dnsmasq: Dnsmasq) -> None:
    targets = resolve(resolver_for(dnsmasq), "sip:alice@example.test")
    assert [t.key for t in targets] == [
        ("tls", "127.0.0.11", 5061),
        ("tcp", "127.0.0.12", 5060),
        ("tcp", "::12", 5060),
        ("udp", "127.0.0.13", 5060),
    ]
    assert targets[0].host == "tls1.example.test"
    assert targets[0].source == "NAPTR SIPS+D2T -> SRV _sips._tcp.example.test -> A"
    assert targets[2].source == "NAPTR SIP+D2T -> SRV _sip._tcp.example.test -> AAAA"


def test_naptr_keeps_enabled_transports_only(dnsmasq: Dnsmasq) -> None:
    targets = resolve(resolver_for(dnsmasq, transports=("udp", "sctp")), "sip:example.test")
    assert [t.key for t in targets] == [("sctp", "127.0.0.13", 5060), ("udp", "127.0.0.13", 5060)]


def test_sips_uses_sips_d2t_only(dnsmasq: Dnsmasq) -> None:
    targets = resolve(resolver_for(dnsmasq), "sips:bob@example.test")
    assert [t.key for t in targets] == [("tls", "127.0.0.11", 5061)]


def test_prefer_ipv6_puts_aaaa_first(dnsmasq: Dnsmasq) -> None:
    targets = resolve(resolver_for(dnsmasq, prefer="ipv6"), "sip:plain.example.test")
    assert [t.address for t in targets] == ["::31", "127.0.3.1"]
    assert targets[0].source == "no NAPTR/SRV -> AAAA"


def test_srv_without_naptr(dnsmasq: Dnsmasq) -> None:
    targets = resolve(resolver_for(dnsmasq), "sip:srvonly.example.test")
    assert [t.key for t in targets] == [("tls", "127.0.0.11", 5063), ("udp", "127.0.0.13", 5062)]
    assert targets[1].source == "SRV _sip._udp.srvonly.example.test -> A"


def test_explicit_port_and_explicit_transport(dnsmasq: Dnsmasq) -> None:
    resolver = resolver_for(dnsmasq)
    # explicit port: A/AAAA only, even though example.test has NAPTR (the name has no A: 404)
    assert [t.key for t in resolve(resolver, "sip:tcp1.example.test:5099")] == [
        ("udp", "127.0.0.12", 5099),
        ("udp", "::12", 5099),
    ]
    # explicit transport: SRV for it, then A/AAAA on the default port
    assert [t.key for t in resolve(resolver, "sip:example.test;transport=tcp")] == [
        ("tcp", "127.0.0.12", 5060),
        ("tcp", "::12", 5060),
    ]
    plain = resolve(resolver, "sips:plain.example.test;transport=tcp")
    assert plain[0].key == ("tls", "127.0.3.1", 5061)
    assert plain[0].source == "no SRV -> A"


def test_srv_priority_and_weights(dnsmasq: Dnsmasq) -> None:
    """One SRV answer (cached), reordered on every resolution: weights 60/30/10 within priority 10."""
    resolver = resolver_for(dnsmasq, rng=__import__("random").Random(2782))
    first: Counter[str] = Counter()
    for _ in range(300):
        targets = resolve(resolver, "sip:weights.example.test;transport=udp")
        assert len(targets) == 4
        assert targets[-1].host == "backup.example.test"  # priority 20 always last
        first[targets[0].host] += 1
    assert resolver.stats.queries == 1 + 4 * 2  # SRV once, A and AAAA of four targets once
    assert abs(first["w60.example.test"] / 300 - 0.6) < 0.1, first
    assert abs(first["w30.example.test"] / 300 - 0.3) < 0.1, first
    assert abs(first["w10.example.test"] / 300 - 0.1) < 0.07, first


def test_failover_to_the_second_srv_target(dnsmasq: Dnsmasq) -> None:
    targets = asyncio.run(resolver_for(dnsmasq).targets("sip:failover.example.test;transport=tcp"))
    first = targets.next()
    assert first is not None and first.key == ("tcp", "127.0.2.1", 5070)
    targets.mark_failed(first)  # transport error, timeout or 503 (RFC 3263 §4.3)
    second = targets.next()
    assert second is not None and second.key == ("tcp", "127.0.2.2", 5071)
    assert targets.exhausted and targets.next() is None


# --------------------------------------------------------------------------------------------------
# Caching


def test_ttl_expiry_with_an_injected_clock(dnsmasq: Dnsmasq) -> None:
    clock = FakeClock()
    resolver = resolver_for(dnsmasq, clock=clock)
    resolve(resolver, "sip:plain.example.test:5060")
    assert resolver.stats.queries == 2  # A and AAAA
    clock.now += TTL - 1
    resolve(resolver, "sip:plain.example.test:5060")
    assert (resolver.stats.queries, resolver.stats.cache_hits) == (2, 2)
    clock.now += 1.5
    resolve(resolver, "sip:plain.example.test:5060")
    assert resolver.stats.queries == 4


def test_ttl_expiry_in_real_time(dnsmasq: Dnsmasq) -> None:
    """``--host-record=...,1``: dnsmasq hands out a 1 s TTL, and it is honoured."""
    resolver = resolver_for(dnsmasq)
    resolve(resolver, "sip:short.example.test:5060")
    resolve(resolver, "sip:short.example.test:5060")
    assert resolver.stats.cache_hits >= 1
    before = resolver.stats.queries
    time.sleep(1.1)
    resolve(resolver, "sip:short.example.test:5060")
    assert resolver.stats.queries > before


def test_negative_caching(dnsmasq: Dnsmasq) -> None:
    clock = FakeClock()
    resolver = resolver_for(dnsmasq, clock=clock)
    error = failure(resolver, "sip:nobody@nx.example.test:5060")
    assert error.status == 404
    assert "nx.example.test: A NXDOMAIN, AAAA NXDOMAIN" in error.detail
    assert resolver.stats.queries == 2
    assert failure(resolver, "sip:nx.example.test:5060").status == 404
    assert (resolver.stats.queries, resolver.stats.negative_hits) == (2, 2)
    clock.now += NEG_TTL + 0.1
    failure(resolver, "sip:nx.example.test:5060")
    assert resolver.stats.queries == 4


def test_lru_bound(dnsmasq: Dnsmasq) -> None:
    resolver = resolver_for(dnsmasq, cache_size=2)
    resolve(resolver, "sip:plain.example.test:5060")  # A, AAAA of plain
    resolve(resolver, "sip:tls1.example.test:5060")  # evicts plain's
    assert len(resolver.cache) == 2
    assert ("plain.example.test", "A") not in resolver.cache
    assert ("tls1.example.test", "A") in resolver.cache


# --------------------------------------------------------------------------------------------------
# Broken data and broken servers


def test_naptr_replacement_loop(dnsmasq: Dnsmasq) -> None:
    start = time.monotonic()
    error = failure(resolver_for(dnsmasq), "sip:loop.example.test")
    assert error.status == 503
    assert "replacement loop (loop.example.test -> loop2.example.test -> loop.example.test)" in (
        error.detail
    )
    assert time.monotonic() - start < 2


def test_srv_target_without_address(dnsmasq: Dnsmasq) -> None:
    resolver = resolver_for(dnsmasq)
    error = failure(resolver, "sip:noaddr.example.test;transport=udp")
    assert error.status == 503
    assert (
        "_sip._udp.noaddr.example.test SRV -> missing.example.test: A NXDOMAIN, AAAA NXDOMAIN"
        in error.detail
    )
    # the other target of the same SRV set still works
    targets = resolve(resolver, "sip:half.example.test;transport=tcp")
    assert [t.key for t in targets] == [("tcp", "127.0.0.13", 5064)]


def test_srv_target_dot_means_not_available(dnsmasq: Dnsmasq) -> None:
    error = failure(resolver_for(dnsmasq), "sip:dot.example.test;transport=udp")
    assert error.status == 503
    assert "_sip._udp.dot.example.test SRV: target '.'" in error.detail  # no fallback to its A


def test_refused_is_a_server_failure(dnsmasq: Dnsmasq) -> None:
    error = failure(resolver_for(dnsmasq), "sip:somewhere.invalid")
    assert error.status == 503
    assert "somewhere.invalid NAPTR: REFUSED" in error.detail


def test_dead_name_server_fails_fast(caplog: pytest.LogCaptureFixture) -> None:
    resolver = Resolver([("127.0.0.1", free_udp_port())], timeout=0.5)
    start = time.monotonic()
    with caplog.at_level("WARNING", logger="imscore.routing"), pytest.raises(RoutingError) as info:
        asyncio.run(resolver.resolve("sip:example.test"))
    elapsed = time.monotonic() - start
    assert elapsed < 1.2, elapsed
    assert info.value.status == 503
    assert "example.test NAPTR: timeout after 0.5 s" in info.value.detail
    lines = [r.getMessage() for r in caplog.records if r.name == "imscore.routing"]
    assert lines == ["cannot route to sip:example.test: example.test NAPTR: timeout after 0.5 s"]
