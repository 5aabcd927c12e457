"""pytest fixtures for plugin authors (and imscore's own tests).

Enable them in a ``conftest.py`` with ``pytest_plugins = ["imscore.testing"]``, then::

    def test_my_policy(imscore_server, sip_client):
        response = sip_client.request("OPTIONS")
        assert response.status == 200

``imscore_server`` runs a real server in a background thread, listening on free loopback ports
(UDP and TCP on 127.0.0.1) with an in-memory store and the plugins of the ``imscore_plugins``
marker; ``sip_client`` sends requests to it over UDP and returns the final response.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import socket
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from imscore.profile import Listener, Profile, load_profile
from imscore.sip import Request, Response, SipError, parse_datagram

T = TypeVar("T")

__all__ = ["RunningServer", "SipClient", "imscore_server", "sip_client", "start_server"]


class RunningServer:
    """A server running on its own event loop in a thread; :meth:`stop` ends both."""

    def __init__(
        self,
        profile: Profile,
        plugins: Sequence[object],
        transports: Sequence[str],
        options: Mapping[str, Any] | None = None,
    ) -> None:
        from imscore.server.runtime import Server

        extra = dict(options or {})
        port = int(extra.pop("port", 0))  # 0: a free port per transport
        listeners = [Listener(t, "127.0.0.1", port) for t in transports]
        self.server = Server(
            replace(profile, store="memory:"),
            listeners=listeners,
            extra_plugins=plugins,
            **extra,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="imscore-server", daemon=True
        )
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout=30)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()
            raise

    def address(self, transport: str = "udp") -> tuple[str, int]:
        """The bound ``(host, port)`` of the first listener of that transport."""
        for t, host, port in self.server.addresses:
            if t == transport:
                return host, port
        raise LookupError(f"the server does not listen on {transport}")

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop (e.g. a store look-up) and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def stop(self) -> None:
        if not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()


def start_server(
    profile: str | Profile = "default",
    plugins: Sequence[object] = (),
    transports: Sequence[str] = ("udp", "tcp"),
    **options: Any,
) -> RunningServer:
    """Start a server on free loopback ports (call :meth:`RunningServer.stop` when done).

    ``options`` go to :class:`~imscore.server.runtime.Server` (e.g. ``subscribers=`` a provider),
    except ``port=``: the one port every transport listens on (default: a free one each).
    """
    loaded = load_profile(profile) if isinstance(profile, str) else profile
    return RunningServer(loaded, plugins, transports, options)


class SipClient:
    """A minimal UDP user agent that sends one request at a time and returns the final response."""

    _cseq = itertools.count(1)

    def __init__(self, address: tuple[str, int], domain: str = "ims.example.test") -> None:
        self.address = address
        self.domain = domain
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.local = self.sock.getsockname()

    def build(
        self, method: str, uri: str | None = None, headers: Sequence[tuple[str, object]] = ()
    ) -> Request:
        """A well-formed request from this client (fresh branch, tags and Call-ID)."""
        host, port = self.local
        target = uri or f"sip:{self.domain}"
        return Request(
            method,
            target,
            [
                ("Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(8)};rport"),
                ("Max-Forwards", 70),
                ("From", f"<sip:test@{self.domain}>;tag={secrets.token_hex(4)}"),
                ("To", f"<{target}>"),
                ("Call-ID", f"{secrets.token_hex(8)}@{host}"),
                ("CSeq", f"{next(self._cseq)} {method}"),
                *headers,
            ],
        )

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.address)

    def receive(self, timeout: float = 5.0) -> Response:
        """The next response (provisional ones included)."""
        self.sock.settimeout(timeout)
        data, _ = self.sock.recvfrom(65535)
        message = parse_datagram(data)
        if not isinstance(message, Response):
            raise SipError("expected a response", 500)
        return message

    def request(
        self,
        method: str,
        uri: str | None = None,
        headers: Sequence[tuple[str, object]] = (),
        timeout: float = 5.0,
    ) -> Response:
        """Send a request and return its final response (1xx are skipped)."""
        self.send_raw(self.build(method, uri, headers).to_bytes())
        while True:
            response = self.receive(timeout)
            if response.status >= 200:
                return response

    def close(self) -> None:
        self.sock.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "imscore_plugins(*plugins): plugins the imscore_server fixture registers"
    )
    config.addinivalue_line("markers", "imscore_profile(name): profile of the imscore_server fixture")


@pytest.fixture
def imscore_server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """A running server on free loopback ports (profile and plugins from the markers)."""
    plugins_marker = request.node.get_closest_marker("imscore_plugins")
    profile_marker = request.node.get_closest_marker("imscore_profile")
    running = start_server(
        profile_marker.args[0] if profile_marker else "default",
        plugins_marker.args if plugins_marker else (),
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def sip_client(imscore_server: RunningServer) -> Iterator[SipClient]:
    """A UDP client aimed at :func:`imscore_server`."""
    client = SipClient(imscore_server.address("udp"))
    try:
        yield client
    finally:
        client.close()
