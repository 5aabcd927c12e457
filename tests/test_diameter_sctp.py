"""Diameter Cx over SCTP (RFC 6733 §2.1): ``imscore hss --listen sctp:HOST:PORT`` and
``cx://HOST:PORT?transport=sctp``.

This machine's kernel has no SCTP, so:

* the refusals are checked for real: ``imscore hss --listen sctp:...`` stops with exit status 2
  and one line, ``imscore serve`` with an SCTP ``cx://`` answers a REGISTER ``503`` and logs
  ``SCTP not available: ...`` for each connection attempt; on a kernel with SCTP the same tests
  run CER/UAR/DWR/DPR and a registration over a real SCTP association instead (as
  tests/test_sctp.py does, they never skip: each checks what this kernel supports);
* the SCTP code path of the server and the client (the socket factory, the listener and the
  connected socket handed to asyncio's streams, the framer) runs over AF_UNIX ``SOCK_STREAM``
  sockets injected in place of the SCTP ones: CER/CEA, UAR/UAA, DWR/DWA and DPR/DPA. Not
  ``SOCK_SEQPACKET``: asyncio's stream servers and connections take ``SOCK_STREAM`` sockets only,
  and a one-to-one SCTP socket is ``SOCK_STREAM`` too; the framer reads by the length field, so
  message boundaries are not relied upon on either transport.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from devices import stop_process
from sipua import Phone
from test_hss import SUBSCRIBERS
from test_serve import serve

from imscore.diameter import dictionary as d
from imscore.diameter.cli import parse_diameter_listen
from imscore.diameter.client import CxClient, DiameterPeerError
from imscore.diameter.codec import Avp
from imscore.diameter.hss import CxHss
from imscore.diameter.messages import result_of
from imscore.diameter.provider import CxSubscriberStore
from imscore.diameter.sctp import (
    SctpSockets,
    SctpUnavailableError,
    sctp_unavailable,
    unavailable_reason,
)
from imscore.diameter.server import HssServer
from imscore.subscribers import MemorySubscriberStore
from imscore.subscribers.loader import load_subscribers

V = d.VENDOR_3GPP
REALM = "ims.example.test"
ALICE = f"sip:alice@{REALM}"
ALICE_IMPI = f"alice@{REALM}"
#: what this kernel says about SCTP (None: it has it)
UNAVAILABLE = sctp_unavailable()
NO_SCTP = (
    "SCTP not available: the kernel does not support IPPROTO_SCTP (EPROTONOSUPPORT); "
    "load the sctp kernel module (modprobe sctp) or use tcp"
)


class UnixSockets:
    """A socket factory of AF_UNIX stream sockets in ``folder``, one path per (host, port)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.made: list[str] = []

    def path(self, host: str, port: int) -> str:
        return str(self.folder / f"{host}-{port}")

    def listener(self, host: str, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path(host, port))
        sock.listen(8)
        sock.setblocking(False)
        self.made.append("listener")
        return sock

    def connector(self, host: str, port: int) -> tuple[socket.socket, Any]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        self.made.append("connector")
        return sock, self.path(host, port)


def hss(tmp_path: Path) -> CxHss:
    path = tmp_path / "subscribers.yaml"
    path.write_text(SUBSCRIBERS)
    directory = load_subscribers(str(path))
    return CxHss(MemorySubscriberStore(directory, "test"), f"hss.{REALM}", REALM)


async def exchange(client: CxClient, server: HssServer | None) -> None:
    """CEA checked, then UAR/UAA, DWR/DWA and DPR/DPA through ``client``; the HSS (when given)
    sees the connection end after the DPA."""
    cea = client.cea
    assert cea is not None and result_of(cea) == (d.SUCCESS, 0)
    host = cea.find(d.ORIGIN_HOST)
    assert host is not None and host.as_str() == f"hss.{REALM}"
    vsai = cea.find(d.VENDOR_SPECIFIC_APPLICATION_ID)
    assert vsai is not None
    app = vsai.find(d.AUTH_APPLICATION_ID)
    assert app is not None and app.as_u32() == d.CX_APPLICATION
    if server is not None:
        assert [c.peer_host for c in server.connections] == [f"scscf.{REALM}"]
    uaa = await client.uar(ALICE, ALICE_IMPI)
    assert result_of(uaa) == (d.FIRST_REGISTRATION, V)
    unknown = await client.uar(f"sip:nobody@{REALM}", f"nobody@{REALM}")
    assert result_of(unknown) == (d.ERROR_USER_UNKNOWN, V)
    dwa = await client.watchdog()
    assert dwa.command == d.DWR and not dwa.request and result_of(dwa) == (d.SUCCESS, 0)
    dpa = await client.connection.request(
        d.DPR,
        0,
        [*client.connection.origin_avps(), Avp.u32(d.DISCONNECT_CAUSE, 0)],
        timeout=5,
        proxiable=False,
    )
    assert dpa.command == d.DPR and not dpa.request and result_of(dpa) == (d.SUCCESS, 0)
    await asyncio.wait_for(client.connection.wait_closed(), 5)
    if server is not None:
        for _ in range(100):  # bounded: the HSS closes its side after the DPA
            if not server.connections:
                break
            await asyncio.sleep(0.02)
        assert not server.connections
    await client.close(disconnect=False)


async def connect(host: str, port: int, **kwargs: Any) -> CxClient:
    return await CxClient.connect(
        host,
        port,
        origin_host=f"scscf.{REALM}",
        origin_realm=REALM,
        destination_realm=REALM,
        timeout=5,
        **kwargs,
    )


# --- the SCTP path over injected AF_UNIX sockets ------------------------------------------------
def test_sctp_path_does_cer_uar_dwr_dpr_over_the_injected_sockets(tmp_path: Path) -> None:
    sockets = UnixSockets(tmp_path)

    async def main() -> None:
        server = HssServer(hss(tmp_path))
        await server.start("127.0.0.1", 3868, "sctp", sockets)
        try:
            assert server.transport == "sctp"
            assert server.addresses == [("127.0.0.1", 3868)]  # the asked address: no IP on AF_UNIX
            client = await connect("127.0.0.1", 3868, transport="sctp", sockets=sockets)
            await exchange(client, server)
        finally:
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 20))
    assert sockets.made == ["listener", "connector"]


def test_sctp_client_to_no_listener_is_a_peer_error_not_a_traceback(tmp_path: Path) -> None:
    async def main() -> str:
        with pytest.raises(DiameterPeerError) as caught:
            await connect("127.0.0.1", 3869, transport="sctp", sockets=UnixSockets(tmp_path))
        return str(caught.value)

    message = asyncio.run(main())
    assert message.startswith("HSS 127.0.0.1:3869 unreachable over SCTP: "), message


def test_unknown_transport_is_refused_by_server_client_cli_and_url(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="transport must be one of tcp, sctp, got 'udp'"):
            await HssServer(hss(tmp_path)).start("127.0.0.1", 0, "udp")
        with pytest.raises(ValueError, match="transport must be one of tcp, sctp, got 'udp'"):
            await connect("127.0.0.1", 1, transport="udp")

    asyncio.run(main())
    assert parse_diameter_listen("sctp:127.0.0.1:3868") == ("127.0.0.1", 3868, "sctp")
    assert parse_diameter_listen("SCTP:[::1]:0") == ("::1", 0, "sctp")
    assert parse_diameter_listen("tcp:127.0.0.1:3868") == ("127.0.0.1", 3868, "tcp")
    with pytest.raises(ValueError, match="expected tcp:HOST:PORT or sctp:HOST:PORT"):
        parse_diameter_listen("udp:127.0.0.1:3868")
    with pytest.raises(ValueError, match=r"expected sctp:HOST:PORT with a port from 0 to 65535"):
        parse_diameter_listen("sctp:127.0.0.1:99999")
    assert CxSubscriberStore.from_url("cx://127.0.0.1:3868").transport == "tcp"
    assert CxSubscriberStore.from_url("cx://127.0.0.1:3868?transport=sctp").transport == "sctp"
    with pytest.raises(ValueError, match="transport must be tcp or sctp, got 'udp'"):
        CxSubscriberStore.from_url("cx://127.0.0.1:3868?transport=udp")


def test_unavailable_reason_names_the_kernel_or_the_error() -> None:
    for number, name in [
        (errno.EPROTONOSUPPORT, "EPROTONOSUPPORT"),
        (errno.ESOCKTNOSUPPORT, "ESOCKTNOSUPPORT"),
        (errno.EAFNOSUPPORT, "EAFNOSUPPORT"),
    ]:
        reason = unavailable_reason(OSError(number, "x"))
        assert reason == NO_SCTP.replace("EPROTONOSUPPORT", name)
    assert unavailable_reason(OSError(errno.EMFILE, "Too many open files")) == (
        "SCTP not available: Too many open files"
    )
    assert str(SctpUnavailableError(NO_SCTP)) == NO_SCTP


# --- real SCTP: whichever this kernel supports ----------------------------------------------------
def test_real_sctp_sockets_work_or_say_why(tmp_path: Path) -> None:
    if UNAVAILABLE is not None:  # this machine: the factory and the client say so, no traceback
        assert UNAVAILABLE == NO_SCTP
        with pytest.raises(SctpUnavailableError, match=re.escape(NO_SCTP)):
            SctpSockets().listener("127.0.0.1", 0)
        with pytest.raises(SctpUnavailableError, match=re.escape(NO_SCTP)):
            SctpSockets().connector("127.0.0.1", 3868)

        async def refused() -> str:
            with pytest.raises(DiameterPeerError) as caught:
                await connect("127.0.0.1", 3868, transport="sctp")
            return str(caught.value)

        assert asyncio.run(refused()) == NO_SCTP
        return

    async def main() -> None:  # kernel SCTP: a real association, in-process
        server = HssServer(hss(tmp_path))
        await server.start("127.0.0.1", 0, "sctp")
        try:
            host, port = server.addresses[0]
            assert port != 0
            client = await connect(host, port, transport="sctp")
            local = client.connection.writer.get_extra_info("socket")
            assert local.proto == socket.IPPROTO_SCTP
            await exchange(client, server)
        finally:
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_hss_listen_sctp_stops_with_one_line_or_serves(tmp_path: Path) -> None:
    path = tmp_path / "subscribers.yaml"
    path.write_text(SUBSCRIBERS)
    command = [sys.executable, "-m", "imscore", "hss", "--listen", "sctp:127.0.0.1:0",
               "--subscribers", str(path), "--origin-realm", REALM]  # fmt: skip
    if UNAVAILABLE is not None:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2
        assert result.stderr.splitlines() == [f"imscore: --listen sctp:127.0.0.1:0: {NO_SCTP}"]
        return
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = re.search(r"Cx on sctp:127\.0\.0\.1:(\d+) as hss\.ims\.example\.test", line)
        assert match, line

        async def main() -> None:
            client = await connect("127.0.0.1", int(match.group(1)), transport="sctp")
            await exchange(client, None)

        asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        stop_process(process)


def test_scscf_with_an_sctp_cx_url_is_503_and_says_why_or_registers(tmp_path: Path) -> None:
    port = 3868
    process = None
    if UNAVAILABLE is None:  # kernel SCTP: a real HSS listening on SCTP
        path = tmp_path / "subscribers.yaml"
        path.write_text(SUBSCRIBERS)
        process = subprocess.Popen(
            [sys.executable, "-m", "imscore", "hss", "--listen", "sctp:127.0.0.1:0",
             "--subscribers", str(path), "--origin-realm", REALM],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert process.stderr is not None
        match = re.search(r"Cx on sctp:127\.0\.0\.1:(\d+)", process.stderr.readline())
        assert match
        port = int(match.group(1))
    try:
        served = serve(
            "--listen", "udp:127.0.0.1:0",
            "--subscribers", f"cx://127.0.0.1:{port}?transport=sctp",
        )  # fmt: skip
        try:
            phone = Phone(served.addresses["udp"], "alice1")
            try:
                for _ in range(2):  # each REGISTER tries to connect again
                    answer = phone.register()
                    if UNAVAILABLE is None:
                        assert answer.status == 200, answer.status
                    else:
                        assert answer.status == 503, answer.status
                        assert answer.headers.get("Retry-After") == "30"
            finally:
                phone.close()
        finally:
            assert served.stop() == 0, "\n".join(served.log)
        log = "\n".join(served.log)
        assert "Traceback" not in log
        if UNAVAILABLE is not None:
            said = f"imscore.diameter.provider: HSS 127.0.0.1:{port}: {NO_SCTP}"
            attempts = [line for line in served.log if line.endswith(said)]
            assert len(attempts) == 3, log  # at start-up, then each REGISTER's own attempt
    finally:
        if process is not None:
            stop_process(process)
