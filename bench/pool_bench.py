#!/usr/bin/env python3
"""Registration Rate of a pool of 1, 2 and 3 ``imscore serve`` nodes sharing one Redis, by the step
search of RFC 7502 §4.10, and CPU per registration with the Redis store against the memory store.

Usage::

    apt-get install -y redis-server sip-tester      # Redis and SIPp; redis-py: pip install -e '.[redis]'
    python3 bench/pool_bench.py [--nodes 1,2,3] [--seconds S] [--start-rate R] [--json]

One ``redis-server`` on a free loopback port (append-only file, ``appendfsync always`` as
docs/deployment.rst recommends; ``--appendfsync`` to change it), and N ``imscore serve --store
redis://127.0.0.1:PORT/0 --node-id nodeK`` processes, each on its own loopback UDP port. The users
(``--users``, written as register_bench writes them) are dealt out over the nodes, user i to node
i mod N, and each node gets its own SIPp with its share of the users, all SIPps running at once:
the peer's ``register-auth.xml`` with register_bench's response-time marks, at R/N registrations a
second each for ``--seconds``. A trial at R passes when every node's SIPp passes
(register_bench's rule: 0 failed, 0 timeouts, 0 unexpected, retransmissions <= ``--max-retrans``,
on schedule). The search (``stepsearch.py``) finds the highest total R that passes. Nodes and Redis
run through passing trials; after a failed one everything is started afresh with an empty Redis.

Then, at ``--cpu-rate`` (default 80 % of the lowest rate found), one node with ``--store memory:``
and one node with the Redis store each take one trial: server CPU microseconds per registration
(user + system, from /proc: the node's processes, and for the Redis store redis-server's too,
shown apart). The SIPp processes share the machine's cores with the nodes and Redis, so on a 2-core
machine the pool's figure says what the sharing costs, not how a pool of real machines scales.

Exit status: 0 when everything ran and the CPU trials passed, 1 when a CPU trial failed, 2 when the
setup is missing (no sipp, redis-server, redis-py or peer folder).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from register_bench import (
    DOMAIN,
    RTDS,
    SCENARIO,
    Imscore,
    Load,
    add_search_options,
    describe_run,
    describe_trial,
    fixed_rate,
    peer_dir,
    rtd_scenario,
    run_load,
    tree_cpu_seconds,
    write_users,
)
from stepsearch import Criteria, Search, Trial, round_rate, step_search


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Redis:
    """``redis-server`` on a free loopback port, its files in ``folder``; stopped by its PID."""

    def __init__(self, folder: Path, appendfsync: str) -> None:
        self.folder, self.appendfsync = folder, appendfsync
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in ("appendonlydir", "dump.rdb"):
            path = self.folder / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        self.port = free_tcp_port()
        aof = ["--appendonly", "no"] if self.appendfsync == "off" else [
            "--appendonly", "yes", "--appendfsync", self.appendfsync
        ]  # fmt: skip
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--save",
                "",
                *aof,
                "--daemonize",
                "no",
                "--logfile",
                str(self.folder / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.folder / "redis.log"
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server did not start:\n{tail}")
            time.sleep(0.05)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@dataclass
class Setup:
    """What every trial shares."""

    peer: Path
    folder: Path
    scenario: Path
    subscribers: Path
    #: every user, and per pool size the users of each node
    csv: Path
    args: argparse.Namespace

    @property
    def criteria(self) -> Criteria:
        return Criteria(schedule=self.args.schedule, retransmissions=self.args.max_retrans)


def split_users(csv: Path, nodes: int) -> list[Path]:
    """users.csv dealt out over ``nodes`` files, user i to node i mod nodes."""
    lines = csv.read_text().splitlines()
    header, users = lines[0], lines[1:]
    paths = []
    for node in range(nodes):
        path = csv.with_name(f"users-{nodes}-{node}.csv")
        path.write_text("\n".join([header, *users[node::nodes]]) + "\n")
        paths.append(path)
    return paths


class Pool:
    """A Redis and ``nodes`` imscore nodes on it (or one node on the memory store)."""

    def __init__(self, setup: Setup, nodes: int, store: str = "redis") -> None:
        self.setup, self.count, self.store = setup, nodes, store
        self.redis = Redis(setup.folder / "redis", setup.args.appendfsync) if store == "redis" else None
        self.nodes: list[Imscore] = []
        self.addresses: list[tuple[str, int]] = []

    def start(self) -> None:
        args = self.setup.args
        if self.redis is not None:
            self.redis.start()
        url = self.redis.url if self.redis is not None else "memory:"
        for n in range(self.count):
            node = Imscore(
                self.setup.subscribers,
                url,
                self.setup.folder,
                args.log_level,
                name=f"{self.store}-{self.count}-node{n}",
                extra=["--node-id", f"node{n}"] if self.redis is not None else [],
            )
            self.nodes.append(node)
            self.addresses.append(node.start())

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.redis is not None:
            self.redis.stop()
        self.nodes, self.addresses = [], []

    def cpu(self) -> tuple[float | None, float | None]:
        """CPU seconds so far of the nodes (with their children) and of redis-server."""
        nodes = [tree_cpu_seconds(node.pid) for node in self.nodes]
        node_total = None if any(v is None for v in nodes) else sum(v or 0.0 for v in nodes)
        return node_total, tree_cpu_seconds(self.redis.pid) if self.redis is not None else None

    def notes(self) -> str:
        problems = []
        for node in self.nodes:
            lines = [
                line
                for line in node.log_tail(4000).splitlines()
                if " ERROR " in line or " WARNING " in line
            ]
            if lines:
                problems.append(f"{node.log.name}: {lines[-1][:200]}")
        return "; ".join(problems)


@dataclass
class PoolLoad:
    """One trial of a pool: every node's SIPp load, and the CPU of the nodes and of Redis."""

    nodes: int
    store: str
    rate: int
    loads: list[Load]
    node_cpu: float | None
    redis_cpu: float | None

    @property
    def ok(self) -> int:
        return sum(ld.ok for ld in self.loads)

    def verdict(self, criteria: Criteria) -> str:
        reasons = [f"node{n}: {r}" for n, ld in enumerate(self.loads) if (r := ld.verdict(criteria))]
        return "; ".join(reasons)

    def figures(self) -> dict[str, Any]:
        per = self.ok or 1
        times = {name: [ld.rtt[name] for ld in self.loads if name in ld.rtt] for name in RTDS.values()}
        return {
            "nodes": self.nodes,
            "store": self.store,
            "rate": self.rate,
            "ok": self.ok,
            "failed": sum(ld.failed for ld in self.loads),
            "node_us": None if self.node_cpu is None else 1e6 * self.node_cpu / per,
            "redis_us": None if self.redis_cpu is None else 1e6 * self.redis_cpu / per,
            # the worst node's percentiles (each node's SIPp has its own)
            "rtt": {
                name: {"p50": max(f["p50"] for f in fs), "p99": max(f["p99"] for f in fs)}
                for name, fs in times.items()
                if fs
            },
        }


def run_pool(pool: Pool, rate: int, trial: int, csvs: list[Path], *, settle: float = 0.0) -> PoolLoad:
    """One SIPp per node at once, at rate / nodes each; the CPU of the whole pool meanwhile."""
    setup, args = pool.setup, pool.setup.args
    share = max(1, round(rate / pool.count))
    loads: list[Load | None] = [None] * pool.count
    problems: list[BaseException] = []

    def drive(n: int) -> None:
        try:
            folder = setup.folder / f"node{n}"
            folder.mkdir(exist_ok=True)
            loads[n] = run_load(
                f"{pool.store}-{pool.count}-node{n}",
                trial,
                pool.addresses[n],
                share,
                args.seconds,
                args,
                csvs[n],
                folder,
                setup.scenario,
            )
        except BaseException as exc:  # reported below, after the other threads ended
            problems.append(exc)

    nodes_before, redis_before = pool.cpu()
    threads = [threading.Thread(target=drive, args=(n,)) for n in range(pool.count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if settle:
        time.sleep(settle)
    nodes_after, redis_after = pool.cpu()
    if problems:
        raise problems[0]
    node_cpu = None if nodes_before is None or nodes_after is None else nodes_after - nodes_before
    redis_cpu = None if redis_before is None or redis_after is None else redis_after - redis_before
    done = [ld for ld in loads if ld is not None]
    return PoolLoad(pool.count, pool.store, share * pool.count, done, node_cpu, redis_cpu)


def search_pool(nodes: int, setup: Setup) -> Search:
    """The step search for a pool of ``nodes`` on one Redis."""
    args = setup.args
    csvs = split_users(setup.csv, nodes)
    pool: Pool | None = None
    count = 0

    def trial(rate: int) -> Trial:
        nonlocal pool, count
        if pool is None:
            pool = Pool(setup, nodes)
            pool.start()
        count += 1
        result = run_pool(pool, rate, count, csvs)
        reason = result.verdict(setup.criteria)
        detail = {"loads": [asdict(ld) for ld in result.loads], **result.figures()}
        if reason:
            notes = pool.notes()
            pool.stop()
            pool = None
            if notes:
                detail["notes"] = notes
        else:
            time.sleep(args.pause)
        return Trial(rate, not reason, reason, detail)

    print(f"{nodes} node(s) on one Redis:", file=sys.stderr, flush=True)
    try:
        if args.rate:
            return fixed_rate(trial, args.rate)
        return step_search(
            trial,
            start=args.start_rate,
            max_rate=args.max_rate,
            max_steps=args.max_steps,
            resolution=args.resolution,
        )
    finally:
        if pool is not None:
            pool.stop()


def cpu_trial(store: str, rate: int, setup: Setup) -> tuple[PoolLoad, str]:
    """One node, memory or Redis store, started afresh: one trial at ``rate``; and its verdict."""
    pool = Pool(setup, 1, store)
    pool.start()
    try:
        result = run_pool(pool, rate, 0, [setup.csv], settle=0.5)
    finally:
        pool.stop()
    return result, result.verdict(setup.criteria)


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def print_report(result: dict[str, Any], args: argparse.Namespace) -> None:
    print("Registration Rate of imscore pools on one Redis, step search of RFC 7502 §4.10")
    print(
        f"  one SIPp per node ({SCENARIO} from {result['peer']}, with RTD marks), {args.users} users"
        f" dealt out over the nodes, trials of {args.seconds:g} s, Redis appendfsync"
        f" {args.appendfsync}; host {result['host']}"
    )
    print()
    one = result["searches"].get("1", {}).get("rate") or 0
    print(f"{'nodes':>5} {'reg/s':>8} {'vs 1 node':>9}  {'trials':>6}  stopped because")
    print("-" * 100)
    for nodes, search in result["searches"].items():
        ratio = f"{search['rate'] / one:8.2f}x" if one else ""
        print(
            f"{nodes:>5} {search['rate']:>8} {ratio:>9}  {len(search['trials']):>6}  {search['stopped']}"
        )
        print(f"{'':>5}   trials: " + ", ".join(describe_trial(t) for t in search["trials"]))
    if result["cpu"]:
        print()
        print(
            f"One node at {result['cpu_rate']} registrations/s for {args.seconds:g} s"
            " (CPU: user + system from /proc; response times: SIPp -trace_rtt, ms)"
        )
        header = (
            f"{'store':<8} {'ok':>7} {'failed':>6} {'node us/reg':>11} {'redis us/reg':>12}"
            f" {'total us/reg':>12} {'401 p50/p99':>12} {'200 p50/p99':>12}"
        )
        print(header)
        print("-" * len(header))
        for store, fig in result["cpu"].items():
            node_us, redis_us = fig["node_us"], fig["redis_us"]
            total = None if node_us is None else node_us + (redis_us or 0.0)

            def num(value: float | None, width: int) -> str:
                return "" if value is None else f"{value:{width}.0f}"

            def rtt(name: str, fig: dict[str, Any] = fig) -> str:
                times = fig["rtt"].get(name)
                return "-" if not times else f"{times['p50']:g}/{times['p99']:g}"

            print(
                f"{store:<8} {fig['ok']:>7} {fig['failed']:>6} {num(node_us, 11):>11}"
                f" {num(redis_us, 12):>12} {num(total, 12):>12} {rtt('401'):>12} {rtt('200'):>12}"
                f"{'  <-- did not pass: ' + fig['verdict'] if fig['verdict'] else ''}"
            )
    for store, raw in result["cpu_loads"].items():
        for ld in raw:
            load = Load(**ld)
            if load.failed or load.note:
                describe_run(load, load.calls, f"    {store}: ")
    if result["kept"]:
        print(f"\nfiles kept in {result['folder']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=30000, help="users, dealt out over the nodes")
    parser.add_argument("--nodes", default="1,2,3", help="pool sizes to search, comma separated")
    add_search_options(parser, start=250, max_rate=16000)
    parser.add_argument(
        "--cpu-rate",
        type=int,
        default=0,
        help="rate of the memory/Redis CPU trials (default: 80 %% of the lowest rate found)",
    )
    parser.add_argument(
        "--appendfsync",
        default="always",
        choices=["always", "everysec", "no", "off"],
        help="Redis appendfsync (off: no append-only file); default always, as deployment.rst says",
    )
    parser.add_argument("--log-level", default="WARNING", help="imscore --log-level (WARNING)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    args = parser.parse_args(argv)

    peer = peer_dir()
    args.sipp = shutil.which("sipp")
    problems = []
    if not (peer / SCENARIO).exists():
        problems.append(f"peer folder {peer} lacks {SCENARIO} (set IMSCORE_PEER)")
    if args.sipp is None:
        problems.append("sipp not found (apt-get install -y sip-tester)")
    if shutil.which("redis-server") is None:
        problems.append("redis-server not found (apt-get install -y redis-server)")
    try:
        import redis  # noqa: F401  (imscore's Redis store needs it)
    except ImportError:
        problems.append("redis-py not installed (python3 -m pip install -e '.[redis]')")
    if problems:
        print("pool_bench: " + "; ".join(problems), file=sys.stderr)
        return 2
    sizes = [int(n) for n in args.nodes.split(",") if n.strip()]

    folder = Path(tempfile.mkdtemp(prefix="pool-bench-"))
    result: dict[str, Any] = {}
    verdicts: dict[str, str] = {}
    try:
        csv, subscribers = write_users(folder, args.users)
        setup = Setup(peer, folder, rtd_scenario(peer, folder), subscribers, csv, args)
        searches = {str(n): search_pool(n, setup) for n in sizes}
        found = [s.rate for s in searches.values() if s.rate]
        cpu_rate = args.cpu_rate or args.rate or (round_rate(0.8 * min(found)) if found else 0)
        cpu: dict[str, PoolLoad] = {}
        if cpu_rate:
            print(f"CPU trials at {cpu_rate}/s:", file=sys.stderr, flush=True)
            for store in ("memory", "redis"):
                cpu[store], verdicts[store] = cpu_trial(store, cpu_rate, setup)
                print(f"  {store}: {verdicts[store] or 'pass'}", file=sys.stderr, flush=True)
        keep = args.keep or any(verdicts.values())
        result = {
            "peer": str(peer),
            "folder": str(folder),
            "kept": keep,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "host": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "domain": DOMAIN,
            "options": {k: v for k, v in vars(args).items() if k != "sipp"},
            "searches": {n: s.as_dict() for n, s in searches.items()},
            "cpu_rate": cpu_rate,
            "cpu": {s: {**p.figures(), "verdict": verdicts[s]} for s, p in cpu.items()},
            "cpu_loads": {s: [asdict(ld) for ld in p.loads] for s, p in cpu.items()},
        }
    finally:
        if not result.get("kept"):
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result, args)
    return 1 if any(verdicts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
