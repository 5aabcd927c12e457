#!/usr/bin/env python3
"""Server CPU per Digest registration, without sockets, SIPp or a second process.

Usage::

    python3 bench/register_cpu_bench.py [--registrations N] [--store memory:|sqlite] [--rounds R]
                                        [--profile]

It starts a real :class:`imscore.server.runtime.Server` (default profile, the subscribers that
``register_bench.py`` writes) and hands it, one after the other, the datagrams SIPp's
``register-auth.xml`` sends: a REGISTER, then the same REGISTER with MD5 credentials computed from the
401's nonce. They go straight into the transport's UDP receive path, and the answers are taken off the
socket's ``sendto``; so what is measured is everything the server does for a registration except the
two system calls per message. The time is the process's CPU time (not wall time), per block of 250
registrations; the best block is the figure least disturbed by other jobs on a shared machine.

Use it to compare two versions of the hot path in one sitting (``git stash``, run, ``git stash pop``,
run); the SIPp benchmark (``register_bench.py``) remains the one that compares with Kamailio.
``--profile`` prints a cProfile of the server side (function calls per registration and the heaviest
functions).
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from register_bench import DOMAIN, write_users

from imscore.cli import _load_profile, _load_subscribers
from imscore.profile import parse_listen
from imscore.server.gctune import tune_for_serving
from imscore.server.runtime import Server
from imscore.subscribers import MemorySubscriberStore

BLOCK = 250
PEER = ("127.0.0.1", 5999)
NONCE_RE = re.compile(rb'nonce="([^"]+)"')


def register(i: int, cseq: int, authorization: str = "") -> bytes:
    """The REGISTER of register-auth.xml for user ``i``, as SIPp fills it in."""
    user = f"user{i:05d}"
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {PEER[0]}:{PEER[1]};branch=z9hG4bK-{i}-{cseq}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag={i}\r\nTo: <sip:{user}@{DOMAIN}>\r\n"
        f"Call-ID: {i}-bench@{PEER[0]}\r\nCSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@{PEER[0]}:{PEER[1]}>\r\n{authorization}"
        "Expires: 3600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def credentials(i: int, nonce: str) -> str:
    """SIPp's Authorization header for user ``i`` (password ``secret``, qop=auth, MD5)."""
    username, uri = f"user{i:05d}@{DOMAIN}", f"sip:{DOMAIN}"
    ha1 = hashlib.md5(f"{username}:{DOMAIN}:secret".encode()).hexdigest()
    ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
    response = hashlib.md5(f"{ha1}:{nonce}:00000001:6b8b4567:auth:{ha2}".encode()).hexdigest()
    return (
        f'Authorization: Digest username="{username}",realm="{DOMAIN}",cnonce="6b8b4567",'
        f'nc=00000001,qop=auth,uri="{uri}",nonce="{nonce}",response="{response}",algorithm=MD5\r\n'
    )


async def run(args: argparse.Namespace, subscribers: Path) -> tuple[list[float], int, object]:
    """Register ``args.registrations`` users once each; CPU seconds per block, successes, profile."""
    source, directory = _load_subscribers(str(subscribers))
    server = Server(
        _load_profile("default"),
        listeners=[parse_listen("udp:127.0.0.1:0", any_transport=True)],
        store_url=args.store,
        subscribers=MemorySubscriberStore(directory, source),
    )
    await server.start()
    tune_for_serving()
    transports = server.transports
    assert transports is not None
    endpoint = next(iter(transports._endpoints.values()))
    sent: list[bytes] = []
    endpoint.sendto = lambda data, remote: sent.append(data)  # type: ignore[method-assign]
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    blocks: list[float] = []
    ok, spent = 0, 0.0

    def answer(data: bytes) -> bytes:
        """The server's answer to one datagram; its CPU time is added to ``spent``."""
        nonlocal spent
        start = time.process_time()
        if profiler is not None:
            profiler.enable()
        transports._datagram_received(endpoint, data, PEER)
        if profiler is not None:
            profiler.disable()
        spent += time.process_time() - start
        return sent.pop()

    try:
        for i in range(args.registrations):
            challenge = NONCE_RE.search(answer(register(i, 1)))
            if challenge is None:
                raise SystemExit(f"registration {i}: the first REGISTER got no challenge")
            second = register(i, 2, credentials(i, challenge.group(1).decode()))
            ok += answer(second).startswith(b"SIP/2.0 200 ")
            if i % BLOCK == BLOCK - 1:
                blocks.append(spent)
                spent = 0.0
                await asyncio.sleep(0)  # let the server's timers run, as between datagrams
    finally:
        await server.stop()
    return blocks, ok, profiler


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registrations", type=int, default=4000, help="per round (default 4000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each with a fresh server")
    parser.add_argument(
        "--store",
        default="memory:",
        help="binding store: memory: (default) or sqlite (a new file in a temporary folder each round)",
    )
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the server side")
    parser.add_argument(
        "--profile-out", metavar="FILE", help="with --profile: also write the pstats to FILE"
    )
    args = parser.parse_args()
    if args.registrations < BLOCK:
        parser.error(f"--registrations must be at least {BLOCK}")
    with tempfile.TemporaryDirectory(prefix="imscore-cpu-bench-") as folder:
        _, subscribers = write_users(Path(folder), args.registrations)
        per_round: list[float] = []
        best: list[float] = []
        store = args.store
        for rnd in range(args.rounds):
            if store.startswith("sqlite"):  # each round registers the same users: a fresh file
                args.store = f"sqlite:{folder}/bindings-{rnd}.db"
            blocks, ok, profiler = asyncio.run(run(args, subscribers))
            if ok != len(blocks) * BLOCK and ok != args.registrations:
                print(f"round {rnd + 1}: only {ok} of {args.registrations} registrations got 200")
                return 1
            mean = sum(blocks) / (len(blocks) * BLOCK) * 1e6
            low = min(blocks) / BLOCK * 1e6
            per_round.append(mean)
            best.append(low)
            print(f"round {rnd + 1}: {mean:6.0f} us CPU per registration, best block {low:6.0f} us")
            if profiler is not None:
                import pstats

                stats = pstats.Stats(profiler)  # type: ignore[arg-type]
                calls = getattr(stats, "total_calls", 0)
                print(f"  {calls / args.registrations:.0f} function calls per registration")
                stats.sort_stats("tottime").print_stats(25)
                if args.profile_out:
                    stats.dump_stats(args.profile_out)
    print(
        f"median {statistics.median(per_round):.0f} us per registration, best block "
        f"{min(best):.0f} us ({args.registrations} registrations x {args.rounds} rounds, "
        f"store {store}; two datagrams each, system calls excluded)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
