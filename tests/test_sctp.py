"""The transport registry and the SCTP plugin (plugins/imscore-sctp, RFC 4168).

The kernel here may have no SCTP, so the plugin's message logic runs over AF_UNIX SOCK_SEQPACKET
sockets (message boundaries kept, as SCTP does) through its ``Sockets`` factory; one test checks real
SCTP: a working listener where the kernel has it, the clear start-up error where it has not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import itertools
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import types
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
        chosen = imscore_sctp.choose_backend(imscore_sctp.load_pysctp(), unavailable)
        assert chosen.name == "stdlib"
        assert (
            "sctp transport: using the standard library socket module: " + chosen.reason
            in result.stderr
        )
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


# --- the two backends: the standard library and pysctp -----------------------------------------------
def stand_in_pysctp() -> types.ModuleType:
    """A stand-in ``sctp`` module: it has the names the plugin looks for and does nothing. It is not
    pysctp, and the tests that use it send nothing over SCTP."""
    module = types.ModuleType("sctp", "a test's stand-in for pysctp, not pysctp")
    module.sctpsocket_tcp = object  # type: ignore[attr-defined]
    module.FLAG_NOTIFICATION = 0x8000  # type: ignore[attr-defined]
    return module


def test_backend_is_pysctp_only_when_it_imports_and_the_kernel_has_sctp() -> None:
    choose, found = imscore_sctp.choose_backend, imscore_sctp.PysctpImport
    module = stand_in_pysctp()
    chosen = choose(found(module, "9.9"), None)
    assert (chosen.name, chosen.module) == ("pysctp", module)
    assert chosen.reason == "pysctp 9.9 is installed and the kernel has SCTP"

    no_kernel = choose(found(module, "9.9"), imscore_sctp.UNAVAILABLE)
    assert (no_kernel.name, no_kernel.module) == ("stdlib", None)
    assert no_kernel.reason == f"pysctp 9.9 is installed but not used: {imscore_sctp.UNAVAILABLE}"

    for unavailable in (None, imscore_sctp.UNAVAILABLE):
        absent = choose(found(None, error="No module named 'sctp'"), unavailable)
        assert absent.name == "stdlib"
        assert absent.reason == (
            "pysctp is not installed (No module named 'sctp'); multi-homing and per-message "
            "stream/PPID need it: pip install './plugins/imscore-sctp[pysctp]'"
        )

    other = types.ModuleType("sctp", "some other module called sctp")
    wrong = choose(found(other, None), None)
    assert wrong.name == "stdlib"
    assert "is not pysctp (it has no sctpsocket_tcp, FLAG_NOTIFICATION)" in wrong.reason


def test_installed_pysctp_is_used_only_with_kernel_sctp(caplog: pytest.LogCaptureFixture) -> None:
    """The real pysctp (a tox dependency): it imports without kernel SCTP; the plugin picks it only
    where the kernel has SCTP, and its first listen logs which backend and why."""
    sctp = pytest.importorskip("sctp", reason="pysctp not installed: pip install pysctp")
    found = imscore_sctp.load_pysctp()
    assert found.module is sctp and found.version
    unavailable = imscore_sctp.sctp_unavailable()
    chosen = imscore_sctp.choose_backend(found, unavailable)
    transport = imscore_sctp.SctpTransport()

    async def listen() -> Any:
        return await transport.listen("127.0.0.1", 0, lambda data, remote: None, max_message_size=65535)

    caplog.set_level("INFO", logger="imscore.transport.sctp")
    if unavailable is not None:  # this machine: pysctp imports, but there is no SCTP to use it on
        assert chosen.name == "stdlib"
        with pytest.raises(TransportError) as info:
            run(listen())
        assert str(info.value) == imscore_sctp.UNAVAILABLE
        assert transport.backend == chosen
        assert caplog.messages == [
            "sctp transport: using the standard library socket module: "
            f"pysctp {found.version} is installed but not used: {unavailable}"
        ]
        return

    async def exchange() -> None:  # kernel SCTP and pysctp: a real association, stream and PPID
        got: list[tuple[bytes, Any]] = []
        endpoint = await transport.listen(
            "127.0.0.1", 0, lambda data, remote: got.append((data, remote)), max_message_size=65535
        )
        try:
            client = sctp.sctpsocket_tcp(socket.AF_INET)
            client.events.data_io = True
            client.settimeout(5)
            await asyncio.get_running_loop().run_in_executor(None, client.connect, endpoint.local)
            client.sctp_send(b"hello", ppid=46, stream=1)  # 46: its network order fits a C int
            for _ in range(300):
                if got:
                    break
                await asyncio.sleep(0.01)
            assert got and got[0][0] == b"hello"
            association = endpoint.association(got[0][1])
            assert association is not None
            assert association.last_received == imscore_sctp.Received(1, 46)
            endpoint.send(b"back", got[0][1], stream=2, ppid=99)
            _, _, data, info = await asyncio.get_running_loop().run_in_executor(
                None, client.sctp_recv, 65536
            )
            assert (data, info.stream, socket.ntohl(info.ppid)) == (b"back", 2, 99)
            client.close()
        finally:
            await endpoint.close()

    run(exchange())
    assert transport.backend is not None and transport.backend.name == "pysctp"
    assert caplog.messages[0].startswith("sctp transport: using pysctp: pysctp ")


class HeaderWire:
    """A test wire, not SCTP: it carries each message's stream and PPID in a 6-octet header over an
    AF_UNIX SOCK_SEQPACKET socket, so that the plugin's per-message stream/PPID plumbing (send,
    queue, receive, ``last_received``) can be checked where the kernel has no SCTP."""

    per_message = True

    def check(self, stream: int, ppid: int) -> None:
        imscore_sctp.PysctpWire(stand_in_pysctp()).check(stream, ppid)

    def read(self, sock: socket.socket, size: int) -> tuple[bytes, int, int, int]:
        data, _, flags, _ = sock.recvmsg(size + 6)
        if not data:
            return data, flags, 0, 0
        stream, ppid = struct.unpack("!HI", data[:6])
        return data[6:], flags, stream, ppid

    def write(self, sock: socket.socket, data: bytes, stream: int, ppid: int) -> None:
        sock.send(struct.pack("!HI", stream, ppid) + data)


def test_stream_and_ppid_travel_per_message_through_the_endpoint(folder: Path) -> None:
    async def main() -> None:
        got: list[tuple[bytes, tuple[str, int], imscore_sctp.Received | None]] = []

        def take(data: bytes, remote: tuple[str, int]) -> None:
            association = server.association(remote)  # told before the message is handed on
            got.append((data, remote, association.last_received if association else None))

        sockets = UnixSockets(folder, wire=HeaderWire())
        options = imscore_sctp.SctpOptions(stream=2, ppid=7)
        server = await imscore_sctp.SctpTransport(sockets, options=options).listen(
            "127.0.0.1", 0, take, max_message_size=4096
        )
        client = await imscore_sctp.SctpTransport(sockets).listen(
            "127.0.0.1", 0, lambda data, remote: None, max_message_size=4096
        )
        try:
            client.send(b"one", server.local, stream=5, ppid=46)  # queued while it connects
            client.send(b"two", server.local)  # the endpoint's defaults: stream 0, PPID 0
            for _ in range(300):
                if len(got) == 2:
                    break
                await asyncio.sleep(0.01)
            assert [(data, seen) for data, _, seen in got] == [
                (b"one", imscore_sctp.Received(5, 46)),
                (b"two", imscore_sctp.Received(0, 0)),
            ]
            back = client.association(server.local)
            assert back is not None and back.last_received is None
            server.send(b"answer", got[0][1])  # this endpoint's defaults: stream 2, PPID 7
            for _ in range(300):
                if back.last_received is not None:
                    break
                await asyncio.sleep(0.01)
            assert back.last_received == imscore_sctp.Received(2, 7)
        finally:
            await client.close()
            await server.close()

    run(main())


def test_stdlib_sockets_refuse_what_needs_pysctp(folder: Path) -> None:
    async def main() -> None:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        association = imscore_sctp.Association(
            left, ("a", 1), limit=4096, on_message=lambda *_: None, on_closed=lambda _: None
        )
        with pytest.raises(TransportError, match=r"stream 1 with PPID 0 needs pysctp"):
            association.send(b"x", stream=1)
        association.send(b"fine")  # stream 0, PPID 0: what the socket module sends
        assert right.recv(16) == b"fine"
        association.close()
        right.close()

        no_pysctp = imscore_sctp.PysctpImport(None, error="No module named 'sctp'")
        multihomed = imscore_sctp.SctpOptions(local_addresses={"127.0.0.1": ("127.0.0.2",)})
        # a host with kernel SCTP (stated, not probed) but no pysctp: refused before any socket
        transport = imscore_sctp.SctpTransport(
            options=multihomed, pysctp=lambda: no_pysctp, kernel=lambda: None
        )
        with pytest.raises(TransportError) as info:
            await transport.listen("127.0.0.1", 0, lambda *_: None, max_message_size=4096)
        assert str(info.value).startswith(
            "extra local addresses (multi-homing) need pysctp, which is not used: pysctp is not "
            "installed (No module named 'sctp')"
        )
        # no kernel SCTP: that is what start-up says, whatever the options
        transport = imscore_sctp.SctpTransport(
            options=multihomed, pysctp=lambda: no_pysctp, kernel=lambda: imscore_sctp.UNAVAILABLE
        )
        with pytest.raises(TransportError, match=r"^SCTP is not available: the kernel"):
            await transport.listen("127.0.0.1", 0, lambda *_: None, max_message_size=4096)
        given = imscore_sctp.SctpTransport(UnixSockets(folder), options=multihomed)
        with pytest.raises(TransportError, match=r"the sockets given \(UnixSockets\) do not carry"):
            await given.listen("127.0.0.1", 0, lambda *_: None, max_message_size=4096)

    run(main())


class RecordingSctpSocket:
    """A stand-in for pysctp's ``sctpsocket_tcp`` that records the calls made on it (no SCTP)."""

    def __init__(self, family: int) -> None:
        self.family = family
        self.calls: list[tuple[str, Any]] = []
        self.events = types.SimpleNamespace(data_io=False)
        self.replies: list[tuple[Any, int, bytes, Any]] = []
        made.append(self)

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, (args, kwargs) if kwargs else args))

        return record

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 5090)

    def sctp_recv(self, size: int) -> tuple[Any, int, bytes, Any]:
        return self.replies.pop(0)


made: list[RecordingSctpSocket] = []


def test_pysctp_sockets_bind_extra_addresses_and_pass_stream_and_ppid() -> None:
    module = stand_in_pysctp()
    module.sctpsocket_tcp = RecordingSctpSocket  # type: ignore[attr-defined]
    made.clear()
    sockets = imscore_sctp.PysctpSockets(
        module,
        local_addresses={"127.0.0.1": ("127.0.0.2", "127.0.0.3")},
        peer_addresses={"127.0.0.9": ("127.0.1.9",)},
    )
    listener, local = sockets.listener("127.0.0.1", 0)
    assert local == ("127.0.0.1", 5090) and listener.events.data_io is True
    assert [name for name, _ in listener.calls] == [
        "setsockopt",
        "bind",
        "bindx",
        "listen",
        "setblocking",
    ]
    assert listener.calls[1] == ("bind", (("127.0.0.1", 0),))
    assert listener.calls[2] == ("bindx", ([("127.0.0.2", 5090), ("127.0.0.3", 5090)],))
    sock, addresses = sockets.client(("127.0.0.9", 5060))
    assert addresses == [("127.0.0.9", 5060), ("127.0.1.9", 5060)]
    assert sock.family == socket.AF_INET and sock.events.data_io is True
    _, single = sockets.client(("127.0.0.8", 5060))
    assert single == [("127.0.0.8", 5060)]

    wire = sockets.wire
    wire.write(sock, b"msg", 3, 46)
    assert sock.calls[-1] == ("sctp_send", ((b"msg",), {"ppid": 46, "stream": 3}))
    info = types.SimpleNamespace(stream=3, ppid=socket.htonl(46))  # pysctp hands it in network order
    sock.replies = [(None, 0x8000, b"", None), (None, socket.MSG_EOR, b"msg", info)]
    assert wire.read(sock, 100) is None  # a notification
    assert wire.read(sock, 100) == (b"msg", socket.MSG_EOR, 3, 46)
    wire.check(65535, 0x7F)
    with pytest.raises(TransportError, match="pysctp cannot send PPID 128"):
        wire.check(0, 128)  # htonl(128) = 0x80000000: over the C int pysctp 0.7 passes
    with pytest.raises(TransportError, match="stream 65536 is out of range"):
        wire.check(65536, 0)


def test_pysctp_connectx_waits_for_the_association_without_blocking() -> None:
    """``connect`` with several addresses: sctp_connectx answers EINPROGRESS (here a stand-in
    raising BlockingIOError), then the socket's becoming writable and SO_ERROR say how it went; the
    socket watched is a real AF_UNIX one."""

    async def main() -> None:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        asked: list[Any] = []

        class Connecting:
            def sock(self) -> socket.socket:
                return left

            def connectx(self, addresses: Any) -> None:
                asked.append(addresses)
                raise BlockingIOError(errno.EINPROGRESS, "in progress")

        left.setblocking(False)
        right.setblocking(False)
        for _ in range(100_000):  # fill the pair, so that the socket watched is not writable yet
            try:
                left.send(b"x" * 1024)
            except BlockingIOError:
                break
        sockets = imscore_sctp.PysctpSockets(stand_in_pysctp())
        addresses = [("192.0.2.1", 5060), ("192.0.2.2", 5060)]
        task = asyncio.ensure_future(sockets.connect(Connecting(), addresses))
        await asyncio.sleep(0.05)
        assert asked and not task.done()  # connectx asked, then waiting for writable
        for _ in range(100_000):
            try:
                right.recv(2048)
            except BlockingIOError:
                break
        await asyncio.wait_for(task, 3)
        assert asked == [[("192.0.2.1", 5060), ("192.0.2.2", 5060)]]
        left.close()
        right.close()

    run(main())


def test_address_options_parse_and_say_what_is_wrong() -> None:
    parse = imscore_sctp.parse_addresses
    assert parse("", source="V") == {}
    assert parse("10.0.0.1=10.0.1.1, 10.0.2.1; ::1=::2", source="V") == {
        "10.0.0.1": ("10.0.1.1", "10.0.2.1"),
        "::1": ("::2",),
    }
    for text, problem in (
        ("10.0.0.1", "V: '10.0.0.1' is not IP=IP[,IP...]"),
        ("10.0.0.1=", "V: '10.0.0.1=' is not IP=IP[,IP...]"),
        ("x=10.0.0.2", "V: 'x' is not an IP address"),
        ("10.0.0.1=host", "V: 'host' is not an IP address"),
        ("10.0.0.1=::2", "V: ::2 is not of the same address family as 10.0.0.1"),
    ):
        with pytest.raises(TransportError) as info:
            parse(text, source="V")
        assert str(info.value) == problem
    options = imscore_sctp.SctpOptions.from_environ(
        {"IMSCORE_SCTP_LOCAL_ADDRESSES": "127.0.0.1=127.0.0.2", "IMSCORE_SCTP_PEER_ADDRESSES": ""}
    )
    assert options.local_addresses == {"127.0.0.1": ("127.0.0.2",)} and options.peer_addresses == {}
    assert options.needs_pysctp() == "extra local addresses (multi-homing)"
    assert imscore_sctp.SctpOptions().needs_pysctp() is None
