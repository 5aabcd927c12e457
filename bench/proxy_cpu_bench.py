#!/usr/bin/env python3
"""Server CPU per call forked to three devices, without sockets, SIPp or a second process.

Usage::

    python3 bench/proxy_cpu_bench.py [--calls N] [--users U] [--rounds R] [--profile]

It starts a real :class:`imscore.server.runtime.Server` (the ``multi-device`` profile that
``proxy_bench.py`` runs, memory store) and registers ``--users`` users, each with three devices
(Digest, through the server's UDP receive path, as ``bench/sipp/register.xml`` does); its
overload control is off (``overload.max_lag: 0``), since a profiled run is always "late". Then it makes
``--calls`` calls, one user after the other, handing the server the datagrams the SIPp processes of
``proxy_bench.py`` send (``uac-call.xml``, ``uas-answer.xml``, ``uas-ring.xml`` twice): the caller's
INVITE; each device's 180, built from the INVITE the server sent it (taken off the socket's
``sendto``); the answering device's 200; the ringing devices' 200 to the proxy's CANCEL and their
487; the caller's ACK and BYE, and the answering device's 200 to the BYE. A call counts as made when
the caller got the 200 to its INVITE and to its BYE, every device got its INVITE, each ringing
device its CANCEL and the ACK of its 487, and the answering device the ACK and the BYE.

What is measured is everything the server does for a call except the system calls (twelve
datagrams in, fifteen out): the process's CPU time while the server handles the call's datagrams
and runs the tasks they start, per block of 100 calls; the best block is the figure least disturbed
by other jobs on a shared machine. ``bench/icount.py --bench proxy`` counts its instructions.
``--profile`` prints a cProfile of the server side.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from register_bench import DOMAIN, write_users

from imscore.cli import _load_profile, _load_subscribers
from imscore.profile import parse_listen
from imscore.server.gctune import tune_for_serving
from imscore.server.runtime import Server
from imscore.subscribers import MemorySubscriberStore

BLOCK = 100
CALLER = ("127.0.0.1", 5999)
CALLER_URI = "sip:caller@example.org"  # another domain: no credentials asked on the INVITE
#: the devices of each user: (name, answers the call)
DEVICES = (("answer", True), ("ring1", False), ("ring2", False))
FIRST_DEVICE_PORT = 10000
NONCE_RE = re.compile(rb'nonce="([^"]+)"')
#: how many times the event loop may run between two datagrams before the bench gives up waiting
SPINS = 200
SDP = (
    "v=0\r\no={user} 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)

Address = tuple[str, int]


class Sent:
    """One datagram the server sent: its first line, headers (name lowered, value) and address."""

    def __init__(self, data: bytes, remote: Address) -> None:
        self.data = data
        self.remote = remote
        head = data.split(b"\r\n\r\n", 1)[0].decode()
        lines = head.split("\r\n")
        self.start = lines[0]
        self.headers: list[tuple[str, str, str]] = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.append((name.strip().lower(), line, value.strip()))

    def lines(self, *names: str) -> str:
        """Every header line named one of ``names`` (long or compact form), as sent, each + CRLF."""
        return "".join(line + "\r\n" for name, line, _ in self.headers if name in names)

    def value(self, *names: str) -> str:
        """The first value of a header named one of ``names``."""
        return next(value for name, _, value in self.headers if name in names)

    @property
    def method(self) -> str:
        return self.start.split(" ", 1)[0]

    @property
    def status(self) -> int:
        return int(self.start.split(" ", 2)[1]) if self.start.startswith("SIP/2.0 ") else 0


def sdp(user: str) -> tuple[str, str]:
    body = SDP.format(user=user)
    return f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n", body


def register(user: str, port: int, device: str, cseq: int, authorization: str = "") -> bytes:
    """bench/sipp/register.xml's REGISTER of ``device``'s contact for ``user``."""
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-reg-{port}-{cseq};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag={port}SIPpTag1\r\n"
        f"To: <sip:{user}@{DOMAIN}>\r\nCall-ID: reg-{port}@127.0.0.1\r\nCSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{device}@127.0.0.1:{port}>\r\n{authorization}"
        "Expires: 3600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def credentials(user: str, nonce: str) -> str:
    """SIPp's Authorization header (password ``secret``, qop=auth, MD5)."""
    username, uri = f"{user}@{DOMAIN}", f"sip:{DOMAIN}"
    ha1 = hashlib.md5(f"{username}:{DOMAIN}:secret".encode()).hexdigest()
    ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
    response = hashlib.md5(f"{ha1}:{nonce}:00000001:6b8b4567:auth:{ha2}".encode()).hexdigest()
    return (
        f'Authorization: Digest username="{username}",realm="{DOMAIN}",cnonce="6b8b4567",'
        f'nc=00000001,qop=auth,uri="{uri}",nonce="{nonce}",response="{response}",algorithm=MD5\r\n'
    )


def invite(user: str, call: int) -> bytes:
    """uac-call.xml's INVITE (with SDP) to ``user``."""
    head, body = sdp("caller")
    return (
        f"INVITE sip:{user}@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {CALLER[0]}:{CALLER[1]};branch=z9hG4bK-{call}-1;rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <{CALLER_URI}>;tag=1SIPpTag00{call}\r\n"
        f"To: <sip:{user}@{DOMAIN}>\r\nCall-ID: {call}-call@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:caller@{CALLER[0]}:{CALLER[1]};transport=UDP>\r\n{head}{body}"
    ).encode()


def in_dialog(method: str, cseq: int, call: int, target: str, to: str) -> bytes:
    """uac-call.xml's ACK or BYE: to the 200's Contact (no Record-Route), sent to the proxy."""
    return (
        f"{method} {target} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {CALLER[0]}:{CALLER[1]};branch=z9hG4bK-{call}-{cseq}{method};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <{CALLER_URI}>;tag=1SIPpTag00{call}\r\n{to}"
        f"Call-ID: {call}-call@127.0.0.1\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def reply(to: Sent, status: str, tag: str, device: str | None, body: bool = False) -> bytes:
    """A device's answer to ``to`` (uas-answer.xml / uas-ring.xml): its Via, Record-Route, From,
    To (with ``tag`` unless empty), Call-ID and CSeq lines, a Contact for ``device``."""
    to_line = to.lines("to", "t").rstrip("\r\n") + (f";tag={tag}" if tag else "") + "\r\n"
    contact = f"Contact: <sip:{device}@127.0.0.1:{to.remote[1]};transport=UDP>\r\n" if device else ""
    head, text = sdp(device or "bench") if body else ("Content-Length: 0\r\n\r\n", "")
    return (
        f"SIP/2.0 {status}\r\n{to.lines('via', 'v')}{to.lines('record-route')}"
        f"{to.lines('from', 'f')}{to_line}{to.lines('call-id', 'i')}{to.lines('cseq')}"
        f"{contact}{head}{text}"
    ).encode()


def terminated(invite: Sent, tag: str) -> bytes:
    """uas-ring.xml's 487 to the INVITE (its Via headers and CSeq, kept from the INVITE)."""
    number = invite.value("cseq").split()[0]
    return (
        f"SIP/2.0 487 Request Terminated\r\n{invite.lines('via', 'v')}{invite.lines('from', 'f')}"
        f"{invite.lines('to', 't').rstrip()};tag={tag}\r\n{invite.lines('call-id', 'i')}"
        f"CSeq: {number} INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class Bench:
    """A started server and the datagrams it sent; :meth:`deliver` counts the CPU it spends."""

    def __init__(self, server: Server, profiler: Any) -> None:
        transports = server.transports
        assert transports is not None
        self.transports = transports
        self.endpoint = next(iter(transports._endpoints.values()))
        #: what the server sent, as it sent it (the capture does no more than append)
        self.raw: list[tuple[bytes, Address]] = []
        self._sent: list[Sent] = []
        self.endpoint.sendto = lambda data, remote: self.raw.append((data, remote))  # type: ignore[method-assign]
        self.profiler = profiler
        self.spent = 0.0

    @property
    def sent(self) -> list[Sent]:
        """The datagrams sent and not yet taken, read (outside the measured time)."""
        if self.raw:
            self._sent.extend(Sent(data, remote) for data, remote in self.raw)
            self.raw.clear()
        return self._sent

    @sent.setter
    def sent(self, value: list[Sent]) -> None:
        self.raw.clear()
        self._sent = value

    async def deliver(self, data: bytes, source: Address, until: Callable[[], bool]) -> None:
        """Hand ``data`` from ``source`` to the server, then run the loop until ``until()`` holds
        (or :data:`SPINS` times); the CPU time the server takes for both (not the bench's checks)
        is added to :attr:`spent`."""
        profiler = self.profiler
        start = time.process_time()
        if profiler is not None:
            profiler.enable()
        self.transports._datagram_received(self.endpoint, data, source)
        if profiler is not None:
            profiler.disable()
        self.spent += time.process_time() - start
        spins = 0
        while not until() and spins < SPINS:
            start = time.process_time()
            if profiler is not None:
                profiler.enable()
            await asyncio.sleep(0)
            if profiler is not None:
                profiler.disable()
            self.spent += time.process_time() - start
            spins += 1

    def take(self, remote: Address, what: Callable[[Sent], bool]) -> Sent | None:
        """Remove and return the first datagram sent to ``remote`` that ``what`` accepts."""
        sent = self.sent
        for i, one in enumerate(sent):
            if one.remote == remote and what(one):
                return sent.pop(i)
        return None

    def has(self, remote: Address, what: Callable[[Sent], bool], count: int = 1) -> Callable[[], bool]:
        """A check: at least ``count`` datagrams sent to ``remote`` that ``what`` accepts."""
        return lambda: sum(1 for s in self.sent if s.remote == remote and what(s)) >= count


def is_request(method: str) -> Callable[[Sent], bool]:
    return lambda sent: sent.method == method


def is_status(status: int, method: str = "INVITE") -> Callable[[Sent], bool]:
    return lambda sent: sent.status == status and sent.value("cseq").endswith(method)


def device_address(user: int, k: int) -> Address:
    return ("127.0.0.1", FIRST_DEVICE_PORT + 3 * user + k)


async def register_devices(bench: Bench, users: int) -> None:
    """Register each user's three devices (Digest); raises when one is not registered."""
    for i in range(users):
        user = f"user{i:05d}"
        for k, (device, _) in enumerate(DEVICES):
            address = device_address(i, k)
            got = bench.has(address, lambda s: s.status in (401, 200))
            await bench.deliver(register(user, address[1], device, 1), address, got)
            challenge = bench.take(address, is_status(401, "REGISTER"))
            found = NONCE_RE.search(challenge.data) if challenge else None
            if found is None:
                raise SystemExit(f"{user} {device}: the first REGISTER got no challenge")
            second = register(user, address[1], device, 2, credentials(user, found.group(1).decode()))
            await bench.deliver(second, address, got)
            if bench.take(address, is_status(200, "REGISTER")) is None:
                raise SystemExit(f"{user} {device}: not registered")
    bench.sent.clear()
    bench.spent = 0.0


async def one_call(bench: Bench, call: int, i: int) -> bool:
    """One forked call to user ``i``: True when every message arrived where SIPp expects it."""
    user = f"user{i:05d}"
    devices = [device_address(i, k) for k in range(3)]
    answer, rings = devices[0], devices[1:]
    tags = [f"{k + 2}SIPpTag01{call}" for k in range(3)]
    invites = is_request("INVITE")
    everyone = lambda: all(bench.has(d, invites)() for d in devices)  # noqa: E731
    await bench.deliver(invite(user, call), CALLER, everyone)
    forked = [bench.take(d, invites) for d in devices]
    if any(f is None for f in forked):
        return False
    forked_ok = [f for f in forked if f is not None]
    for k, device in enumerate(devices):
        ringing = bench.has(CALLER, is_status(180), k + 1)
        await bench.deliver(reply(forked_ok[k], "180 Ringing", tags[k], DEVICES[k][0]), device, ringing)
    cancelled = lambda: all(bench.has(d, is_request("CANCEL"))() for d in rings)  # noqa: E731
    both = lambda: cancelled() and bench.has(CALLER, is_status(200))()  # noqa: E731
    ok = reply(forked_ok[0], "200 OK", tags[0], DEVICES[0][0], body=True)
    await bench.deliver(ok, answer, both)
    answered = bench.take(CALLER, is_status(200))
    for k, device in enumerate(rings, start=1):
        cancel = bench.take(device, is_request("CANCEL"))
        if cancel is None:
            return False
        await bench.deliver(reply(cancel, "200 OK", tags[k], None), device, lambda: True)
        acked = bench.has(device, is_request("ACK"))
        await bench.deliver(terminated(forked_ok[k], tags[k]), device, acked)
        if bench.take(device, is_request("ACK")) is None:
            return False
    if answered is None:
        return False
    target = re.search(r"<([^>]+)>", answered.value("contact", "m"))
    if target is None:
        return False
    to = answered.lines("to", "t")
    await bench.deliver(
        in_dialog("ACK", 1, call, target.group(1), to), CALLER, bench.has(answer, is_request("ACK"))
    )
    await bench.deliver(
        in_dialog("BYE", 2, call, target.group(1), to), CALLER, bench.has(answer, is_request("BYE"))
    )
    bye = bench.take(answer, is_request("BYE"))
    if bench.take(answer, is_request("ACK")) is None or bye is None:
        return False
    await bench.deliver(reply(bye, "200 OK", "", None), answer, bench.has(CALLER, is_status(200, "BYE")))
    done = bench.take(CALLER, is_status(200, "BYE")) is not None
    bench.sent = [s for s in bench.sent if s.status not in (100, 180)]  # the caller's provisionals
    return done


async def run(args: argparse.Namespace, subscribers: Path) -> tuple[list[float], int, Any, int]:
    """Make ``args.calls`` calls; CPU seconds per block, calls made, profile, datagrams left over."""
    source, directory = _load_subscribers(str(subscribers))
    profile = _load_profile("multi-device")
    # the lag watch off: under cProfile or valgrind the loop is always "late", and 503s would
    # end calls early (the register bench hardly runs the loop, so it never trips there)
    profile = replace(profile, overload=replace(profile.overload, max_lag=0.0))
    server = Server(
        profile,
        listeners=[parse_listen("udp:127.0.0.1:0", any_transport=True)],
        store_url="memory:",
        subscribers=MemorySubscriberStore(directory, source),
    )
    await server.start()
    tune_for_serving()
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    bench = Bench(server, None)
    blocks: list[float] = []
    made = 0
    try:
        await register_devices(bench, args.users)
        bench.profiler = profiler
        for call in range(args.calls):
            made += await one_call(bench, call, call % args.users)
            if call % BLOCK == BLOCK - 1:
                blocks.append(bench.spent)
                bench.spent = 0.0
    finally:
        await server.stop()
    return blocks, made, profiler, len(bench.sent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="per round (default 2000)")
    parser.add_argument("--users", type=int, default=100, help="users called in turn (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each with a fresh server")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the server side")
    parser.add_argument(
        "--profile-out", metavar="FILE", help="with --profile: also write the pstats to FILE"
    )
    args = parser.parse_args()
    if args.calls < BLOCK:
        parser.error(f"--calls must be at least {BLOCK}")
    if not 1 <= args.users <= 10000:
        parser.error("--users must be between 1 and 10000")
    with tempfile.TemporaryDirectory(prefix="imscore-proxy-cpu-bench-") as folder:
        _, subscribers = write_users(Path(folder), args.users)
        per_round: list[float] = []
        best: list[float] = []
        for rnd in range(args.rounds):
            blocks, made, profiler, left = asyncio.run(run(args, subscribers))
            if made != args.calls:
                print(f"round {rnd + 1}: only {made} of {args.calls} calls went through")
                return 1
            mean = sum(blocks) / (len(blocks) * BLOCK) * 1e6
            low = min(blocks) / BLOCK * 1e6
            per_round.append(mean)
            best.append(low)
            print(
                f"round {rnd + 1}: {mean:6.0f} us CPU per call, best block {low:6.0f} us"
                f" ({left} unexpected datagrams)"
            )
            if profiler is not None:
                import pstats

                stats = pstats.Stats(profiler)
                calls = getattr(stats, "total_calls", 0)
                print(f"  {calls / args.calls:.0f} function calls per call")
                stats.sort_stats("tottime").print_stats(30)
                if args.profile_out:
                    stats.dump_stats(args.profile_out)
    print(
        f"median {statistics.median(per_round):.0f} us per call, best block {min(best):.0f} us "
        f"({args.calls} calls to {args.users} users x {args.rounds} rounds, three devices each, "
        "memory store; system calls excluded)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
