"""RFC 3263 §4 server location: NAPTR, SRV, A and AAAA lookups with dnspython's asyncio resolver.

:class:`Resolver` turns a ``sip:``/``sips:`` URI into the ordered failover list of :class:`Target`
(transport, address, port). Answers are cached per record set for their TTL (negative answers for
the SOA minimum or ``negative_ttl``); the whole resolution of one URI is bounded by ``timeout``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset

from imscore.profile import DnsSettings
from imscore.sip import ParseError, SipUri, parse_uri

from .cache import DnsCache
from .model import DEFAULT_PORTS, ROUTING_TRANSPORTS, RoutingError, Target, TargetList
from .select import NAPTR_SERVICES, Naptr, Srv, order_naptr, order_srv, srv_name

__all__ = ["DnsFailure", "Resolver", "ResolverStats"]

log = logging.getLogger("imscore.routing")

#: How many non-terminal NAPTR hops are followed before giving up.
MAX_NAPTR_DEPTH = 5


class DnsFailure(Exception):
    """A query got no usable answer: server failure, timeout or bad data (not NXDOMAIN/NODATA).

    :param name: the name queried.
    :param rdtype: the record type queried (``"SRV"`` ...).
    :param how: what went wrong, short (``timeout after 1 s``, ``SERVFAIL``, ``bad answer: ...``).
    """

    def __init__(self, name: str, rdtype: str, how: str) -> None:
        super().__init__(f"{name} {rdtype}: {how}")
        self.name, self.rdtype, self.how = name, rdtype, how


@dataclass
class ResolverStats:
    """Counters: queries sent to a name server, answers taken from the cache (positive, negative)."""

    queries: int = 0
    cache_hits: int = 0
    negative_hits: int = 0


@dataclass
class _Answer:
    kind: str  # "ok", "NXDOMAIN", "NODATA"
    records: tuple[object, ...] = ()


@dataclass
class _Trail:
    """What went wrong along one resolution, for the error detail."""

    problems: list[str] = field(default_factory=list)
    only_nxdomain: bool = True

    def note(self, text: str, *, nxdomain: bool = False) -> None:
        self.problems.append(text)
        if not nxdomain:
            self.only_nxdomain = False


def _name(value: object) -> str:
    """A DNS name as text, lower case, without the final dot (the root gives ``""``)."""
    return str(value).lower().rstrip(".")


class Resolver:
    """Finds the targets of a SIP URI (RFC 3263 §4), asynchronously.

    :param nameservers: ``(ip, port)`` pairs to query; ``None`` or empty: the system's resolv.conf.
    :param transports: the transports this element can send on; others are never returned.
    :param timeout: seconds one call of :meth:`resolve` may take, every query included.
    :param cache_size: record sets kept (LRU); 0 disables caching.
    :param clock: monotonic seconds for TTLs (inject a fake one in tests).
    :param prefer: ``"ipv4"`` (A before AAAA for each host) or ``"ipv6"``.
    :param negative_ttl: seconds to keep NXDOMAIN/NODATA when the answer carries no SOA.
    :param rng: the random source of the SRV weighted selection (seed it in tests).
    """

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] | None = None,
        transports: Iterable[str] = ("udp", "tcp", "tls"),
        timeout: float = 2.0,
        cache_size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        *,
        prefer: str = "ipv4",
        negative_ttl: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.transports = frozenset(t.lower() for t in transports)
        unknown = self.transports - set(ROUTING_TRANSPORTS)
        if unknown:
            raise ValueError(
                f"unknown transport {sorted(unknown)[0]!r}; "
                f"expected some of: {', '.join(ROUTING_TRANSPORTS)}"
            )
        if timeout <= 0:
            raise ValueError(f"timeout {timeout!r} out of range; expected a number > 0")
        if prefer not in ("ipv4", "ipv6"):
            raise ValueError(f"prefer {prefer!r}; expected ipv4 or ipv6")
        self.timeout = timeout
        self.prefer = prefer
        self.negative_ttl = negative_ttl
        self.rng = rng if rng is not None else random.Random()
        self.cache = DnsCache(cache_size, clock)
        self.stats = ResolverStats()
        #: why no query can be sent (no name server configured), or ``None``
        self.problem: str | None = None
        if nameservers:
            self._dns = dns.asyncresolver.Resolver(configure=False)
            self._dns.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in nameservers]
        else:
            try:
                self._dns = dns.asyncresolver.Resolver()
            except (dns.exception.DNSException, OSError) as exc:
                self._dns = dns.asyncresolver.Resolver(configure=False)
                self.problem = (
                    f"no name server: dns.nameservers is empty and the system's is unusable ({exc})"
                )
                log.warning("DNS: %s", self.problem)
        self._dns.cache = None  # ours, with the injected clock
        self._dns.timeout = max(0.05, timeout / 2)  # one retry within the lifetime
        self._dns.lifetime = timeout

    @classmethod
    def from_settings(
        cls, settings: DnsSettings, transports: Iterable[str] = ("udp", "tcp", "tls")
    ) -> Resolver:
        """A resolver configured by a profile's ``dns`` section."""
        return cls(
            list(settings.nameservers) or None,
            transports,
            settings.timeout,
            settings.cache_size,
            prefer=settings.prefer,
            negative_ttl=settings.negative_ttl,
        )

    # -- public ------------------------------------------------------------------------------------
    async def resolve(self, uri: SipUri | str) -> list[Target]:
        """The ordered failover list for ``uri`` (RFC 3263 §4), never empty.

        :raises RoutingError: nothing usable; ``status`` says what to answer, ``detail`` why (one
            line, also logged at WARNING).
        """
        parsed = self._parse(uri)
        deadline = time.monotonic() + self.timeout
        try:
            async with asyncio.timeout(self.timeout + 0.25):  # dnspython has its own lifetime too
                return await self._resolve(parsed, deadline)
        except DnsFailure as exc:  # a server failure on NAPTR/SRV: the data cannot be trusted
            raise self._error(parsed, 503, "Service Unavailable", str(exc)) from None
        except TimeoutError:
            raise self._error(
                parsed, 503, "Service Unavailable", f"DNS: no answer within {self.timeout:g} s"
            ) from None

    async def targets(self, uri: SipUri | str) -> TargetList:
        """:meth:`resolve` wrapped in a :class:`TargetList` for one transaction's failover."""
        return TargetList(await self.resolve(uri))

    # -- the §4 steps ----------------------------------------------------------------------------
    def _parse(self, uri: SipUri | str) -> SipUri:
        if isinstance(uri, SipUri):
            return uri
        try:
            parsed = parse_uri(uri)
        except ParseError as exc:
            raise RoutingError(400, "Bad URI", f"{uri[:80]!r}: {exc}") from None
        if not isinstance(parsed, SipUri):
            raise RoutingError(416, "Unsupported URI Scheme", f"{uri[:80]!r} is not a sip: or sips: URI")
        return parsed

    def _error(self, uri: SipUri, status: int, reason: str, detail: str) -> RoutingError:
        text = f"cannot route to {uri}: {detail}"
        log.warning("%s", text)
        return RoutingError(status, reason, text)

    def _default_transport(self, secure: bool) -> str | None:
        if secure:
            return "tls" if "tls" in self.transports else None
        for choice in ("udp", "tcp"):
            if choice in self.transports:
                return choice
        return None

    async def _resolve(self, uri: SipUri, deadline: float) -> list[Target]:
        secure = uri.secure
        host = uri.params.get("maddr") or uri.host
        host = host.strip("[]")
        explicit = uri.transport
        if explicit is not None:
            if explicit not in ROUTING_TRANSPORTS:
                raise self._error(uri, 503, "Unsupported Transport", f"unknown transport {explicit!r}")
            if secure and explicit == "tcp":
                explicit = "tls"  # sips over TCP is TLS
            if secure and explicit != "tls":
                raise self._error(
                    uri, 503, "Unsupported Transport", f"no secure transport for transport={explicit}"
                )
            if explicit not in self.transports:
                raise self._error(
                    uri, 503, "Unsupported Transport", f"transport {explicit} is not enabled here"
                )
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:  # §4.1/§4.2: a numeric host needs no DNS
            transport = explicit or self._default_transport(secure)
            if transport is None:
                raise self._error(uri, 503, "Unsupported Transport", "no enabled transport for it")
            port = uri.port if uri.port is not None else DEFAULT_PORTS[transport]
            return [Target(transport, host, str(literal), port, "numeric host")]
        host = host.lower().rstrip(".")
        trail = _Trail()
        if uri.port is not None:  # §4.2: an explicit port means A/AAAA only
            transport = explicit or self._default_transport(secure)
            if transport is None:
                raise self._error(uri, 503, "Unsupported Transport", "no enabled transport for it")
            found = await self._host_targets(host, transport, uri.port, "explicit port", deadline, trail)
            return self._finish(uri, found, trail)
        if explicit is not None:  # §4.2: SRV for that transport, then A/AAAA
            name = srv_name(explicit, host)
            exists, found = await self._srv_targets(name, explicit, "", deadline, trail)
            if not exists:
                found = await self._host_targets(
                    host, explicit, DEFAULT_PORTS[explicit], "no SRV", deadline, trail
                )
            return self._finish(uri, found, trail)
        # §4.1: NAPTR
        found = []
        chains = await self._naptr_chains(host, secure, deadline, trail)
        if chains:
            results = await asyncio.gather(
                *(self._srv_targets(name, tp, prefix, deadline, trail) for tp, name, prefix in chains)
            )
            found = [t for _, targets in results for t in targets]
            if found:
                return self._finish(uri, found, trail)
        # no usable NAPTR: SRV for each enabled transport
        order = ["tls"] if secure else ["tls", "udp", "tcp", "sctp"]
        wanted = [tp for tp in order if tp in self.transports]
        results = await asyncio.gather(
            *(self._srv_targets(srv_name(tp, host), tp, "", deadline, trail) for tp in wanted)
        )
        if any(exists for exists, _ in results):
            return self._finish(uri, [t for _, targets in results for t in targets], trail)
        transport = self._default_transport(secure)
        if transport is None:
            raise self._error(uri, 503, "Unsupported Transport", "no enabled transport for it")
        found = await self._host_targets(
            host, transport, DEFAULT_PORTS[transport], "no NAPTR/SRV", deadline, trail
        )
        return self._finish(uri, found, trail)

    def _finish(self, uri: SipUri, found: list[Target], trail: _Trail) -> list[Target]:
        seen: set[tuple[str, str, int]] = set()
        out: list[Target] = []
        for target in found:
            if target.key not in seen:
                seen.add(target.key)
                out.append(target)
        if out:
            return out
        detail = "; ".join(trail.problems) or "no usable target"
        if trail.only_nxdomain and trail.problems:
            raise self._error(uri, 404, "Not Found", detail)
        raise self._error(uri, 503, "Service Unavailable", detail)

    async def _naptr_chains(
        self, host: str, secure: bool, deadline: float, trail: _Trail
    ) -> list[tuple[str, str, str]]:
        """Usable NAPTR records as ``(transport, SRV name, source prefix)``, in order."""
        out: list[tuple[str, str, str]] = []

        async def follow(name: str, path: tuple[str, ...], prefix: str) -> None:
            answer = await self._query(name, "NAPTR", deadline)  # DnsFailure: fatal
            if answer.kind != "ok":
                if path:  # a non-terminal record pointed at nothing
                    trail.note(f"{name} NAPTR: {answer.kind}", nxdomain=answer.kind == "NXDOMAIN")
                return
            records = order_naptr(r for r in answer.records if isinstance(r, Naptr))
            for record in records:
                service = record.service.upper()
                flags = record.flags.lower()
                if flags == "s":
                    transport = NAPTR_SERVICES.get(service)
                    if transport is None or transport not in self.transports:
                        continue
                    if secure and service != "SIPS+D2T":
                        continue
                    if record.regexp or not record.replacement:
                        trail.note(f"{name} NAPTR {service}: regexp/empty replacement not usable")
                        continue
                    out.append((transport, record.replacement, f"{prefix}NAPTR {service} -> "))
                elif flags == "" and (service == "" or service in NAPTR_SERVICES):
                    target = record.replacement
                    if not target:
                        continue
                    if target in (*path, name):
                        chain = " -> ".join((*path, name, target))
                        trail.note(f"{name} NAPTR: replacement loop ({chain})")
                        continue
                    if len(path) >= MAX_NAPTR_DEPTH:
                        trail.note(f"{name} NAPTR: more than {MAX_NAPTR_DEPTH} non-terminal hops")
                        continue
                    await follow(target, (*path, name), f"{prefix}NAPTR -> {target} ")
                # other flags ("a", "u", "p") are not used by SIP (RFC 3263 §4.1): skipped

        await follow(host, (), "")
        return out

    async def _srv_targets(
        self, name: str, transport: str, prefix: str, deadline: float, trail: _Trail
    ) -> tuple[bool, list[Target]]:
        """``(SRV records exist, targets)`` for one SRV name. A server failure is fatal."""
        answer = await self._query(name, "SRV", deadline)  # DnsFailure: fatal
        if answer.kind != "ok":
            trail.note(f"{name} SRV: {answer.kind}", nxdomain=answer.kind == "NXDOMAIN")
            return False, []
        records = [r for r in answer.records if isinstance(r, Srv)]
        ordered = order_srv(records, self.rng)
        if not ordered:
            trail.note(f"{name} SRV: target '.' (service not available)")
            return True, []
        usable = [r for r in ordered if r.port > 0]
        if len(usable) < len(ordered):
            trail.note(f"{name} SRV: port 0 ignored")
        source = f"{prefix}SRV {name} -> "
        per_host = await asyncio.gather(
            *(self._addresses(r.target, deadline, trail, via=f"{name} SRV -> ") for r in usable)
        )
        out: list[Target] = []
        for record, addresses in zip(usable, per_host, strict=True):
            for address, rdtype in addresses:
                out.append(Target(transport, record.target, address, record.port, source + rdtype))
        return True, out

    async def _host_targets(
        self, host: str, transport: str, port: int, why: str, deadline: float, trail: _Trail
    ) -> list[Target]:
        addresses = await self._addresses(host, deadline, trail)
        return [Target(transport, host, a, port, f"{why} -> {rdtype}") for a, rdtype in addresses]

    async def _addresses(
        self, host: str, deadline: float, trail: _Trail, via: str = ""
    ) -> list[tuple[str, str]]:
        """``(address, "A"|"AAAA")`` of a host, preferred family first; problems go to ``trail``.

        ``via`` names the SRV record that pointed here: a missing name there is bad data (503), not
        a domain that does not exist (404).
        """
        kinds = ("A", "AAAA") if self.prefer == "ipv4" else ("AAAA", "A")
        results = await asyncio.gather(
            *(self._query(host, kind, deadline) for kind in kinds), return_exceptions=True
        )
        out: list[tuple[str, str]] = []
        outcomes: list[str] = []
        nxdomain = True
        for kind, result in zip(kinds, results, strict=True):
            if isinstance(result, DnsFailure):
                outcomes.append(f"{kind} {result.how}")
                nxdomain = False
            elif isinstance(result, BaseException):
                raise result
            elif result.kind == "ok":
                out.extend((str(a), kind) for a in result.records)
            else:
                outcomes.append(f"{kind} {result.kind}")
                nxdomain = nxdomain and result.kind == "NXDOMAIN"
        if not out:
            trail.note(f"{via}{host}: " + ", ".join(outcomes), nxdomain=nxdomain and not via)
            log.info("DNS: %s has no usable address (%s)", host, ", ".join(outcomes))
        return out

    # -- one query, cached -----------------------------------------------------------------------
    async def _query(self, name: str, rdtype: str, deadline: float) -> _Answer:
        cached = self.cache.get(name, rdtype)
        if cached is not None:
            if cached.kind == "ok":
                self.stats.cache_hits += 1
            else:
                self.stats.negative_hits += 1
            return _Answer(cached.kind, cached.records)
        if self.problem is not None:
            raise DnsFailure(name, rdtype, self.problem)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DnsFailure(name, rdtype, f"timeout after {self.timeout:g} s")
        self.stats.queries += 1
        try:
            answer = await self._dns.resolve(
                name + ".", rdtype, raise_on_no_answer=False, search=False, lifetime=remaining
            )
        except dns.resolver.NXDOMAIN as exc:
            responses: dict[object, dns.message.Message] = exc.kwargs.get("responses") or {}
            ttl = self._negative_ttl(list(responses.values()))
            self.cache.put(name, rdtype, "NXDOMAIN", (), ttl)
            return _Answer("NXDOMAIN")
        except dns.resolver.NoNameservers as exc:
            errors = exc.kwargs.get("errors") or []
            how = ", ".join(sorted({str(e[3]) for e in errors})) or "no name server answered"
            raise DnsFailure(name, rdtype, how) from None
        except dns.exception.Timeout:
            raise DnsFailure(name, rdtype, f"timeout after {self.timeout:g} s") from None
        except dns.exception.DNSException as exc:
            raise DnsFailure(name, rdtype, f"bad answer: {exc}") from None
        except (OSError, ValueError) as exc:
            raise DnsFailure(name, rdtype, f"network error: {exc}") from None
        rrset = answer.rrset
        if rrset is None or len(rrset) == 0:
            ttl = self._negative_ttl([answer.response])
            self.cache.put(name, rdtype, "NODATA", (), ttl)
            return _Answer("NODATA")
        try:
            records = self._convert(rdtype, rrset)
        except (ValueError, AttributeError) as exc:
            raise DnsFailure(name, rdtype, f"bad answer: {exc}") from None
        self.cache.put(name, rdtype, "ok", records, answer.chaining_result.minimum_ttl)
        return _Answer("ok", records)

    @staticmethod
    def _convert(rdtype: str, rrset: dns.rrset.RRset) -> tuple[object, ...]:
        if rdtype == "NAPTR":
            return tuple(
                Naptr(
                    r.order,
                    r.preference,
                    r.flags.decode("ascii", "replace"),
                    r.service.decode("ascii", "replace"),
                    r.regexp.decode("ascii", "replace"),
                    _name(r.replacement),
                )
                for r in rrset
            )
        if rdtype == "SRV":
            return tuple(Srv(r.priority, r.weight, r.port, _name(r.target)) for r in rrset)
        return tuple(str(ipaddress.ip_address(r.address)) for r in rrset)

    def _negative_ttl(self, responses: Sequence[dns.message.Message]) -> float:
        """RFC 2308 §5: the SOA's TTL capped by its MINIMUM field; ``negative_ttl`` without SOA."""
        for response in responses:
            for rrset in response.authority:
                if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                    return float(min(rrset.ttl, rrset[0].minimum))
        return float(self.negative_ttl)
