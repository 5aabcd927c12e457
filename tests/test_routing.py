"""RFC 3263 routing without a DNS server: ordering rules, numeric hosts, caches, profile and CLI."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import dns.message
import dns.rrset
import pytest

from imscore.profile import DnsSettings, ProfileError, load_profile, parse_nameserver
from imscore.routing import (
    DnsCache,
    Naptr,
    Resolver,
    RoutingError,
    Srv,
    Target,
    TargetList,
    order_naptr,
    order_srv,
    srv_name,
    weighted_order,
)


def dead_port() -> int:
    """A loopback UDP port nobody listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def offline(**kwargs: object) -> Resolver:
    """A resolver whose only name server is a dead loopback port: any query would time out."""
    return Resolver([("127.0.0.1", dead_port())], timeout=0.3, **kwargs)  # type: ignore[arg-type]


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# NAPTR and SRV ordering


def test_naptr_sorted_by_order_then_preference() -> None:
    records = [
        Naptr(20, 10, "s", "SIP+D2U", "", "_sip._udp.a"),
        Naptr(10, 50, "s", "SIP+D2T", "", "_sip._tcp.a"),
        Naptr(10, 20, "s", "SIPS+D2T", "", "_sips._tcp.a"),
        Naptr(5, 90, "s", "SIP+D2S", "", "_sip._sctp.a"),
    ]
    assert [r.service for r in order_naptr(records)] == ["SIP+D2S", "SIPS+D2T", "SIP+D2T", "SIP+D2U"]


def test_srv_priority_first_and_dot_target_dropped() -> None:
    records = [
        Srv(20, 100, 5060, "c"),
        Srv(10, 0, 5060, "b"),
        Srv(10, 0, 5060, "a"),
        Srv(5, 0, 5060, ""),  # '.': not available
    ]
    ordered = order_srv(records, random.Random(1))
    assert [r.target for r in ordered][2] == "c"
    assert {r.target for r in ordered[:2]} == {"a", "b"}
    assert len(ordered) == 3


def test_weighted_selection_statistics() -> None:
    """RFC 2782: within one priority the first pick follows the weights (2000 seeded draws)."""
    rng = random.Random(3263)
    records = [Srv(10, 60, 5060, "sixty"), Srv(10, 30, 5060, "thirty"), Srv(10, 10, 5060, "ten")]
    first = Counter(order_srv(records, rng)[0].target for _ in range(2000))
    assert abs(first["sixty"] / 2000 - 0.6) < 0.04, first
    assert abs(first["thirty"] / 2000 - 0.3) < 0.04, first
    assert abs(first["ten"] / 2000 - 0.1) < 0.03, first


def test_weighted_order_is_a_permutation_and_zero_weights_are_rare() -> None:
    rng = random.Random(7)
    counts = Counter()
    for _ in range(1000):
        order = weighted_order([0, 50, 50], rng.randint)
        assert sorted(order) == [0, 1, 2]
        counts[order[0]] += 1
    assert counts[0] < 40  # weight 0: only when the draw is exactly 0 (about 1 in 101)
    assert counts[1] > 400 and counts[2] > 400


def test_srv_names() -> None:
    assert srv_name("tls", "x.test") == "_sips._tcp.x.test"
    assert srv_name("udp", "x.test") == "_sip._udp.x.test"
    assert srv_name("sctp", "x.test") == "_sip._sctp.x.test"


# --------------------------------------------------------------------------------------------------
# Targets and the failover list


def target(address: str, port: int = 5060, transport: str = "udp") -> Target:
    return Target(transport, "h.test", address, port, "test")


def test_target_list_failover() -> None:
    a, b, c = target("127.0.0.1"), target("127.0.0.2"), target("127.0.0.3")
    targets = TargetList([a, b, a, c])  # a repeated: tried once
    assert targets.next() == a and targets.current == a
    targets.mark_failed()
    targets.mark_failed(c)  # known bad from elsewhere: skipped
    assert not targets.exhausted
    assert targets.next() == b
    assert targets.exhausted
    assert targets.next() is None and targets.current is None
    assert targets.failed == {a.key, c.key}


def test_target_validation() -> None:
    with pytest.raises(ValueError, match="unknown transport 'ws'"):
        Target("ws", "h", "127.0.0.1", 5060, "x")
    with pytest.raises(ValueError, match="port 0 out of range"):
        Target("udp", "h", "127.0.0.1", 0, "x")
    assert str(Target("tls", "h", "::1", 5061, "x")) == "tls:[::1]:5061 (h via x)"


# --------------------------------------------------------------------------------------------------
# The cache


def test_cache_ttl_and_lru() -> None:
    now = [100.0]
    cache = DnsCache(2, lambda: now[0])
    cache.put("a", "A", "ok", ("1",), 10)
    cache.put("b", "A", "ok", ("2",), 10)
    assert cache.get("a", "A") is not None  # a is now the most recently used
    cache.put("c", "A", "ok", ("3",), 10)  # evicts b
    assert ("b", "A") not in cache and ("a", "A") in cache and len(cache) == 2
    now[0] = 109.9
    assert cache.get("a", "A") is not None
    now[0] = 110.0
    assert cache.get("a", "A") is None and ("a", "A") not in cache
    cache.put("z", "A", "ok", (), 0)  # TTL 0: not kept
    assert cache.get("z", "A") is None


def test_cache_disabled() -> None:
    cache = DnsCache(0, lambda: 0.0)
    cache.put("a", "A", "ok", ("1",), 60)
    assert cache.get("a", "A") is None
    with pytest.raises(ValueError, match="expected an integer >= 0"):
        DnsCache(-1, lambda: 0.0)


def test_negative_ttl_from_soa_minimum() -> None:
    """RFC 2308: the negative TTL is the SOA's TTL capped by its MINIMUM; else the configured one."""
    resolver = offline(negative_ttl=45)
    response = dns.message.make_response(dns.message.make_query("x.example.test", "A"))
    assert resolver._negative_ttl([response]) == 45.0
    response.authority.append(
        dns.rrset.from_text("example.test.", 300, "IN", "SOA", "ns. host. 1 2 3 4 20")
    )
    assert resolver._negative_ttl([response]) == 20.0


# --------------------------------------------------------------------------------------------------
# RFC 3263 §4 rules that need no DNS


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sip:alice@192.0.2.1", ("udp", "192.0.2.1", 5060)),
        ("sips:alice@192.0.2.1", ("tls", "192.0.2.1", 5061)),
        ("sip:192.0.2.1:5070", ("udp", "192.0.2.1", 5070)),
        ("sip:192.0.2.1;transport=TCP", ("tcp", "192.0.2.1", 5060)),
        ("sip:192.0.2.1;transport=tls", ("tls", "192.0.2.1", 5061)),
        ("sips:192.0.2.1;transport=tcp", ("tls", "192.0.2.1", 5061)),
        ("sip:[2001:db8::1]:5080;transport=tcp", ("tcp", "2001:db8::1", 5080)),
        ("sip:bob@example.test;maddr=192.0.2.9", ("udp", "192.0.2.9", 5060)),
    ],
)
def test_numeric_hosts_need_no_dns(uri: str, expected: tuple[str, str, int]) -> None:
    resolver = offline()
    targets = run(resolver.resolve(uri))
    assert isinstance(targets, list) and len(targets) == 1
    assert targets[0].key == expected and targets[0].source == "numeric host"
    assert resolver.stats.queries == 0


def test_numeric_host_without_udp_uses_tcp() -> None:
    targets = run(offline(transports=("tcp",)).resolve("sip:192.0.2.1"))
    assert isinstance(targets, list) and targets[0].key == ("tcp", "192.0.2.1", 5060)


@pytest.mark.parametrize(
    ("uri", "status", "text"),
    [
        ("sip:192.0.2.1;transport=sctp", 503, "transport sctp is not enabled here"),
        ("sip:192.0.2.1;transport=ws", 503, "unknown transport 'ws'"),
        ("sips:192.0.2.1;transport=udp", 503, "no secure transport for transport=udp"),
        ("tel:+15550100", 416, "is not a sip: or sips: URI"),
        ("sip:", 400, "Bad URI"),
    ],
)
def test_unusable_uris(uri: str, status: int, text: str) -> None:
    with pytest.raises(RoutingError) as info:
        run(offline().resolve(uri))
    assert info.value.status == status
    assert text in str(info.value)


def test_resolver_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="unknown transport 'ws'"):
        Resolver(None, transports=("udp", "ws"))
    with pytest.raises(ValueError, match="expected a number > 0"):
        Resolver(None, timeout=0)
    with pytest.raises(ValueError, match="expected ipv4 or ipv6"):
        Resolver(None, prefer="v4")


# --------------------------------------------------------------------------------------------------
# Profile ``dns`` section and ``serve --dns``


def test_parse_nameserver() -> None:
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("192.0.2.53") == ("192.0.2.53", 53)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    assert parse_nameserver("::1") == ("::1", 53)
    for bad, text in [
        ("dns.example.test:53", "expected an IP address"),
        ("127.0.0.1:0", "expected an integer 1-65535"),
        ("127.0.0.1:x", "bad port 'x'"),
        ("[::1", r"expected IP\[:PORT\]"),
    ]:
        with pytest.raises(ValueError, match=text):
            parse_nameserver(bad)


def test_profile_dns_section(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "domains: [a.test]\n"
        "dns: {nameservers: ['127.0.0.1:5353', '[::1]'], timeout: 0.5, cache_size: 10, prefer: ipv6,"
        " negative_ttl: 5}\n"
    )
    profile = load_profile(path)
    assert profile.dns == DnsSettings((("127.0.0.1", 5353), ("::1", 53)), 0.5, 10, "ipv6", 5)
    resolver = Resolver.from_settings(profile.dns)
    assert resolver.prefer == "ipv6" and resolver.timeout == 0.5 and resolver.cache.max_entries == 10
    assert load_profile("default").dns == DnsSettings()


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "{nameservers: ['ns.test']}",
            "key 'dns.nameservers[0]': bad name server 'ns.test'; expected an IP address",
        ),
        ("{nameservers: '127.0.0.1'}", "key 'dns.nameservers': expected a list of a name server"),
        ("{timeout: 0}", "key 'dns.timeout': expected a number > 0, got 0 (int)"),
        ("{cache_size: -1}", "key 'dns.cache_size': expected an integer >= 0, got -1 (int)"),
        ("{prefer: v6}", "key 'dns.prefer': expected one of: ipv4, ipv6, got 'v6' (str)"),
        ("{port: 53}", "key 'dns.port': unknown key; expected one of: cache_size, nameservers"),
    ],
)
def test_profile_dns_errors(tmp_path: Path, section: str, expected: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"domains: [a.test]\ndns: {section}\n")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: {expected}")


def test_serve_rejects_a_bad_dns_option() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imscore", "serve", "--dns", "127.0.0.1:5353", "--dns", "ns.test:53"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("imscore: --dns: bad name server 'ns.test:53'")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_server_start_creates_the_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve --dns`` overrides the profile's name servers, and Server.start builds the resolver."""
    from imscore import cli
    from imscore.server import runtime

    seen: dict[str, object] = {}

    async def fake_run(server: runtime.Server) -> None:
        await server.start()
        try:
            seen["resolver"] = server.resolver
        finally:
            await server.stop()

    monkeypatch.setattr(runtime, "run_until_signalled", fake_run)
    status = cli.main(
        [
            "serve", "--store", "memory:", "--listen", "udp:127.0.0.1:0", "--listen", "tcp:127.0.0.1:0",
            "--dns", "127.0.0.1:5399", "--dns", "[::1]:5398",
        ]
    )  # fmt: skip
    assert status == 0
    resolver = seen["resolver"]
    assert isinstance(resolver, Resolver)
    assert resolver.transports == {"udp", "tcp"}
    servers = [(ns.address, ns.port) for ns in resolver._dns.nameservers]  # type: ignore[union-attr]
    assert servers == [("127.0.0.1", 5399), ("::1", 5398)]


def test_no_system_resolver_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import dns.asyncresolver
    import dns.resolver

    real = dns.asyncresolver.Resolver

    def fake(configure: bool = True) -> dns.asyncresolver.Resolver:
        if configure:
            raise dns.resolver.NoResolverConfiguration("no /etc/resolv.conf")
        return real(configure=False)

    monkeypatch.setattr(dns.asyncresolver, "Resolver", fake)
    resolver = Resolver(None, timeout=0.5)
    with pytest.raises(RoutingError) as info:
        run(resolver.resolve("sip:example.test"))
    assert info.value.status == 503
    assert "dns.nameservers is empty and the system's is unusable" in info.value.detail
    assert resolver.stats.queries == 0
