"""The asyncio transports over loopback: UDP (IPv4, IPv6), TCP, TLS, bad input, limits."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from imscore.sip import KeepAlive, Request, Response, SipError, StreamFramer, parse_datagram
from imscore.transport import Flow, TransportError, Transports

T = TypeVar("T")
TIMEOUT = 3.0  # a bound on every test: a hang fails instead of stalling the run


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_available(), reason="IPv6 loopback ::1 is not available here")


def sip_request(
    via: str,
    *,
    method: str = "OPTIONS",
    cseq: int = 1,
    max_forwards: str = "70",
    version: str = "SIP/2.0",
    body: bytes = b"",
    content_length: int | None = None,
) -> bytes:
    length = len(body) if content_length is None else content_length
    return (
        f"{method} sip:ims.example.test {version}\r\n"
        f"Via: {via}\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        "To: <sip:ims.example.test>\r\n"
        "From: <sip:alice@ims.example.test>;tag=a1\r\n"
        f"Call-ID: call-{cseq}@test\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode() + body


class Server:
    """A Transports with an echo handler: 200 to every request but ACK, and a record of what came."""

    def __init__(self, **options: Any) -> None:
        self.received: list[tuple[Request | Response, Flow]] = []
        self.transports = Transports(self.handle, **options)

    def handle(self, message: Request | Response, flow: Flow) -> None:
        self.received.append((message, flow))
        if isinstance(message, Request) and message.method == "BOOM":
            raise RuntimeError("handler bug")
        if isinstance(message, Request) and message.method != "ACK":
            self.transports.send_response(message.make_response(200, to_tag="t"), flow)


@contextlib.asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[Server]:
    server = Server(**options)
    try:
        yield server
    finally:
        await server.transports.close()


class UdpClient:
    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((host, 0))
        self.port: int = self.sock.getsockname()[1]

    async def send(self, data: bytes, to: tuple[str, int]) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, data, to)

    async def recv(self) -> tuple[Response | Request, tuple[str, int]]:
        data, addr = await asyncio.get_running_loop().sock_recvfrom(self.sock, 65535)
        message = parse_datagram(data)
        assert message is not None
        message.check_framing_headers()
        return message, addr

    async def response(self) -> Response:
        message, _ = await self.recv()
        assert isinstance(message, Response)
        return message

    def close(self) -> None:
        self.sock.close()


class StreamClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.framer = StreamFramer()
        self.pending: list[Request | Response] = []

    @classmethod
    async def connect(cls, address: tuple[str, int], tls: ssl.SSLContext | None = None) -> StreamClient:
        reader, writer = await asyncio.open_connection(*address, ssl=tls)
        return cls(reader, writer)

    @property
    def port(self) -> int:
        return int(self.writer.get_extra_info("sockname")[1])

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> Response:
        while not self.pending:
            data = await self.reader.read(65535)
            assert data, "connection closed before a response came"
            for event in self.framer.feed(data):
                assert not isinstance(event, KeepAlive | SipError), event
                self.pending.append(event)
        message = self.pending.pop(0)
        assert isinstance(message, Response)
        message.check_framing_headers()
        return message

    async def closed_by_peer(self) -> bool:
        """True once the server closes (EOF or reset); reads what comes before."""
        try:
            while await self.reader.read(65535):
                pass
        except ConnectionError:
            pass
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


# --- UDP ----------------------------------------------------------------------------------------------
def test_udp_ipv4_options() -> None:
    async def scenario() -> None:
        async with serving() as server:
            bound = await server.transports.listen("udp", "127.0.0.1", 0)
            assert bound[0] == "127.0.0.1" and bound[1] > 0
            assert server.transports.listening == [("udp", "127.0.0.1", bound[1])]
            client = UdpClient()
            via = f"SIP/2.0/UDP 127.0.0.1:{client.port};branch=z9hG4bKu4"
            await client.send(sip_request(via), bound)
            answer = await client.response()
            assert answer.status == 200
            assert answer.to.tag == "t"
            # sent-by is the source address and there is no rport: the Via is left as it was
            assert answer.headers.get("Via") == via
            flow = server.received[0][1]
            assert flow == Flow("udp", bound, ("127.0.0.1", client.port))
            assert not flow.reliable and flow.connection is None
            stats = server.transports.stats
            assert (stats.received, stats.delivered, stats.sent) == (1, 1, 1)
            client.close()

    run(scenario())


@needs_ipv6
def test_udp_ipv6_options_stamps_received_and_rport() -> None:
    async def scenario() -> None:
        async with serving() as server:
            bound = await server.transports.listen("udp", "::1", 0)
            assert bound[0] == "::1"
            client = UdpClient("::1")
            await client.send(sip_request("SIP/2.0/UDP [::1]:5999;branch=z9hG4bKu6;rport"), bound)
            answer = await client.response()
            assert answer.status == 200
            top = answer.top_via
            assert top.received == "::1"
            assert top.rport == client.port
            assert server.received[0][1].remote == ("::1", client.port)
            client.close()

    run(scenario())


def test_udp_rport_answers_the_source_port() -> None:
    async def scenario() -> None:
        async with serving() as server:
            bound = await server.transports.listen("udp", "127.0.0.1", 0)
            client, elsewhere = UdpClient(), UdpClient()
            # the Via names another port, but rport asks for the answer to come back to the source
            await client.send(
                sip_request(f"SIP/2.0/UDP 127.0.0.1:{elsewhere.port};branch=z9hG4bKr1;rport"), bound
            )
            answer = await client.response()
            top = answer.top_via
            assert (top.received, top.rport, top.port) == ("127.0.0.1", client.port, elsewhere.port)
            # the handler saw the stamped Via too
            request = server.received[0][0]
            assert request.top_via.rport == client.port

            # without rport the answer goes to the sent-by port (RFC 3261 §18.2.2)
            await client.send(
                sip_request(f"SIP/2.0/UDP 127.0.0.1:{elsewhere.port};branch=z9hG4bKr2", cseq=2), bound
            )
            answer = await elsewhere.response()
            assert answer.cseq.seq == 2
            assert answer.top_via.received is None  # sent-by was the source IP

            # a sent-by name gets received=<source ip>; the answer goes there, to the sent-by port
            await client.send(
                sip_request(f"SIP/2.0/UDP client.invalid:{elsewhere.port};branch=z9hG4bKr3", cseq=3),
                bound,
            )
            answer = await elsewhere.response()
            assert answer.cseq.seq == 3
            assert answer.top_via.received == "127.0.0.1"
            assert answer.top_via.host == "client.invalid"
            client.close()
            elsewhere.close()

    run(scenario())


GOOD_VIA = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKbad;rport"

BROKEN_DATAGRAMS = {
    "truncated body": (sip_request(GOOD_VIA, body=b"abc", content_length=10), 400),
    "bad Max-Forwards": (sip_request(GOOD_VIA, max_forwards="lots"), 400),
    "bad version": (sip_request(GOOD_VIA, version="SIP/3.0"), 505),
    "CSeq method mismatch": (sip_request(GOOD_VIA).replace(b"1 OPTIONS", b"1 INVITE"), 400),
    "garbage": (b"\x00\x01 this is not SIP at all\r\n\r\n", None),
    "garbage without an empty line": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", None),
    "broken response": (
        b"SIP/2.0 200 OK\r\nVia: "
        + GOOD_VIA.encode()
        + b"\r\nTo: <sip:a@b>\r\nFrom: <sip:c@d>;tag=1\r\n"
        b"Call-ID: x\r\nCSeq: lots OPTIONS\r\nContent-Length: 0\r\n\r\n",
        None,
    ),
    "broken ACK": (sip_request(GOOD_VIA, method="ACK", max_forwards="lots"), None),
    # RFC 3261 §8.2.6.2: answered from the header lines that can be read (RFC 4475 quotbal, insuf)
    "unterminated quote in To": (
        sip_request(GOOD_VIA).replace(b"To: <sip:ims.example.test>", b'To: "Mr. <sip:a@b>'),
        400,
    ),
    "no From, To nor Call-ID": (
        b"OPTIONS sip:ims.example.test SIP/2.0\r\nVia: " + GOOD_VIA.encode() + b"\r\n"
        b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        400,
    ),
    "unreadable Via": (sip_request("SIP/2.0/UDP ;branch=z9hG4bKx"), None),
    "request without Via": (
        sip_request(GOOD_VIA).replace(b"Via: " + GOOD_VIA.encode() + b"\r\n", b""),
        None,
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_DATAGRAMS))
def test_udp_broken_input_is_answered_or_dropped(case: str, caplog: pytest.LogCaptureFixture) -> None:
    data, status = BROKEN_DATAGRAMS[case]

    async def scenario() -> None:
        async with serving() as server:
            bound = await server.transports.listen("udp", "127.0.0.1", 0)
            client = UdpClient()
            await client.send(data, bound)
            if status is not None:
                octets, _ = await asyncio.get_running_loop().sock_recvfrom(client.sock, 65535)
                answer = parse_datagram(octets)  # back to the datagram's source, not to the Via
                assert isinstance(answer, Response)
                assert answer.status == status
                assert answer.top_via.branch == "z9hG4bKbad"
                assert answer.cseq.seq == 1
                if "To: <" in answer.headers.get("To", ""):
                    assert answer.to.tag  # a random To tag
            # the transport goes on: a good request is answered (and nothing else came first)
            await client.send(
                sip_request(f"SIP/2.0/UDP 127.0.0.1:{client.port};branch=z9hG4bKok", cseq=7), bound
            )
            answer = await client.response()
            assert (answer.status, answer.cseq.seq) == (200, 7)
            stats = server.transports.stats
            assert stats.received == 2 and stats.delivered == 1
            if status is None:
                assert (stats.answered_errors, stats.dropped_unanswerable) == (0, 1)
            else:
                assert (stats.answered_errors, stats.dropped_unanswerable) == (1, 0)
            assert len(server.received) == 1
            client.close()

    with caplog.at_level(logging.INFO, logger="imscore.transport"):
        run(scenario())
    assert any(r.name == "imscore.transport" and r.levelno == logging.INFO for r in caplog.records)


def test_udp_505_copies_the_addressing_headers() -> None:
    async def scenario() -> None:
        async with serving() as server:
            bound = await server.transports.listen("udp", "127.0.0.1", 0)
            client = UdpClient()
            await client.send(sip_request(GOOD_VIA, version="SIP/3.0", cseq=42), bound)
            answer = await client.response()
            assert answer.status == 505
            assert answer.cseq.seq == 42 and answer.cseq.method == "OPTIONS"
            assert answer.call_id == "call-42@test"
            assert answer.headers.get("Via") == GOOD_VIA
            client.close()

    run(scenario())


def test_udp_keepalive_and_handler_failure(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serving() as server:
            bound = await server.transports.listen("udp", "127.0.0.1", 0)
            client = UdpClient()
            via = f"SIP/2.0/UDP 127.0.0.1:{client.port};branch=z9hG4bK"
            await client.send(b"\r\n\r\n", bound)
            await client.send(sip_request(via + "boom", method="BOOM"), bound)
            await client.send(sip_request(via + "ok", cseq=2), bound)
            answer = await client.response()
            assert (answer.status, answer.cseq.seq) == (200, 2)
            stats = server.transports.stats
            assert stats.keepalives == 1
            assert stats.delivered == 2
            client.close()

    with caplog.at_level(logging.ERROR, logger="imscore.transport"):
        run(scenario())
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1 and failures[0].exc_info is not None


def test_send_response_never_to_broadcast() -> None:
    async def scenario() -> None:
        async with serving() as server:
            transports = server.transports
            bound = await transports.listen("udp", "127.0.0.1", 0)
            flow = Flow("udp", bound, ("127.0.0.1", 5060))
            for via in (
                "SIP/2.0/UDP 255.255.255.255:5060;branch=z9hG4bKb1",
                "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKb2;received=255.255.255.255",
                "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKb3;received=224.0.0.1",
                "SIP/2.0/UDP 192.0.2.1:0;branch=z9hG4bKb4",
            ):
                request = parse_datagram(sip_request(via))
                assert isinstance(request, Request)
                transports.send_response(request.make_response(200), flow)
            assert transports.stats.dropped_unroutable == 4
            assert transports.stats.sent == 0

    run(scenario())


def test_udp_sendto_targets_and_refusals() -> None:
    """What a UDP socket sends to for each host (the cached target), and the errors in their order:
    not an IP address, the socket closed, IPv6 from an IPv4 socket."""

    async def scenario() -> None:
        async with serving() as server:
            transports = server.transports
            bound = await transports.listen("udp", "127.0.0.1", 0)
            (endpoint,) = transports._endpoints.values()
            written: list[tuple[bytes, tuple[str, int]]] = []
            endpoint._write = lambda data, target: written.append((data, target))  # type: ignore[method-assign]
            endpoint.sendto(b"a", ("127.0.0.1", 5060))
            endpoint.sendto(b"b", ("127.0.0.1", 5061))  # the cached target, another port
            with pytest.raises(TransportError, match="not an IP address"):
                endpoint.sendto(b"c", ("localhost", 5060))
            with pytest.raises(TransportError, match="cannot send to IPv6 ::1 from IPv4 socket"):
                endpoint.sendto(b"d", ("::1", 5060))
            endpoint.family = socket.AF_INET6  # as a dual-stack socket
            endpoint.sendto(b"e", ("192.0.2.1", 5060))
            endpoint.sendto(b"f", ("[::1]", 5062))
            endpoint.family = socket.AF_INET
            endpoint.closed = True
            with pytest.raises(TransportError, match="not an IP address"):
                endpoint.sendto(b"g", ("localhost", 5060))
            with pytest.raises(TransportError, match=f"udp socket at 127.0.0.1:{bound[1]} is closed"):
                endpoint.sendto(b"h", ("127.0.0.1", 5060))
            with pytest.raises(TransportError, match="is closed"):
                endpoint.sendto(b"i", ("::1", 5060))
            assert written == [
                (b"a", ("127.0.0.1", 5060)),
                (b"b", ("127.0.0.1", 5061)),
                (b"e", ("::ffff:192.0.2.1", 5060)),
                (b"f", ("::1", 5062)),
            ]

    run(scenario())


def test_a_udp_response_is_sent_counted_and_tapped_once() -> None:
    async def scenario() -> None:
        async with serving() as server:
            transports = server.transports
            bound = await transports.listen("udp", "127.0.0.1", 0)
            (endpoint,) = transports._endpoints.values()
            sent: list[tuple[bytes, tuple[str, int]]] = []
            endpoint.sendto = lambda data, remote: sent.append((data, remote))  # type: ignore[method-assign]
            tapped: list[Any] = []
            transports.tap = tapped.append
            via = "SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bKs1;received=192.0.2.9;rport=6000"
            request = parse_datagram(sip_request(via))
            assert isinstance(request, Request)
            response = request.make_response(200)
            transports.send_response(response, Flow("udp", bound, ("192.0.2.9", 6000)))
            assert sent == [(response.to_bytes(), ("192.0.2.9", 6000))]
            assert transports.stats.sent == 1
            assert [(r.transport, r.src, r.dst, r.data) for r in tapped] == [
                ("udp", bound, ("192.0.2.9", 6000), response.to_bytes())
            ]

    run(scenario())


# --- listening and sending errors ---------------------------------------------------------------------
def test_listen_errors() -> None:
    async def scenario() -> None:
        async with serving() as server:
            transports = server.transports
            with pytest.raises(TransportError, match="tls_context"):
                await transports.listen("tls", "127.0.0.1", 0)
            with pytest.raises(TransportError, match="unknown transport"):
                await transports.listen("sctp", "127.0.0.1", 0)
            with pytest.raises(TransportError, match="not an IPv4 or IPv6"):
                await transports.listen("udp", "localhost", 0)
            port = (await transports.listen("tcp", "127.0.0.1", 0))[1]
            with pytest.raises(TransportError, match="cannot listen"):
                await transports.listen("tcp", "127.0.0.1", port)
            with pytest.raises(TransportError, match="no udp socket"):
                transports.send(Response(200), Flow("udp", ("127.0.0.1", 1), ("127.0.0.1", 2)))
            with pytest.raises(TransportError, match="connection closed"):
                transports.send(Response(200), Flow("tcp", ("127.0.0.1", 1), ("127.0.0.1", 2), 99))
        assert server.transports.listening == []

    run(scenario())


# --- TCP and TLS --------------------------------------------------------------------------------------
def test_tcp_options_same_connection() -> None:
    async def scenario() -> None:
        async with serving() as server:
            bound = await server.transports.listen("tcp", "127.0.0.1", 0)
            client = await StreamClient.connect(bound)
            # two pipelined requests in one write
            await client.send(
                sip_request("SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKt1")
                + sip_request("SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKt2", cseq=2)
            )
            first, second = await client.response(), await client.response()
            assert (first.status, first.cseq.seq, second.cseq.seq) == (200, 1, 2)
            assert first.top_via.received == "127.0.0.1"  # sent-by differs from the source
            assert second.top_via.received is None  # sent-by is the source
            flows = {flow for _, flow in server.received}
            assert len(flows) == 1
            flow = flows.pop()
            assert flow.transport == "tcp" and flow.reliable
            assert flow.remote == ("127.0.0.1", client.port) and flow.local == bound
            assert isinstance(flow.connection, int)
            assert server.transports.stats.connections_opened == 1
            await client.close()

    run(scenario())


@needs_ipv6
def test_tcp_ipv6() -> None:
    async def scenario() -> None:
        async with serving() as server:
            bound = await server.transports.listen("tcp", "::1", 0)
            client = await StreamClient.connect(bound)
            await client.send(sip_request("SIP/2.0/TCP [::1]:5060;branch=z9hG4bKt6;rport"))
            answer = await client.response()
            assert answer.status == 200
            assert (answer.top_via.received, answer.top_via.rport) == ("::1", client.port)
            await client.close()

    run(scenario())


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imscore test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def test_tls_options(tmp_path: Path) -> None:
    pytest.importorskip("cryptography", reason="the cryptography package makes the test certificate")
    ca, cert, key = make_tls_files(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(ca))

    async def scenario() -> None:
        async with serving(tls_context=server_context) as server:
            bound = await server.transports.listen("tls", "127.0.0.1", 0)
            client = await StreamClient.connect(bound, tls=client_context)
            await client.send(sip_request("SIP/2.0/TLS ue.invalid:5061;branch=z9hG4bKtls;rport"))
            answer = await client.response()
            assert answer.status == 200
            assert (answer.top_via.received, answer.top_via.rport) == ("127.0.0.1", client.port)
            flow = server.received[0][1]
            assert flow.transport == "tls" and flow.reliable and flow.connection is not None
            assert server.transports.listening == [("tls", "127.0.0.1", bound[1])]
            await client.close()

    run(scenario())


def test_tcp_bad_input_keeps_the_connection() -> None:
    async def scenario() -> None:
        async with serving() as server:
            bound = await server.transports.listen("tcp", "127.0.0.1", 0)
            client = await StreamClient.connect(bound)
            via = "SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK"
            await client.send(sip_request(via + "a", max_forwards="lots"))
            assert (await client.response()).status == 400
            await client.send(sip_request(via + "b", version="SIP/3.0", cseq=2))
            answer = await client.response()
            assert (answer.status, answer.cseq.seq) == (505, 2)
            await client.send(b"SIP/2.0 200 OK\r\nCSeq: lots\r\nContent-Length: 0\r\n\r\n")  # dropped
            await client.send(sip_request(via + "c", cseq=3))
            answer = await client.response()
            assert (answer.status, answer.cseq.seq) == (200, 3)
            stats = server.transports.stats
            assert (stats.answered_errors, stats.dropped_unanswerable) == (2, 1)
            assert stats.streams_closed_broken == 0
            await client.close()

    run(scenario())


def test_tcp_fatal_framing_error_answers_then_closes() -> None:
    async def scenario() -> None:
        async with serving() as server:
            bound = await server.transports.listen("tcp", "127.0.0.1", 0)
            client = await StreamClient.connect(bound)
            await client.send(sip_request("SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKok"))
            assert (await client.response()).status == 200
            flow = server.received[0][1]
            broken = sip_request("SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKf", cseq=2).replace(
                b"Content-Length: 0\r\n", b"Content-Length: 0\r\nContent-Length: 5\r\n"
            )
            await client.send(broken)
            answer = await client.response()
            assert (answer.status, answer.cseq.seq) == (400, 2)
            assert await client.closed_by_peer()
            stats = server.transports.stats
            assert stats.streams_closed_broken == 1 and stats.answered_errors == 1
            with pytest.raises(TransportError, match="connection closed"):
                server.transports.send(Response(200), flow)
            await client.close()
            # the listener goes on
            again = await StreamClient.connect(bound)
            await again.send(sip_request("SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKagain", cseq=3))
            assert (await again.response()).status == 200
            await again.close()

    run(scenario())


def test_tcp_ping_gets_pong() -> None:
    async def scenario() -> None:
        async with serving() as server:
            bound = await server.transports.listen("tcp", "127.0.0.1", 0)
            client = await StreamClient.connect(bound)
            await client.send(b"\r\n\r\n")
            assert await client.reader.readexactly(2) == b"\r\n"
            assert server.transports.stats.keepalives == 1
            await client.close()

    run(scenario())


def test_tcp_one_byte_at_a_time() -> None:
    async def scenario() -> None:
        async with serving() as server:
            bound = await server.transports.listen("tcp", "127.0.0.1", 0)
            client = await StreamClient.connect(bound)
            client.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for octet in sip_request("SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKslow", body=b"hi"):
                await client.send(bytes([octet]))
                await asyncio.sleep(0)
            answer = await client.response()
            assert answer.status == 200
            assert server.received[0][0].body == b"hi"
            await client.close()

    run(scenario())


def test_max_connections() -> None:
    async def scenario() -> None:
        async with serving(max_connections=2) as server:
            bound = await server.transports.listen("tcp", "127.0.0.1", 0)
            clients = [await StreamClient.connect(bound) for _ in range(2)]
            for i, client in enumerate(clients):  # both accepted and served
                await client.send(sip_request(f"SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKm{i}", cseq=i))
                assert (await client.response()).status == 200
            third = await StreamClient.connect(bound)
            assert await third.closed_by_peer()
            stats = server.transports.stats
            assert (stats.connections_opened, stats.connections_rejected) == (2, 1)
            assert server.transports.open_connections == 2
            await third.close()
            # the first two still work
            await clients[0].send(sip_request("SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKm9", cseq=9))
            assert (await clients[0].response()).cseq.seq == 9
            for client in clients:
                await client.close()

    run(scenario())


def test_idle_timeout_closes_silent_connection() -> None:
    async def scenario() -> None:
        async with serving(idle_timeout=0.2) as server:
            bound = await server.transports.listen("tcp", "127.0.0.1", 0)
            loop = asyncio.get_running_loop()
            client = await StreamClient.connect(bound)
            started = loop.time()
            await client.send(sip_request("SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKidle"))
            assert (await client.response()).status == 200
            flow = server.received[0][1]
            assert await client.closed_by_peer()
            assert loop.time() - started >= 0.2
            assert server.transports.stats.connections_closed_idle == 1
            assert server.transports.open_connections == 0
            with pytest.raises(TransportError, match="connection closed"):
                server.transports.send(Response(200), flow)
            await client.close()

    run(scenario())


def test_close_stops_everything() -> None:
    async def scenario() -> None:
        server = Server()
        transports = server.transports
        udp = await transports.listen("udp", "127.0.0.1", 0)
        tcp = await transports.listen("tcp", "127.0.0.1", 0)
        client = await StreamClient.connect(tcp)
        await client.send(sip_request("SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKc"))
        await client.response()
        flow = server.received[0][1]
        await transports.close()
        assert transports.listening == [] and transports.open_connections == 0
        assert await client.closed_by_peer()
        with pytest.raises(TransportError):
            transports.send(Response(200), flow)
        with pytest.raises(TransportError):
            transports.send(Response(200), Flow("udp", udp, ("127.0.0.1", 5060)))
        with pytest.raises(OSError):
            await asyncio.open_connection(*tcp)
        await client.close()

    run(scenario())
