"""What an unauthenticated TCP client can hold: the first-message timeout, the header timeout
(slowloris) and the per-source connection limit, over real loopback sockets.

A connection must deliver a whole, good SIP message within ``first_message_timeout`` of opening
(CRLF keep-alives do not count); after that, keep-alives keep it (RFC 5626) until ``idle_timeout``.
A message's header section must be complete within ``header_timeout`` of its first octets. At
most ``max_connections_per_source`` accepted connections per remote IP.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_transport import StreamClient, needs_ipv6, run, serving, sip_request

from imscore.profile import ProfileError, load_profile
from imscore.testing import start_server
from imscore.transport import Transports

VIA = "SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK"


async def closed_within(client: StreamClient, seconds: float) -> float:
    """Seconds until the server closed the connection (fails if it did not within ``seconds``)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(client.closed_by_peer(), seconds)
    return loop.time() - started


async def still_open(client: StreamClient, cseq: int) -> bool:
    """Whether the connection still carries a request and its answer."""
    await client.send(sip_request(f"{VIA}alive{cseq}", cseq=cseq))
    return (await client.response()).cseq.seq == cseq


def test_a_silent_connection_is_closed_after_the_first_message_timeout() -> None:
    async def scenario() -> None:
        async with serving(first_message_timeout=0.3) as server:
            bound = await server.transports.listen("tcp", "127.0.0.1", 0)
            client = await StreamClient.connect(bound)
            waited = await closed_within(client, 2.0)
            assert waited >= 0.25
            stats = server.transports.stats
            assert stats.connections_closed_first_message == 1
            assert server.transports.open_connections == 0
            await client.close()

    run(scenario())


def test_keepalives_do_not_count_as_a_first_message() -> None:
    async def scenario() -> None:
        async with serving(first_message_timeout=0.4) as server:
            bound = await server.transports.listen("tcp", "127.0.0.1", 0)
            client = await StreamClient.connect(bound)

            async def ping() -> None:
                for _ in range(30):  # CRLFCRLF pings every 0.05 s, each answered with a pong
                    await client.send(b"\r\n\r\n")
                    await asyncio.sleep(0.05)

            pinging = asyncio.ensure_future(ping())
            try:
                assert await closed_within(client, 1.5) >= 0.35
            finally:
                pinging.cancel()
                await asyncio.gather(pinging, return_exceptions=True)
            stats = server.transports.stats
            assert stats.keepalives >= 3  # they were read, and still did not keep it
            assert stats.connections_closed_first_message == 1
            await client.close()

    run(scenario())


def test_a_bad_message_is_not_a_first_message() -> None:
    async def scenario() -> None:
        async with serving(first_message_timeout=0.3) as server:
            bound = await server.transports.listen("tcp", "127.0.0.1", 0)
            client = await StreamClient.connect(bound)
            await client.send(sip_request(f"{VIA}bad", max_forwards="lots"))
            assert (await client.response()).status == 400  # answered, and the clock runs on
            await closed_within(client, 1.5)
            assert server.transports.stats.connections_closed_first_message == 1
            await client.close()

    run(scenario())


def test_after_a_message_keepalives_keep_the_connection() -> None:
    """RFC 5626 §3.5.1: a flow that has carried SIP is kept alive by CRLF keep-alives."""

    async def scenario() -> None:
        async with serving(first_message_timeout=0.2, header_timeout=0.2) as server:
            bound = await server.transports.listen("tcp", "127.0.0.1", 0)
            client = await StreamClient.connect(bound)
            assert await still_open(client, 1)
            for _ in range(8):  # 0.8 s: four times the first-message and header timeouts
                await client.send(b"\r\n\r\n")
                assert await client.reader.readexactly(2) == b"\r\n"
                await asyncio.sleep(0.1)
            assert await still_open(client, 2)
            stats = server.transports.stats
            assert stats.connections_closed_first_message == 0
            assert stats.connections_closed_header_timeout == 0
            await client.close()

    run(scenario())


def test_slowloris_headers_are_closed_after_the_header_timeout() -> None:
    async def scenario() -> None:
        async with serving(header_timeout=0.3) as server:
            bound = await server.transports.listen("tcp", "127.0.0.1", 0)
            client = await StreamClient.connect(bound)
            sock = client.writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assert await still_open(client, 1)  # a SIP peer: the first-message rule is met
            slow = sip_request(f"{VIA}slow", cseq=2)

            async def trickle() -> None:
                for octet in slow[:60]:  # one octet every 0.02 s: 60 take 1.2 s
                    await client.send(bytes([octet]))
                    await asyncio.sleep(0.02)

            trickling = asyncio.ensure_future(trickle())
            try:
                assert await closed_within(client, 2.0) >= 0.25
            finally:
                trickling.cancel()
                await asyncio.gather(trickling, return_exceptions=True)
            assert server.transports.stats.connections_closed_header_timeout == 1
            assert len(server.received) == 1
            await client.close()

    run(scenario())


def test_headers_in_time_are_fine_however_chunked() -> None:
    """Each message's header clock starts with its own first octets: a pipelined stream of
    messages each sent slowly but within the timeout is never closed."""

    async def scenario() -> None:
        async with serving(header_timeout=0.5) as server:
            bound = await server.transports.listen("tcp", "127.0.0.1", 0)
            client = await StreamClient.connect(bound)
            for cseq in range(1, 4):
                data = sip_request(f"{VIA}chunk{cseq}", cseq=cseq)
                for start in range(0, len(data), 60):  # about 0.3 s per message
                    await client.send(data[start : start + 60])
                    await asyncio.sleep(0.06)
                assert (await client.response()).cseq.seq == cseq
            assert server.transports.stats.connections_closed_header_timeout == 0
            await client.close()

    run(scenario())


def test_per_source_limit() -> None:
    async def scenario() -> None:
        async with serving(max_connections_per_source=3) as server:
            transports = server.transports
            bound = await transports.listen("tcp", "127.0.0.1", 0)
            clients = [await StreamClient.connect(bound) for _ in range(3)]
            fourth = await StreamClient.connect(bound)
            assert await closed_within(fourth, 1.0) < 1.0  # closed at once
            stats = transports.stats
            assert (stats.connections_opened, stats.connections_refused_per_source) == (3, 1)
            for i, client in enumerate(clients):
                assert await still_open(client, i + 1)
            # one closes: its place is free again
            await clients[0].close()
            await asyncio.wait_for(_until(lambda: transports.open_connections == 2), 2.0)
            again = await StreamClient.connect(bound)
            assert await still_open(again, 9)
            for client in (*clients[1:], again, fourth):
                await client.close()

    run(scenario())


@needs_ipv6
def test_per_source_limit_leaves_other_sources_served() -> None:
    async def scenario() -> None:
        async with serving(max_connections_per_source=2, max_connections=4) as server:
            transports = server.transports
            v4 = await transports.listen("tcp", "127.0.0.1", 0)
            v6 = await transports.listen("tcp", "::1", 0)
            hogs = [await StreamClient.connect(v4) for _ in range(5)]  # 2 kept, 3 refused
            other = await StreamClient.connect(v6)  # another source still gets in
            await other.send(sip_request("SIP/2.0/TCP [::1];branch=z9hG4bKv6"))
            assert (await other.response()).status == 200
            assert transports.stats.connections_refused_per_source == 3
            for client in (*hogs, other):
                await client.close()

    run(scenario())


async def _until(condition: Callable[[], bool], step: float = 0.01) -> None:
    while not condition():
        await asyncio.sleep(step)


def test_the_defaults_are_limits() -> None:
    plain = Transports(lambda message, flow: None)
    assert plain.first_message_timeout == 0.0  # a bare Transports has none unless asked
    profile = load_profile("default")
    limits = profile.connections
    assert 0 < limits.first_message_timeout < limits.idle_timeout
    assert 0 < limits.header_timeout < limits.idle_timeout
    assert 0 < limits.max_connections_per_source < limits.max_connections


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("first_message_timeout", "0"),
        ("first_message_timeout", "-1"),
        ("header_timeout", "'soon'"),
        ("max_connections_per_source", "-1"),
        ("max_connections_per_source", "1.5"),
    ],
)
def test_profile_keys_are_validated(tmp_path: Path, key: str, value: str) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text(f"domains: [lab.test]\nconnections: {{{key}: {value}}}\n")
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    assert f"key 'connections.{key}'" in str(info.value)


def test_server_from_a_profile_sheds_silent_connections(tmp_path: Path) -> None:
    """The lock-out of issue 15: many silent connections from one source. With the limits in
    the profile, the extra ones are refused at once, the silent ones closed after the
    first-message timeout, and a client that speaks SIP is served throughout."""
    path = tmp_path / "limits.yaml"
    path.write_text(
        "domains: [ims.example.test]\n"
        "connections: {max_connections: 16, max_connections_per_source: 8,"
        " first_message_timeout: 0.5, header_timeout: 0.5}\n"
    )
    server = start_server(load_profile(str(path)), transports=("tcp",))
    address = server.address("tcp")
    silent: list[socket.socket] = []
    try:
        for _ in range(12):  # 8 kept for now, 4 closed at once
            silent.append(socket.create_connection(address, timeout=2.0))
        stats = server.server.transports.stats
        deadline = time.monotonic() + 2.0
        while stats.connections_refused_per_source < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stats.connections_refused_per_source == 4
        # after the first-message timeout every silent connection is closed by the server
        for sock in silent:
            sock.settimeout(2.0)
            assert sock.recv(100) == b""
        assert stats.connections_closed_first_message == 8
        # and a SIP client is served
        with socket.create_connection(address, timeout=2.0) as sock:
            request = sip_request("SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKafter", cseq=5)
            sock.sendall(request)
            answer = sock.recv(65535)
            assert answer.startswith(b"SIP/2.0 200 ")
    finally:
        for sock in silent:
            sock.close()
        server.stop()
