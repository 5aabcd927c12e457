"""STUN keep-alives on SIP UDP ports (RFC 5626 §8, RFC 5389): the codec, then over real UDP."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest
from test_transport import UdpClient, needs_ipv6, run, serving, sip_request

from imscore.transport import stun


def _mapped(data: bytes) -> tuple[str, int]:
    message = stun.parse(data)
    assert message.type == stun.BINDING_SUCCESS
    values = [v for a, v in message.attributes if a == stun.ATTR_XOR_MAPPED_ADDRESS]
    assert len(values) == 1
    return stun.decode_xor_mapped_address(values[0], message.transaction_id)


# --- the codec --------------------------------------------------------------------------------------
def test_rfc5769_ipv4_xor_mapped_address() -> None:
    """RFC 5769 §2.2 sample response: 192.0.2.1 port 32853 with its transaction id."""
    tid = bytes.fromhex("b7e7a701bc34d686fa87dfae")
    value = stun.xor_mapped_address(("192.0.2.1", 32853), tid)
    assert value == bytes.fromhex("0001a147e112a643")
    assert stun.decode_xor_mapped_address(value, tid) == ("192.0.2.1", 32853)


def test_rfc5769_ipv6_xor_mapped_address() -> None:
    """RFC 5769 §2.3 sample response: 2001:db8:1234:5678:11:2233:4455:6677 port 32853."""
    tid = bytes.fromhex("b7e7a701bc34d686fa87dfae")
    value = stun.xor_mapped_address(("2001:db8:1234:5678:11:2233:4455:6677", 32853), tid)
    assert value == bytes.fromhex("0002a1470113a9faa5d3f179bc25f4b5bed2b9d9")


def test_binding_request_answered_with_fingerprint_when_asked() -> None:
    tid = os.urandom(12)
    request = stun.binding_request(tid, fingerprint=True)
    assert stun.parse(request).fingerprint
    reply = stun.answer(request, ("198.51.100.7", 40000))
    assert reply is not None
    parsed = stun.parse(reply)  # checks the response's FINGERPRINT too
    assert parsed.transaction_id == tid and parsed.fingerprint
    assert _mapped(reply) == ("198.51.100.7", 40000)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\0" * 4, id="short header"),
        pytest.param(b"\x00\x01\x00\x08\x21\x12\xa4\x42" + b"\0" * 12, id="length past the end"),
        pytest.param(b"\x00\x01\x00\x03\x21\x12\xa4\x42" + b"\0" * 15, id="length not a multiple of 4"),
        pytest.param(
            b"\x00\x01\x00\x08\x21\x12\xa4\x42" + b"\0" * 12 + b"\x80\x28\x00\x04\0\0\0\0",
            id="wrong fingerprint",
        ),
        pytest.param(
            b"\x00\x01\x00\x04\x21\x12\xa4\x42" + b"\0" * 12 + b"\x80\x22\x00\x09",
            id="attribute past the end",
        ),
    ],
)
def test_malformed_raises(data: bytes) -> None:
    assert stun.looks_like_stun(data)
    with pytest.raises(stun.StunError):
        stun.answer(data, ("192.0.2.1", 5060))


def test_unknown_required_attribute_gets_420() -> None:
    tid = os.urandom(12)
    body = (
        struct.pack("!HH", 0x0042, 4) + b"abcd" + struct.pack("!HH", stun.ATTR_SOFTWARE, 1) + b"x\0\0\0"
    )
    request = struct.pack("!HH", stun.BINDING_REQUEST, len(body)) + b"\x21\x12\xa4\x42" + tid + body
    reply = stun.answer(request, ("192.0.2.1", 5060))
    assert reply is not None
    parsed = stun.parse(reply)
    assert parsed.type == 0x0111 and parsed.transaction_id == tid
    attrs = dict(parsed.attributes)
    assert attrs[stun.ATTR_ERROR_CODE][2:4] == bytes([4, 20])
    assert attrs[stun.ATTR_UNKNOWN_ATTRIBUTES] == b"\x00\x42"


def test_sip_is_not_stun() -> None:
    assert not stun.looks_like_stun(sip_request("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx"))
    assert not stun.looks_like_stun(b"\r\n\r\n")
    assert not stun.looks_like_stun(b"\x00\x01 this is not SIP at all\r\n\r\n")


# --- over real UDP ----------------------------------------------------------------------------------
async def _stun_round(host: str) -> None:
    async with serving() as server:
        bound = await server.transports.listen("udp", host, 0)
        client = UdpClient(host)
        loop = asyncio.get_running_loop()
        tid = os.urandom(12)
        await client.send(stun.binding_request(tid), bound)
        data, _ = await loop.sock_recvfrom(client.sock, 65535)
        parsed = stun.parse(data)
        assert parsed.transaction_id == tid
        assert _mapped(data) == (host, client.port)
        # a malformed STUN datagram is dropped and counted, never answered, never SIP
        await client.send(b"\x00\x01\x00\x08\x21\x12\xa4\x42" + os.urandom(12), bound)
        # SIP keeps working on the same port
        via = f"SIP/2.0/UDP {host if ':' not in host else f'[{host}]'}:{client.port};branch=z9hG4bKs1"
        await client.send(sip_request(via), bound)
        answer = await client.response()  # the next datagram is the SIP answer: no STUN reply came
        assert answer.status == 200
        stats = server.transports.stats
        assert (stats.stun_answered, stats.stun_dropped) == (1, 1)
        assert stats.delivered == 1 and stats.received == 1  # STUN never counted as SIP
        assert stats.answered_errors == 0 and stats.dropped_unanswerable == 0
        assert stats.keepalives == 1
        assert [m.method for m, _ in server.received] == ["OPTIONS"]  # type: ignore[union-attr]
        client.close()


def test_stun_binding_over_udp_ipv4() -> None:
    run(_stun_round("127.0.0.1"))


@needs_ipv6
def test_stun_binding_over_udp_ipv6() -> None:
    run(_stun_round("::1"))


def test_stun_keepalive_reported() -> None:
    async def scenario() -> None:
        async with serving() as server:
            seen: list[tuple[str, int]] = []
            server.transports.on_keepalive = lambda flow: seen.append(flow.remote)
            bound = await server.transports.listen("udp", "127.0.0.1", 0)
            client = UdpClient()
            await client.send(stun.binding_request(os.urandom(12), fingerprint=True), bound)
            data, _ = await asyncio.get_running_loop().sock_recvfrom(client.sock, 65535)
            assert stun.parse(data).fingerprint
            assert seen == [("127.0.0.1", client.port)]
            client.close()

    run(scenario())
