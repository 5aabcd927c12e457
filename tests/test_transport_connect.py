"""Outgoing connections of :class:`Transports`: TCP and TLS to a second instance on loopback, reuse,
certificate checks, failures, and the RFC 3261 §18.2.2 response fallback to a new connection."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from imscore.sip import Request, Response, parse_datagram
from imscore.transport import Flow, TransportError, Transports

T = TypeVar("T")
TIMEOUT = 5.0
PEER_NAME = "peer.example.test"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def request(via: str, call_id: str = "c1") -> Request:
    data = (
        "OPTIONS sip:ims.example.test SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "Max-Forwards: 70\r\n"
        "To: <sip:ims.example.test>\r\n"
        "From: <sip:alice@ims.example.test>;tag=a1\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    message = parse_datagram(data, 65535)
    assert isinstance(message, Request)
    return message


@dataclass
class Inbox:
    """A message handler that keeps what arrives and wakes waiters."""

    got: list[tuple[Request | Response, Flow]] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, message: Request | Response, flow: Flow) -> None:
        self.got.append((message, flow))
        self.event.set()

    async def next(self) -> tuple[Request | Response, Flow]:
        while not self.got:
            self.event.clear()
            await asyncio.wait_for(self.event.wait(), 3.0)
        return self.got.pop(0)


# --- certificates -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    cert: Path
    key: Path


def _make_pki(folder: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def ca(label: str) -> tuple[Any, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(label))
            .issuer_name(name(label))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = ca("imscore test CA")
    _, other_cert = ca("some other CA")
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name(PEER_NAME))
        .issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(PEER_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = Pki(folder / "ca.pem", folder / "other-ca.pem", folder / "peer.pem", folder / "peer.key")
    paths.ca.write_bytes(ca_cert.public_bytes(pem))
    paths.other_ca.write_bytes(other_cert.public_bytes(pem))
    paths.cert.write_bytes(leaf.public_bytes(pem))
    paths.key.write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _make_pki(tmp_path_factory.mktemp("pki"))


def server_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)
    return context


def client_context(cafile: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile)
    return context


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- TCP -----------------------------------------------------------------------------------------------
def test_tcp_connect_both_ways_and_reuse() -> None:
    async def main() -> None:
        inbox_a, inbox_b = Inbox(), Inbox()
        async with Transports(inbox_a) as a, Transports(inbox_b) as b:
            _, port = await a.listen("tcp", "127.0.0.1", 0)
            flow = await b.connect("tcp", ("127.0.0.1", port))
            assert flow.transport == "tcp" and flow.remote == ("127.0.0.1", port)
            assert flow.connection is not None and b.open_connections == 1
            # a live connection is reused, also by concurrent callers
            again = await asyncio.gather(*(b.connect("tcp", ("127.0.0.1", port)) for _ in range(3)))
            assert {f.connection for f in again} == {flow.connection}
            assert b.stats.connections_connected == 1

            b.send(request(f"SIP/2.0/TCP 127.0.0.1:{flow.local[1]};branch=z9hG4bK1"), flow)
            received, on_a = await inbox_a.next()
            assert isinstance(received, Request) and received.method == "OPTIONS"
            assert on_a.remote == flow.local and a.stats.connections_opened == 1
            # the answer comes back on the connection b opened, to b's handler
            a.send_response(received.make_response(200, "OK", to_tag="t"), on_a)
            answer, on_b = await inbox_b.next()
            assert isinstance(answer, Response) and answer.status == 200
            assert on_b.connection == flow.connection
            # a request from a to b reuses the connection b opened (RFC 3261 §18: index by far end)
            back = await a.connect("tcp", flow.local)
            assert back.connection == on_a.connection and a.stats.connections_connected == 0
            a.send(request(f"SIP/2.0/TCP 127.0.0.1:{port};branch=z9hG4bK2", "c2"), back)
            second, _ = await inbox_b.next()
            assert isinstance(second, Request) and second.call_id == "c2"

    run(main())


def test_connection_refused_fails_fast_naming_the_address() -> None:
    port = free_port()

    async def main() -> None:
        async with Transports(Inbox()) as t:
            started = time.monotonic()
            expected = rf"cannot connect over tcp 127\.0\.0\.1:{port}: Connection refused"
            with pytest.raises(TransportError, match=expected):
                await t.connect("tcp", ("127.0.0.1", port))
            assert time.monotonic() - started < 1.0
            assert t.open_connections == 0

    run(main())


def test_connect_rejects_bad_input_clearly() -> None:
    async def main() -> None:
        async with Transports(Inbox(), max_connections=1) as t, Transports(Inbox()) as peer:
            with pytest.raises(TransportError, match="not an IP address"):
                await t.connect("tcp", ("peer.example.test", 5060))
            with pytest.raises(TransportError, match="unknown transport 'sctp'"):
                await t.connect("sctp", ("127.0.0.1", 5060))
            with pytest.raises(TransportError, match="no udp listener for IPv4"):
                await t.connect("udp", ("127.0.0.1", 5060))
            _, port = await peer.listen("tcp", "127.0.0.1", 0)
            _, port2 = await peer.listen("tcp", "127.0.0.1", 0)
            await t.connect("tcp", ("127.0.0.1", port))
            # an opened connection counts in max_connections like an accepted one
            with pytest.raises(TransportError, match=rf"tcp 127\.0\.0\.1:{port2}: .*max_connections 1"):
                await t.connect("tcp", ("127.0.0.1", port2))

    run(main())


def test_udp_connect_picks_a_listener_of_the_family_without_io() -> None:
    async def main() -> None:
        inbox = Inbox()
        async with Transports(Inbox()) as a, Transports(inbox) as b:
            local = await a.listen("udp", "127.0.0.1", 0)
            target = await b.listen("udp", "127.0.0.1", 0)
            flow = await a.connect("udp", target)
            assert flow == Flow("udp", local, target)
            assert a.stats.sent == 0
            with pytest.raises(TransportError, match="no udp listener for IPv6"):
                await a.connect("udp", ("::1", 5060))
            a.send(request(f"SIP/2.0/UDP 127.0.0.1:{local[1]};branch=z9hG4bK3"), flow)
            got, on_b = await inbox.next()
            assert isinstance(got, Request) and on_b.remote == local

    run(main())


def test_tls_handshake_timeout(pki: Pki) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never answers the ClientHello

    async def main() -> None:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, Transports(
            Inbox(), client_tls_context=client_context(pki.ca), connect_timeout=0.3
        ) as t:
            started = time.monotonic()
            expected = rf"tls 127\.0\.0\.1:{port}: timed out after 0\.3 s"
            with pytest.raises(TransportError, match=expected):
                await t.connect("tls", ("127.0.0.1", port))
            assert time.monotonic() - started < 2.0

    run(main())


# --- TLS -----------------------------------------------------------------------------------------------
def test_tls_connect_verifies_and_carries_messages_both_ways(pki: Pki) -> None:
    async def main() -> None:
        inbox_a, inbox_b = Inbox(), Inbox()
        async with (
            Transports(inbox_a, tls_context=server_context(pki)) as a,
            Transports(inbox_b, client_tls_context=client_context(pki.ca)) as b,
        ):
            _, port = await a.listen("tls", "127.0.0.1", 0)
            flow = await b.connect("tls", ("127.0.0.1", port), server_name=PEER_NAME)
            assert flow.transport == "tls" and flow.reliable
            assert (await b.connect("tls", ("127.0.0.1", port))).connection == flow.connection
            b.send(request(f"SIP/2.0/TLS {PEER_NAME};branch=z9hG4bK4"), flow)
            got, on_a = await inbox_a.next()
            assert isinstance(got, Request)
            a.send_response(got.make_response(200, "OK", to_tag="t"), on_a)
            answer, _ = await inbox_b.next()
            assert isinstance(answer, Response) and answer.status == 200
            # no server name: the certificate must name the IP (it does, as an IP SAN)
            async with Transports(Inbox(), client_tls_context=client_context(pki.ca)) as c:
                assert (await c.connect("tls", ("127.0.0.1", port))).transport == "tls"

    run(main())


def test_tls_connect_refuses_a_certificate_from_another_ca(pki: Pki) -> None:
    async def main() -> None:
        async with (
            Transports(Inbox(), tls_context=server_context(pki)) as a,
            Transports(Inbox(), client_tls_context=client_context(pki.other_ca)) as b,
        ):
            _, port = await a.listen("tls", "127.0.0.1", 0)
            with pytest.raises(TransportError) as info:
                await b.connect("tls", ("127.0.0.1", port), server_name=PEER_NAME)
            text = str(info.value)
            assert text.startswith(
                f"cannot connect over tls 127.0.0.1:{port}: certificate verification failed"
            )
            assert "unable to get local issuer certificate" in text
            assert b.open_connections == 0

    run(main())


def test_tls_connect_refuses_a_host_name_mismatch(pki: Pki) -> None:
    async def main() -> None:
        async with (
            Transports(Inbox(), tls_context=server_context(pki)) as a,
            Transports(Inbox(), client_tls_context=client_context(pki.ca)) as b,
        ):
            _, port = await a.listen("tls", "127.0.0.1", 0)
            with pytest.raises(TransportError) as info:
                await b.connect("tls", ("127.0.0.1", port), server_name="other.example.test")
            text = str(info.value)
            assert "certificate verification failed for 'other.example.test'" in text
            assert "mismatch" in text.lower()

    run(main())


# --- RFC 3261 §18.2.2: the connection closed, answer on a new one -------------------------------------
def _wait_closed(t: Transports) -> Coroutine[Any, Any, None]:
    async def wait() -> None:
        for _ in range(200):
            if t.open_connections == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the connection did not close")

    return wait()


def test_response_goes_on_a_new_connection_when_the_old_one_closed() -> None:
    async def main() -> None:
        inbox_a, inbox_b = Inbox(), Inbox()
        async with Transports(inbox_a) as a, Transports(inbox_b) as b:
            _, port_a = await a.listen("tcp", "127.0.0.1", 0)
            _, port_b = await b.listen("tcp", "127.0.0.1", 0)
            # a client sends from an ephemeral port, says it listens at port_b, and goes away
            _, writer = await asyncio.open_connection("127.0.0.1", port_a)
            via = f"SIP/2.0/TCP 127.0.0.1:{port_b};branch=z9hG4bK5"
            writer.write(request(via).to_bytes())
            await writer.drain()
            got, old_flow = await inbox_a.next()
            assert isinstance(got, Request)
            writer.close()
            await writer.wait_closed()
            await _wait_closed(a)
            a.send_response(got.make_response(200, "OK", to_tag="t"), old_flow)  # returns at once
            answer, on_b = await inbox_b.next()
            assert isinstance(answer, Response) and answer.status == 200
            assert on_b.local == ("127.0.0.1", port_b)
            assert a.stats.connections_connected == 1 and a.stats.responses_lost == 0

    run(main())


def test_response_fallback_failure_is_counted_not_raised() -> None:
    dead = free_port()

    async def main() -> None:
        inbox = Inbox()
        async with Transports(inbox) as a:
            _, port = await a.listen("tcp", "127.0.0.1", 0)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request(f"SIP/2.0/TCP 127.0.0.1:{dead};branch=z9hG4bK6").to_bytes())
            await writer.drain()
            got, flow = await inbox.next()
            assert isinstance(got, Request)
            writer.close()
            await writer.wait_closed()
            await _wait_closed(a)
            a.send_response(got.make_response(200, "OK", to_tag="t"), flow)
            await a.drain()
            assert a.stats.responses_lost == 1

    run(main())
