"""The transport registry and the SCTP plugin (plugins/imscore-sctp, RFC 4168).

The kernel here may have no SCTP, so the plugin's message logic runs over AF_UNIX SOCK_SEQPACKET
sockets (message boundaries kept, as SCTP does) through its ``Sockets`` factory; one test checks real
SCTP: a working listener where the kernel has it, the clear start-up error where it has not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from imscore.plugin import create_plugin_manager, hookimpl
from imscore.plugin.types import ProviderRegistry
from imscore.profile import ProfileError, load_profile, profile_from_data
from imscore.profile.model import Listener
from imscore.server.runtime import Server, ServerError
from imscore.sip import Request, Response, parse_datagram
from imscore.testing import start_server
from imscore.transport import Flow, TransportError, Transports
from imscore.transport.registry import collect_transports, known_transports

imscore_sctp = pytest.importorskip(
    "imscore_sctp", reason="plugin not installed: python3 -m pip install ./plugins/imscore-sctp"
)

T = TypeVar("T")
EOR, TRUNC = socket.MSG_EOR, socket.MSG_TRUNC


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 5.0))


def options(port: int, branch: str, transport: str = "SCTP") -> bytes:
    return (
        "OPTIONS sip:ims.example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{port};branch=z9hG4bK{branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        "To: <sip:ims.example.test>\r\n"
        f"From: <sip:alice@ims.example.test>;tag={branch}\r\n"
        f"Call-ID: {branch}@test\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class UnixSockets:
    """The plugin's ``Sockets`` over AF_UNIX SOCK_SEQPACKET: (host, port) names a file in a folder."""

    def __init__(self, folder: Path, wire: Any = None) -> None:
        self.folder = folder
        self._ports = itertools.count(41000)
        self.wire = wire if wire is not None else imscore_sctp.StdlibWire()

    def path(self, address: tuple[str, int]) -> str:
        return str(self.folder / f"{address[0]}-{address[1]}")

    def listener(self, host: str, port: int) -> tuple[socket.socket, tuple[str, int]]:
        local = (host, port or next(self._ports))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.bind(self.path(local))
        sock.listen(16)
        sock.setblocking(False)
        return sock, local

    def client(self, remote: tuple[str, int]) -> tuple[socket.socket, Any]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.bind(self.path(("127.0.0.1", next(self._ports))))  # an "ephemeral port" the peer sees
        sock.setblocking(False)
        return sock, self.path(remote)

    async def connect(self, sock: socket.socket, address: Any) -> None:
        await asyncio.get_running_loop().sock_connect(sock, address)

    def peer(self, sock: socket.socket) -> tuple[str, int] | None:
        name = sock.getpeername()
        if not name:
            return None
        host, _, port = Path(name).name.rpartition("-")
        return (host, int(port)) if port.isdigit() else None


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sctp", dir="/tmp"))  # AF_UNIX paths are short
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- the message logic ---------------------------------------------------------------------------------
def test_assembler_joins_a_message_delivered_in_parts() -> None:
    assembler = imscore_sctp.MessageAssembler(use_eor=True, limit=100)
    assert assembler.feed(b"OPTIONS sip:a SIP/2.0\r\n", 0) is None
    assert assembler.feed(b"Via: x\r\n", 0) is None
    assert assembler.feed(b"\r\n", EOR) == b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n"
    assert assembler.feed(b"whole", EOR) == b"whole"
    # too long: dropped whole, then the next message is fine
    assert assembler.feed(b"x" * 80, 0) is None
    assert assembler.feed(b"x" * 80, EOR) is None
    assert assembler.dropped == 1
    assert assembler.feed(b"next", EOR) == b"next"


def test_assembler_seqpacket_reads_are_whole_and_truncation_drops() -> None:
    assembler = imscore_sctp.MessageAssembler(use_eor=False, limit=100)
    assert assembler.feed(b"one", 0) == b"one"
    assert assembler.feed(b"y" * 100, TRUNC) is None
    assert assembler.dropped == 1
    assert assembler.feed(b"two", 0) == b"two"


def test_association_keeps_message_boundaries_both_ways() -> None:
    async def main() -> None:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        got: dict[str, list[bytes]] = {"a": [], "b": []}
        done = asyncio.Event()

        def sink(side: str) -> Any:
            def take(data: bytes, remote: tuple[str, int]) -> None:
                got[side].append(data)
                if len(got["a"]) == 2 and len(got["b"]) == 2:
                    done.set()

            return take

        a = imscore_sctp.Association(
            left, ("a", 1), limit=4096, on_message=sink("a"), on_closed=lambda _: None
        )
        closed: list[object] = []
        b = imscore_sctp.Association(
            right, ("b", 2), limit=4096, on_message=sink("b"), on_closed=closed.append
        )
        big = options(5060, "big")[:-4] + b"X-Pad: " + b"p" * 3000 + b"\r\n\r\n"
        a.send(options(5060, "a1"))
        a.send(big)  # written back to back: still two messages, not one stream
        b.send(options(5060, "b1"))
        b.send(options(5060, "b2"))
        await asyncio.wait_for(done.wait(), 3)
        assert got["b"] == [options(5060, "a1"), big]
        assert got["a"] == [options(5060, "b1"), options(5060, "b2")]
        a.close()
        for _ in range(100):  # the peer sees the association end
            if closed:
                break
            await asyncio.sleep(0.01)
        assert closed == [b] and b.closed
        with pytest.raises(TransportError, match="closed"):
            b.send(b"late")

    run(main())


def test_transports_speak_sctp_through_the_plugin_both_ways(folder: Path) -> None:
    """Two Transports with the real plugin provider: a request out on a new association, an answer
    back on it, and a request the other way on the association that was accepted."""

    async def main() -> None:
        inbox: dict[str, list[tuple[Request | Response, Flow]]] = {"a": [], "b": []}
        event = asyncio.Event()

        def handler(side: str) -> Any:
            def take(message: Request | Response, flow: Flow) -> None:
                inbox[side].append((message, flow))
                event.set()

            return take

        async def next_of(side: str) -> tuple[Request | Response, Flow]:
            while not inbox[side]:
                event.clear()
                await asyncio.wait_for(event.wait(), 3)
            return inbox[side].pop(0)

        provider = imscore_sctp.SctpTransport(UnixSockets(folder))
        async with (
            Transports(handler("a"), providers={"sctp": provider}) as a,
            Transports(handler("b"), providers={"sctp": provider}) as b,
        ):
            local_a = await a.listen("sctp", "127.0.0.1", 0)
            local_b = await b.listen("sctp", "127.0.0.1", 0)
            assert a.listening == [("sctp", *local_a)]
            flow = await a.connect("sctp", local_b)  # no I/O: the association opens on send
            assert flow == Flow("sctp", local_a, local_b) and flow.reliable
            a.send(parse(options(local_a[1], "x1")), flow)
            got, on_b = await next_of("b")
            assert isinstance(got, Request) and got.call_id == "x1@test"
            b.send_response(got.make_response(200, "OK", to_tag="t"), on_b)
            answer, _ = await next_of("a")
            assert isinstance(answer, Response) and answer.status == 200
            # b -> a on the association a opened
            b.send(parse(options(local_b[1], "x2")), on_b)
            again, _ = await next_of("a")
            assert isinstance(again, Request) and again.call_id == "x2@test"
            # bad input over sctp is answered like over udp
            broken = options(local_b[1], "x3").replace(b"Max-Forwards: 70", b"Max-Forwards: x")
            b.send(parse(broken), on_b)
            bad, _ = await next_of("b")
            assert isinstance(bad, Response) and bad.status == 400
            assert a.stats.answered_errors == 1

    run(main())


def parse(data: bytes) -> Request:
    message = parse_datagram(data, 65535)
    assert isinstance(message, Request)
    return message


# --- a running server with an sctp listener ------------------------------------------------------------
class UnixSctpPlugin:
    """Offers the plugin's transport as ``sctp``, over AF_UNIX SEQPACKET sockets."""

    def __init__(self, sockets: UnixSockets) -> None:
        self.sockets = sockets

    @hookimpl
    def ims_register_transports(self, registry: ProviderRegistry[Any]) -> None:
        registry.add("sctp", imscore_sctp.SctpTransport(self.sockets))


def test_server_answers_options_over_the_sctp_plugin(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMSCORE_DISABLE_PLUGIN_AUTOLOAD", "1")  # the installed plugin offers real sctp
    sockets = UnixSockets(folder)
    running = start_server(plugins=[UnixSctpPlugin(sockets)], transports=("sctp",))
    try:
        address = running.address("sctp")
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client:
            client.bind(sockets.path(("127.0.0.1", 5999)))
            client.settimeout(5)
            client.connect(sockets.path(address))
            client.sendall(options(5999, "s1"))
            client.sendall(options(5999, "s2"))
            first, second = client.recv(65536), client.recv(65536)
        for data, branch in ((first, "s1"), (second, "s2")):
            response = parse_datagram(data, 65535)
            assert isinstance(response, Response) and response.status == 200
            assert response.call_id == f"{branch}@test"
            assert response.top_via.received == "127.0.0.1" and response.top_via.rport == 5999
        stats = running.server.stats()["transport"]
        for _ in range(100):  # the server thread counts a send just after writing it
            if stats["sent"] == 2:
                break
            time.sleep(0.01)
            stats = running.server.stats()["transport"]
        assert stats["delivered"] == 2 and stats["sent"] == 2
    finally:
        running.stop()


# --- the registry and profiles ------------------------------------------------------------------------
def test_registry_names_where_each_transport_comes_from() -> None:
    offered = collect_transports(create_plugin_manager())
    assert offered["sctp"].origin == "imscore-sctp"
    known = known_transports(offered)
    assert list(known)[:3] == ["udp", "tcp", "tls"] and known["sctp"] == "imscore-sctp"


def test_profile_accepts_plugin_transports_and_names_unknown_ones(tmp_path: Path) -> None:
    offered = known_transports(collect_transports(create_plugin_manager()))
    good = tmp_path / "sctp.yaml"
    good.write_text("domains: [a.test]\nlisteners: ['sctp:127.0.0.1']\n")
    profile = load_profile(str(good), known_transports=offered)
    assert profile.listeners == (Listener("sctp", "127.0.0.1", 5060),)  # RFC 4168 port
    bad = {"domains": ["a.test"], "listeners": ["udp:127.0.0.1", "xyz:127.0.0.1:5060"]}
    with pytest.raises(ProfileError) as info:
        profile_from_data(bad, source="p.yaml", default_name="p", known_transports=offered)
    assert str(info.value) == (
        "p.yaml: key 'listeners[1]': unknown transport 'xyz' "
        "(known: udp, tcp, tls, sctp from plugin imscore-sctp)"
    )
    with pytest.raises(ProfileError, match=r"unknown transport 'sctp' \(known: udp, tcp, tls\)"):
        load_profile(str(good))  # without plugins only the built-in ones


def test_registry_refuses_a_builtin_name_and_a_name_offered_twice() -> None:
    class Tcp:
        @hookimpl
        def ims_register_transports(self, registry: ProviderRegistry[Any]) -> None:
            registry.add("tcp", imscore_sctp.SctpTransport())

    class Twice:
        @hookimpl
        def ims_register_transports(self, registry: ProviderRegistry[Any]) -> None:
            registry.add("sctp", imscore_sctp.SctpTransport())

    with pytest.raises(TransportError, match="transport 'tcp' is built in"):
        collect_transports(create_plugin_manager(autoload=False, extra_plugins=[Tcp()]))
    with pytest.raises(TransportError, match="'sctp' is offered twice: by plugin imscore-sctp and by"):
        collect_transports(create_plugin_manager(extra_plugins=[Twice()]))


def test_server_without_the_transport_stops_with_a_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMSCORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    profile = dataclasses.replace(load_profile("default"), store="memory:")
    server = Server(profile, listeners=[Listener("sctp", "127.0.0.1", 0)])
    with pytest.raises(ServerError) as info:
        run(server.start())
    assert str(info.value) == (
        "cannot listen on sctp:127.0.0.1:0: unknown transport 'sctp' (known: udp, tcp, tls); SCTP "
        "comes with the imscore-sctp plugin: pip install ./plugins/imscore-sctp"
    )


# --- real SCTP: whichever behaviour this kernel supports ---------------------------------------------
def test_real_sctp_listener_works_or_start_up_says_why() -> None:
    unavailable = imscore_sctp.sctp_unavailable()
    if unavailable is not None:  # this machine: no kernel SCTP, start-up stops with one clear line
        assert unavailable.startswith(
            "SCTP is not available: the kernel does not support IPPROTO_SCTP (EPROTONOSUPPORT)"
        )
        command = ["serve", "--listen", "sctp:127.0.0.1:0", "--store", "memory:"]
        result = subprocess.run(
            [sys.executable, "-m", "imscore", *command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        last = result.stderr.splitlines()[-1]
        assert last == f"imscore: cannot listen on sctp:127.0.0.1:0: {unavailable}"
        assert "Traceback" not in result.stderr
        return
    running = start_server(transports=("sctp",))  # the installed plugin, real SCTP sockets
    try:
        host, port = running.address("sctp")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP) as client:
            client.settimeout(5)
            client.connect((host, port))
            client.sendall(options(client.getsockname()[1], "real"))
            response = parse_datagram(client.recv(65536), 65535)
        assert isinstance(response, Response) and response.status == 200
    finally:
        running.stop()
