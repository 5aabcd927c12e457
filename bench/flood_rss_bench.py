#!/usr/bin/env python3
"""What a flood of wrong-password REGISTERs costs ``imscore serve`` in memory, and whether it comes back.

Usage::

    python3 bench/flood_rss_bench.py [--attempts N] [--rate R] [--settle S] [--warm-up W] [--json]
    python3 bench/flood_rss_bench.py --in-process [--attempts N]

**Over UDP** (the default) it starts ``imscore serve`` (memory store, a free loopback UDP port, the
subscribers ``register_bench.py`` writes) and floods it with ``--attempts`` password guesses, each with
its own Call-ID: a REGISTER (answered 401 with a nonce), then the same REGISTER with an Authorization
for that nonce whose response is wrong (answered 401 again, or 403). The first REGISTERs are paced at
``--rate`` a second; each second one goes out when its 401 arrives. Nothing is retransmitted, so every
REGISTER makes one non-INVITE server transaction, which lives Timer J (32 s) after its answer.
The server's resident set size (``VmRSS`` in ``/proc/<pid>/status``) is read when it is idle, every
quarter second during the flood (the peak; ``VmHWM`` too) and for ``--settle`` seconds after the last
answer (40 s by default: past Timer J, every transaction of the flood has ended). It reports the RSS
the flood added per REGISTER answered (every one of them is alive at the peak when the flood lasts
less than 32 s) and how much of it is still held after Timer J. Before the idle figure it sends one
guess per subscriber and waits ``--warm-up`` seconds (35 by default, past Timer J; 0: no warm-up), so
that idle and after are taken with the same state a flood of guesses at these users legitimately
keeps (their failure counts, the subscriber cache, modules imported on first use). It also splits the
RSS by mapping (``/proc/<pid>/smaps``): glibc's heap, other anonymous memory (CPython's 1 MiB arenas
and glibc's ``mmap``-ed blocks) and files; ``PYTHONMALLOC=malloc`` in the environment reaches the
server too (every object then comes from glibc's heap).

**In process** (``--in-process``) it measures with :mod:`tracemalloc` what stays allocated, per
finished REGISTER transaction, with no sockets and no second process:

* ``layer``: a bare :class:`~imscore.sip.transaction.TransactionLayer` given the parsed REGISTERs and a
  401 for each, as the registrar makes it (serialised, as the transport does); the transactions are
  then in the Completed state, waiting for Timer J;
* ``server``: a real :class:`~imscore.server.runtime.Server` (default profile, memory store) handed the
  flood's datagrams on its UDP receive path as ``register_cpu_bench.py`` does (registrar,
  authenticator, retransmission cache and all), while every transaction waits for Timer J, and again
  once Timer J has fired for all of them (what is left then is what the flood leaked).

The machine is shared: RSS figures move with the allocator and the load, so compare two versions of
the server in one sitting, on one machine (two checkouts, run one after the other).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import re
import socket
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from register_bench import Imscore, write_users
from register_cpu_bench import NONCE_RE, PEER, credentials, register

MIB = 1024 * 1024
#: the Via sent-by and Contact host:port of register_cpu_bench's REGISTER, replaced by the flood
#: socket's own address so that the answers come back to it
PEER_TEXT = f"{PEER[0]}:{PEER[1]}".encode()
RESPONSE_RE = re.compile(rb'response="([0-9a-f]+)"')
ANSWER_RE = re.compile(rb"^SIP/2\.0 (\d{3}) ")
CALL_ID_RE = re.compile(rb"\r\nCall-ID: (\d+)-bench@", re.IGNORECASE)
CSEQ_RE = re.compile(rb"\r\nCSeq: (\d+) ", re.IGNORECASE)


# --------------------------------------------------------------------------------------------------
# The flood's datagrams
# --------------------------------------------------------------------------------------------------
def attempt_register(
    i: int, users: int, cseq: int, authorization: str = "", peer: bytes = PEER_TEXT
) -> bytes:
    """Attempt ``i``'s REGISTER number ``cseq``, for subscriber ``i % users``, sent from ``peer``
    ("host:port"): register_cpu_bench's REGISTER with the attempt's own branch and Call-ID."""
    user = i % users
    data = register(user, cseq, authorization)
    own = data.replace(f"z9hG4bK-{user}-{cseq}\r\n".encode(), f"z9hG4bK-{i}-{cseq}\r\n".encode(), 1)
    own = own.replace(f"Call-ID: {user}-bench@".encode(), f"Call-ID: {i}-bench@".encode(), 1)
    assert own.count(f"-{i}-".encode()) and own.count(f" {i}-bench@".encode()), "REGISTER changed"
    return own.replace(PEER_TEXT, peer)


def first_register(i: int, users: int, peer: bytes = PEER_TEXT) -> bytes:
    """Attempt ``i``'s first REGISTER (no credentials)."""
    return attempt_register(i, users, 1, "", peer)


def wrong_register(i: int, users: int, nonce: str, peer: bytes = PEER_TEXT) -> bytes:
    """Attempt ``i``'s second REGISTER: credentials for ``nonce`` whose digest response is wrong (the
    right one reversed, as a wrong password would give another one)."""
    right = attempt_register(i, users, 2, credentials(i % users, nonce), peer)
    return RESPONSE_RE.sub(lambda m: b'response="' + m.group(1)[::-1] + b'"', right)


# --------------------------------------------------------------------------------------------------
# Over UDP
# --------------------------------------------------------------------------------------------------
class ServerGone(RuntimeError):
    """The server's process ended while it was being measured."""


def rss_of(pid: int) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of a process, in bytes (:class:`ServerGone` once it has exited)."""
    fields = {}
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    if "VmRSS" not in fields:  # a zombie has no memory left to report
        raise ServerGone(f"the server (process {pid}) exited during the measurement")
    return fields["VmRSS"], fields["VmHWM"]


def rss_parts(pid: int) -> dict[str, int]:
    """The resident set of a process by kind of mapping, in bytes (``/proc/<pid>/smaps``): ``heap``
    (glibc's main heap, grown by ``brk``), ``anon`` (other anonymous mappings: CPython's 1 MiB
    small-object arenas, glibc's ``mmap``-ed blocks and thread arenas) and ``file`` (the interpreter,
    libraries, mapped files)."""
    parts = {"heap": 0, "anon": 0, "file": 0}
    kind = "file"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if not head:
            continue
        if "-" in head[0] and not head[0].endswith(":"):  # a mapping's first line: range perms ...
            name = head[5] if len(head) > 5 else ""
            kind = "heap" if name == "[heap]" else "anon" if name in ("", "[stack]") else "file"
        elif head[0] == "Rss:":
            parts[kind] += int(head[1]) * 1024
    return parts


@dataclass
class FloodRun:
    attempts: int
    rate: float
    sent: int = 0
    #: final answers to the second REGISTERs, by status code
    answers: dict[str, int] = field(default_factory=dict)
    challenged: int = 0
    unanswered: int = 0
    flood_seconds: float = 0.0
    #: the RSS before the warm-up (:func:`warm_up`; 0 without one), and the idle figure after it
    rss_cold: int = 0
    rss_idle: int = 0
    rss_peak: int = 0
    hwm: int = 0
    #: (seconds after the last answer, RSS) while it settles
    settle: list[tuple[float, int]] = field(default_factory=list)
    rss_after: int = 0
    #: :func:`rss_parts` when idle, as the flood's last answer came, and at the end
    parts_idle: dict[str, int] = field(default_factory=dict)
    parts_flood: dict[str, int] = field(default_factory=dict)
    parts_after: dict[str, int] = field(default_factory=dict)

    @property
    def registers(self) -> int:
        """REGISTERs the server answered (each made one server transaction)."""
        return self.challenged + sum(self.answers.values())

    def per_register(self) -> float:
        return (self.rss_peak - self.rss_idle) / max(1, self.registers)


def flood(address: tuple[str, int], pid: int, args: argparse.Namespace) -> FloodRun:
    """Send the flood to ``address``; watch the RSS of ``pid``."""
    run = FloodRun(args.attempts, args.rate)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * MIB)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        me = f"127.0.0.1:{sock.getsockname()[1]}".encode()
        time.sleep(1.0)
        run.rss_idle = rss_of(pid)[0]
        run.parts_idle = rss_parts(pid)
        finals: Counter[str] = Counter()
        waiting = set()  # attempts whose second REGISTER was sent
        start = time.monotonic()
        stop_sending = start + args.attempts / args.rate
        give_up = stop_sending + args.grace
        next_sample = start
        last_answer = start

        def read() -> None:
            nonlocal last_answer
            while True:
                try:
                    data = sock.recv(65535)
                except BlockingIOError:
                    return
                status, call, cseq = ANSWER_RE.match(data), CALL_ID_RE.search(data), CSEQ_RE.search(data)
                if status is None or call is None or cseq is None or status.group(1) == b"100":
                    continue
                last_answer = time.monotonic()
                i = int(call.group(1))
                if cseq.group(1) == b"1":
                    run.challenged += 1
                    nonce = NONCE_RE.search(data)
                    if status.group(1) == b"401" and nonce is not None:
                        sock.sendto(wrong_register(i, args.users, nonce.group(1).decode(), me), address)
                        waiting.add(i)
                    else:
                        finals[f"first {status.group(1).decode()}"] += 1
                elif i in waiting:
                    waiting.discard(i)
                    finals[status.group(1).decode()] += 1

        while True:
            now = time.monotonic()
            due = min(args.attempts, int((now - start) * args.rate) + 1)
            while run.sent < due:
                with contextlib.suppress(BlockingIOError):
                    sock.sendto(first_register(run.sent, args.users, me), address)
                run.sent += 1
            read()
            if now >= next_sample:
                rss, hwm = rss_of(pid)
                run.rss_peak, run.hwm = max(run.rss_peak, rss), hwm
                next_sample = now + 0.25
            done = run.sent == args.attempts and run.challenged >= args.attempts and not waiting
            if done or now > give_up:
                break
            time.sleep(0.0005)
        run.flood_seconds = last_answer - start
        run.answers = dict(finals)
        run.unanswered = (args.attempts - run.challenged) + len(waiting)
        rss, run.hwm = rss_of(pid)
        run.rss_peak = max(run.rss_peak, rss)
        run.parts_flood = rss_parts(pid)
    settle_start = time.monotonic()
    marks = iter(range(0, int(args.settle) + 1, 5))
    mark = next(marks)
    while True:
        elapsed = time.monotonic() - settle_start
        if elapsed >= mark:
            run.settle.append((round(elapsed, 1), rss_of(pid)[0]))
            mark = next(marks, None)  # type: ignore[arg-type]
            if mark is None:
                break
        time.sleep(0.2)
    run.rss_after = run.settle[-1][1]
    run.parts_after = rss_parts(pid)
    return run


def warm_up(address: tuple[str, int], pid: int, args: argparse.Namespace) -> tuple[int, int]:
    """One password guess per subscriber, then ``--warm-up`` seconds to let their transactions end:
    the state a flood of guesses at these users legitimately leaves (each user's failure count, the
    subscriber cache, modules imported on first use) is then there before the idle figure is taken.
    The RSS before (cold) and after (warm idle)."""
    once = vars(args) | {"attempts": args.users, "settle": args.warm_up}
    warm = flood(address, pid, argparse.Namespace(**once))
    return warm.rss_idle, warm.rss_after


def over_udp(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    _, subscribers = write_users(folder, args.users)
    extra = ["--profile", str(args.profile)] if args.profile else []
    server = Imscore(subscribers, args.store, folder, args.log_level, extra=extra)
    address = server.start()
    assert server.pid is not None
    try:
        cold = warm_up(address, server.pid, args)[0] if args.warm_up > 0 else 0
        run = flood(address, server.pid, args)
        run.rss_cold = cold
    finally:
        server.stop()
    errors = [line for line in server.log_tail(1_000_000).splitlines() if "ERROR" in line]
    result = asdict(run)
    result |= {"registers": run.registers, "per_register": run.per_register(), "errors": len(errors)}
    return result


def print_udp(result: dict[str, Any]) -> None:
    def mib(n: int) -> str:
        return f"{n / MIB:.0f} MiB"

    print(
        f"{result['attempts']} attempts at {result['rate']:.0f}/s: {result['registers']} REGISTERs "
        f"answered in {result['flood_seconds']:.1f} s (first ones challenged: {result['challenged']}; "
        f"second ones: {result['answers']}; unanswered {result['unanswered']}; "
        f"server ERROR lines {result['errors']})"
    )
    if result["unanswered"]:
        print(
            "  NOT COMPARABLE: the server fell behind (REGISTERs unanswered within --grace): it "
            "was still working through the flood while 'after' was measured"
        )
    if result["rss_cold"]:
        print(f"RSS before the warm-up {mib(result['rss_cold'])} (idle below: after it)")
    print(
        f"RSS idle {mib(result['rss_idle'])}, peak {mib(result['rss_peak'])} (VmHWM "
        f"{mib(result['hwm'])}), {result['settle'][-1][0]:.0f} s after the flood "
        f"{mib(result['rss_after'])}"
    )
    for label in ("idle", "flood", "after"):
        parts = result[f"parts_{label}"]
        print(f"  {label:>5}: " + ", ".join(f"{kind} {mib(n)}" for kind, n in parts.items()))
    print("  settling: " + ", ".join(f"{t:.0f} s {mib(rss)}" for t, rss in result["settle"]))
    held = result["rss_after"] - result["rss_idle"]
    grown = max(1, result["rss_peak"] - result["rss_idle"])
    print(
        f"{result['per_register'] / 1024:.1f} KiB of RSS per REGISTER at the peak; after Timer J "
        f"{held / MIB:.0f} MiB still held ({100 * held / grown:.0f} % of the growth, "
        f"{100 * result['rss_after'] / result['rss_idle'] - 100:+.0f} % of idle)"
    )


# --------------------------------------------------------------------------------------------------
# In process
# --------------------------------------------------------------------------------------------------
def retained(work: Callable[[], object]) -> tuple[int, object]:
    """Bytes ``work()`` leaves allocated (tracemalloc, after a full collection), and its result."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = work()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before, result
    finally:
        tracemalloc.stop()


def layer_per_transaction(attempts: int, users: int) -> float:
    """Bytes a bare transaction layer keeps per Completed non-INVITE server transaction: what is
    allocated while the transactions wait for Timer J, less what stays once it has fired for all of
    them and the layer is gone (bounded caches the parsing filled, e.g. memos of recent Via and
    address texts, are not the transactions' and would otherwise count their size over
    ``attempts``)."""
    from imscore.sip import parse_datagram
    from imscore.sip.transaction import RequestReceived, TransactionLayer

    datagrams = [wrong_register(i, users, "0" * 40) for i in range(attempts)]
    challenge = 'Digest realm="ims.example.test", nonce="%s", algorithm=MD5, qop="auth"' % ("n" * 64)
    layers: list[TransactionLayer[tuple[str, int]]] = []

    def work() -> None:
        layer: TransactionLayer[tuple[str, int]] = TransactionLayer()
        layers.append(layer)
        for i, data in enumerate(datagrams):
            request = parse_datagram(data)
            assert request is not None
            request.check_framing_headers()
            flow = ("127.0.0.1", 10_000 + i)  # every attempt from its own flow, as on the wire
            (received,) = layer.receive(request, flow, False, 0.0)
            assert isinstance(received, RequestReceived)
            request.headers.get("Authorization")  # what the registrar reads of it
            _ = request.to, request.from_, request.call_id
            response = request.make_response(
                401, headers=[("WWW-Authenticate", challenge), ("Server", "imscore")], to_tag="ab12"
            )
            for send in layer.respond(received.transaction, response, 0.0):
                _ = send.message.top_via, send.message.to_bytes()  # what the transport does
        layer.advance(0.0)

    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        work()
        gc.collect()
        waiting = tracemalloc.get_traced_memory()[0] - base
        (layer,) = layers
        assert len(layer) == attempts
        layer.advance(3600.0)  # Timer J for every one of them
        assert len(layer) == 0
        layers.clear()
        del layer
        gc.collect()
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    return (waiting - left) / attempts


async def server_per_transaction(
    attempts: int, users: int, folder: Path
) -> tuple[float, float, Counter[str]]:
    """Bytes a real server keeps per REGISTER while the flood's transactions wait for Timer J, and
    once Timer J fired for all of them; the answers by status."""
    from imscore.cli import _load_profile, _load_subscribers
    from imscore.profile import parse_listen
    from imscore.server.runtime import Server
    from imscore.subscribers import MemorySubscriberStore

    _, subscribers = write_users(folder, users)
    source, directory = _load_subscribers(str(subscribers))
    server = Server(
        _load_profile("default"),
        listeners=[parse_listen("udp:127.0.0.1:0", any_transport=True)],
        store_url="memory:",
        subscribers=MemorySubscriberStore(directory, source),
    )
    await server.start()
    transports = server.transports
    assert transports is not None
    endpoint = next(iter(transports._endpoints.values()))
    sent: list[bytes] = []
    endpoint.sendto = lambda data, remote: sent.append(data)  # type: ignore[method-assign]
    statuses: Counter[str] = Counter()
    firsts = [first_register(i, users) for i in range(attempts)]
    # warm up: the first requests fill caches (plugins, compiled patterns) that are not per request
    for i in range(attempts, attempts + 50):
        transports._datagram_received(endpoint, first_register(i, users), PEER)
    sent.clear()

    def work() -> None:
        for i, data in enumerate(firsts):
            transports._datagram_received(endpoint, data, PEER)
            answer = sent.pop()
            nonce = NONCE_RE.search(answer)
            assert nonce is not None, answer[:60]
            second = wrong_register(i, users, nonce.group(1).decode())
            transports._datagram_received(endpoint, second, PEER)
            statuses[sent.pop()[8:11].decode()] += 1

    try:
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            work()
            gc.collect()
            waiting = tracemalloc.get_traced_memory()[0] - base
            live = len(server.core.layer)
            # what the server's timer callback does (_on_timer), an hour later: Timer J for all
            server._emit(server.core.advance(server.now() + 3600))
            tidy = getattr(server._retransmissions, "tidy", None)  # (older versions have none)
            if tidy is not None:
                tidy()
            gc.collect()
            left = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        print(f"  server: {live} live transactions at the peak, {len(server.core.layer)} after Timer J")
    finally:
        await server.stop()
    return waiting / (2 * attempts), left / (2 * attempts), statuses


def in_process(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    layer = layer_per_transaction(args.attempts, args.users)
    print(f"  layer: {layer:.0f} bytes per Completed non-INVITE server transaction")
    waiting, left, statuses = asyncio.run(server_per_transaction(args.attempts, args.users, folder))
    print(
        f"  server: {waiting:.0f} bytes per REGISTER transaction waiting for Timer J, {left:.0f} bytes "
        f"per REGISTER left once Timer J fired (second REGISTERs answered {dict(statuses)})"
    )
    return {
        "attempts": args.attempts,
        "layer_bytes_per_transaction": layer,
        "server_bytes_per_transaction": waiting,
        "server_bytes_left_after_timer_j": left,
        "answers": dict(statuses),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--attempts", type=int, default=20_000, help="password guesses (two REGISTERs each)")
    add("--rate", type=float, default=2_000.0, help="first REGISTERs a second (default 2000)")
    add("--users", type=int, default=100, help="subscribers the guesses go to (default 100)")
    add("--settle", type=float, default=40.0, help="seconds to watch the RSS after the flood")
    add("--warm-up", type=float, default=35.0, help="seconds after one guess per user before the idle "
        "figure is taken (0: no warm-up; default 35: Timer J and 3 s)")
    add("--profile", default="", help="the server's --profile (e.g. one with shorter timers)")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to wait for late answers")
    parser.add_argument("--store", default="memory:", help="binding store (default memory:)")
    parser.add_argument("--log-level", default="WARNING", help="the server's --log-level")
    parser.add_argument("--in-process", action="store_true", help="tracemalloc figures, no sockets")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    if args.attempts < 1 or not 1 <= args.users <= 99_999:
        parser.error("--attempts must be >= 1, --users 1..99999")
    with tempfile.TemporaryDirectory(prefix="imscore-flood-bench-") as name:
        folder = Path(name)
        if args.in_process:
            result = in_process(args, folder)
        else:
            try:
                result = over_udp(args, folder)
            except ServerGone as exc:
                print(f"flood_rss_bench: {exc}", file=sys.stderr)
                return 1
            print_udp(result)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
