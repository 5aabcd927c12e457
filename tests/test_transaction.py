"""The transaction layer (RFC 3261 §17 with RFC 6026), driven in virtual time.

Every test owns a fake clock: it passes ``now`` in and jumps to :meth:`next_deadline`; nothing sleeps.
Messages travel through ``to_bytes``/``parse_datagram`` where the layer would see them from the wire.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

import imscore.sip.message as message_module
from imscore.sip import Request, Response, SipError, TransactionError, parse_datagram
from imscore.sip.transaction import (
    MAGIC_COOKIE,
    AckReceived,
    ClientTransaction,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Output,
    RequestReceived,
    ResponseReceived,
    Send,
    SentResponse,
    ServerTransaction,
    StrayResponse,
    TimerConfig,
    Transaction,
    TransactionLayer,
    TransactionState,
    TransactionTerminated,
    TransactionTimeout,
    TransportFailed,
    build_ack,
    build_cancel,
    is_rfc3261_branch,
    new_branch,
)

State = TransactionState
Layer = TransactionLayer[str]
Events = list[tuple[float, Output[str]]]

BRANCH = "z9hG4bK776asdhds"
CALL_ID = "a84b4c76e66710@pc33.atlanta.com"
UAC = "udp:192.0.2.10:5060"  # a flow, as the transport would name it


def request(
    method: str = "INVITE",
    *,
    branch: str | None = BRANCH,
    sent_by: str = "pc33.atlanta.com",
    transport: str = "UDP",
    uri: str = "sip:bob@biloxi.com",
    cseq: int = 314159,
    to_tag: str | None = None,
    from_tag: str | None = "1928301774",
    call_id: str = CALL_ID,
    extra: Iterable[tuple[str, str]] = (),
) -> Request:
    """A realistic request (RFC 3261 §24.2 style) with a knob for each matching field."""
    via = f"SIP/2.0/{transport} {sent_by}" + (f";branch={branch}" if branch else "")
    to = "Bob <sip:bob@biloxi.com>" + (f";tag={to_tag}" if to_tag else "")
    from_ = "Alice <sip:alice@atlanta.com>" + (f";tag={from_tag}" if from_tag else "")
    headers = [
        ("Via", via),
        ("Max-Forwards", "70"),
        ("To", to),
        ("From", from_),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
        ("Contact", "<sip:alice@pc33.atlanta.com>"),
        *extra,
        ("Content-Length", "0"),
    ]
    return Request(method, uri, headers)


def wire(message: Request | Response) -> Request | Response:
    """The message as a peer receives it: serialised and parsed again."""
    parsed = parse_datagram(message.to_bytes())
    assert parsed is not None
    return parsed


def wire_request(message: Request) -> Request:
    parsed = wire(message)
    assert isinstance(parsed, Request)
    return parsed


def answer(req: Request, status: int, to_tag: str | None = "a6c85cf") -> Response:
    """The response a peer would send back for ``req``, as received from the wire."""
    resp = wire(req.make_response(status, to_tag=None if status == 100 else to_tag))
    assert isinstance(resp, Response)
    return resp


def state(transaction: Transaction[str]) -> TransactionState:
    """The state, read through a call so mypy does not narrow it across the test."""
    return transaction.state


def kinds(outputs: Sequence[object]) -> list[type]:
    return [type(o) for o in outputs]


def run(layer: Layer, until: float) -> Events:
    """Jump from deadline to deadline up to ``until``, collecting what fires and when."""
    events: Events = []
    while (deadline := layer.next_deadline()) is not None and deadline <= until:
        events += [(deadline, out) for out in layer.advance(deadline)]
    return events


def send_times(events: Events) -> list[float]:
    return [t for t, out in events if isinstance(out, Send)]


def others(events: Events) -> list[tuple[float, type]]:
    return [(t, type(out)) for t, out in events if not isinstance(out, Send)]


def only(outputs: Sequence[Output[str]], kind: type) -> list[Output[str]]:
    return [o for o in outputs if isinstance(o, kind)]


def new_server(
    layer: Layer, req: Request, now: float = 0.0, *, flow: str = UAC, reliable: bool = False
) -> ServerTransaction[str]:
    out = layer.receive(wire_request(req), flow, reliable, now)
    received = only(out, RequestReceived)
    assert len(received) == 1
    event = received[0]
    assert isinstance(event, RequestReceived)
    return event.transaction


# --- timer configuration ---------------------------------------------------------------------------
def test_timer_defaults_follow_rfc3261_table_4_and_rfc6026() -> None:
    t = TimerConfig()
    assert (t.t1, t.t2, t.t4) == (0.5, 4.0, 5.0)
    assert (t.timer_b, t.timer_f, t.timer_h, t.timer_j) == (32.0, 32.0, 32.0, 32.0)
    assert t.timer_d == 32.0
    assert (t.timer_i, t.timer_k) == (5.0, 5.0)
    assert (t.timer_l, t.timer_m) == (32.0, 32.0)


def test_timer_derived_values_follow_t1_and_t4_and_can_be_overridden() -> None:
    t = TimerConfig(t1=0.25, t2=1.0, t4=2.0)
    assert (t.timer_b, t.timer_f, t.timer_h, t.timer_j, t.timer_l, t.timer_m) == (16.0,) * 6
    assert (t.timer_i, t.timer_k) == (2.0, 2.0)
    assert t.timer_d == 32.0  # "at least 32 seconds" (§17.1.1.2)
    assert TimerConfig(t1=1.0).timer_d == 64.0  # never shorter than the server's Timer H
    o = TimerConfig(timer_b=10, timer_d=40, timer_i=1, timer_k=0, timer_m=7)
    assert (o.timer_b, o.timer_d, o.timer_i, o.timer_k, o.timer_m) == (10.0, 40.0, 1.0, 0.0, 7.0)
    assert o.timer_f == 32.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"t1": 0},
        {"t1": -0.5},
        {"t1": float("nan")},
        {"t2": 0.25},  # smaller than T1
        {"t4": -1},
        {"timer_b": 0},
        {"timer_d": -1},
        {"timer_m": float("inf")},
    ],
)
def test_bad_timer_values_raise_transaction_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(TransactionError) as info:
        TimerConfig(**kwargs)
    assert isinstance(info.value, SipError)
    assert info.value.status == 500


# --- INVITE client transaction ---------------------------------------------------------------------
def test_invite_client_over_udp_retransmits_on_timer_a_and_times_out_on_timer_b() -> None:
    layer = Layer()
    invite = request()
    tx, out = layer.send_request(invite, UAC, False, 0.0)
    assert isinstance(tx, InviteClientTransaction)
    assert state(tx) is State.CALLING
    assert kinds(out) == [Send]
    assert out[0] == Send(invite, UAC, tx)
    assert tx.deadlines == {"A": 0.5, "B": 32.0}
    assert layer.advance(0.49) == []

    events = run(layer, 100.0)
    assert [0.0, *send_times(events)] == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    for _, out_ in events:
        if isinstance(out_, Send):
            assert out_.message is invite
            assert out_.flow == UAC
    assert others(events) == [(32.0, TransactionTimeout), (32.0, TransactionTerminated)]
    assert state(tx) is State.TERMINATED
    assert len(layer) == 0
    assert layer.next_deadline() is None


def test_one_late_advance_fires_the_whole_schedule_in_order() -> None:
    layer = Layer()
    tx, _ = layer.send_request(request(), UAC, False, 0.0)
    out = layer.advance(100.0)
    assert kinds(out) == [Send] * 6 + [TransactionTimeout, TransactionTerminated]
    assert tx.terminated


def test_invite_client_over_reliable_transport_never_retransmits() -> None:
    layer = Layer()
    tx, out = layer.send_request(request(transport="TCP"), "tcp:conn1", True, 0.0)
    assert kinds(out) == [Send]
    assert tx.deadlines == {"B": 32.0}
    events = run(layer, 100.0)
    assert send_times(events) == []
    assert others(events) == [(32.0, TransactionTimeout), (32.0, TransactionTerminated)]


def test_invite_client_provisional_moves_to_proceeding_and_stops_timers_a_and_b() -> None:
    layer = Layer()
    invite = request()
    tx, _ = layer.send_request(invite, UAC, False, 0.0)
    assert send_times(run(layer, 0.6)) == [0.5]
    out = layer.receive(answer(invite, 100), UAC, False, 0.6)
    assert kinds(out) == [ResponseReceived]
    assert state(tx) is State.PROCEEDING
    assert tx.deadlines == {}
    assert layer.next_deadline() is None
    assert run(layer, 500.0) == []  # no retransmission, no timeout: the TU CANCELs (Timer C)
    ringing = answer(invite, 180)
    out = layer.receive(ringing, UAC, False, 40.0)
    assert out == [ResponseReceived(ringing, tx)]  # further provisionals are passed up too
    assert tx.response is ringing
    assert state(tx) is State.PROCEEDING


def test_invite_client_non_2xx_final_sends_ack_then_timer_d() -> None:
    layer = Layer()
    invite = request(extra=[("Route", "<sip:p1.example.com;lr>")])
    tx, _ = layer.send_request(invite, UAC, False, 0.0)
    busy = answer(invite, 486)
    out = layer.receive(busy, UAC, False, 1.0)
    assert kinds(out) == [ResponseReceived, Send]
    assert out[0] == ResponseReceived(busy, tx)
    assert state(tx) is State.COMPLETED
    ack = tx.ack
    assert ack is not None
    assert out[1] == Send(ack, UAC, tx)
    assert ack.method == "ACK"
    assert ack.to.tag == "a6c85cf"
    assert ack.cseq.seq == 314159 and ack.cseq.method == "ACK"
    assert ack.top_via.branch == BRANCH
    assert ack.headers.get_all("Route") == ["<sip:p1.example.com;lr>"]
    assert tx.deadlines == {"D": 33.0}  # no A, no B any more

    # a retransmitted final response: the same ACK again, nothing for the TU
    assert layer.receive(answer(invite, 486), UAC, False, 2.0) == [Send(ack, UAC, tx)]
    assert layer.receive(answer(invite, 180), UAC, False, 2.5) == []
    assert layer.receive(answer(invite, 200), UAC, False, 2.6) == []

    events = run(layer, 100.0)
    assert others(events) == [(33.0, TransactionTerminated)]
    assert send_times(events) == []
    # once terminated, the response is stray
    late = answer(invite, 486)
    assert layer.receive(late, "udp:elsewhere", False, 34.0) == [StrayResponse(late, "udp:elsewhere")]


def test_invite_client_non_2xx_over_reliable_transport_terminates_at_once() -> None:
    layer = Layer()
    invite = request(transport="TCP")
    tx, _ = layer.send_request(invite, "tcp:conn1", True, 0.0)
    out = layer.receive(answer(invite, 404), "tcp:conn1", True, 0.2)
    assert kinds(out) == [ResponseReceived, Send, TransactionTerminated]  # Timer D = 0
    assert tx.terminated
    assert len(layer) == 0


def test_invite_client_2xx_moves_to_accepted_and_passes_every_2xx_up() -> None:
    layer = Layer()
    invite = request()
    tx, _ = layer.send_request(invite, UAC, False, 0.0)
    ok = answer(invite, 200)
    out = layer.receive(ok, UAC, False, 1.0)
    assert out == [ResponseReceived(ok, tx)]  # no ACK: the TU acknowledges a 2xx
    assert state(tx) is State.ACCEPTED
    assert tx.ack is None
    assert tx.deadlines == {"M": 33.0}

    again = answer(invite, 200)
    assert layer.receive(again, UAC, False, 1.5) == [ResponseReceived(again, tx)]
    fork = answer(invite, 200, to_tag="314159")  # another branch of a fork
    assert layer.receive(fork, UAC, False, 2.0) == [ResponseReceived(fork, tx)]
    assert layer.receive(answer(invite, 486), UAC, False, 2.5) == []
    assert layer.receive(answer(invite, 180), UAC, False, 2.6) == []

    events = run(layer, 100.0)
    assert events == [(33.0, TransactionTerminated(tx))]
    late = answer(invite, 200)
    assert layer.receive(late, UAC, False, 40.0) == [StrayResponse(late, UAC)]


# --- non-INVITE client transaction -----------------------------------------------------------------
def test_non_invite_client_over_udp_caps_timer_e_at_t2_and_times_out_on_timer_f() -> None:
    layer = Layer()
    options = request("OPTIONS")
    tx, out = layer.send_request(options, UAC, False, 0.0)
    assert isinstance(tx, NonInviteClientTransaction)
    assert state(tx) is State.TRYING
    assert out == [Send(options, UAC, tx)]
    assert tx.deadlines == {"E": 0.5, "F": 32.0}
    events = run(layer, 100.0)
    assert [0.0, *send_times(events)] == [
        0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5
    ]  # fmt: skip
    assert others(events) == [(32.0, TransactionTimeout), (32.0, TransactionTerminated)]
    assert len(layer) == 0


def test_non_invite_client_over_reliable_transport_only_has_timer_f() -> None:
    layer = Layer()
    tx, _ = layer.send_request(request("REGISTER", transport="TLS"), "tls:c", True, 0.0)
    assert tx.deadlines == {"F": 32.0}
    events = run(layer, 100.0)
    assert send_times(events) == []
    assert others(events) == [(32.0, TransactionTimeout), (32.0, TransactionTerminated)]


def test_non_invite_client_provisional_keeps_retransmitting_every_t2() -> None:
    layer = Layer()
    register = request("REGISTER")
    tx, _ = layer.send_request(register, UAC, False, 0.0)
    trying = answer(register, 100)
    assert layer.receive(trying, UAC, False, 0.2) == [ResponseReceived(trying, tx)]
    assert state(tx) is State.PROCEEDING
    assert tx.deadlines == {"E": 0.5, "F": 32.0}  # E keeps its deadline; F still runs
    events = run(layer, 100.0)
    assert send_times(events) == [0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5]
    assert others(events) == [(32.0, TransactionTimeout), (32.0, TransactionTerminated)]


def test_non_invite_client_final_response_completes_and_timer_k_absorbs_retransmissions() -> None:
    layer = Layer()
    bye = request("BYE", to_tag="a6c85cf")
    tx, _ = layer.send_request(bye, UAC, False, 0.0)
    ok = answer(bye, 200)
    assert layer.receive(ok, UAC, False, 1.0) == [ResponseReceived(ok, tx)]
    assert state(tx) is State.COMPLETED
    assert tx.deadlines == {"K": 6.0}  # T4
    assert layer.receive(answer(bye, 200), UAC, False, 2.0) == []
    assert layer.receive(answer(bye, 100), UAC, False, 2.1) == []
    assert run(layer, 100.0) == [(6.0, TransactionTerminated(tx))]


def test_non_invite_client_final_over_reliable_transport_terminates_at_once() -> None:
    layer = Layer()
    bye = request("BYE", transport="TCP", to_tag="a6c85cf")
    tx, _ = layer.send_request(bye, "tcp:c", True, 0.0)
    out = layer.receive(answer(bye, 481), "tcp:c", True, 0.3)
    assert kinds(out) == [ResponseReceived, TransactionTerminated]  # Timer K = 0
    assert tx.terminated


# --- INVITE server transaction ---------------------------------------------------------------------
def test_invite_server_sends_100_at_once_and_absorbs_retransmissions() -> None:
    layer = Layer()
    invite = request(extra=[("Timestamp", "54.5")])
    out = layer.receive(wire_request(invite), UAC, False, 0.0)
    assert kinds(out) == [Send, RequestReceived]
    tx = out[1].transaction  # type: ignore[union-attr]
    assert isinstance(tx, InviteServerTransaction)
    assert state(tx) is State.PROCEEDING
    trying = out[0].message  # type: ignore[union-attr]
    assert isinstance(trying, Response)
    assert trying.status == 100
    assert out[0].flow == UAC  # type: ignore[union-attr]
    assert trying.to.tag is None
    assert trying.top_via.branch == BRANCH
    assert trying.call_id == CALL_ID
    assert trying.headers.get("Timestamp") == "54.5"  # §8.2.6.1
    assert layer.next_deadline() is None  # Proceeding runs no timer

    # a retransmission: the last provisional again, on the original flow, the TU is not told
    out = layer.receive(wire_request(invite), "udp:other", False, 0.5)
    assert out == [Send(trying, UAC, tx)]
    ringing = invite.make_response(180, to_tag="9fxced76sl")
    assert layer.respond(tx, ringing, 1.0) == [Send(ringing, UAC, tx)]
    assert layer.receive(wire_request(invite), UAC, False, 1.5) == [Send(ringing, UAC, tx)]
    assert len(layer) == 1


def test_invite_server_without_auto_trying_sends_nothing_by_itself() -> None:
    layer = TransactionLayer[str](auto_trying=False)
    invite = request()
    out = layer.receive(wire_request(invite), UAC, False, 0.0)
    assert kinds(out) == [RequestReceived]
    assert layer.receive(wire_request(invite), UAC, False, 0.5) == []  # nothing to re-send yet


def test_invite_server_timer_g_doubles_up_to_t2_until_timer_h() -> None:
    layer = Layer()
    invite = request()
    tx = new_server(layer, invite)
    busy = invite.make_response(486, to_tag="9fxced76sl")
    assert layer.respond(tx, busy, 10.0) == [Send(busy, UAC, tx)]
    assert state(tx) is State.COMPLETED
    assert tx.deadlines == {"G": 10.5, "H": 42.0}
    events = run(layer, 100.0)
    assert send_times(events) == [10.5, 11.5, 13.5, 17.5, 21.5, 25.5, 29.5, 33.5, 37.5, 41.5]
    assert all(out.message is busy and out.flow == UAC for _, out in events if isinstance(out, Send))
    assert others(events) == [(42.0, TransactionTimeout), (42.0, TransactionTerminated)]
    assert len(layer) == 0


def test_invite_server_completed_resends_final_on_retransmitted_invite() -> None:
    layer = Layer()
    invite = request()
    tx = new_server(layer, invite)
    busy = invite.make_response(486, to_tag="9fxced76sl")
    layer.respond(tx, busy, 1.0)
    assert layer.receive(wire_request(invite), UAC, False, 1.2) == [Send(busy, UAC, tx)]
    # further responses from the TU are discarded
    assert layer.respond(tx, invite.make_response(500, to_tag="x"), 1.3) == []
    assert tx.response is busy


def test_invite_server_ack_confirms_stops_timer_g_and_timer_i_terminates() -> None:
    layer = Layer()
    invite = request()
    tx = new_server(layer, invite)
    busy = invite.make_response(486, to_tag="9fxced76sl")
    layer.respond(tx, busy, 0.0)
    assert send_times(run(layer, 1.0)) == [0.5]
    ack = build_ack(invite, busy)  # what the client transaction sends: the INVITE's branch
    assert layer.receive(wire_request(ack), UAC, False, 1.0) == []  # absorbed, not for the TU
    assert state(tx) is State.CONFIRMED
    assert tx.deadlines == {"I": 6.0}  # T4
    assert layer.receive(wire_request(ack), UAC, False, 2.0) == []  # more ACKs absorbed
    assert layer.receive(wire_request(invite), UAC, False, 2.5) == []
    events = run(layer, 100.0)
    assert events == [(6.0, TransactionTerminated(tx))]


def test_invite_server_over_reliable_transport_no_timer_g_and_timer_i_is_zero() -> None:
    layer = Layer()
    invite = request(transport="TCP")
    tx = new_server(layer, invite, flow="tcp:c", reliable=True)
    busy = invite.make_response(486, to_tag="9fxced76sl")
    assert layer.respond(tx, busy, 0.0) == [Send(busy, "tcp:c", tx)]
    assert tx.deadlines == {"H": 32.0}
    out = layer.receive(wire_request(build_ack(invite, busy)), "tcp:c", True, 0.1)
    assert out == [TransactionTerminated(tx)]
    assert len(layer) == 0


def test_invite_server_2xx_moves_to_accepted_with_timer_l() -> None:
    layer = Layer()
    invite = request()
    tx = new_server(layer, invite)
    assert isinstance(tx, InviteServerTransaction)
    ok = invite.make_response(200, to_tag="9fxced76sl")
    assert layer.respond(tx, ok, 1.0) == [Send(ok, UAC, tx)]
    assert state(tx) is State.ACCEPTED
    assert tx.deadlines == {"L": 33.0}  # no Timer G: 2xx retransmission is the TU's job
    assert run(layer, 30.0) == []

    # INVITE retransmissions are absorbed; the TU's 2xx retransmissions are sent
    assert layer.receive(wire_request(invite), UAC, False, 2.0) == []
    assert layer.respond(tx, ok, 2.0) == [Send(ok, UAC, tx)]
    assert layer.respond(tx, invite.make_response(486, to_tag="9fxced76sl"), 2.1) == []
    assert layer.respond(tx, invite.make_response(180, to_tag="9fxced76sl"), 2.2) == []

    # an ACK matching the transaction goes to the TU (RFC 6026 §7.1) ...
    same_branch_ack = wire_request(build_ack(invite, invite.make_response(404, to_tag="9fxced76sl")))
    assert layer.receive(same_branch_ack, UAC, False, 3.0) == [AckReceived(same_branch_ack, UAC, tx)]
    # ... and so does the proper ACK for the 2xx, which has its own branch and matches nothing
    ack_2xx = wire_request(request("ACK", to_tag="9fxced76sl", branch="z9hG4bKnashds8"))
    assert layer.receive(ack_2xx, UAC, False, 3.1) == [AckReceived(ack_2xx, UAC)]
    assert state(tx) is State.ACCEPTED

    assert run(layer, 100.0) == [(33.0, TransactionTerminated(tx))]
    with pytest.raises(TransactionError):
        layer.respond(tx, ok, 34.0)
    # after Timer L the INVITE is new again
    assert kinds(layer.receive(wire_request(invite), UAC, False, 35.0)) == [Send, RequestReceived]


def test_invite_server_2xx_over_reliable_transport_still_runs_timer_l() -> None:
    layer = Layer()
    invite = request(transport="TCP")
    tx = new_server(layer, invite, flow="tcp:c", reliable=True)
    layer.respond(tx, invite.make_response(200, to_tag="t"), 0.0)
    assert tx.deadlines == {"L": 32.0}


# --- non-INVITE server transaction -----------------------------------------------------------------
def test_non_invite_server_state_machine_over_udp() -> None:
    layer = Layer()
    bye = request("BYE", to_tag="a6c85cf")
    out = layer.receive(wire_request(bye), UAC, False, 0.0)
    assert kinds(out) == [RequestReceived]  # no automatic 100 for non-INVITE
    tx = out[0].transaction  # type: ignore[union-attr]
    assert isinstance(tx, NonInviteServerTransaction)
    assert state(tx) is State.TRYING
    assert layer.receive(wire_request(bye), UAC, False, 0.5) == []  # Trying: discarded

    trying = bye.make_response(100)
    assert layer.respond(tx, trying, 0.6) == [Send(trying, UAC, tx)]
    assert state(tx) is State.PROCEEDING
    assert layer.receive(wire_request(bye), UAC, False, 1.5) == [Send(trying, UAC, tx)]

    ok = bye.make_response(200)
    assert layer.respond(tx, ok, 2.0) == [Send(ok, UAC, tx)]
    assert state(tx) is State.COMPLETED
    assert tx.deadlines == {"J": 34.0}  # 64*T1
    # once sent, the final response is kept as its octets, and re-sent as them
    resent = SentResponse(ok.to_bytes())
    assert layer.receive(wire_request(bye), UAC, False, 3.5) == [Send(resent, UAC, tx)]
    assert layer.respond(tx, bye.make_response(500), 4.0) == []  # discarded (§17.2.2)
    assert run(layer, 100.0) == [(34.0, TransactionTerminated(tx))]
    assert len(layer) == 0


def test_non_invite_server_over_reliable_transport_timer_j_is_zero() -> None:
    layer = Layer()
    register = request("REGISTER", transport="TCP")
    tx = new_server(layer, register, flow="tcp:c", reliable=True)
    ok = register.make_response(200, to_tag="r1")
    assert layer.respond(tx, ok, 0.0) == [Send(ok, "tcp:c", tx), TransactionTerminated(tx)]


def retained_bytes(root: object, *, beyond: Sequence[object]) -> int:
    """The sizes of every object reachable from ``root``, not going into ``beyond``, classes or
    enum members (what the transaction shares with every other one, as are the empty field lists
    of every header section not split yet)."""
    shared = (message_module._UNSPLIT_KEYS, message_module._UNSPLIT_ITEMS)
    seen: set[int] = {id(o) for o in (*beyond, *shared)}
    stack, total = [root], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type | TransactionState):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


def challenged_register(
    layer: Layer, now: float = 0.0
) -> tuple[ServerTransaction[str], Response, bytes]:
    """A REGISTER with credentials answered 401 with a fresh challenge, as the registrar answers a
    wrong password, serialised as the transport sends it: the transaction, the 401, its octets."""
    digest = 'Digest username="alice", realm="atlanta.com", nonce="' + "4e" * 32 + '", response="00"'
    register = request("REGISTER", extra=[("Authorization", digest), ("Expires", "3600")])
    out = layer.receive(wire_request(register), UAC, False, now)
    (received,) = out
    assert isinstance(received, RequestReceived)
    parsed = received.request
    _ = parsed.to, parsed.from_, parsed.call_id, parsed.headers.get("Authorization")  # the TU reads
    challenge = 'Digest realm="atlanta.com", nonce="' + "5f" * 32 + '", algorithm=MD5, qop="auth"'
    unauthorized = parsed.make_response(401, headers=[("WWW-Authenticate", challenge)], to_tag="r1")
    (sent,) = layer.respond(received.transaction, unauthorized, now)
    assert isinstance(sent, Send)
    octets = sent.message.to_bytes()  # what the transport does with a response
    _ = sent.message.top_via
    return received.transaction, unauthorized, octets


def test_completed_non_invite_server_keeps_only_its_answer_and_resends_the_same_octets() -> None:
    layer = Layer()
    tx, unauthorized, octets = challenged_register(layer)
    assert state(tx) is State.COMPLETED
    assert tx.request is None  # the TU has it; the transaction only answers retransmissions now
    assert tx.response is unauthorized  # until the layer's next call: the transport sends it
    layer.advance(1.0)  # the layer's next call (nothing due): the sent 401 is kept as its octets
    assert isinstance(tx.response, SentResponse) and tx.response == octets
    held = retained_bytes(tx, beyond=[layer, UAC])
    # about 9 KB when the request and parsed fields stayed; now the octets with a bytes object's
    # header, and the transaction with its key and deadline (the count includes strings, None and
    # the empty timer dict that every transaction shares)
    assert sys.getsizeof(tx.response) <= sys.getsizeof(octets) + 16
    assert held < len(octets) + 800, held
    # a retransmitted REGISTER recognised by its octets gets the very same 401, again and again
    for attempt in range(3):
        resent = layer.retransmission(tx, 2.0 + attempt)
        assert resent == [Send(SentResponse(octets), UAC, tx)]
        assert resent[0].message.to_bytes() == octets
        assert resent[0].message.top_via.branch == BRANCH
        layer.advance(2.5 + attempt)
    assert retained_bytes(tx, beyond=[layer, UAC]) == held
    assert run(layer, 100.0) == [(32.0, TransactionTerminated(tx))]
    assert tx.response is None  # a terminated transaction holds nothing more


def test_completed_non_invite_server_answers_a_parsed_retransmission_with_the_same_octets() -> None:
    layer = Layer()
    tx, _, octets = challenged_register(layer)
    digest = 'Digest username="alice", realm="atlanta.com", nonce="' + "4e" * 32 + '", response="00"'
    again = request("REGISTER", extra=[("Authorization", digest), ("Expires", "3600")])
    (resent,) = layer.receive(wire_request(again), UAC, False, 1.0)
    assert resent == Send(SentResponse(octets), UAC, tx)
    assert resent.message.to_bytes() == octets
    (resent,) = layer.receive(wire_request(again), UAC, False, 2.0)
    assert resent.message.to_bytes() == octets


def test_a_response_whose_headers_would_not_parse_back_is_resent_as_it_was() -> None:
    layer = Layer()
    register = request("REGISTER")
    tx = new_server(layer, register)
    odd = register.make_response(401, headers=[("X-Odd", "one\r\ntwo")], to_tag="r1")  # a TU's slip
    (sent,) = layer.respond(tx, odd, 0.0)
    assert isinstance(sent, Send)
    octets = sent.message.to_bytes()
    layer.advance(1.0)
    (resent,) = layer.retransmission(tx, 2.0)
    assert isinstance(resent, Send) and resent.message.to_bytes() == octets


def test_the_retransmission_cache_lets_go_of_ended_transactions_without_new_datagrams() -> None:
    from imscore.server.retransmit import TIDY_SLACK, RetransmissionCache
    from imscore.transport import Flow

    layer: TransactionLayer[Flow] = TransactionLayer()
    cache = RetransmissionCache(layer)
    flow = Flow("udp", ("127.0.0.1", 5060), ("127.0.0.1", 5999))
    count = 2 * TIDY_SLACK
    for i in range(count):
        register = request("REGISTER", branch=f"{MAGIC_COOKIE}-flood-{i}", call_id=f"{i}@flood")
        data = register.to_bytes()
        assert cache.lookup(data, flow) is None
        parsed = parse_datagram(data)
        assert isinstance(parsed, Request)
        (received,) = layer.receive(parsed, flow, False, 0.0)
        assert isinstance(received, RequestReceived)
        cache.remember(parsed, flow, layer.find_server)
        layer.respond(received.transaction, parsed.make_response(401, to_tag="r1"), 0.0)
        assert cache.lookup(data, flow) is received.transaction  # a retransmission finds it
    assert len(cache) == count
    layer.advance(layer.timers.timer_j)  # Timer J ends them all; no datagram arrives any more
    cache.tidy()
    assert len(cache) == 0


# --- matching --------------------------------------------------------------------------------------
def test_same_branch_from_another_sent_by_is_another_transaction() -> None:
    layer = Layer()
    new_server(layer, request("OPTIONS"))
    out = layer.receive(wire_request(request("OPTIONS", sent_by="pc34.atlanta.com")), UAC, False, 0)
    assert kinds(out) == [RequestReceived]
    out = layer.receive(wire_request(request("OPTIONS", sent_by="pc33.atlanta.com:5070")), UAC, False, 0)
    assert kinds(out) == [RequestReceived]
    assert len(layer) == 3
    # default port and host case do not matter
    for sent_by in ("pc33.atlanta.com:5060", "PC33.Atlanta.COM"):
        assert layer.receive(wire_request(request("OPTIONS", sent_by=sent_by)), UAC, False, 1) == []
    assert len(layer) == 3


def test_same_branch_other_method_is_another_transaction_except_ack() -> None:
    layer = Layer()
    invite = request()
    tx = new_server(layer, invite)
    # a CANCEL shares the INVITE's branch but has its own transaction
    cancel = wire_request(build_cancel(invite))
    out = layer.receive(cancel, UAC, False, 1.0)
    assert kinds(out) == [RequestReceived]
    cancel_tx = out[0].transaction  # type: ignore[union-attr]
    assert isinstance(cancel_tx, NonInviteServerTransaction)
    assert cancel_tx is not tx
    assert layer.find_server(cancel) is cancel_tx
    assert layer.find_cancelled(cancel) is tx
    assert state(tx) is State.PROCEEDING
    # the TU answers both
    assert kinds(layer.respond(cancel_tx, cancel.make_response(200, to_tag="t"), 1.1)) == [Send]
    terminated = invite.make_response(487, to_tag="t")
    assert kinds(layer.respond(tx, terminated, 1.1)) == [Send]
    # the ACK for the 487 carries the INVITE's branch and matches the INVITE transaction
    ack = wire_request(build_ack(invite, terminated))
    assert layer.find_server(ack) is tx
    assert layer.receive(ack, UAC, False, 1.2) == []
    assert state(tx) is State.CONFIRMED
    # an OPTIONS reusing the branch is a transaction of its own as well
    assert kinds(layer.receive(wire_request(request("OPTIONS")), UAC, False, 1.3)) == [RequestReceived]


def test_cancel_for_unknown_transaction_and_ack_matching_nothing() -> None:
    layer = Layer()
    invite = request()
    new_server(layer, invite)
    other = build_cancel(request(branch="z9hG4bKother1"))
    assert layer.find_cancelled(other) is None
    stray_ack = wire_request(request("ACK", branch="z9hG4bKnashds8", to_tag="x"))
    assert layer.find_server(stray_ack) is None
    assert layer.receive(stray_ack, "udp:x", False, 1.0) == [AckReceived(stray_ack, "udp:x")]


def test_cancel_of_a_non_invite_request_finds_it() -> None:
    layer = Layer()
    subscribe = request("SUBSCRIBE")
    tx = new_server(layer, subscribe)
    assert layer.find_cancelled(build_cancel(subscribe)) is tx


def test_client_matching_uses_branch_and_cseq_method() -> None:
    layer = Layer()
    invite = request()
    tx, _ = layer.send_request(invite, UAC, False, 0.0)
    layer.receive(answer(invite, 180), UAC, False, 0.1)
    cancel = build_cancel(invite)
    cancel_tx, out = layer.send_request(cancel, tx.flow, tx.reliable, 0.2)
    assert out == [Send(cancel, UAC, cancel_tx)]
    assert isinstance(cancel_tx, NonInviteClientTransaction)

    ok = answer(cancel, 200)
    assert layer.find_client(ok) is cancel_tx
    assert layer.receive(ok, UAC, False, 0.3) == [ResponseReceived(ok, cancel_tx)]
    assert state(tx) is State.PROCEEDING
    terminated = answer(invite, 487)
    assert layer.find_client(terminated) is tx
    assert kinds(layer.receive(terminated, UAC, False, 0.4)) == [ResponseReceived, Send]
    assert state(cancel_tx) is State.COMPLETED and state(tx) is State.COMPLETED


def test_responses_matching_no_client_transaction_are_stray() -> None:
    layer = Layer()
    invite = request()
    layer.send_request(invite, UAC, False, 0.0)
    unknown = answer(request(branch="z9hG4bKunknown"), 200)
    assert layer.receive(unknown, "udp:p", False, 0.1) == [StrayResponse(unknown, "udp:p")]
    no_branch = answer(request(branch=None), 200)
    assert layer.receive(no_branch, "udp:p", False, 0.1) == [StrayResponse(no_branch, "udp:p")]
    wrong_method = answer(request("OPTIONS"), 200)  # our branch, another method
    assert layer.receive(wrong_method, "udp:p", False, 0.1) == [StrayResponse(wrong_method, "udp:p")]


# --- RFC 2543 fallback -----------------------------------------------------------------------------
INV2543_BODY = (
    b"v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.5\r\ns=-\r\n"
    b"c=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 49217 RTP/AVP 0\r\n"
)


def inv2543(
    *,
    uri: str = "sip:UserB@example.com",
    cseq: str = "56 INVITE",
    via: str = "SIP/2.0/UDP iftgw.example.com",
    to: str = "sip:+16505552222@ss1.example.net;user=phone",
    method: str = "INVITE",
) -> Request:
    """RFC 4475 §3.4.1 (inv2543): no branch, no From tag, no Max-Forwards."""
    headers = [
        ("Via", via),
        ("From", "<sip:+13035551111@ift.client.example.net;user=phone>"),
        ("Record-Route", "<sip:UserB@example.com;maddr=ss1.example.com>"),
        ("To", to),
        ("Call-ID", "inv2543.1717@ift.client.example.com"),
        ("CSeq", cseq),
    ]
    if method == "INVITE":
        headers.append(("Content-Type", "application/sdp"))
        return Request(method, uri, headers, INV2543_BODY)
    return Request(method, uri, headers)


def test_rfc2543_invite_retransmission_matches_without_branch() -> None:
    layer = Layer()
    tx = new_server(layer, inv2543())
    assert tx.branch is None
    assert tx.key[0] == "2543"
    trying = tx.response
    assert trying is not None
    assert layer.receive(wire_request(inv2543()), UAC, False, 0.5) == [Send(trying, UAC, tx)]
    # an equivalent Request-URI (host case, §19.1.4) still matches
    same = wire_request(inv2543(uri="sip:UserB@EXAMPLE.COM"))
    assert layer.receive(same, UAC, False, 0.6) == [Send(trying, UAC, tx)]
    assert len(layer) == 1
    # any matching field changed makes another transaction
    for changed in (
        inv2543(uri="sip:UserC@example.com"),
        inv2543(cseq="57 INVITE"),
        inv2543(via="SIP/2.0/UDP iftgw2.example.com"),
        inv2543(via="SIP/2.0/UDP iftgw.example.com;received=192.0.2.99"),
        inv2543(to="sip:+16505552222@ss1.example.net;user=phone;tag=1"),
    ):
        assert kinds(layer.receive(wire_request(changed), UAC, False, 1.0)) == [
            Send,
            RequestReceived,
        ]
    assert len(layer) == 6


def test_rfc2543_ack_matches_by_to_tag_of_the_response_sent() -> None:
    layer = Layer()
    invite = inv2543()
    tx = new_server(layer, invite)
    not_found = invite.make_response(404, to_tag="2543tag")
    layer.respond(tx, not_found, 1.0)
    assert state(tx) is State.COMPLETED

    to = "sip:+16505552222@ss1.example.net;user=phone"
    wrong = wire_request(inv2543(method="ACK", cseq="56 ACK", to=f"{to};tag=other"))
    assert layer.find_server(wrong) is None
    assert layer.receive(wrong, UAC, False, 1.1) == [AckReceived(wrong, UAC)]
    assert state(tx) is State.COMPLETED

    ack = wire_request(inv2543(method="ACK", cseq="56 ACK", to=f"{to};tag=2543tag"))
    assert layer.find_server(ack) is tx
    assert layer.receive(ack, UAC, False, 1.2) == []
    assert state(tx) is State.CONFIRMED
    assert run(layer, 100.0) == [(6.2, TransactionTerminated(tx))]


def test_rfc2543_ack_in_accepted_state_goes_to_the_tu() -> None:
    layer = Layer()
    invite = inv2543()
    tx = new_server(layer, invite)
    assert isinstance(tx, InviteServerTransaction)
    layer.respond(tx, invite.make_response(200, to_tag="2543tag"), 1.0)
    to = "sip:+16505552222@ss1.example.net;user=phone;tag=2543tag"
    ack = wire_request(inv2543(method="ACK", cseq="56 ACK", to=to))
    assert layer.receive(ack, UAC, False, 1.2) == [AckReceived(ack, UAC, tx)]  # RFC 6026 §6


def test_branch_that_is_only_the_cookie_falls_back_to_rfc2543_matching() -> None:
    # RFC 4475 §3.2.1 (badbranch): "branch=z9hG4bK" carries no transaction id
    layer = Layer()
    first = request("OPTIONS", branch=MAGIC_COOKIE, sent_by="192.0.2.1")
    tx = new_server(layer, first)
    assert tx.key[0] == "2543"
    assert layer.receive(wire_request(first), UAC, False, 0.1) == []  # retransmission (Trying)
    other_call = request("OPTIONS", branch=MAGIC_COOKIE, sent_by="192.0.2.1", call_id="other@x")
    assert kinds(layer.receive(wire_request(other_call), UAC, False, 0.2)) == [RequestReceived]


def test_rfc4475_inv2543_from_the_corpus(corpus: Path) -> None:
    data = (corpus / "rfc4475" / "inv2543.dat").read_bytes()
    layer = Layer()
    message = parse_datagram(data)
    assert isinstance(message, Request)
    out = layer.receive(message, UAC, False, 0.0)
    assert kinds(out) == [Send, RequestReceived]
    again = parse_datagram(data)
    assert isinstance(again, Request)
    assert kinds(layer.receive(again, UAC, False, 0.5)) == [Send]
    assert len(layer) == 1


# --- custom timers ---------------------------------------------------------------------------------
def test_custom_t1_t2_t4_change_every_schedule() -> None:
    timers = TimerConfig(t1=0.25, t2=1.0, t4=2.0)
    layer = TransactionLayer[str](timers)
    layer.send_request(request(), UAC, False, 0.0)
    events = run(layer, 100.0)
    assert send_times(events) == [0.25, 0.75, 1.75, 3.75, 7.75, 15.75]
    assert others(events) == [(16.0, TransactionTimeout), (16.0, TransactionTerminated)]

    layer.send_request(request("OPTIONS"), UAC, False, 100.0)
    events = run(layer, 200.0)
    assert send_times(events) == [100.25, 100.75, *(100.75 + n for n in range(1, 16))]
    assert others(events) == [(116.0, TransactionTimeout), (116.0, TransactionTerminated)]

    invite = request(branch="z9hG4bKserver1")
    tx = new_server(layer, invite, 200.0)
    busy = invite.make_response(486, to_tag="t")
    layer.respond(tx, busy, 200.0)
    events = run(layer, 205.0)
    assert send_times(events)[:4] == [200.25, 200.75, 201.75, 202.75]
    layer.receive(wire_request(build_ack(invite, busy)), UAC, False, 205.0)
    assert tx.deadlines == {"I": 207.0}  # T4

    bye = request("BYE", to_tag="t")
    client, _ = layer.send_request(bye, UAC, False, 300.0)
    layer.receive(answer(bye, 200), UAC, False, 300.1)
    assert client.deadlines == {"K": 302.1}  # T4

    invite2 = request(branch="z9hG4bKclient2")
    client2, _ = layer.send_request(invite2, UAC, False, 400.0)
    layer.receive(answer(invite2, 603), UAC, False, 400.5)
    assert client2.deadlines == {"D": 432.5}  # at least 32 s


def test_timer_overrides_are_used() -> None:
    layer = TransactionLayer[str](TimerConfig(timer_d=5.0, timer_b=10.0, timer_l=3.0))
    invite = request()
    tx, _ = layer.send_request(invite, UAC, False, 0.0)
    assert tx.deadlines["B"] == 10.0
    layer.receive(answer(invite, 486), UAC, False, 1.0)
    assert tx.deadlines == {"D": 6.0}
    server_invite = request(branch="z9hG4bKsrv")
    server = new_server(layer, server_invite, 2.0)
    layer.respond(server, server_invite.make_response(200, to_tag="t"), 2.0)
    assert server.deadlines == {"L": 5.0}


# --- next_deadline ---------------------------------------------------------------------------------
def test_next_deadline_tracks_the_earliest_running_timer() -> None:
    layer = Layer()
    assert layer.next_deadline() is None
    invite = request()
    tx, _ = layer.send_request(invite, UAC, False, 0.0)  # A at 0.5
    options = request("OPTIONS", branch="z9hG4bKopt1")
    opt_tx, _ = layer.send_request(options, UAC, False, 0.2)  # E at 0.7
    assert layer.next_deadline() == 0.5
    assert layer.next_deadline() == 0.5  # asking does not change it
    layer.receive(answer(invite, 180), UAC, False, 0.3)  # A and B stop
    assert layer.next_deadline() == 0.7
    assert kinds(layer.advance(0.69)) == []
    assert kinds(layer.advance(0.7)) == [Send]
    assert layer.next_deadline() == 1.7  # E doubled to 2*T1
    layer.receive(answer(options, 200), UAC, False, 1.0)  # E, F stop; K = 6.0
    assert layer.next_deadline() == 6.0
    layer.receive(answer(invite, 486), UAC, False, 2.0)  # D = 34.0
    assert layer.next_deadline() == 6.0
    assert layer.advance(6.0) == [TransactionTerminated(opt_tx)]
    assert layer.next_deadline() == 34.0
    assert layer.advance(34.0) == [TransactionTerminated(tx)]
    assert layer.next_deadline() is None
    assert layer.advance(1000.0) == []


# --- misuse and errors -----------------------------------------------------------------------------
def test_respond_on_a_terminated_transaction_raises() -> None:
    layer = Layer()
    register = request("REGISTER", transport="TCP")
    tx = new_server(layer, register, flow="tcp:c", reliable=True)
    layer.respond(tx, register.make_response(200, to_tag="r"), 0.0)
    assert tx.terminated
    with pytest.raises(TransactionError) as info:
        layer.respond(tx, register.make_response(200, to_tag="r"), 0.1)
    assert info.value.status == 500


def test_respond_checks_the_transaction_and_the_response() -> None:
    layer = Layer()
    invite = request()
    client, _ = layer.send_request(invite, UAC, False, 0.0)
    with pytest.raises(TransactionError):
        layer.respond(client, invite.make_response(200), 0.0)  # type: ignore[arg-type]
    other = Layer()
    server = new_server(other, request(branch="z9hG4bKx"))
    with pytest.raises(TransactionError):
        layer.respond(server, server.request.make_response(200), 0.0)  # not this layer's
    server = new_server(layer, request("OPTIONS", branch="z9hG4bKy"))
    with pytest.raises(TransactionError):
        layer.respond(server, request("OPTIONS", cseq=1, branch="z9hG4bKy").make_response(200), 0)
    with pytest.raises(TransactionError):
        layer.respond(server, request("OPTIONS", branch="z9hG4bKz").make_response(200), 0)
    assert state(server) is State.TRYING


@pytest.mark.parametrize(
    ("req", "why"),
    [
        (request(branch=None), "no branch"),
        (request(branch="776asdhds"), "magic cookie"),
        (request(branch=MAGIC_COOKIE), "magic cookie"),
        (request("ACK"), "ACK"),
        (Request("OPTIONS", "sip:bob@biloxi.com", [("Via", "SIP/2.0/UDP h;branch=z9hG4bKq")]), "From"),
    ],
)
def test_send_request_refuses_requests_it_cannot_own(req: Request, why: str) -> None:
    layer = Layer()
    with pytest.raises(TransactionError, match=why):
        layer.send_request(req, UAC, False, 0.0)
    assert len(layer) == 0


def test_send_request_refuses_a_branch_already_in_use_for_the_method() -> None:
    layer = Layer()
    layer.send_request(request(), UAC, False, 0.0)
    with pytest.raises(TransactionError, match="alive"):
        layer.send_request(request(), UAC, False, 0.1)
    # the same branch for a CANCEL is what §9.1 asks for
    layer.send_request(build_cancel(request()), UAC, False, 0.2)
    assert len(layer) == 2


def test_transport_error_terminates_a_client_but_not_a_server_transaction() -> None:
    layer = Layer()
    tx, _ = layer.send_request(request(), UAC, False, 0.0)
    assert layer.transport_error(tx, 0.1) == [TransportFailed(tx), TransactionTerminated(tx)]
    assert tx.terminated and tx.deadlines == {}
    assert layer.transport_error(tx, 0.2) == []  # late reports are ignored
    assert layer.next_deadline() is None

    invite = request(branch="z9hG4bKsrv")
    server = new_server(layer, invite)
    busy = invite.make_response(486, to_tag="t")
    layer.respond(server, busy, 1.0)
    assert layer.transport_error(server, 1.1) == [TransportFailed(server)]  # RFC 6026 §8.8
    assert state(server) is State.COMPLETED
    assert send_times(run(layer, 1.5)) == [1.5]  # Timer G goes on


# --- ACK and CANCEL builders -----------------------------------------------------------------------
def proxied_invite() -> Request:
    """An INVITE as a proxy forwards it: two Vias, a Route set, a body."""
    return Request(
        "INVITE",
        "sip:bob@192.0.2.4",
        [
            ("Via", "SIP/2.0/UDP bigbox3.site3.atlanta.com;branch=z9hG4bK77ef4c2312983.1"),
            ("Via", "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds8;received=192.0.2.1"),
            ("Max-Forwards", "69"),
            ("Route", "<sip:p1.example.com;lr>"),
            ("Route", "<sip:p2.example.com;lr>, <sip:p3.example.com;lr>"),
            ("To", "Bob <sip:bob@biloxi.com>"),
            ("From", "Alice <sip:alice@atlanta.com>;tag=1928301774"),
            ("Call-ID", CALL_ID),
            ("CSeq", "314159 INVITE"),
            ("Contact", "<sip:alice@pc33.atlanta.com>"),
            ("Content-Type", "application/sdp"),
        ],
        b"v=0\r\n",
    )


def names(message: Request) -> list[str]:
    return [field.name for field in message.headers]


def test_build_ack_copies_the_fields_section_17_1_1_3_names() -> None:
    invite = proxied_invite()
    busy = answer(invite, 486, to_tag="314159")
    ack = build_ack(invite, busy)
    assert ack.method == "ACK"
    assert str(ack.uri) == "sip:bob@192.0.2.4"
    assert ack.uri == invite.uri and ack.uri is not invite.uri
    assert ack.headers.get_all("Via") == [
        "SIP/2.0/UDP bigbox3.site3.atlanta.com;branch=z9hG4bK77ef4c2312983.1"
    ]
    assert ack.headers.get_all("Route") == [
        "<sip:p1.example.com;lr>",
        "<sip:p2.example.com;lr>, <sip:p3.example.com;lr>",
    ]
    assert ack.headers.get("Max-Forwards") == "70"
    assert ack.headers.get("From") == "Alice <sip:alice@atlanta.com>;tag=1928301774"
    assert ack.headers.get("To") == "Bob <sip:bob@biloxi.com>;tag=314159"
    assert ack.to.tag == "314159"
    assert ack.headers.get("Call-ID") == CALL_ID
    assert ack.headers.get("CSeq") == "314159 ACK"
    assert ack.headers.get("Content-Length") == "0"
    assert ack.body == b""
    assert names(ack) == [
        "Via", "Max-Forwards", "Route", "Route", "From", "To", "Call-ID", "CSeq", "Content-Length"
    ]  # fmt: skip
    again = wire_request(ack)
    again.validate()
    assert again.to_bytes() == ack.to_bytes()


def test_the_ack_the_transaction_sends_is_build_ack() -> None:
    layer = Layer()
    invite = proxied_invite()
    tx, _ = layer.send_request(invite, UAC, False, 0.0)
    busy = answer(invite, 603, to_tag="dec")
    layer.receive(busy, UAC, False, 0.1)
    assert tx.ack is not None
    assert tx.ack.to_bytes() == build_ack(invite, busy).to_bytes()


def test_build_ack_refuses_2xx_and_non_invite() -> None:
    invite = proxied_invite()
    with pytest.raises(TransactionError, match="TU"):
        build_ack(invite, invite.make_response(200, to_tag="t"))
    options = request("OPTIONS")
    with pytest.raises(TransactionError):
        build_ack(options, options.make_response(404, to_tag="t"))


def test_build_cancel_copies_the_fields_section_9_1_names() -> None:
    invite = proxied_invite()
    cancel = build_cancel(invite)
    assert cancel.method == "CANCEL"
    assert str(cancel.uri) == "sip:bob@192.0.2.4"
    assert cancel.headers.get_all("Via") == [
        "SIP/2.0/UDP bigbox3.site3.atlanta.com;branch=z9hG4bK77ef4c2312983.1"
    ]
    assert cancel.top_via.branch == invite.top_via.branch
    assert cancel.headers.get_all("Route") == invite.headers.get_all("Route")
    assert cancel.headers.get("Max-Forwards") == "70"
    assert cancel.headers.get("From") == invite.headers.get("From")
    assert cancel.headers.get("To") == "Bob <sip:bob@biloxi.com>"
    assert cancel.to.tag is None
    assert cancel.headers.get("Call-ID") == CALL_ID
    assert cancel.headers.get("CSeq") == "314159 CANCEL"
    assert cancel.headers.get("Content-Length") == "0"
    assert "Content-Type" not in cancel.headers and "Contact" not in cancel.headers
    assert cancel.body == b""
    wire_request(cancel).validate()


def test_build_cancel_keeps_a_to_tag_and_refuses_ack_and_cancel() -> None:
    reinvite = request(to_tag="a6c85cf", cseq=2)
    cancel = build_cancel(reinvite)
    assert cancel.to.tag == "a6c85cf"
    assert cancel.headers.get("CSeq") == "2 CANCEL"
    for method in ("ACK", "CANCEL"):
        with pytest.raises(TransactionError):
            build_cancel(request(method))


# --- branches --------------------------------------------------------------------------------------
def test_new_branch_is_unique_and_carries_the_cookie() -> None:
    branches = {new_branch() for _ in range(2000)}
    assert len(branches) == 2000
    for branch in branches:
        assert branch.startswith(MAGIC_COOKIE) and is_rfc3261_branch(branch)
    branch = new_branch()
    req = wire_request(request(branch=branch))
    assert req.top_via.branch == branch


def test_new_branch_with_a_seed_is_deterministic() -> None:
    assert new_branch("call-1/hop-2") == new_branch("call-1/hop-2")
    assert new_branch("call-1/hop-2") != new_branch("call-1/hop-3")
    assert is_rfc3261_branch(new_branch("x"))


@pytest.mark.parametrize(
    ("branch", "expected"),
    [
        (None, False),
        ("", False),
        ("z9hG4bK", False),
        ("776asdhds", False),
        ("z9hG4bK776asdhds", True),
        ("Z9HG4BK776asdhds", True),
    ],
)
def test_is_rfc3261_branch(branch: str | None, expected: bool) -> None:
    assert is_rfc3261_branch(branch) is expected


def test_transaction_classes_and_live_listing() -> None:
    layer = Layer()
    client, _ = layer.send_request(request(), UAC, False, 0.0)
    server = new_server(layer, request("OPTIONS", branch="z9hG4bKo"))
    assert isinstance(client, ClientTransaction) and client.is_client and client.is_invite
    assert isinstance(server, ServerTransaction) and not server.is_client
    assert not server.is_invite
    assert list(layer.transactions()) == [client, server]
    assert "Calling" in repr(client)


def stale_entries(layer: Layer) -> int:
    """Heap entries whose timer no longer runs (white-box: the heap is private)."""
    return sum(1 for _, seq, tx, name in layer._heap if tx._timers.get(name, (0, -1))[1] != seq)


def test_stopped_timers_do_not_pile_up_in_the_heap() -> None:
    layer = Layer()
    for n in range(500):
        now = n * 0.01
        invite = request(branch=new_branch())
        tx, _ = layer.send_request(invite, UAC, False, now)  # A and B start
        layer.receive(answer(invite, 180), UAC, False, now)  # A and B stop
        layer.receive(answer(invite, 200), UAC, False, now)  # M starts
        assert layer._stale == stale_entries(layer)
        assert tx.deadlines == {"M": now + 32.0}
    assert len(layer) == 500
    assert len(layer._heap) < 2 * 500  # 1000 stopped timers were dropped, 500 Ms remain
    assert layer.next_deadline() == 32.0
    events = run(layer, 100.0)
    assert len(events) == 500 and all(isinstance(o, TransactionTerminated) for _, o in events)
    assert len(layer) == 0 and layer._stale == stale_entries(layer) == 0


def test_memory_is_given_back_each_time_live_transactions_halve_after_a_peak() -> None:
    from imscore.server.memtrim import Action, MemoryReturn

    trims: list[int] = []
    memory = MemoryReturn(peak=1000, trim=lambda: trims.append(1), collect=None)
    assert {memory.observe(live) for live in (10, 500, 999, 600)} == {Action.NONE}  # no peak worth it
    assert [memory.observe(live) for live in (4000, 3000, 2000, 1500, 1000, 900, 0)] == [
        Action.NONE,
        Action.NONE,
        Action.TRIM,  # halved from 4000
        Action.NONE,
        Action.TRIM,  # halved from 2000
        Action.NONE,
        Action.SETTLE,  # the burst is over (tests/test_memtrim.py has the rest): released, trimmed
    ]
    assert len(trims) == memory.trims == 3
    assert memory.observe(0) is Action.NONE  # nothing more to give back
