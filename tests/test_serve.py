"""`imscore serve` as a real process on loopback: UDP, TCP, TLS, IPv6, SIPp, broken input, signals."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imscore.sip import Response, StreamFramer, parse_datagram
from imscore.testing import SipClient

SIPP_SCENARIO = Path(__file__).parent / "sipp" / "options.xml"
READY = re.compile(r"ready: listening on (.*?) \(profile")


@dataclass
class Served:
    process: subprocess.Popen[str]
    addresses: dict[str, tuple[str, int]]
    log: list[str]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        assert self.process.stderr is not None
        self.log.extend(self.process.stderr.read().splitlines())
        return self.process.returncode


def serve(*args: str, cwd: Path | None = None) -> Served:
    process = subprocess.Popen(
        [sys.executable, "-m", "imscore", "serve", "--store", "memory:", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=cwd,
    )
    assert process.stderr is not None
    log: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        log.append(line.rstrip())
        match = READY.search(line)
        if match:
            addresses: dict[str, tuple[str, int]] = {}
            for spec in match.group(1).split():
                transport, rest = spec.split(":", 1)
                host, _, port = rest.rpartition(":")
                addresses.setdefault(transport, (host.strip("[]"), int(port)))
            return Served(process, addresses, log)
    process.kill()
    process.wait(timeout=10)
    raise AssertionError("imscore serve did not get ready:\n" + "\n".join(log))


@pytest.fixture
def served() -> Iterator[Served]:
    running = serve("--listen", "udp:127.0.0.1:0", "--listen", "tcp:127.0.0.1:0")
    try:
        yield running
    finally:
        assert running.stop() == 0, "\n".join(running.log)


def options(host: str, port: int, transport: str, branch: str, extra: str = "") -> bytes:
    return (
        f"OPTIONS sip:ims.example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {host}:{port};branch=z9hG4bK{branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        "To: <sip:ims.example.test>\r\n"
        f"From: <sip:alice@ims.example.test>;tag={branch}\r\n"
        f"Call-ID: {branch}@test\r\n"
        "CSeq: 1 OPTIONS\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def udp_exchange(address: tuple[str, int], data: bytes, timeout: float = 5.0) -> Response | None:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, address)
        try:
            reply, _ = sock.recvfrom(65535)
        except TimeoutError:
            return None
    message = parse_datagram(reply)
    assert isinstance(message, Response)
    return message


def stream_exchange(sock: socket.socket, data: bytes, timeout: float = 5.0) -> list[object]:
    sock.settimeout(timeout)
    sock.sendall(data)
    framer = StreamFramer()
    while True:
        chunk = sock.recv(65535)
        if not chunk:
            return []
        events = framer.feed(chunk)
        if events:
            return events


def test_options_over_udp_and_tcp(served: Served) -> None:
    response = udp_exchange(served.addresses["udp"], options("127.0.0.1", 5999, "UDP", "u1"))
    assert response is not None and response.status == 200
    assert "OPTIONS" in (response.headers.get("Allow") or "")
    assert response.top_via.received == "127.0.0.1" and response.top_via.rport is not None
    with socket.create_connection(served.addresses["tcp"]) as sock:
        (event,) = stream_exchange(sock, options("127.0.0.1", 5999, "TCP", "t1"))
        assert isinstance(event, Response) and event.status == 200


def test_other_methods_get_405_or_501(served: Served) -> None:
    client = SipClient(served.addresses["udp"])
    try:
        assert client.request("REGISTER").status == 404  # test@ims.example.test is no subscriber
        assert client.request("INVITE").status == 405
        assert client.request("FROBNICATE").status == 501
    finally:
        client.close()


BROKEN = [
    # what, datagram, status answered (None: dropped)
    ("truncated", options("127.0.0.1", 5999, "UDP", "b1").replace(b"Length: 0", b"Length: 90"), 400),
    ("bad header", options("127.0.0.1", 5999, "UDP", "b2", "Max-Forwards: lots\r\n"), 400),
    ("bad URI scheme", options("127.0.0.1", 5999, "UDP", "b3").replace(b"sip:ims", b"foo:ims", 1), 416),
    (
        "bad version",
        options("127.0.0.1", 5999, "UDP", "b4").replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1),
        505,
    ),
    ("oversized", options("127.0.0.1", 5999, "UDP", "b5", "X-Big: " + "a" * 70000 + "\r\n"), None),
    ("garbage", b"\x00\x01 this is not SIP \r\n\r\n", None),
    ("a broken response", b"SIP/2.0 999 Nope\r\nVia: SIP/2.0/UDP 127.0.0.1\r\n\r\n", None),
]


@pytest.mark.parametrize(("what", "data", "status"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_input_gets_its_status_and_the_server_keeps_serving(
    served: Served, what: str, data: bytes, status: int | None
) -> None:
    address = served.addresses["udp"]
    if len(data) > 65000:  # too big for one datagram on loopback: send it over TCP instead
        received = b""
        with socket.create_connection(served.addresses["tcp"]) as sock:
            sock.settimeout(5)
            # the server may close before we finish sending (the framing limit hit first)
            with contextlib.suppress(ConnectionError):
                sock.sendall(data)
            try:
                while chunk := sock.recv(65535):  # ends when the server closes the stream
                    received += chunk
            except ConnectionResetError:
                pass  # closed with our unread bytes still queued: a reset, also a close
        # the stream is closed; whether a 413 comes first depends on how TCP chunked our bytes:
        # if the server saw the end of the headers it answers, else there is nothing to answer from
        if received:
            answer = parse_datagram(received)
            assert isinstance(answer, Response) and answer.status in (413, 513)
    else:
        response = udp_exchange(address, data, timeout=1.0 if status is None else 5.0)
        if status is None:
            assert response is None, what
        else:
            assert response is not None and response.status == status, what
            assert response.reason  # says what was wrong
    ok = udp_exchange(address, options("127.0.0.1", 5999, "UDP", "after-" + what.replace(" ", "-")))
    assert ok is not None and ok.status == 200


def test_tcp_stream_with_lost_framing_is_answered_then_closed(served: Served) -> None:
    broken = options("127.0.0.1", 5999, "TCP", "f1", "Content-Length: 5\r\n")
    with socket.create_connection(served.addresses["tcp"]) as sock:
        events = stream_exchange(sock, broken)
        assert len(events) == 1 and isinstance(events[0], Response) and events[0].status == 400
        assert sock.recv(65535) == b""
    with socket.create_connection(served.addresses["tcp"]) as sock:
        (event,) = stream_exchange(sock, options("127.0.0.1", 5999, "TCP", "f2"))
        assert isinstance(event, Response) and event.status == 200


def test_sipp_options_scenario(served: Served, tmp_path: Path) -> None:
    sipp = shutil.which("sipp")
    if sipp is None:
        pytest.skip("binary missing: sipp (Debian package sip-tester)")
    host, port = served.addresses["udp"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        local_port = probe.getsockname()[1]
    result = subprocess.run(
        [
            sipp,
            "-sf",
            str(SIPP_SCENARIO),
            f"{host}:{port}",
            "-i",
            "127.0.0.1",
            "-p",
            str(local_port),
            "-m",
            "50",
            "-r",
            "100",
            "-timeout",
            "30",
            "-nostdin",
            "-trace_err",
            "-error_file",
            str(tmp_path / "errors.log"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    errors = (tmp_path / "errors.log").read_text() if (tmp_path / "errors.log").exists() else ""
    assert result.returncode == 0, result.stdout[-2000:] + errors


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imscore test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_options_over_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    profile = tmp_path / "tls.yaml"
    profile.write_text(
        f"domains: [ims.example.test]\ntls:\n  certfile: {cert}\n  keyfile: {key}\n"
        "listeners: ['tls:127.0.0.1:0']\n"
    )
    running = serve("--profile", str(profile))
    try:
        context = ssl.create_default_context(cafile=str(cert))
        with (
            socket.create_connection(running.addresses["tls"]) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            (event,) = stream_exchange(sock, options("127.0.0.1", 5999, "TLS", "tls1"))
            assert isinstance(event, Response) and event.status == 200
    finally:
        assert running.stop() == 0, "\n".join(running.log)


def test_tls_listener_without_certificate_stops_start_up(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imscore", "serve", "--store", "memory:", "--listen", "tls:127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "tls.certfile" in result.stderr and "Traceback" not in result.stderr


def test_ipv6_and_clean_stop_on_sigint() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    running = serve("--listen", "udp:[::1]:0")
    response = udp_exchange(running.addresses["udp"], options("[::1]", 5999, "UDP", "v6"))
    assert response is not None and response.status == 200
    running.process.send_signal(signal.SIGINT)
    assert running.process.wait(timeout=20) == 0
    assert running.stop() == 0
    assert any("imscore stopped" in line for line in running.log)


def test_port_in_use_is_a_clear_start_up_error(tmp_path: Path) -> None:
    """One line, said once, and the default SQLite file it would have created is not left behind."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "imscore", "serve", "--listen", f"udp:127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=tmp_path,
        )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"imscore: cannot listen on udp:127.0.0.1:{port}: Address already in use"
    ]
    assert list(tmp_path.iterdir()) == []  # no imscore.db


def test_tcp_garbage_closes_the_stream_and_the_server_keeps_serving(served: Served) -> None:
    with socket.create_connection(served.addresses["tcp"]) as sock:
        sock.settimeout(5)
        sock.sendall(b"\x16\x03\x01 this is not SIP at all\r\n\r\n")
        assert sock.recv(65535) == b""  # closed, nothing to answer from
    with socket.create_connection(served.addresses["tcp"]) as sock:
        (event,) = stream_exchange(sock, options("127.0.0.1", 5999, "TCP", "g2"))
        assert isinstance(event, Response) and event.status == 200
