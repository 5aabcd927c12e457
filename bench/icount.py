#!/usr/bin/env python3
"""Instructions per Digest registration, counted by valgrind (callgrind), for one or more Python
interpreters: a figure that does not move with the load of a shared machine.

Usage::

    apt-get install -y valgrind
    python3 bench/icount.py [--python PATH ...] [--small N] [--large N]

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


def instructions(python: str, registrations: int) -> int:
    """Instructions callgrind counted for one run of register_cpu_bench with ``registrations``."""
    env = dict(os.environ, PYTHONSAFEPATH="1")  # the installed imscore, not a checkout's
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python,
         str(HERE / "register_cpu_bench.py"), "--registrations", str(registrations), "--rounds", "1"],
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
    parser.add_argument("--small", type=int, default=250, help="registrations of the first run (250)")
    parser.add_argument("--large", type=int, default=750, help="registrations of the second run (750)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind not found (apt-get install -y valgrind)", file=sys.stderr)
        return 2
    if args.large <= args.small:
        parser.error("--large must be greater than --small")
    print(
        f"instructions per Digest registration (callgrind, ({args.large} - {args.small}) registrations)"
    )
    for python in args.python or [sys.executable]:
        small = instructions(python, args.small)
        large = instructions(python, args.large)
        per = (large - small) / (args.large - args.small)
        print(f"{per / 1e6:8.2f} M  {python}  ({build_of(python)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
