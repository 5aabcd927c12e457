"""The server's transaction user in virtual time: what it answers to each kind of request."""

from __future__ import annotations

import itertools

import pytest

from imscore.server import ServerCore
from imscore.sip import Request, Response, parse_datagram
from imscore.sip.transaction import Send

FLOW = ("udp", "192.0.2.10", 5060)
_branches = itertools.count()


def request(
    method: str,
    *extra: str,
    uri: str = "sip:ims.example.test",
    cseq: str | None = None,
    branch: str | None = None,
) -> bytes:
    branch = branch or f"z9hG4bK-core-{next(_branches)}"
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch={branch};rport",
        "Max-Forwards: 70",
        "To: <sip:ims.example.test>",
        "From: <sip:alice@ims.example.test>;tag=a1",
        "Call-ID: core-1@192.0.2.10",
        f"CSeq: {cseq or '1 ' + method}",
        *extra,
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(core: ServerCore[tuple[str, str, int]], data: bytes, now: float = 0.0) -> Response:
    message = parse_datagram(data)
    assert isinstance(message, Request)
    message.check_framing_headers()
    sends = core.receive(message, FLOW, False, now)
    finals = [s.message for s in sends if isinstance(s.message, Response) and s.message.status >= 200]
    assert len(finals) == 1, sends
    final = finals[0]
    assert isinstance(final, Response)
    assert all(s.flow == FLOW for s in sends)
    return final


def test_options_gets_200_with_allow_and_supported() -> None:
    core: ServerCore[tuple[str, str, int]] = ServerCore(server_name="imscore/test")
    response = answer(core, request("OPTIONS", branch="z9hG4bK-core-1"))
    assert response.status == 200
    assert response.headers.get("Allow") == "OPTIONS, ACK, CANCEL"
    assert "Supported" in response.headers
    assert response.headers.get("Server") == "imscore/test"
    assert response.to.tag and response.top_via.branch == "z9hG4bK-core-1"
    assert core.counters.answered == {200: 1}


@pytest.mark.parametrize(
    ("method", "status"),
    [("REGISTER", 405), ("INVITE", 405), ("MESSAGE", 405), ("BYE", 405), ("FROBNICATE", 501)],
)
def test_other_methods(method: str, status: int) -> None:
    core: ServerCore[tuple[str, str, int]] = ServerCore()
    response = answer(core, request(method))
    assert response.status == status
    assert response.headers.get("Allow") == "OPTIONS, ACK, CANCEL"


def test_rfc_3261_checks_in_order() -> None:
    core: ServerCore[tuple[str, str, int]] = ServerCore()
    assert answer(core, request("OPTIONS", uri="mailto:alice@example.test")).status == 416
    unsupported = answer(core, request("OPTIONS", "Require: 100rel, foo"))
    assert unsupported.status == 420 and unsupported.headers.get("Unsupported") == "100rel, foo"
    bad = answer(core, request("OPTIONS", "Contact: <sip:a@b>;q=7"))
    assert bad.status == 400 and "q" in bad.reason


def test_retransmission_is_answered_from_the_transaction() -> None:
    core: ServerCore[tuple[str, str, int]] = ServerCore()
    first = answer(core, request("OPTIONS", branch="z9hG4bK-again"))
    message = parse_datagram(request("OPTIONS", branch="z9hG4bK-again"))
    assert isinstance(message, Request)
    again = core.receive(message, FLOW, False, 0.1)
    assert [s.message.to_bytes() for s in again if isinstance(s, Send)] == [first.to_bytes()]
    assert core.counters.answered == {200: 1}  # decided once


def test_cancel_matches_or_not() -> None:
    core: ServerCore[tuple[str, str, int]] = ServerCore()
    assert answer(core, request("CANCEL")).status == 481
    invite = parse_datagram(request("INVITE", branch="z9hG4bK-invite"))
    assert isinstance(invite, Request)
    sends = core.receive(invite, FLOW, False, 0.0)
    assert [s.message.status for s in sends if isinstance(s.message, Response)] == [100, 405]
    cancel = request("CANCEL", cseq="1 CANCEL", branch="z9hG4bK-invite")
    assert answer(core, cancel).status == 200


def test_timers_end_the_transactions() -> None:
    core: ServerCore[tuple[str, str, int]] = ServerCore()
    answer(core, request("OPTIONS"))
    deadline = core.next_deadline()
    assert deadline == pytest.approx(32.0)  # Timer J over UDP
    assert core.advance(deadline) == []
    assert core.next_deadline() is None
