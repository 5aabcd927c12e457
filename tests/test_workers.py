"""``imscore serve --workers N``: one UDP server spread over worker processes.

Every worker reads the shared socket and hands a datagram of another worker's Call-ID to that worker
(the parent reads none); workers share the SQLite store, the nonce secret (each binding its nonces to
itself) and reg-event news. Tested over a real loopback socket with a real ``imscore serve --workers
2``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_serve import Served, options, udp_exchange

from imscore.profile import Listener
from imscore.server.workers import (
    MAX_UNSENT,
    check_workers,
    send_lines,
    worker_for,
    worker_of_datagram,
)
from imscore.sip import Request, Response, parse_datagram
from imscore.transport.relay import pack, unpack

DOMAIN = "ims.example.test"
READY = re.compile(
    r"ready: listening on udp:([\d.]+):(\d+) with (\d+) worker processes \(pids ([\d, ]+)\)"
)
SUBSCRIBERS = f"""subscribers:
  - impi: alice@{DOMAIN}
    password: alice-secret
    implicit_sets: [[sip:alice@{DOMAIN}, tel:+15551230001]]
  - impi: bob@{DOMAIN}
    password: bob-secret
    implicit_sets: [[sip:bob@{DOMAIN}]]
"""


def call_id_for(worker: int, workers: int = 2, tag: str = "") -> str:
    """A Call-ID the parent hands to ``worker``."""
    for n in range(10_000):
        call_id = f"{tag}{n}-test@127.0.0.1"
        if worker_for(call_id.encode(), workers) == worker:
            return call_id
    raise AssertionError("no Call-ID found")


# --- choosing a worker ------------------------------------------------------------------------------
def _datagram(call_id_line: str, body: str = "") -> bytes:
    return (
        "OPTIONS sip:ims.example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1\r\n"
        f"From: <sip:a@{DOMAIN}>;tag=1\r\nTo: <sip:b@{DOMAIN}>\r\n{call_id_line}\r\n"
        f"CSeq: 1 OPTIONS\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def test_a_datagram_goes_to_the_worker_of_its_call_id_in_any_spelling() -> None:
    expected = worker_for(b"abc@host", 7)
    for line in ("Call-ID: abc@host", "call-id:abc@host", "CALL-ID :  abc@host ", "i: abc@host"):
        assert worker_of_datagram(_datagram(line), 7) == expected, line
    # a body line that looks like a header does not count; nor does a datagram without a Call-ID
    without = _datagram("Subject: none", body="\r\ni: abc@host\r\n")
    assert worker_of_datagram(without, 7) == 0
    assert worker_of_datagram(b"\r\n\r\n", 7) == 0
    assert worker_of_datagram(b"\x00\xffgarbage", 7) == 0


def test_handed_over_datagrams_keep_their_listener_source_octets_and_order() -> None:
    data = _datagram("Call-ID: abc@host")
    records = [
        (0, data, ("127.0.0.1", 5060)),
        (3, data + b"x", ("2001:db8::7", 65535)),
        (1, b"", ("10.0.0.1", 9)),
        (255, b"\r\n\r\n", ("::1", 1)),
    ]
    message = b"".join(pack(*record) for record in records)
    assert unpack(message) == records
    assert unpack(message[:-1]) == records[:3]  # a record cut short ends the message
    assert unpack(pack(*records[0])[:5]) == []  # shorter than a header
    assert unpack(b"") == []


def test_control_lines_wait_for_room_whole_and_in_order() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ours.setblocking(False)
        unsent = bytearray()
        lines = [f"changed sip:user{n}@{DOMAIN}\n".encode() for n in range(20_000)]
        for line in lines:  # far more than the socket buffers hold while nobody reads
            assert send_lines(ours, unsent, line)
        assert unsent, "the socket buffers took 20,000 lines?"
        received = bytearray()
        theirs.settimeout(5.0)
        deadline = time.monotonic() + 20
        while unsent and time.monotonic() < deadline:  # the reader reads; the rest goes out
            received += theirs.recv(1 << 20)
            assert send_lines(ours, unsent, b"")
        assert not unsent
        theirs.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while chunk := theirs.recv(1 << 20):
                received += chunk
        assert bytes(received) == b"".join(lines)
        # beyond MAX_UNSENT octets waiting, new lines are dropped whole
        held = bytearray(b"x" * (MAX_UNSENT - 10) + b"\n")
        assert send_lines(theirs, held, b"0123456789abcdef\n") and not held.endswith(b"abcdef\n")
    finally:
        ours.close()
        theirs.close()
    assert send_lines(ours, bytearray(), b"ready\n") is False  # the channel is gone


def test_call_ids_spread_over_the_workers() -> None:
    counts = [0, 0, 0]
    for n in range(3000):
        counts[worker_for(f"{n:x}-{n * 7919}@10.0.0.{n % 250}".encode(), 3)] += 1
    assert all(800 < count < 1200 for count in counts), counts


def test_settings_the_workers_cannot_share_are_refused_with_the_reason() -> None:
    udp = [Listener("udp", "127.0.0.1", 5060)]
    assert check_workers(2, udp, "sqlite:/tmp/x.db", None) is None
    assert check_workers(1, [Listener("tcp", "127.0.0.1", 5060)], "memory:", None) is None
    problem = check_workers(2, [*udp, Listener("tcp", "127.0.0.1", 5060)], "sqlite:x.db", None)
    assert problem is not None and "tcp:127.0.0.1:5060 cannot" in problem
    problem = check_workers(2, udp, "memory:", None)
    assert problem is not None and "memory: store lives in one process" in problem
    problem = check_workers(2, udp, "sqlite:x.db", "out.pcap")
    assert problem is not None and "--pcap" in problem
    problem = check_workers(0, udp, "sqlite:x.db", None)
    assert problem is not None and ">= 1, got 0" in problem


def test_serve_with_workers_and_the_memory_store_stops_naming_the_option() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imscore", "serve", "--workers", "2", "--store", "memory:",
         "--listen", "udp:127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--workers: the memory: store lives in one process" in result.stderr


# --- a running server ---------------------------------------------------------------------------------
@dataclass
class Workers(Served):
    """``imscore serve --workers 2``: the parent's process, its address and the workers' pids."""

    address: tuple[str, int] = ("", 0)
    pids: list[int] = field(default_factory=list)


def start_workers(tmp_path: Path, port: int = 0) -> Workers:
    """``imscore serve --workers 2`` on ``udp:127.0.0.1:port`` with the SQLite store in ``tmp_path``,
    once its parent says every worker is ready."""
    subscribers = tmp_path / "subscribers.yaml"
    subscribers.write_text(SUBSCRIBERS)
    process = subprocess.Popen(
        [sys.executable, "-m", "imscore", "serve", "--workers", "2", "--listen",
         f"udp:127.0.0.1:{port}", "--store", f"sqlite:{tmp_path / 'bindings.db'}",
         "--subscribers", str(subscribers)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert process.stderr is not None
    log: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        log.append(line.rstrip())
        found = READY.search(line)
        if found:
            pids = [int(p) for p in found.group(4).split(", ")]
            address = (found.group(1), int(found.group(2)))
            return Workers(process, {"udp": address}, log, address, pids)
    process.kill()
    process.wait(timeout=10)
    raise AssertionError("imscore serve --workers 2 did not get ready:\n" + "\n".join(log))


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    running = start_workers(tmp_path)
    try:
        yield running
    finally:
        assert running.stop() == 0, "\n".join(running.log)


class Device:
    """A UDP endpoint that registers with Digest and receives NOTIFYs."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5.0)
        self.port = self.sock.getsockname()[1]
        self.cseq = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def receive(self) -> Request | Response:
        data, _ = self.sock.recvfrom(65535)
        message = parse_datagram(data)
        assert message is not None
        return message

    def response(self) -> Response:
        while True:  # a NOTIFY may come first
            message = self.receive()
            if isinstance(message, Response):
                return message

    def register(self, user: str, call_id: str, authorization: str = "", contact: bool = True) -> bytes:
        self.cseq += 1
        contact_line = f"Contact: <sip:{user}@127.0.0.1:{self.port}>\r\n" if contact else ""
        return (
            f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK-{self.port}-{self.cseq};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=t{self.port}\r\n"
            f"To: <sip:{user}@{DOMAIN}>\r\nCall-ID: {call_id}\r\nCSeq: {self.cseq} REGISTER\r\n"
            f"{contact_line}{authorization}Expires: 600\r\nContent-Length: 0\r\n\r\n"
        ).encode()


def nonce_of(response: Response) -> str:
    challenge = response.headers.get("WWW-Authenticate") or ""
    found = re.search(r'nonce="([^"]+)"', challenge)
    assert found is not None, challenge
    return found.group(1)


def credentials(user: str, password: str, nonce: str, nc: int = 1) -> str:
    username, uri = f"{user}@{DOMAIN}", f"sip:{DOMAIN}"
    ha1 = hashlib.md5(f"{username}:{DOMAIN}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
    response = hashlib.md5(f"{ha1}:{nonce}:{nc:08x}:c0ffee:auth:{ha2}".encode()).hexdigest()
    return (
        f'Authorization: Digest username="{username}", realm="{DOMAIN}", nonce="{nonce}", '
        f'uri="{uri}", response="{response}", algorithm=MD5, qop=auth, nc={nc:08x}, cnonce="c0ffee"\r\n'
    )


def register(device: Device, user: str, password: str, call_id: str) -> Response:
    device.send(device.register(user, call_id))
    challenge = device.response()
    assert challenge.status == 401
    device.send(device.register(user, call_id, credentials(user, password, nonce_of(challenge))))
    return device.response()


def test_both_workers_register_into_one_store(workers: Workers) -> None:
    alice, bob = Device(workers.address), Device(workers.address)
    try:
        assert register(alice, "alice", "alice-secret", call_id_for(0, tag="a")).status == 200
        assert register(bob, "bob", "bob-secret", call_id_for(1, tag="b")).status == 200
        # alice's binding, made by worker 0, as worker 1 reads it from the shared store
        query_id = call_id_for(1, tag="q")
        alice.send(alice.register("alice", query_id, contact=False))
        challenge = alice.response()
        assert challenge.status == 401
        auth = credentials("alice", "alice-secret", nonce_of(challenge))
        alice.send(alice.register("alice", query_id, auth, contact=False))
        listed = alice.response()
        assert listed.status == 200
        assert [str(c.uri) for c in listed.contacts] == [f"sip:alice@127.0.0.1:{alice.port}"]
    finally:
        alice.close()
        bob.close()


def test_a_nonce_counts_only_at_the_worker_that_made_it(workers: Workers) -> None:
    device = Device(workers.address)
    try:
        first, other = call_id_for(0, tag="n"), call_id_for(1, tag="n")
        device.send(device.register("alice", first))
        nonce = nonce_of(device.response())
        # the same nonce under a Call-ID of the other worker: challenged again, with a new nonce
        device.send(device.register("alice", other, credentials("alice", "alice-secret", nonce)))
        again = device.response()
        assert again.status == 401
        assert nonce_of(again) != nonce
        # at its own worker it is good
        device.send(device.register("alice", first, credentials("alice", "alice-secret", nonce)))
        assert device.response().status == 200
    finally:
        device.close()


def test_a_reg_event_subscription_hears_of_a_registration_made_by_the_other_worker(
    workers: Workers,
) -> None:
    watcher, phone = Device(workers.address), Device(workers.address)
    try:
        assert register(watcher, "alice", "alice-secret", call_id_for(0, tag="w")).status == 200
        subscription = call_id_for(1, tag="s")  # held by worker 1
        watcher.send(
            (
                f"SUBSCRIBE sip:alice@{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{watcher.port};branch=z9hG4bK-sub1;rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=sub\r\nTo: <sip:alice@{DOMAIN}>\r\n"
                f"Call-ID: {subscription}\r\nCSeq: 1 SUBSCRIBE\r\nEvent: reg\r\nExpires: 600\r\n"
                f"Contact: <sip:alice@127.0.0.1:{watcher.port}>\r\nAccept: application/reginfo+xml\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        seen: list[Request] = []
        answered = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (answered is None or not seen):
            message = watcher.receive()
            if isinstance(message, Response):
                answered = message
            else:
                seen.append(message)
                watcher.send(message.make_response(200).to_bytes())
        assert answered is not None and answered.status == 200
        assert seen and seen[0].method == "NOTIFY"
        # the phone registers through worker 0; worker 1 sends the watcher the news
        assert register(phone, "alice", "alice-secret", call_id_for(0, tag="p")).status == 200
        phone_uri = f"sip:alice@127.0.0.1:{phone.port}"
        news = None
        while time.monotonic() < deadline and news is None:
            message = watcher.receive()
            if isinstance(message, Request) and message.method == "NOTIFY":
                watcher.send(message.make_response(200).to_bytes())
                if phone_uri in message.body.decode():
                    news = message
        assert news is not None, "no NOTIFY with the phone's contact"
        assert news.call_id == subscription
    finally:
        watcher.close()
        phone.close()


def test_sigterm_stops_the_parent_and_every_worker(workers: Workers) -> None:
    assert len(workers.pids) == 2
    for pid in workers.pids:
        os.kill(pid, 0)  # alive
    assert workers.stop() == 0
    for pid in workers.pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_call_rings_a_device_registered_through_the_other_worker(workers: Workers) -> None:
    caller, callee = Device(workers.address), Device(workers.address)
    try:
        assert register(callee, "bob", "bob-secret", call_id_for(0, tag="callee")).status == 200
        assert register(caller, "alice", "alice-secret", call_id_for(1, tag="caller")).status == 200
        call_id = call_id_for(1, tag="call")  # the INVITE is worker 1's; bob's binding came via 0
        caller.send(
            (
                f"INVITE sip:bob@{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{caller.port};branch=z9hG4bK-inv1;rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=caller\r\n"
                f"To: <sip:bob@{DOMAIN}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
                f"Contact: <sip:alice@127.0.0.1:{caller.port}>\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        ringing = callee.receive()
        assert isinstance(ringing, Request) and ringing.method == "INVITE"
        assert ringing.call_id == call_id
        assert str(ringing.uri) == f"sip:bob@127.0.0.1:{callee.port}"
        callee.send(ringing.make_response(486, to_tag="busy").to_bytes())
        final = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and final is None:
            message = caller.receive()
            if isinstance(message, Response) and message.status >= 200:
                final = message
        assert final is not None and final.status == 486
    finally:
        caller.close()
        callee.close()


def test_bad_input_gets_its_answer_and_the_workers_keep_serving(workers: Workers) -> None:
    device = Device(workers.address)
    try:
        device.send(b"\x00\xff not SIP at all \r\n\r\n")  # no Call-ID: worker 0 drops it
        # a request with a broken Max-Forwards, on a Call-ID of worker 1: 400 naming the header
        device.send(
            (
                f"OPTIONS sip:{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{device.port};branch=z9hG4bK-bad1;rport\r\n"
                f"Max-Forwards: lots\r\nFrom: <sip:alice@{DOMAIN}>;tag=b\r\nTo: <sip:{DOMAIN}>\r\n"
                f"Call-ID: {call_id_for(1, tag='bad')}\r\nCSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        refused = device.response()
        assert refused.status == 400 and "Max-Forwards" in refused.reason, refused.reason
        for worker in (0, 1):
            device.send(
                (
                    f"OPTIONS sip:{DOMAIN} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{device.port};branch=z9hG4bK-ok{worker};rport\r\n"
                    f"Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=o\r\nTo: <sip:{DOMAIN}>\r\n"
                    f"Call-ID: {call_id_for(worker, tag='ok')}\r\nCSeq: 1 OPTIONS\r\n"
                    "Content-Length: 0\r\n\r\n"
                ).encode()
            )
            assert device.response().status == 200
    finally:
        device.close()


# --- every worker reads the socket: a datagram meets the worker of its Call-ID ------------------------
def _by_call_id(device: Device, count: int, timeout: float = 20.0) -> dict[str, bytes]:
    """The next ``count`` responses the device receives, as received, by Call-ID."""
    found: dict[str, bytes] = {}
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        try:
            data, _ = device.sock.recvfrom(65535)
        except TimeoutError:
            continue
        message = parse_datagram(data)
        assert isinstance(message, Response), data[:200]
        assert message.call_id not in found, f"two answers on {message.call_id}"
        found[message.call_id] = data
    return found


def _handover_counts(log: list[str]) -> tuple[int, int]:
    """Datagrams the workers handed to one another and took from one another, from their last words."""
    handed = taken = 0
    for line in log:
        found = re.search(r"worker \d: (\d+) datagrams handed to the workers .*, (\d+) taken", line)
        if found:
            handed += int(found.group(1))
            taken += int(found.group(2))
    return handed, taken


def test_bursts_of_many_call_ids_each_meet_their_worker_whichever_reads_them(tmp_path: Path) -> None:
    # Both workers read the one socket; a burst is read by whichever wakes first, so about half of
    # what it reads belongs to the other. A challenge answered at a worker other than the one that
    # made its nonce would be challenged again (test_a_nonce_counts_only_at_the_worker_that_made_it),
    # and a retransmission answered by another worker would not be answered with the same octets.
    served = start_workers(tmp_path)
    device = Device(served.address)
    users = [("alice", "alice-secret"), ("bob", "bob-secret")]
    count = 60
    try:
        call_ids = [call_id_for(n % 2, tag=f"burst{n}-") for n in range(count)]
        first = {cid: device.register(users[n % 2][0], cid) for n, cid in enumerate(call_ids)}
        for data in first.values():
            device.send(data)
        challenges = _by_call_id(device, count)
        assert sorted(challenges) == sorted(call_ids)
        for data in first.values():  # the same octets again: each transaction answers once more
            device.send(data)
        again = _by_call_id(device, count)
        assert again == challenges
        second = {}
        for n, cid in enumerate(call_ids):
            user, password = users[n % 2]
            nonce = nonce_of(_response(challenges[cid]))
            second[cid] = device.register(user, cid, credentials(user, password, nonce))
        for data in second.values():
            device.send(data)
        answers = _by_call_id(device, count)
        statuses = {cid: _response(data).status for cid, data in answers.items()}
        assert statuses == dict.fromkeys(call_ids, 200)
        for data in second.values():
            device.send(data)
        assert _by_call_id(device, count) == answers
    finally:
        device.close()
        assert served.stop() == 0, "\n".join(served.log)
    handed, taken = _handover_counts(served.log)
    assert handed > 0, "no datagram was read by a worker it did not belong to:\n" + "\n".join(served.log)
    assert taken == handed


def _response(data: bytes) -> Response:
    message = parse_datagram(data)
    assert isinstance(message, Response)
    return message


def _udp_inodes(port: int) -> set[str]:
    """Socket inodes bound to UDP ``port`` on IPv4, from /proc/net/udp."""
    inodes = set()
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets a process holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


@pytest.mark.skipif(not Path("/proc/net/udp").exists(), reason="reads /proc")
def test_the_parent_holds_no_udp_socket_and_uses_no_cpu_per_datagram(workers: Workers) -> None:
    shared = _udp_inodes(workers.address[1])
    assert shared, "nothing bound to the port"
    parent = workers.process.pid
    assert not _socket_inodes(parent) & shared, "the parent still holds the shared UDP socket"
    for pid in workers.pids:
        assert _socket_inodes(pid) & shared, f"worker {pid} does not hold the shared UDP socket"
    # OPTIONS change no binding, so no news goes through the parent either: its CPU stays flat
    # while the workers answer a few hundred requests
    def cpu(pid: int) -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    device = Device(workers.address)
    try:
        before = cpu(parent), sum(cpu(pid) for pid in workers.pids)
        for round_ in range(10):
            for n in range(30):
                device.send(
                    (
                        f"OPTIONS sip:{DOMAIN} SIP/2.0\r\n"
                        f"Via: SIP/2.0/UDP 127.0.0.1:{device.port};branch=z9hG4bK-c{round_}-{n}"
                        ";rport\r\n"
                        f"Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=c\r\nTo: <sip:{DOMAIN}>\r\n"
                        f"Call-ID: cpu-{round_}-{n}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\n"
                        "Content-Length: 0\r\n\r\n"
                    ).encode()
                )
            answered = _by_call_id(device, 30)
            assert len(answered) == 30
        after = cpu(parent), sum(cpu(pid) for pid in workers.pids)
    finally:
        device.close()
    assert after[1] - before[1] > 0, "the workers used no CPU answering 300 requests?"
    assert after[0] - before[0] <= 1, f"the parent used {after[0] - before[0]} clock ticks"


def test_a_killed_worker_stops_the_server_and_a_restart_serves_on_the_same_port(
    tmp_path: Path,
) -> None:
    first = start_workers(tmp_path)
    port = first.address[1]
    try:
        os.kill(first.pids[1], signal.SIGKILL)
        assert first.process.wait(timeout=20) == 1
        deadline = time.monotonic() + 5
        while _alive(first.pids[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(first.pids[0]), "the other worker outlived the stop"
    finally:
        for pid in first.pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        first.stop()
    assert any("worker 1 ended (exit status -9): stopping the server" in line for line in first.log), (
        "\n".join(first.log)
    )
    second = start_workers(tmp_path, port)
    try:
        answer = udp_exchange(second.address, options("127.0.0.1", 5999, "UDP", "after-kill"))
        assert answer is not None and answer.status == 200
    finally:
        assert second.stop() == 0, "\n".join(second.log)


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting for its reaper counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_workers_end_with_a_killed_parent_and_a_restart_serves_on_the_same_port(
    tmp_path: Path,
) -> None:
    first = start_workers(tmp_path)
    port = first.address[1]
    try:
        assert all(_alive(pid) for pid in first.pids)
        first.process.send_signal(signal.SIGKILL)  # no chance for the parent to stop its workers
        first.process.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in first.pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in first.pids if _alive(pid)], "workers outlived their parent"
    finally:
        for pid in first.pids:  # without the fix they hold the port: do not leave them behind
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        first.stop()
    second = start_workers(tmp_path, port)  # "Address already in use" if anything still holds it
    try:
        assert second.address == ("127.0.0.1", port)
        answer = udp_exchange(second.address, options("127.0.0.1", 5999, "UDP", "restarted"))
        assert answer is not None and answer.status == 200
    finally:
        assert second.stop() == 0, "\n".join(second.log)


CHILD_OF_A_SHORT_PARENT = """
import os, sys, time
from imscore.server.workers import die_with_parent
parent = os.getpid()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.dup2(1, 2)
    os.write(w, b"1" if die_with_parent(parent) else b"0")
    time.sleep(30)  # until the SIGTERM the kernel sends when the parent ends
    os._exit(3)
print(pid, os.read(r, 1).decode(), flush=True)
os._exit(0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_kernel_signals_a_worker_whose_parent_ends() -> None:
    # the parent-death signal alone, without a control channel: the child sleeps, its parent exits
    result = subprocess.run(
        [sys.executable, "-c", CHILD_OF_A_SHORT_PARENT], capture_output=True, text=True, timeout=20
    )
    pid_text, taken = result.stdout.split()
    pid = int(pid_text)
    try:
        assert taken == "1"
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "the child outlived its parent"
    finally:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
