#!/usr/bin/env python3
"""Two imscore source trees under the same registration load, trials interleaved A B B A.

Usage::

    git worktree add --detach /tmp/old <commit>                  # the version to compare with
    python3 bench/interleaved_bench.py --old /tmp/old --new . [--rates 500,800] [--workers 2]

``register_bench.py`` searches one target after the other, so when the machine's other load moves
during a run (a shared machine: other jobs, SIPp on the same cores) the target searched first and
the one searched second meet different machines. Here, at each of ``--rates``, four trials are
made in the order old, new, new, old, each on a fresh ``imscore serve --workers N`` (the default
SQLite store; ``--workers 1`` for one process) run from that source tree (its package first on
``PYTHONPATH``), with ``register_bench.py``'s SIPp load, pass rule and CPU reading: so a drift in
the load falls on both alike. Each trial prints whether it passed, SIPp's retransmissions and
achieved rate, the server's CPU µs per registration (all its processes) and that of its top process
alone (the parent with ``--workers``), and SIPp's p50/p99 response time of the REGISTER answered
200. ``--json FILE`` writes every trial.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import register_bench as rb
from stepsearch import Criteria

ORDER = ("old", "new", "new", "old")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the source tree to compare with")
    parser.add_argument("--new", type=Path, required=True, help="the imscore source tree compared")
    parser.add_argument("--rates", default="500,800", help="registrations/s, comma separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one trial (5)")
    parser.add_argument("--workers", type=int, default=2, help="imscore serve --workers (2)")
    parser.add_argument("--users", type=int, default=30000, help="users in users.csv (30000)")
    parser.add_argument("--json", type=Path, default=None, help="write every trial to this file")
    args = parser.parse_args(argv)
    sipp = shutil.which("sipp")
    peer = rb.peer_dir()
    if sipp is None or not (peer / rb.SCENARIO).exists():
        print("interleaved_bench: needs sipp and the peer's register-auth.xml", file=sys.stderr)
        return 2
    for tree in (args.old, args.new):
        if not (tree / "imscore" / "__init__.py").exists():
            print(f"interleaved_bench: {tree} holds no imscore package", file=sys.stderr)
            return 2
    load_args = argparse.Namespace(sipp=sipp, sipp_timeout=30.0)
    criteria = Criteria(schedule=0.95, retransmissions=0.001)
    folder = Path(tempfile.mkdtemp(prefix="interleaved-bench-"))
    trials: list[dict[str, Any]] = []
    try:
        csv, subscribers = rb.write_users(folder, args.users)
        scenario = rb.rtd_scenario(peer, folder)
        for rate in (int(r) for r in args.rates.split(",")):
            for name in ORDER:
                setup = Setup(args, load_args, criteria, folder, csv, subscribers, scenario)
                row = trial(name, rate, setup, len(trials))
                trials.append(row)
                print(
                    f"{rate:>6}/s {name:<3} {'pass' if row['passed'] else 'FAIL'}"
                    f"  retransmitted {row['retransmissions']:>6}"
                    f"  achieved {row['achieved'] or 0:8.1f}/s"
                    f"  CPU {row['server_us']:6.0f} us/reg (top process {row['top_us']:5.0f})"
                    f"  200 p50/p99 {row['p50']}/{row['p99']} ms  {row['reason'][:80]}",
                    flush=True,
                )
                time.sleep(1.0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(trials, indent=1))
    return 0


@dataclass
class Setup:
    """What every trial shares."""

    args: argparse.Namespace
    load_args: argparse.Namespace
    criteria: Criteria
    folder: Path
    csv: Path
    subscribers: Path
    scenario: Path


def trial(name: str, rate: int, setup: Setup, number: int) -> dict[str, Any]:
    """One trial of the ``name`` tree at ``rate`` on a fresh server with an empty store."""
    args, folder, criteria = setup.args, setup.folder, setup.criteria
    for suffix in ("", "-wal", "-shm"):
        (folder / f"imscore.db{suffix}").unlink(missing_ok=True)
    tree = args.old if name == "old" else args.new
    server = rb.Imscore(
        setup.subscribers, "default", folder, "WARNING", args.workers, name=name, source=tree
    )
    address = server.start()
    try:
        load = rb.run_load(
            name,
            number,
            address,
            rate,
            args.seconds,
            setup.load_args,
            setup.csv,
            folder,
            setup.scenario,
            server.pid,
            settle=0.5,
        )
    finally:
        server.stop()
    ok = max(1, load.ok)
    answered = load.rtt.get("200", {})
    return {
        "tree": name,
        "rate": rate,
        "passed": not load.verdict(criteria),
        "reason": load.verdict(criteria),
        "ok": load.ok,
        "failed": load.failed,
        "retransmissions": load.retransmissions,
        "achieved": load.achieved,
        "server_us": 1e6 * (load.server_cpu or 0.0) / ok,
        "top_us": 1e6 * (load.server_top_cpu or 0.0) / ok,
        "p50": answered.get("p50"),
        "p99": answered.get("p99"),
    }


if __name__ == "__main__":
    sys.exit(main())
