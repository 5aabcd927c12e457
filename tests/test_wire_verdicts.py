"""RFC 4475 on the wire: each of the 49 torture messages sent to a running server, its answer checked.

tests/test_corpus.py checks what the parser makes of each message in process; this checks what a
sender sees: the status that comes back over real UDP (and TCP for the requests whose framing a
stream defines), or that nothing comes back where nothing may (responses). Each message goes to a
server of its own, since many of them share a branch and sent-by and would otherwise be taken for
retransmissions of one another (RFC 3261 §17.2.3).

Over UDP one change is made to each message: ``;rport`` is added to the first element of its top
Via (RFC 3581), so that an answer the application sends to the Via comes back to the test's socket
rather than to port 5060 of whatever host the Via names. A stateless answer to broken input goes
to the datagram's source anyway. Over TCP the messages go as they are.
"""

from __future__ import annotations

import csv
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from conftest import CORPUS

from imscore.sip import Response, StreamFramer, parse_datagram
from imscore.testing import RunningServer, SipClient, start_server
from imscore.transport import TransportStats

RFC4475 = CORPUS / "rfc4475"

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus missing: {CORPUS}")

#: a request for a domain the default profile does not serve, refused by the proxy or registrar
#: (which of the two, and whether 403 or 404, is relay policy, not parsing: both show it parsed)
NOT_OURS = frozenset({403, 404})
#: no answer at all: a response that matches no transaction of ours, or a broken response
NOTHING = None

Verdict = int | frozenset[int] | None

# The status each message must get, and why (RFC 4475 section; INDEX.tsv paraphrases the handling).
VERDICTS: dict[str, tuple[Verdict, str]] = {
    # 3.1.1 valid messages: they parse, so the answer is the application's
    "wsinv": (NOT_OURS, "3.1.1.1 parses: an INVITE for a domain not ours"),
    "intmeth": (NOT_OURS, "3.1.1.2 parses: unknown method, proxied, not ours"),
    "esc01": (NOT_OURS, "3.1.1.3 parses"),
    "escnull": (404, "3.1.1.4 parses: REGISTER for a domain not served (RFC 3261 §10.3 step 1)"),
    "esc02": (NOT_OURS, "3.1.1.5 parses: RE%47IST%45R is not REGISTER, proxied, not ours"),
    "lwsdisp": (NOT_OURS, "3.1.1.6 parses"),
    "longreq": (NOT_OURS, "3.1.1.7 parses"),
    "dblreq": (404, "3.1.1.8 the REGISTER only (its domain is not ours); the INVITE is discarded"),
    "semiuri": (NOT_OURS, "3.1.1.9 parses"),
    "transports": (NOT_OURS, "3.1.1.10 parses"),
    "mpart01": (NOT_OURS, "3.1.1.11 parses"),
    "unreason": (NOTHING, "3.1.1.12 a stray 200: parsed and ignored"),
    "noreason": (NOTHING, "3.1.1.13 a stray 100: parsed and ignored"),
    # 3.1.2 invalid messages
    "badinv01": (400, "3.1.2.1 empty Via and Contact parameters"),
    "clerr": (400, "3.1.2.2 Content-Length larger than the datagram's body"),
    "ncl": (400, "3.1.2.3 negative Content-Length"),
    "scalar02": (400, "3.1.2.4 CSeq 36893488147419103232"),
    "scalarlg": (NOTHING, "3.1.2.5 a broken response is dropped"),
    "quotbal": (400, "3.1.2.6 unterminated quoted string in To"),
    "ltgtruri": (400, "3.1.2.7 Request-URI in <>"),
    "lwsruri": (400, "3.1.2.8 LWS in the Request-URI"),
    "lwsstart": (400, "3.1.2.9 several SP in the Request-Line"),
    "trws": (400, "3.1.2.10 trailing SP after SIP-Version"),
    "escruri": (400, "3.1.2.11 escaped headers in a SIP Request-URI"),
    "baddate": (NOT_OURS, "3.1.2.12 accepted liberally: Date is not interpreted"),
    # the Contact is read before the answer that the domain is not served here (not on the hot path
    # of REGISTERs for our domains, which read it when they need it)
    "regbadct": (400, "3.1.2.13 Contact URI with '?' outside <>: malformed"),
    "badaspec": (400, "3.1.2.14 spaces inside <addr-spec>: rejected, not guessed"),
    "baddn": (400, "3.1.2.15 unquoted display names with commas: rejected"),
    "badvers": (505, "3.1.2.16 SIP/7.0"),
    "mismatch01": (400, "3.1.2.17 CSeq method differs from the Request-Line"),
    "mismatch02": (400, "3.1.2.18 unknown method, CSeq differs (501 preferred, 400 acceptable)"),
    "bigcode": (NOTHING, "3.1.2.19 a response code > 699 is dropped"),
    # 3.2 transaction identifier
    "badbranch": (NOT_OURS, "3.2.1 branch is only the magic cookie: processed"),
    # 3.3 application layer semantics
    "insuf": (400, "3.3.1 no Call-ID, From, To: answered from the Via and CSeq"),
    "unkscm": (416, "3.3.2 unknown Request-URI scheme"),
    "novelsc": (416, "3.3.3 soap.beep Request-URI not supported"),
    "unksm2": (400, "3.3.4 REGISTER whose To is isbn: (not a SIP/SIPS/tel AOR), before routing"),
    "bext01": (420, "3.3.5 Proxy-Require an unsupported option tag"),
    "invut": (NOT_OURS, "3.3.6 a proxy does not read the body: routed, not ours"),
    "regaut01": (404, "3.3.7 an unknown Authorization scheme is no credential: domain not served"),
    "multi01": (400, "3.3.8 two Call-ID, To, From, Max-Forwards, CSeq"),
    "mcl01": (400, "3.3.9 two different Content-Length values"),
    "bcast": (NOTHING, "3.3.10 a stray 200 (its second Via is broadcast): nothing is sent"),
    "zeromf": (483, "3.3.11 Max-Forwards 0 at a proxy"),
    "cparam01": (404, "3.3.12 parses: REGISTER for a domain not served"),
    "cparam02": (404, "3.3.13 parses: REGISTER for a domain not served"),
    "regescrt": (404, "3.3.14 parses: REGISTER for a domain not served"),
    "sdp01": (NOT_OURS, "3.3.15 a proxy does not read Accept: routed, not ours"),
    # 3.4 backward compatibility
    "inv2543": (NOT_OURS, "3.4.1 an RFC 2543 INVITE is processed"),
}

#: not sent over TCP: responses, and the three whose meaning is a datagram's: on a stream clerr
#: waits for octets that never come, dblreq is two requests, and inv2543 has a body but no
#: Content-Length (which a stream requires, RFC 3261 §18.3), so its body would be the next message
NOT_ON_STREAMS = frozenset({"clerr", "dblreq", "inv2543"})
#: over TCP the connection is closed after the answer: framing can no longer be trusted
CLOSES_STREAM = frozenset({"ncl", "mcl01"})


def _index() -> dict[str, str]:
    path = RFC4475 / "INDEX.tsv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["name"]: row["verdict"] for row in csv.DictReader(handle, delimiter="\t")}


INDEX = _index()
_VIA = re.compile(rb"(?im)^(?:via|v)[ \t]*:")


def with_rport(data: bytes) -> bytes:
    """``;rport`` added to the first element of the top Via (its folded lines included)."""
    head_end = data.find(b"\r\n\r\n")
    found = _VIA.search(data, 0, head_end if head_end >= 0 else len(data))
    assert found is not None
    end = found.end()
    while True:  # the field ends at the first line end not followed by SP or HT
        newline = data.find(b"\r\n", end)
        if data[newline + 2 : newline + 3] not in (b" ", b"\t"):
            end = newline
            break
        end = newline + 2
    comma = data.find(b",", found.end(), end)
    at = comma if comma >= 0 else end
    return data[:at] + b";rport" + data[at:]


def _matches(verdict: Verdict, status: int | None) -> bool:
    if isinstance(verdict, frozenset):
        return status in verdict
    return status == verdict


@pytest.fixture
def server() -> Iterator[RunningServer]:
    running = start_server("default")
    try:
        yield running
    finally:
        running.stop()


def _probe(server: RunningServer) -> None:
    """An OPTIONS answered after the message was read: the server is past it, and still serving."""
    client = SipClient(server.address("udp"))
    try:
        assert client.request("OPTIONS").status == 200
    finally:
        client.close()


def _udp_answers(server: RunningServer, data: bytes, verdict: Verdict) -> list[Response]:
    """Every response to ``data`` that arrives over UDP (the final one ends the wait)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.sendto(data, server.address("udp"))
        answers: list[Response] = []
        deadline = time.monotonic() + (0.3 if verdict is NOTHING else 5.0)
        if verdict is NOTHING:
            _probe(server)
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                octets, _ = sock.recvfrom(65535)
            except TimeoutError:
                break
            answer = parse_datagram(octets)
            assert isinstance(answer, Response), octets[:80]
            answers.append(answer)
            if answer.status >= 200:
                break
        return answers


def _tcp_answers(server: RunningServer, data: bytes, closes: bool) -> list[Response]:
    """The responses to ``data`` sent on a new TCP connection; then either the server closes the
    connection (``closes``) or it still answers an OPTIONS on it."""
    with socket.create_connection(server.address("tcp"), timeout=5.0) as sock:
        framer = StreamFramer()

        def receive() -> list[Response]:
            answers: list[Response] = []
            deadline = time.monotonic() + 5.0
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                try:
                    chunk = sock.recv(65535)
                except TimeoutError:
                    break
                if not chunk:
                    break
                for event in framer.feed(chunk):
                    assert isinstance(event, Response), event
                    answers.append(event)
                if answers and answers[-1].status >= 200:
                    break
            return answers

        sock.sendall(data)
        answers = receive()
        if closes:
            sock.settimeout(5.0)
            try:
                rest = sock.recv(65535)
            except ConnectionError:
                rest = b""
            assert rest == b"", "the connection should be closed"
        else:
            client = SipClient(server.address("udp"))
            probe = client.build("OPTIONS")
            client.close()
            sock.sendall(probe.to_bytes())
            (answer,) = receive()
            assert (answer.status, answer.call_id) == (200, probe.call_id), "connection still open"
        return answers


async def _stats(server: RunningServer) -> TransportStats:
    """The transport counters, read on the server's loop (so every send so far is counted)."""
    return replace(server.server.transports.stats)


def _final(answers: list[Response]) -> int | None:
    finals = [a.status for a in answers if a.status >= 200]
    assert len(finals) <= 1, finals
    return finals[0] if finals else None


@needs_corpus
def test_the_table_covers_the_49_messages() -> None:
    classified = {name for name, verdict in INDEX.items() if verdict in ("valid", "invalid")}
    assert len(classified) == 49
    assert set(VERDICTS) == classified


@needs_corpus
@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_udp_verdict(name: str, server: RunningServer) -> None:
    verdict, why = VERDICTS[name]
    original = (RFC4475 / f"{name}.dat").read_bytes()
    answers = _udp_answers(server, with_rport(original), verdict)
    status = _final(answers)
    assert _matches(verdict, status), f"{name}: got {status}, expected {verdict} ({why})"
    _probe(server)  # the server goes on
    stats = server.call(_stats(server))
    if verdict is NOTHING:
        assert not answers
        assert stats.sent == 2  # the probes' answers only: nothing went anywhere else either
    else:
        final = answers[-1]
        assert ";rport" in (final.headers.get("Via") or "")  # its Via, copied
        if name in ("insuf", "multi01", "quotbal", "scalar02", "badaspec", "baddn", "badinv01"):
            assert stats.answered_errors == 1  # the transport answered it, statelessly
    if name == "dblreq":
        assert final.cseq.method == "REGISTER" and len(answers) == 1


@needs_corpus
@pytest.mark.parametrize(
    "name",
    sorted(n for n, (v, _) in VERDICTS.items() if v is not NOTHING and n not in NOT_ON_STREAMS),
)
def test_tcp_verdict(name: str, server: RunningServer) -> None:
    verdict, why = VERDICTS[name]
    # the archive's baddn lacks the empty line that ends its headers: a stream would wait for it
    path = RFC4475 / "variants" / "baddn.crlf-fixed.dat" if name == "baddn" else RFC4475 / f"{name}.dat"
    answers = _tcp_answers(server, path.read_bytes(), closes=name in CLOSES_STREAM)
    status = _final(answers)
    assert _matches(verdict, status), f"{name} over TCP: got {status}, expected {verdict} ({why})"


@needs_corpus
def test_with_rport_touches_only_the_top_via() -> None:
    data = (RFC4475 / "wsinv.dat").read_bytes()
    changed = with_rport(data)
    assert len(changed) == len(data) + len(b";rport")
    message = parse_datagram(changed)
    assert message is not None
    assert message.via[0].has_rport and not any(v.has_rport for v in message.via[1:])
