"""Three baresip phones (headless, tests/devices.py) registered on one address, called THROUGH imscore.

Under the multi-device profile a call to alice rings all three (parallel forking); under
legacy-single-registration only the newest registration is kept, so a call rings that phone alone.

The caller is the Python UA of tests/sipua.py, because three phones that auto-answer at once all send
200 OK before any CANCEL can reach them: imscore forwards every 2xx (RFC 3261 §16.7), and the caller
must ACK each and hang up all but the one it keeps (§13.2.2.4), which a one-dialog SIPp scenario
cannot do. The all-auto-answer test asserts that race honestly (every phone saw the INVITE; each
either answered or was cancelled; exactly one call stays up); a second test with one auto-answer
phone and two that nobody picks up checks the CANCEL path deterministically.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from devices import Baresip, TracedMessage, require_binary, stop_all
from sipua import Caller

from imscore.sip import Request, Response
from imscore.testing import RunningServer, start_server

ALICE = "sip:alice@ims.example.test"
REASON = 'SIP;cause=200;text="Call completed elsewhere"'
SDP = (
    b"v=0\r\no=carol 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def serve(profile: str) -> Iterator[RunningServer]:
    """imscore with ``profile`` on a free loopback UDP port (skips the test without baresip)."""
    require_binary("baresip", "baresip-core")
    running = start_server(profile, transports=("udp",))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def multi_device() -> Iterator[RunningServer]:
    """imscore, multi-device profile (parallel forking, memory store), on a free UDP port."""
    yield from serve("multi-device")


@pytest.fixture
def legacy() -> Iterator[RunningServer]:
    """imscore, legacy-single-registration profile (replace-all bindings), on a free UDP port."""
    yield from serve("legacy-single-registration")


@pytest.fixture
def caller(request: pytest.FixtureRequest) -> Iterator[Caller]:
    """carol@example.org (not served here: no credentials needed to call alice), calling through
    whichever server fixture the test uses."""
    server: RunningServer = request.getfixturevalue(
        "multi_device" if "multi_device" in request.fixturenames else "legacy"
    )
    agent = Caller(server.address("udp"), "carol")
    try:
        yield agent
    finally:
        agent.close()


def start_phones(
    server: RunningServer, workdir: Path, modes: list[str], wait_each: bool = False
) -> list[Baresip]:
    """Baresip phones for alice (``modes``: their answer modes), started and registered."""
    phones = [
        Baresip(
            f"phone{i}", "alice", "alice-secret", server.address("udp"), workdir=workdir, answermode=mode
        )
        for i, mode in enumerate(modes)
    ]
    try:
        for phone in phones:
            phone.start()
            if wait_each:  # one after another: their registration order is this list's
                phone.wait_registered(5)
        for phone in phones:
            phone.wait_registered(5)
    except BaseException:
        stop_all(phones)
        raise
    return phones


class Call:
    """The caller's side of one INVITE: ACKs every 2xx (each a dialog), keeps the first, hangs up
    the others (RFC 3261 §13.2.2.4)."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self.invite = caller.request(
            "INVITE", ALICE, headers=[("Content-Type", "application/sdp"), ("Content-Length", len(SDP))]
        )
        self.invite.body = SDP
        self.statuses: list[int] = []
        #: the 2xx of each dialog (by the callee's To tag), in the order they came
        self.answers: dict[str, Response] = {}

    def start(self) -> None:
        """Send the INVITE (to imscore)."""
        self.caller.send(self.invite)

    def _in_dialog(self, method: str, answer: Response, cseq: int) -> Request:
        contact = str(answer.contacts[0].uri)
        request = self.caller.request(
            method, contact, call_id=self.invite.call_id, cseq=cseq, to_tag=answer.to.tag
        )
        request.headers.set("To", f"<{ALICE}>;tag={answer.to.tag}")
        return request

    def _take(self, message: Request | Response) -> None:
        assert isinstance(message, Response), message
        if message.cseq.method != "INVITE":
            return
        self.statuses.append(message.status)
        if 200 <= message.status < 300:
            assert message.to.tag, message
            self.answers.setdefault(message.to.tag, message)
            # the ACK goes end to end (no Record-Route): sent to imscore, forwarded by Request-URI
            self.caller.send(self._in_dialog("ACK", message, 1))

    def collect(self, settle: float = 1.0, timeout: float = 5.0) -> None:
        """Take responses until a 2xx came and ``settle`` seconds passed without another final."""
        self._take(self.caller.expect("2xx", timeout))
        while True:
            try:
                self._take(self.caller.expect("final", settle))
            except AssertionError:  # nothing final for `settle` seconds
                break
        self.statuses.extend(  # the provisional responses left waiting
            m.status for m in self.caller.inbox if isinstance(m, Response) and m.cseq.method == "INVITE"
        )
        self.caller.inbox.clear()

    def hang_up(self, tag: str) -> None:
        """BYE the dialog of ``tag``; asserts its 200 (2xx retransmissions meanwhile are ACKed)."""
        bye = self._in_dialog("BYE", self.answers[tag], 2)
        self.caller.send(bye)
        while True:
            message = self.caller.expect("final", 5)
            assert isinstance(message, Response)
            if message.cseq.method == "BYE":
                assert message.status == 200 and message.to.tag == tag, message
                return
            self._take(message)


def requests(phone: Baresip, method: str) -> list[TracedMessage]:
    """The requests of ``method`` the phone received (its SIP trace)."""
    return [
        m
        for m in phone.sip_messages()
        if m.direction == "received" and m.is_request and m.method == method
    ]


def invites_received(phone: Baresip) -> list[str]:
    """The Call-IDs of the INVITEs the phone received."""
    return [m.header("Call-ID") for m in requests(phone, "INVITE")]


def answer_tag(phone: Baresip) -> str | None:
    """The To tag of the 200 OK the phone sent to an INVITE (None: it did not answer)."""
    for message in phone.sip_messages():
        if message.direction == "sent" and message.status == 200 and message.method == "INVITE":
            return message.parse().to.tag
    return None


def test_parallel_rings_three_auto_answer_phones_one_call_stays_up(
    multi_device: RunningServer, caller: Caller, tmp_path: Path
) -> None:
    phones = start_phones(multi_device, tmp_path, ["auto", "auto", "auto"])
    try:
        call = Call(caller)
        call.start()
        call.collect()
        # every phone saw the INVITE, retargeted to its own contact
        for phone in phones:
            assert invites_received(phone) == [call.invite.call_id], phone.diagnostics()
            (invite,) = requests(phone, "INVITE")
            assert invite.start_line == f"INVITE {phone.contact} SIP/2.0"
        answered = {answer_tag(phone): phone for phone in phones if answer_tag(phone)}
        assert answered, "no phone answered"
        # every 2xx a phone sent reached the caller (§16.7: a proxy forwards each 2xx), no other
        assert set(call.answers) == set(answered)
        assert all(s in (100, 180, 200) for s in call.statuses), call.statuses
        # a phone that did not answer was cancelled; one that answered may get the CANCEL too (it
        # crossed its 200) but that does not end its call. Every CANCEL says why (RFC 3326), also
        # one deferred until the phone's 180 reached imscore after the winning 200
        for phone in phones:
            if answer_tag(phone) is None:
                assert "CANCEL" in phone.received_methods(), phone.diagnostics()
            for cancel in requests(phone, "CANCEL"):
                assert cancel.header("Reason") == REASON
        # the caller keeps the first answer and hangs up the others: one call stays established
        kept, *extra = call.answers
        for tag in extra:
            call.hang_up(tag)
            answered[tag].wait_for_event("CALL_CLOSED", 5)
        winner = answered[kept]
        call_id = winner.wait_for_call(5, "CALL_ESTABLISHED")
        established = [p for p in phones if "CALL_ESTABLISHED" in p.calls_seen().get(call_id, [])]
        up = [p for p in established if "CALL_CLOSED" not in p.calls_seen()[call_id]]
        assert up == [winner], [(p.name, p.calls_seen()) for p in phones]
        call.hang_up(kept)
        assert winner.wait_for_call(5, "CALL_CLOSED") == call_id
        assert winner.received_methods()[-2:] == ["ACK", "BYE"]
    finally:
        stop_all(phones)


def test_parallel_auto_answer_phone_wins_and_two_ringing_phones_get_cancel(
    multi_device: RunningServer, caller: Caller, tmp_path: Path
) -> None:
    # registered in this order, so the auto-answer phone gets its INVITE last
    phones = start_phones(multi_device, tmp_path, ["manual", "manual", "auto"], wait_each=True)
    ringing, answering = phones[:2], phones[2]
    try:
        call = Call(caller)
        call.start()
        for phone in ringing:  # the phones nobody picks up ring first
            phone.wait_for_event("CALL_INCOMING", 5)
        call.collect(settle=0.5)
        (tag,) = call.answers
        assert tag == answer_tag(answering)
        assert 180 in call.statuses and 487 not in call.statuses
        for phone in ringing:
            call_id = phone.wait_for_call(5, "CALL_CLOSED")
            assert "CALL_ESTABLISHED" not in phone.calls_seen()[call_id]
            assert phone.received_methods() == ["INVITE", "CANCEL", "ACK"]  # ACK for its 487
            (cancel,) = requests(phone, "CANCEL")
            assert cancel.header("Reason") == REASON  # a 2xx elsewhere (RFC 3326)
            assert answer_tag(phone) is None
        answering.wait_for_call(5, "CALL_ESTABLISHED")
        call.hang_up(tag)
        answering.wait_for_call(5, "CALL_CLOSED")
        assert answering.received_methods() == ["INVITE", "ACK", "BYE"]
    finally:
        stop_all(phones)


def test_legacy_single_registration_keeps_the_newest_phone_and_rings_it_alone(
    legacy: RunningServer, caller: Caller, tmp_path: Path
) -> None:
    phones = start_phones(legacy, tmp_path, ["auto", "auto", "auto"], wait_each=True)
    try:
        stored = legacy.call(legacy.server.store.all())  # type: ignore[union-attr]
        assert [b.uri for b in stored] == [phones[2].contact]  # only the newest registration
        call = Call(caller)
        call.start()
        call.collect(settle=0.5)
        (tag,) = call.answers
        assert tag == answer_tag(phones[2])
        assert invites_received(phones[2]) == [call.invite.call_id]
        assert invites_received(phones[0]) == [] and invites_received(phones[1]) == []
        call.hang_up(tag)
        phones[2].wait_for_call(5, "CALL_CLOSED")
        # the replaced phones un-register their own (stale) contacts when stopped (SIGTERM: a
        # REGISTER with Expires: 0): the newest phone's binding stays
        stop_all(phones[:2])
        stored = legacy.call(legacy.server.store.all())  # type: ignore[union-attr]
        assert [b.uri for b in stored] == [phones[2].contact]
    finally:
        stop_all(phones)
