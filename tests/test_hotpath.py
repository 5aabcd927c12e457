"""The REGISTER hot path's shortcuts keep the behaviour: retransmissions recognised by their octets,
coroutines started eagerly, serialised headers cached, responses built with parsed headers handed
over, and the serving process's garbage-collector settings."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from imscore.server.eager import start_eagerly
from imscore.server.retransmit import RetransmissionCache
from imscore.sip import Request, parse_datagram
from imscore.sip.transaction import NonInviteServerTransaction, TransactionLayer
from imscore.testing import RunningServer, SipClient, start_server
from imscore.transport import Flow

DOMAIN = "ims.example.test"


@pytest.fixture
def served() -> Iterator[tuple[RunningServer, SipClient]]:
    server = start_server()
    client = SipClient(server.address("udp"))
    try:
        yield server, client
    finally:
        client.close()
        server.stop()


def _register(client: SipClient) -> Request:
    to = f"<sip:alice@{DOMAIN}>"
    request = client.build("REGISTER", f"sip:{DOMAIN}", [("Contact", "<sip:alice@127.0.0.1:5999>")])
    request.headers.set("To", to)
    request.headers.set("From", f"{to};tag=hot")
    return request


# --- retransmissions --------------------------------------------------------------------------------
def test_a_retransmission_gets_the_same_answer_without_a_second_registrar_run(
    served: tuple[RunningServer, SipClient],
) -> None:
    server, client = served
    data = _register(client).to_bytes()
    client.send_raw(data)
    first = client.receive()
    client.send_raw(data)  # the very same octets: a retransmission
    again = client.receive()
    assert first.status == again.status == 401
    # one challenge (a registrar run makes a fresh nonce each time): the transaction re-sent it
    assert again.to_bytes() == first.to_bytes()
    for _ in range(100):  # the server counts on its own thread, after it has answered
        stats = server.server.stats()
        if stats["transport"]["received"] == 2:
            break
        time.sleep(0.01)
    assert stats["answered"] == {401: 1}
    assert stats["transport"]["received"] == 2
    assert stats["transport"]["delivered"] == 2


def test_a_request_differing_by_one_octet_is_a_new_request(
    served: tuple[RunningServer, SipClient],
) -> None:
    server, client = served
    data = _register(client).to_bytes()
    client.send_raw(data)
    first = client.receive()
    changed = data.replace(b"CSeq: ", b"CSeq:  ", 1)  # same transaction key, other octets
    assert changed != data
    client.send_raw(changed)
    again = client.receive()
    # RFC 3261 §17.2.3 still matches it to the transaction, through the parser: same answer
    assert again.to_bytes() == first.to_bytes()
    other = _register(client).to_bytes()  # a new branch: a new transaction, a new challenge
    client.send_raw(other)
    third = client.receive()
    assert third.status == 401
    assert third.headers.get("WWW-Authenticate") != first.headers.get("WWW-Authenticate")
    assert server.server.stats()["answered"] == {401: 2}


FLOW = Flow("udp", ("127.0.0.1", 5060), ("127.0.0.1", 5999))


def _request(method: str, branch: str = "z9hG4bK-hot") -> tuple[bytes, Request]:
    data = (
        f"{method} sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch={branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:a@{DOMAIN}>;tag=1\r\nTo: <sip:a@{DOMAIN}>\r\n"
        f"Call-ID: hot@127.0.0.1\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    message = parse_datagram(data)
    assert isinstance(message, Request)
    message.check_framing_headers()
    return data, message


def test_the_cache_files_a_datagram_under_its_transaction_until_it_terminates() -> None:
    layer: TransactionLayer[Flow] = TransactionLayer()
    cache = RetransmissionCache(layer)
    data, request = _request("REGISTER")
    assert cache.lookup(data, FLOW) is None
    layer.receive(request, FLOW, False, 0.0)
    cache.remember(request, FLOW, layer.find_server)
    transaction = cache.lookup(data, FLOW)
    assert isinstance(transaction, NonInviteServerTransaction)
    assert cache.lookup(data, Flow("udp", FLOW.local, ("127.0.0.1", 6000))) is None  # other source
    # answered, then Timer J (32 s over UDP) ends the transaction: the entry goes with it
    response = request.make_response(200, to_tag="x")
    sends = layer.respond(transaction, response, 1.0)
    assert [s.message for s in sends] == [response]
    # re-sent as the octets it went out as (the layer keeps only them)
    resent = layer.retransmission(transaction, 2.0)
    assert [s.message.to_bytes() for s in resent] == [response.to_bytes()]
    layer.advance(1.0 + layer.timers.timer_j)
    assert transaction.terminated
    assert layer.retransmission(transaction, 40.0) == []
    assert cache.lookup(data, FLOW) is None
    assert len(cache) == 0


def test_the_cache_leaves_invite_ack_and_other_flows_to_the_parser() -> None:
    layer: TransactionLayer[Flow] = TransactionLayer()
    cache = RetransmissionCache(layer)
    for method in ("INVITE", "ACK"):
        data, request = _request(method)
        assert cache.lookup(data, FLOW) is None
        layer.receive(request, FLOW, False, 0.0)
        cache.remember(request, FLOW, layer.find_server)
        assert cache.lookup(data, FLOW) is None
    data, request = _request("OPTIONS")
    cache.lookup(data, FLOW)
    layer.receive(request, FLOW, False, 0.0)
    cache.remember(request, Flow("tcp", FLOW.local, FLOW.remote, 1), layer.find_server)  # not its
    assert cache.lookup(data, FLOW) is None
    assert len(cache) == 0


# --- eager start --------------------------------------------------------------------------------------
def test_a_coroutine_that_never_waits_runs_to_the_end_at_once() -> None:
    done: list[str] = []

    async def answer() -> int:
        return 1

    async def quick() -> None:
        done.append(f"quick {await answer()}")  # an await that does not wait

    async def main() -> None:
        assert start_eagerly(quick(), asyncio.get_running_loop()) is None
        assert done == ["quick 1"]

    asyncio.run(main())


def test_a_coroutine_that_waits_goes_on_as_a_task() -> None:
    seen: list[object] = []

    async def waits(future: asyncio.Future[int]) -> None:
        seen.append("started")
        seen.append(await future)
        await asyncio.sleep(0)
        seen.append("done")

    async def cancelled(future: asyncio.Future[int]) -> None:
        try:
            await future
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        task = start_eagerly(waits(future), loop)
        assert task is not None and seen == ["started"]
        future.set_result(42)
        await asyncio.wait_for(task, 5)
        assert seen == ["started", 42, "done"]
        other = start_eagerly(cancelled(loop.create_future()), loop)
        assert other is not None
        other.cancel()
        with pytest.raises(asyncio.CancelledError):
            await other
        assert seen[-1] == "cancelled"

    asyncio.run(main())


# --- messages -----------------------------------------------------------------------------------------
def test_serialised_headers_are_cached_until_they_change() -> None:
    _, request = _request("REGISTER")
    response = request.make_response(200, to_tag="t")
    first = response.to_bytes()
    assert response.to_bytes() is not None and response.to_bytes() == first
    response.headers.add("Server", "imscore")
    assert response.to_bytes() == first[:-2] + b"Server: imscore\r\n\r\n"
    response.headers.remove("Server")
    assert response.to_bytes() == first


def test_a_response_starts_with_copies_of_the_requests_parsed_headers() -> None:
    _, request = _request("REGISTER")
    response = request.make_response(401, to_tag="t")
    assert response.top_via is not request.top_via  # a copy: changing one leaves the other
    assert str(response.top_via) == str(request.top_via)
    assert (response.cseq.seq, response.cseq.method) == (1, "REGISTER")
    assert response.cseq is not request.cseq
    assert response.call_id == request.call_id and response.content_length == 0
    response.top_via.params.set("received", "192.0.2.1")
    assert request.top_via.received is None
    # parsed from scratch, the response reads the same
    again = parse_datagram(response.to_bytes())
    assert again is not None
    assert (again.top_via.branch, again.cseq.seq, again.call_id) == ("z9hG4bK-hot", 1, "hot@127.0.0.1")


# --- the serving process ------------------------------------------------------------------------------
def test_serving_freezes_the_start_up_heap_and_raises_the_thresholds() -> None:
    code = (
        "import gc; from imscore.server.gctune import SERVING_THRESHOLDS, tune_for_serving\n"
        "before = gc.get_freeze_count(); tune_for_serving()\n"
        "assert gc.get_threshold() == SERVING_THRESHOLDS, gc.get_threshold()\n"
        "assert gc.get_freeze_count() > before\n"
        "print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --- the 200 OK's P-Associated-URI ------------------------------------------------------------------
def test_the_associated_uris_of_a_set_are_written_once_per_subscriber() -> None:
    """The P-Associated-URI value is the set's unbarred IMPUs, default first, in angle brackets;
    for a set of the subscriber it is kept and handed out again, for any other set (an equal one
    made afresh) it is made each time and not kept."""
    from imscore.registrar.register import associated_uri_text
    from imscore.sip import parse_uri
    from imscore.subscribers import ImplicitSet, Subscriber

    first = ImplicitSet(
        (parse_uri(f"sip:a@{DOMAIN}"), parse_uri(f"sip:b@{DOMAIN}"), parse_uri("tel:+15551230001"))
    )
    second = ImplicitSet((parse_uri(f"sip:c@{DOMAIN}"),))
    barred = frozenset({f"sip:b@{DOMAIN}"})
    subscriber = Subscriber(
        "a@ims.example.test", password="p", implicit_sets=(first, second), barred=barred
    )
    want = f"<sip:a@{DOMAIN}>, <tel:+15551230001>"
    made = associated_uri_text(subscriber, first)
    assert made == want == ", ".join(f"<{u}>" for u in subscriber.associated_uris(f"sip:a@{DOMAIN}"))
    assert associated_uri_text(subscriber, first) is made
    assert associated_uri_text(subscriber, second) == f"<sip:c@{DOMAIN}>"
    assert associated_uri_text(subscriber, first) is made
    alike = ImplicitSet(first.impus)  # equal, but not one of the subscriber's own
    assert associated_uri_text(subscriber, alike) == want
    assert associated_uri_text(subscriber, alike) is not associated_uri_text(subscriber, alike)
    # another subscriber holding the same set objects (nothing barred) keeps a text of its own
    again = Subscriber(subscriber.impi, password="p", implicit_sets=(first, second), barred=frozenset())
    assert associated_uri_text(again, first) == f"<sip:a@{DOMAIN}>, <sip:b@{DOMAIN}>, <tel:+15551230001>"
