#!/usr/bin/env python3
"""Instructions per Digest registration (or per forked call), counted by valgrind (callgrind), for
one or more Python interpreters: a figure that does not move with the load of a shared machine.

Usage::

    apt-get install -y valgrind
    python3 bench/icount.py [--bench register|proxy] [--python PATH ...] [--small N] [--large N]

For each interpreter (default: this one), ``register_cpu_bench.py`` runs twice under
``valgrind --tool=callgrind``, registering ``--small`` and then ``--large`` users (one round each:
the two datagrams SIPp's ``register-auth.xml`` sends per user, straight into the server's UDP receive
path). Start-up (imports, the subscriber file, the server) costs both runs the same, so the
difference of the two totals divided by the difference of the counts is what one registration costs:
every instruction the process ran for it, Python's and C's, system calls excluded. Valgrind slows
the process about 50 times (the defaults take a few minutes per interpreter).

Give the ``python`` of each build to compare (for instance a venv with the pure install and one with
the compiled wheel); each imports the imscore installed in it. The wall-clock benchmarks remain the
ones that compare with Kamailio; this one says whether a change made the work smaller.

``--bench proxy`` counts ``proxy_cpu_bench.py`` instead: ``--small`` and then ``--large`` calls
(defaults 100 and 300), each forked to three devices of one of 20 registered users (the
registrations cost both runs the same), so the figure is the instructions of one forked call.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLLECTED = re.compile(r"Collected : (\d+)")


#: per bench: the script, its option giving the count, other options, default small and large counts,
#: and what one unit is
BENCHES = {
    "register": ("register_cpu_bench.py", "--registrations", [], 250, 750, "Digest registration"),
    "proxy": ("proxy_cpu_bench.py", "--calls", ["--users", "20"], 100, 300, "forked call"),
}


def instructions(python: str, count: int, bench: str = "register") -> int:
    """Instructions callgrind counted for one run of ``bench``'s script with ``count``
    registrations (or calls)."""
    script, option, extra, _, _, _ = BENCHES[bench]
    env = dict(os.environ, PYTHONSAFEPATH="1")  # the installed imscore, not a checkout's
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python,
         str(HERE / script), option, str(count), "--rounds", "1", *extra],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    found = COLLECTED.search(run.stderr)
    if run.returncode != 0 or found is None:
        raise SystemExit(
            f"{python}: the run under valgrind failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}"
        )
    return int(found.group(1))


def build_of(python: str) -> str:
    """What ``imscore --version`` says of the build that interpreter imports."""
    shown = subprocess.run(
        [python, "-c", "from imscore.build_info import describe; print(describe())"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONSAFEPATH="1"), check=False,
    )  # fmt: skip
    return shown.stdout.strip() or shown.stderr.strip()[-200:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", help="an interpreter to measure (repeatable)")
    parser.add_argument(
        "--bench", choices=sorted(BENCHES), default="register",
        help="what to count: a Digest registration (register, the default) or a forked call (proxy)",
    )  # fmt: skip
    parser.add_argument(
        "--small", type=int, help="registrations (calls) of the first run (250; proxy: 100)"
    )
    parser.add_argument(
        "--large", type=int, help="registrations (calls) of the second run (750; proxy: 300)"
    )
    args = parser.parse_args(argv)
    _, _, _, small_default, large_default, unit = BENCHES[args.bench]
    args.small = small_default if args.small is None else args.small
    args.large = large_default if args.large is None else args.large
    if shutil.which("valgrind") is None:
        print("valgrind not found (apt-get install -y valgrind)", file=sys.stderr)
        return 2
    if args.large <= args.small:
        parser.error("--large must be greater than --small")
    counted = "registrations" if args.bench == "register" else "calls"
    print(f"instructions per {unit} (callgrind, ({args.large} - {args.small}) {counted})")
    for python in args.python or [sys.executable]:
        small = instructions(python, args.small, args.bench)
        large = instructions(python, args.large, args.bench)
        per = (large - small) / (args.large - args.small)
        print(f"{per / 1e6:8.2f} M  {python}  ({build_of(python)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
