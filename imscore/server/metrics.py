"""Prometheus metrics and a health check, served over HTTP beside the SIP listeners (``--metrics``).

``GET /metrics`` gives the text exposition format of ``prometheus_client`` (install the
``metrics`` extra); ``GET /healthz`` answers ``200 ready`` while the server serves normally and
``503 overloaded`` while overload control refuses new requests (or ``503 starting``/``stopping``).

What is counted as it happens (the outcome of each finished transaction, handling times, store and
DNS latency) goes into ``prometheus_client`` counters and histograms; the rest (transport counters,
transactions alive, bindings and AORs, subscriptions, overload state) is read from the server when
scraped, so it costs nothing in between.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

from .outcomes import Outcome

if TYPE_CHECKING:
    from .runtime import Server

__all__ = [
    "Metrics",
    "MetricsError",
    "MetricsServer",
    "parse_metrics_address",
    "timed_resolver",
    "timed_store",
]

log = logging.getLogger("imscore.metrics")

#: buckets of the handling-time histograms (seconds): 0.1 ms to 30 s
DURATION_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: methods with their own handling-time series (the rest count as "other")
TIMED_METHODS: Final = frozenset({"REGISTER", "INVITE", "SUBSCRIBE", "MESSAGE", "OPTIONS", "BYE"})


class MetricsError(Exception):
    """Metrics cannot be served (no ``prometheus_client``, a bad address); the message says why."""


def parse_metrics_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9090`` for IPv6) as ``(host, port)``; raises :class:`MetricsError`."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise MetricsError(f"--metrics {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9090")
    return host, int(port)


class Metrics:
    """The server's metrics in their own ``prometheus_client`` registry."""

    def __init__(self, server: Server) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise MetricsError(
                "--metrics needs prometheus_client: pip install 'imscore[metrics]'"
            ) from None
        self.prom = prom
        self.server = server
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = prom.Counter(
            "imscore_requests",
            "Finished transactions by method, what they were and final status",
            ["method", "kind", "status"],
            registry=r,
        )
        self.auth_failures = prom.Counter(
            "imscore_auth_failures",
            "Requests with credentials that did not authenticate, by the reason answered",
            ["method", "status", "reason"],
            registry=r,
        )
        self.duration = prom.Histogram(
            "imscore_request_duration_seconds",
            "From a request's arrival to its final response",
            ["method"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.store_latency = prom.Histogram(
            "imscore_store_seconds",
            "Binding store calls",
            ["operation"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.dns_latency = prom.Histogram(
            "imscore_dns_seconds",
            "RFC 3263 resolutions",
            ["result"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        r.register(_ServerCollector(server, prom))

    def observe(self, outcome: Outcome) -> None:
        """One finished transaction (the :class:`~imscore.server.outcomes.OutcomeLog` calls it)."""
        method = outcome.method if outcome.method in TIMED_METHODS else "other"
        status = str(outcome.status)
        self.requests.labels(method, outcome.kind or "other", status).inc()
        self.duration.labels(method).observe(outcome.duration)
        if _auth_failed(outcome):
            self.auth_failures.labels(method, status, outcome.reason[:60]).inc()

    def exposition(self) -> bytes:
        data: bytes = self.prom.generate_latest(self.registry)
        return data


def _auth_failed(outcome: Outcome) -> bool:
    """Credentials were presented and not accepted: a 403, a 407, or a REGISTER challenged again."""
    if outcome.impi is None:
        return False
    return outcome.status in (403, 407) or (outcome.status == 401 and outcome.kind == "rechallenge")


class _ServerCollector:
    """Reads the server's own counters when scraped."""

    def __init__(self, server: Server, prom: Any) -> None:
        self.server = server
        import prometheus_client.core as family

        self.family = family

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        core = self.family
        server = self.server
        stats = server.stats()
        transport = core.CounterMetricFamily(
            "imscore_transport",
            "Transport events by kind (messages, drops, connections)",
            labels=["event"],
        )
        for name, value in stats["transport"].items():
            transport.add_metric([name], value)
        yield transport
        answered = core.CounterMetricFamily(
            "imscore_answered", "Responses the server made itself, by status", labels=["status"]
        )
        for status, count in sorted(server.core.counters.answered.items()):
            answered.add_metric([str(status)], count)
        yield answered
        yield core.CounterMetricFamily(
            "imscore_overload_refused",
            "New requests refused with 503 while overloaded",
            value=server.core.counters.shed,
        )
        yield core.GaugeMetricFamily(
            "imscore_overloaded",
            "1 while overload control refuses new requests",
            value=1 if server.core.overloaded else 0,
        )
        yield core.CounterMetricFamily(
            "imscore_retransmissions",
            "Retransmitted requests absorbed by their transaction",
            value=server.retransmissions,
        )
        yield core.GaugeMetricFamily(
            "imscore_transactions",
            "SIP transactions alive (client and server)",
            value=len(server.core.layer),
        )
        proxy = server.proxying
        if proxy is not None:
            forks = core.CounterMetricFamily(
                "imscore_proxy",
                "What the forking proxy did (forks, branches, CANCELs …)",
                labels=["event"],
            )
            for name, value in proxy.core.stats.items():
                forks.add_metric([name], value)
            yield forks
        registrar = server.registrar
        if registrar is not None:
            yield core.GaugeMetricFamily(
                "imscore_reg_event_subscriptions",
                "reg-event subscriptions held",
                value=len(registrar.regevent.subscriptions),
            )
        counts = server.binding_counts()
        if counts is not None:
            yield core.GaugeMetricFamily(
                "imscore_bindings", "Registered contacts (live)", value=counts[0]
            )
            yield core.GaugeMetricFamily(
                "imscore_aors", "Addresses of record with a binding", value=counts[1]
            )


class MetricsServer:
    """A small HTTP/1.0 server on the event loop: ``/metrics`` and ``/healthz``, nothing else.

    :param metrics: what ``/metrics`` serves.
    :param health: says ``(status, text)`` for ``/healthz``.
    """

    def __init__(self, metrics: Metrics, health: Callable[[], tuple[int, str]]) -> None:
        self.metrics = metrics
        self.health = health
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        log.info("metrics on http://%s:%d/metrics (health: /healthz)", *self.address)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, body, kind = 405, b"only GET\n", "text/plain"
            elif path == "/metrics":
                status, body, kind = (
                    200,
                    self.metrics.exposition(),
                    self.metrics.prom.CONTENT_TYPE_LATEST,
                )
            elif path == "/healthz":
                code, text = self.health()
                status, body, kind = code, f"{text}\n".encode(), "text/plain"
            else:
                status, body, kind = 404, b"try /metrics or /healthz\n", "text/plain"
            reason = {
                200: "OK",
                404: "Not Found",
                405: "Method Not Allowed",
                503: "Service Unavailable",
            }
            writer.write(
                f"HTTP/1.0 {status} {reason.get(status, '')}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + (body if method != "HEAD" else b"")
            )
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass
        finally:
            writer.close()


class _Timed:
    """Wraps a provider so that the named coroutine methods are timed into ``histogram`` (by
    method name, or by result for the resolver); every other attribute is the provider's."""

    def __init__(
        self, inner: Any, histogram: Any, methods: frozenset[str], by_result: bool = False
    ) -> None:
        self._inner = inner
        self._histogram = histogram
        self._methods = methods
        self._by_result = by_result

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name not in self._methods:
            return attribute
        histogram, by_result = self._histogram, self._by_result

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            label = name
            try:
                result = await attribute(*args, **kwargs)
                label = "ok" if by_result else name
                return result
            except Exception:
                label = "error" if by_result else name
                raise
            finally:
                histogram.labels(label).observe(time.perf_counter() - started)

        return timed

    def __repr__(self) -> str:
        return repr(self._inner)


def timed_store(store: Any, metrics: Metrics) -> Any:
    """The binding store with its load/save/expire calls timed (``imscore_store_seconds``)."""
    return _Timed(store, metrics.store_latency, frozenset({"load", "save", "expire", "all"}))


def timed_resolver(resolver: Any, metrics: Metrics) -> Any:
    """The RFC 3263 resolver with each resolution timed (``imscore_dns_seconds``, ok or error)."""
    return _Timed(resolver, metrics.dns_latency, frozenset({"resolve"}), by_result=True)
