"""A Completed non-INVITE server transaction keeps its final response as the octets that went out
(:class:`~imscore.sip.transaction.SentResponse`, issue 13: at most 1 KB per finished transaction),
and a retransmitted request gets those very octets: in the layer, and through a real server over
UDP (to the top Via's address, seen by the capture tap, counted), for the registrar and for the
proxy. INVITE server transactions and reliable transports keep what they kept."""

from __future__ import annotations

import random
import socket
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from sipua import Caller, Phone
from test_transaction import UAC, Layer, new_server, request, wire_request

from imscore.capture.record import MessageRecord
from imscore.sip import Request, Response, SipError, parse_datagram
from imscore.sip.message import Headers
from imscore.sip.transaction import (
    _PLAIN_SECTION,
    InviteServerTransaction,
    NonInviteServerTransaction,
    RequestReceived,
    Send,
    SentResponse,
    TransactionState,
    TransactionTerminated,
)
from imscore.sip.transaction import _as_sent as tx_as_sent
from imscore.testing import RunningServer, start_server

DOMAIN = "ims.example.test"


# --- the octets ----------------------------------------------------------------------------------
def test_a_sent_response_is_its_octets_and_reads_back_as_the_response() -> None:
    register = wire_request(request("REGISTER"))
    response = register.make_response(
        423, headers=[("Min-Expires", "3600"), ("Server", "imscore")], to_tag="r1"
    )
    octets = response.to_bytes()
    sent = SentResponse(octets)
    assert sent == octets and sent.to_bytes() == octets and isinstance(sent.to_bytes(), bytes)
    assert sent.status == 423 and not sent.is_request
    assert sys.getsizeof(sent) <= sys.getsizeof(octets) + 16  # no object around the octets
    back = sent.parse()
    assert isinstance(back, Response)
    assert (back.status, back.reason) == (423, response.reason)
    assert [(f.name, f.value) for f in back.headers] == [(f.name, f.value) for f in response.headers]
    assert back.to_bytes() == octets
    assert sent.top_via.branch == response.top_via.branch
    assert sent.top_via.sent_by_key() == response.top_via.sent_by_key()
    assert repr(sent) == f"<SentResponse 423, {len(octets)} octets>"
    # a body after the empty line stays the body, even one that holds an empty line itself
    with_body = register.make_response(200, to_tag="r1")
    with_body.set_body(b"one\r\n\r\ntwo", "text/plain")
    assert SentResponse(with_body.to_bytes()).parse().body == b"one\r\n\r\ntwo"


def answered(layer: Layer, status: int, reason: str | None = None) -> tuple[
    NonInviteServerTransaction[str], Response, bytes
]:
    """A REGISTER's server transaction answered with ``status``; the response and its octets as
    the transport sent them."""
    register = request("REGISTER")
    tx = new_server(layer, register)
    assert isinstance(tx, NonInviteServerTransaction)
    response = wire_request(register).make_response(status, reason, to_tag="r1")
    (sent,) = layer.respond(tx, response, 0.0)
    assert sent == Send(response, UAC, tx)  # the first answer is the TU's Response
    return tx, response, sent.message.to_bytes()


def test_the_final_response_is_kept_as_its_octets_from_the_layers_next_call() -> None:
    layer = Layer()
    tx, response, octets = answered(layer, 401)
    assert tx.response is response  # the transport is sending it
    assert layer.next_deadline() == 32.0  # a look-up does not change it
    assert tx.response is response
    (resent,) = layer.retransmission(tx, 1.0)  # the layer's next call
    assert isinstance(tx.response, SentResponse) and tx.response == octets
    assert resent == Send(tx.response, UAC, tx)
    assert resent.message is tx.response  # kept once, handed out as it is
    (again,) = layer.receive(wire_request(request("REGISTER")), UAC, False, 2.0)  # parsed, matched
    assert again.message is tx.response  # type: ignore[union-attr]
    assert tx.deadlines == {"J": 32.0}  # Timer J unchanged
    assert layer.advance(31.9) == []
    assert layer.advance(32.0) == [TransactionTerminated(tx)]
    assert tx.response is None and tx.state is TransactionState.TERMINATED


def test_provisional_responses_and_reliable_transports_are_left_as_they_were() -> None:
    layer = Layer()
    register = request("REGISTER")
    tx = new_server(layer, register)
    trying = wire_request(register).make_response(100)
    layer.respond(tx, trying, 0.0)
    layer.advance(0.5)
    assert layer.retransmission(tx, 1.0) == [Send(trying, UAC, tx)]  # Proceeding: the Response
    assert tx.response is trying
    # over TCP Timer J is zero: the transaction ends with its answer and keeps nothing
    tcp = request("REGISTER", transport="TCP", branch="z9hG4bK-tcp")
    reliable = new_server(layer, tcp, flow="tcp:c", reliable=True)
    ok = wire_request(tcp).make_response(200, to_tag="t")
    assert layer.respond(reliable, ok, 1.0) == [
        Send(ok, "tcp:c", reliable),
        TransactionTerminated(reliable),
    ]
    layer.advance(1.5)
    assert reliable.response is None


def test_an_invite_server_transaction_keeps_its_response_object() -> None:
    layer = Layer()
    invite = request("INVITE", branch="z9hG4bK-inv")
    tx = new_server(layer, invite)
    assert isinstance(tx, InviteServerTransaction)
    busy = wire_request(invite).make_response(486, to_tag="b1")
    layer.respond(tx, busy, 0.0)
    layer.advance(0.1)
    assert layer.receive(wire_request(invite), UAC, False, 0.2) == [Send(busy, UAC, tx)]
    assert tx.response is busy


def test_keys_of_transactions_from_one_next_hop_share_its_port() -> None:
    layer = Layer()
    one = new_server(layer, request("REGISTER", branch="z9hG4bK-p1", sent_by="192.0.2.7:5070"))
    two = new_server(layer, request("REGISTER", branch="z9hG4bK-p2", sent_by="192.0.2.7:5070"))
    assert one.key[3] == 5070 and one.key[3] is two.key[3]  # each Via parse made its own int
    assert one.key[2] is two.key[2]  # and the host, as before


def test_a_response_that_would_not_read_back_is_resent_as_the_response() -> None:
    layer = Layer()
    tx, response, octets = answered(layer, 401, "Un\r\nauthorized")  # a TU's slip in the reason
    (resent,) = layer.retransmission(tx, 1.0)
    assert tx.response is response and resent == Send(response, UAC, tx)
    assert resent.message.to_bytes() == octets


# --- through a real server over UDP ----------------------------------------------------------------
@pytest.fixture
def served() -> Iterator[RunningServer]:
    server = start_server(transports=("udp",))
    try:
        yield server
    finally:
        server.stop()


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5.0)
    return sock


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5.0
    while not condition():
        assert time.monotonic() < deadline, "the server did not get there in 5 s"
        time.sleep(0.01)


def test_a_retransmitted_register_gets_the_same_octets_at_the_top_vias_address(
    served: RunningServer,
) -> None:
    server = served
    sender, answers = udp_socket(), udp_socket()  # the Via names a port other than the sender's
    records: list[MessageRecord] = []
    transports = server.server.transports
    assert transports is not None
    try:
        port = answers.getsockname()[1]
        data = (
            f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-sent-1\r\n"  # no rport: §18.2.2
            f"Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=s1\r\nTo: <sip:alice@{DOMAIN}>\r\n"
            f"Call-ID: sent-1@127.0.0.1\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: <sip:alice@127.0.0.1:{port}>\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        address = server.address("udp")
        sender.sendto(data, address)
        first = answers.recv(65535)
        layer = server.server.core.layer
        wait_for(lambda: len(layer) == 1)
        (tx,) = layer.transactions()
        server.call(_nothing())  # a turn of the server's loop: the 401 is out
        sender.sendto(data, address)  # the same octets: recognised by the retransmission cache
        second = answers.recv(65535)
        assert isinstance(tx.response, SentResponse)  # the layer keeps the octets that went out
        changed = data.replace(b"CSeq: 1", b"CSeq:  1", 1)  # same transaction, parsed: §17.2.3
        sender.sendto(changed, address)
        third = answers.recv(65535)
        wait_for(lambda: server.server.stats()["transport"]["sent"] == 3)
        transports.tap = records.append  # with a capture on, every datagram is parsed
        sender.sendto(data, address)
        fourth = answers.recv(65535)
        wait_for(lambda: len(records) == 2)
    finally:
        transports.tap = None
        sender.close()
        answers.close()
    assert first.startswith(b"SIP/2.0 401 ") and second == third == fourth == first
    stats = server.server.stats()
    assert stats["answered"] == {401: 1}  # one registrar run: the transaction answered the rest
    assert stats["transport"]["received"] == 4 and stats["transport"]["sent"] == 4
    assert server.server.retransmissions == 1  # the repeated octets while no capture ran
    received, sent = records
    assert received.data == data and received.dst == address
    assert sent.data == first and (sent.src, sent.dst) == (address, ("127.0.0.1", port))


async def _nothing() -> None:
    return None


def test_a_retransmitted_message_through_the_proxy_gets_the_same_final_octets() -> None:
    from test_proxy import ALICE, profile_with

    server = start_server(profile_with(), transports=("udp",))
    records: list[MessageRecord] = []
    transports = server.server.transports
    assert transports is not None
    transports.tap = records.append
    phone = Phone(server.address("udp"), "app")
    caller = Caller(server.address("udp"))
    try:
        assert phone.register().status == 200
        message = caller.request("MESSAGE", ALICE, headers=[("Content-Type", "text/plain")])
        message.body = b"hello"
        message.headers.set("Content-Length", 5)
        caller.send(message)
        forwarded = phone.expect("MESSAGE")
        assert isinstance(forwarded, Request)
        phone.reply(forwarded, 200)
        assert caller.expect("200").status == 200  # type: ignore[union-attr]
        wait_for(lambda: _finals_to(records, caller.port) == 1)
        server.call(_nothing())
        caller.send(message)  # the caller missed the 200: it sends the MESSAGE again
        assert caller.expect("200").status == 200  # type: ignore[union-attr]
        assert phone.quiet("MESSAGE", 0.3)  # absorbed by the server transaction, not forwarded
    finally:
        phone.close()
        caller.close()
        server.stop()
    finals = [r.data for r in records if r.dst[1] == caller.port and r.data.startswith(b"SIP/2.0 200")]
    assert len(finals) == 2 and finals[0] == finals[1]
    parsed = parse_datagram(finals[0])
    assert isinstance(parsed, Response) and parsed.cseq.method == "MESSAGE"


def _finals_to(records: list[MessageRecord], port: int) -> int:
    return sum(1 for r in records if r.dst[1] == port and r.data.startswith(b"SIP/2.0 200"))


def test_the_retransmission_cache_keys_on_the_octets_and_checks_the_transactions_flow() -> None:
    from imscore.server.retransmit import RetransmissionCache
    from imscore.sip.transaction import TransactionLayer
    from imscore.transport import Flow

    layer: TransactionLayer[Flow] = TransactionLayer()
    cache = RetransmissionCache(layer)
    here = Flow("udp", ("127.0.0.1", 5060), ("127.0.0.1", 5999))
    there = Flow("udp", ("127.0.0.1", 5060), ("127.0.0.1", 6000))  # another source, same octets
    data = wire_request(request("REGISTER", branch="z9hG4bK-cache")).to_bytes()

    def parsed() -> Request:
        message = parse_datagram(data)
        assert isinstance(message, Request)
        message.check_framing_headers()
        return message

    assert cache.lookup(data, here) is None
    first = parsed()
    (received,) = layer.receive(first, here, False, 0.0)
    cache.remember(first, here, layer.find_server)
    tx = received.transaction  # type: ignore[union-attr]
    assert cache.lookup(data, Flow("udp", ("127.0.0.1", 5060), ("127.0.0.1", 5999))) is tx  # equal
    # from the other source: not the cache's; the parser matches it to the transaction (§17.2.3),
    # which is not filed under that source, and the entry of its own flow stays
    assert cache.lookup(data, there) is None
    copy = parsed()
    assert layer.receive(copy, there, False, 0.1) == []  # Trying: absorbed
    cache.remember(copy, there, layer.find_server)
    assert len(cache) == 1
    assert cache.lookup(data, there) is None and cache.lookup(data, here) is tx


def test_receive_new_creates_what_receive_creates_and_leaves_a_matched_request_alone() -> None:
    layer, other = Layer(), Layer()
    for method, branch in (("REGISTER", "z9hG4bK-n1"), ("INVITE", "z9hG4bK-n2"), ("OPTIONS", None)):
        req = wire_request(request(method, branch=branch))
        made = layer.receive_new(req, UAC, False, 0.0)
        want = other.receive(wire_request(request(method, branch=branch)), UAC, False, 0.0)
        assert made is not None and [type(o) for o in made] == [type(o) for o in want]
        (created,) = [o.transaction for o in made if isinstance(o, RequestReceived)]
        (plain,) = [o.transaction for o in want if isinstance(o, RequestReceived)]
        assert type(created) is type(plain) and created.key == plain.key
        assert layer.find_server(req) is created
    tx, response, octets = answered(layer, 401)
    again = wire_request(request("REGISTER"))
    assert layer.receive_new(again, UAC, False, 1.0) is None  # matched: nothing done, not slimmed
    assert tx.response is response
    (resent,) = layer.receive(again, UAC, False, 1.0)  # what the general path then does
    assert isinstance(tx.response, SentResponse) and tx.response == octets
    assert resent == Send(tx.response, UAC, tx)
    fresh = wire_request(request("REGISTER", branch="z9hG4bK-n3"))
    assert layer.receive_new(fresh, UAC, False, 2.0) is not None
    assert len(layer) == 5


def _splits(section: bytes) -> bool:
    try:
        Headers._from_section(section).check()
    except SipError:
        return False
    return True


def test_a_sent_response_is_kept_as_octets_exactly_when_its_section_splits() -> None:
    """_as_sent's shortcut (a section of plain ``token:value`` lines needs no trying) gives the
    verdict of splitting the section, over seeded sections of good and bad lines."""
    rng = random.Random(13)
    lines = [
        b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1", b"To: <sip:a@b>;tag=1", b"X:", b"v:x",
        b"Name : value", b"Name\t: value", b" folded", b"\tfolded", b"", b"no colon", b": empty",
        b"Bad(name): x", b"Caf\xc3\xa9: x", b"X: caf\xc3\xa9 \xff", b"X: a\rb", b"X: a\nb", b"X: \r",
        b"WWW-Authenticate: Digest realm=\"r\", nonce=\"n\"", b"Content-Length: 0",
    ]  # fmt: skip
    plain = 0
    for _ in range(3000):
        section = b"".join(rng.choice(lines) + b"\r\n" for _ in range(rng.randrange(0, 6)))
        response = Response(401, None, Headers._from_section(section), received=True)
        kept = tx_as_sent(response)
        assert isinstance(kept, SentResponse) is _splits(section), section
        if isinstance(kept, SentResponse):
            assert kept == response.to_bytes()
        plain += _PLAIN_SECTION.fullmatch(section) is not None
    assert 100 < plain < 2900  # both ways taken
