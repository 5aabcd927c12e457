"""Memory of the binding store and of the subscriber directory at scale (issue 13's memory targets).

    python3 bench/memory_bench.py [--bindings N] [--subscribers N] [--transactions N]

Bindings: one Digest REGISTER goes through a real in-process server (the path of
``register_cpu_bench.py``) so that the stored binding is exactly what the registrar keeps; then
``N`` bindings like it, each with its own strings (AOR, IMPI, Contact, URI, Call-ID, User-Agent,
instance) and its own flow, as ``N`` different devices would leave them, are saved one AOR each in
the memory store. Printed: RSS before and after, and bytes per binding.

Subscribers: a subscriber file of ``N`` entries as ``register_bench.py`` writes them is loaded with
:func:`imscore.subscribers.load_subscribers`; printed: CPU seconds, peak and final RSS, bytes per
subscriber. ``--subscribers 0`` skips it (a million take minutes today: see docs/benchmarks.rst).
Transactions: ``N`` wrong-password REGISTERs, each from its own flow, go through a bare
transaction layer and get a 401 (``flood_rss_bench.py``'s in-process ``layer`` figure); printed:
the bytes :mod:`tracemalloc` sees still allocated per Completed non-INVITE server transaction while
they wait for Timer J (issue 13's target: 1 KB). ``--transactions 0`` skips it.

Each part runs in a fresh child process, so one does not inflate the other's figures. Bulk
subscriber files are measured by ``subscribers_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def one_real_binding() -> object:
    """The StoredBinding the registrar keeps after one Digest registration over UDP."""
    import register_cpu_bench as rcb  # SIPp's messages and the server set-up of that bench

    from imscore.cli import _load_profile, _load_subscribers
    from imscore.profile import parse_listen
    from imscore.server.runtime import Server
    from imscore.subscribers import MemorySubscriberStore

    async def register_once(subscribers: Path) -> object:
        source, directory = _load_subscribers(str(subscribers))
        server = Server(
            _load_profile("default"),
            listeners=[parse_listen("udp:127.0.0.1:0", any_transport=True)],
            store_url="memory:",
            subscribers=MemorySubscriberStore(directory, source),
        )
        await server.start()
        try:
            transports = server.transports
            assert transports is not None and server.registrar is not None
            endpoint = next(iter(transports._endpoints.values()))
            sent: list[bytes] = []
            endpoint.sendto = lambda data, remote: sent.append(data)  # type: ignore[method-assign]
            transports._datagram_received(endpoint, rcb.register(0, 1), rcb.PEER)
            await asyncio.sleep(0)
            challenge = rcb.NONCE_RE.search(sent.pop())
            assert challenge is not None, "the first REGISTER got no challenge"
            second = rcb.register(0, 2, rcb.credentials(0, challenge.group(1).decode()))
            transports._datagram_received(endpoint, second, rcb.PEER)
            await asyncio.sleep(0)
            assert sent.pop().startswith(b"SIP/2.0 200 "), "the registration was not accepted"
            bindings = await server.registrar.bindings.all()
        finally:
            await server.stop()
        if len(bindings) != 1:
            raise SystemExit(f"expected one binding after one registration, got {len(bindings)}")
        return bindings[0]

    with tempfile.TemporaryDirectory() as folder:
        _, subscribers = rcb.write_users(Path(folder), 1)
        return asyncio.run(register_once(subscribers))


def measure_bindings(count: int) -> dict[str, float]:
    from imscore.registrar.model import FlowInfo
    from imscore.registrar.store import MemoryBindingStore

    template = one_real_binding()
    local = template.flow.local  # type: ignore[attr-defined]  # one per listening socket, shared
    store = MemoryBindingStore()
    gc.collect()
    before = rss_mib()
    started = time.process_time()

    async def fill() -> None:
        for i in range(count):
            user = f"user{i:07d}"
            aor = f"sip:{user}@ims.example.test"
            binding = dataclasses.replace(
                template,  # type: ignore[type-var]
                aor=aor,
                impi=f"{user}@ims.example.test",
                contact=f'<sip:{user}@127.0.0.1:{5000 + i % 50000}>;+sip.instance="<urn:uuid:{i:032x}>"',
                uri=f"sip:{user}@127.0.0.1:{5000 + i % 50000}",
                call_id=f"{i}-reg@127.0.0.1",
                instance_id=f"<urn:uuid:{i:032x}>",
                user_agent=f"Device/{i % 97}",
                flow=FlowInfo("udp", ("127.0.0.1", 5000 + i % 50000), local),
                extra={},
            )
            await store.save(aor, [binding])

    asyncio.run(fill())
    gc.collect()
    after = rss_mib()
    return {
        "bindings": count,
        "rss_before_mib": round(before, 1),
        "rss_after_mib": round(after, 1),
        "bytes_per_binding": round((after - before) * 2**20 / count),
        "cpu_seconds": round(time.process_time() - started, 1),
    }


def measure_subscribers(count: int) -> dict[str, float]:
    from register_bench import write_users

    from imscore.subscribers import load_subscribers

    with tempfile.TemporaryDirectory() as folder:
        _, path = write_users(Path(folder), count)
        gc.collect()
        before = rss_mib()
        started = time.process_time()
        directory = load_subscribers(path)
        seconds = time.process_time() - started
        gc.collect()
        after = rss_mib()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert directory is not None
    return {
        "subscribers": count,
        "cpu_seconds": round(seconds, 1),
        "rss_before_mib": round(before, 1),
        "rss_after_mib": round(after, 1),
        "rss_peak_mib": round(peak, 1),
        "bytes_per_subscriber": round((after - before) * 2**20 / count),
    }


def measure_transactions(count: int) -> dict[str, float]:
    from flood_rss_bench import layer_per_transaction

    return {"transactions": count, "bytes_per_completed": round(layer_per_transaction(count, 100))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bindings", type=int, default=1_000_000, help="default 1,000,000")
    parser.add_argument("--subscribers", type=int, default=100_000, help="default 100,000; 0 skips")
    parser.add_argument("--transactions", type=int, default=5_000, help="default 5,000; 0 skips")
    parser.add_argument(
        "--part", choices=["bindings", "subscribers", "transactions"], help=argparse.SUPPRESS
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.part == "bindings":
        print(json.dumps(measure_bindings(args.bindings)))
        return 0
    if args.part == "subscribers":
        print(json.dumps(measure_subscribers(args.subscribers)))
        return 0
    if args.part == "transactions":
        print(json.dumps(measure_transactions(args.transactions)))
        return 0
    results = {}
    parts = (
        ("bindings", args.bindings),
        ("subscribers", args.subscribers),
        ("transactions", args.transactions),
    )
    for part, count in parts:
        if count <= 0:
            continue
        command = [sys.executable, __file__, "--part", part, f"--{part}", str(count)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[part] = json.loads(out.strip().splitlines()[-1])
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for part, figures in results.items():
            print(part + ": " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
