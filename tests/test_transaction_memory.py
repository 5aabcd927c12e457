"""Timer J of non-INVITE server transactions waits in the layer's queue, not in the timer heap
(issue 13: less state per finished transaction): the same deadlines, the same firing order."""

from __future__ import annotations

from test_transaction import UAC, Layer, answer, new_server, request, run, wire_request

from imscore.sip.transaction import (
    NonInviteServerTransaction,
    Send,
    TimerConfig,
    TransactionLayer,
    TransactionState,
    TransactionTerminated,
    TransactionTimeout,
)


def layer_with(**timers: float) -> Layer:
    return TransactionLayer(TimerConfig(**timers) if timers else None)


def completed(layer: Layer, branch: str, now: float) -> NonInviteServerTransaction[str]:
    req = request("REGISTER", branch=branch)
    server = new_server(layer, req, now)
    assert isinstance(server, NonInviteServerTransaction)
    layer.respond(server, wire_request(req).make_response(401, to_tag="t"), now)
    assert server.state is TransactionState.COMPLETED
    return server


def test_timer_j_deadline_and_retransmission_while_completed() -> None:
    layer = layer_with()
    server = completed(layer, "z9hG4bK-one", 10.0)
    assert server.deadlines == {"J": 10.0 + 32.0}
    assert layer.next_deadline() == 42.0
    again = layer.receive(wire_request(request("REGISTER", branch="z9hG4bK-one")), UAC, False, 20.0)
    assert [type(o) for o in again] == [Send]  # the final response re-sent
    assert layer.advance(41.999) == []
    (terminated,) = layer.advance(42.0)
    assert isinstance(terminated, TransactionTerminated) and terminated.transaction is server
    assert server.deadlines == {} and len(layer) == 0 and layer.next_deadline() is None


def test_timer_j_in_order_with_heap_timers_and_ties_by_start() -> None:
    layer = layer_with()  # T1 0.5 s: Timer F = J = 32 s
    client, _ = layer.send_request(request("OPTIONS", branch="z9hG4bK-client"), "udp:peer", False, 0.0)
    server = completed(layer, "z9hG4bK-tie", 0.0)  # J at 32.0, started after F at 32.0
    early = completed(layer, "z9hG4bK-early", -5.0)  # a clock that went back: J at 27.0
    assert layer.next_deadline() == 0.5  # the client's Timer E comes first
    events = run(layer, 100.0)
    ends = [(t, type(o), o.transaction) for t, o in events if not isinstance(o, Send)]  # type: ignore[union-attr]
    assert ends == [
        (27.0, TransactionTerminated, early),
        (32.0, TransactionTimeout, client),
        (32.0, TransactionTerminated, client),
        (32.0, TransactionTerminated, server),
    ]
    assert len(layer) == 0


def test_zero_timer_j_and_reliable_transport_terminate_at_once() -> None:
    layer = layer_with(timer_j=0.0)
    req = request("REGISTER", branch="z9hG4bK-zero")
    server = new_server(layer, req, 0.0)
    out = layer.respond(server, wire_request(req).make_response(200, to_tag="t"), 0.0)
    assert [type(o) for o in out] == [Send, TransactionTerminated]
    reliable = layer_with()
    req = request("REGISTER", branch="z9hG4bK-tcp")
    server = new_server(reliable, req, 0.0, reliable=True)
    out = reliable.respond(server, wire_request(req).make_response(200, to_tag="t"), 0.0)
    assert [type(o) for o in out] == [Send, TransactionTerminated]
    assert layer.next_deadline() is None and reliable.next_deadline() is None


def test_answer_helper_still_matches() -> None:
    # the client side is unchanged: a response completes a non-INVITE client, Timer K after it
    layer = layer_with()
    req = request("OPTIONS", branch="z9hG4bK-k")
    _, sent = layer.send_request(req, "udp:peer", False, 0.0)
    assert [type(o) for o in sent] == [Send]
    layer.receive(answer(req, 200), "udp:peer", False, 1.0)
    assert layer.next_deadline() == 1.0 + 5.0
