"""Loading a subscriber file at scale: time and memory (issue 13's target, 1,000,000 subscribers
in <= 1 GiB and <= 30 s).

    python3 bench/subscribers_bench.py [--subscribers 1000000] [--format jsonl|yaml|both] [--json]

A file of ``N`` subscribers as ``register_bench.py`` writes them (one IMPI, a Digest password, one
implicit set of one SIP IMPU each) is generated into a temporary folder, in the bulk format
(JSON Lines) and/or YAML; then a fresh child process loads it with
:func:`imscore.subscribers.load_subscribers` (which picks the format by the file name), looks up a
sample of the subscribers by IMPI and by IMPU, and reports the wall and CPU seconds of the load, the
RSS before and after, and the peak RSS of the child (``VmHWM`` of ``/proc/self/status``).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOMAIN = "ims.example.test"


def write_file(path: Path, count: int) -> None:
    """``count`` subscribers, in JSON Lines when ``path`` ends in ``.jsonl``, else in YAML."""
    with path.open("w") as out:
        if path.suffix == ".jsonl":
            for i in range(count):
                impi = f"user{i:07d}@{DOMAIN}"
                out.write(
                    f'{{"impi":"{impi}","password":"secret","implicit_sets":[["sip:{impi}"]]}}\n'
                )
        else:
            out.write("subscribers:\n")
            for i in range(count):
                impi = f"user{i:07d}@{DOMAIN}"
                out.write(f"  - {{impi: {impi}, password: secret, implicit_sets: [[sip:{impi}]]}}\n")


def status_mib(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise SystemExit(f"no {field} in /proc/self/status")


def measure(path: str, count: int) -> dict[str, object]:
    """Load ``path`` in this process (a fresh child) and report."""
    from imscore.subscribers import load_subscribers

    gc.collect()
    before = status_mib("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    directory = load_subscribers(path)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    gc.collect()
    after = status_mib("VmRSS")
    if len(directory) != count:
        raise SystemExit(f"loaded {len(directory)} subscribers, expected {count}")
    step = max(1, count // 1000)
    started = time.perf_counter()
    looked = 0
    for i in range(0, count, step):
        impi = f"user{i:07d}@{DOMAIN}"
        found = directory.by_impi(impi)
        if found is None or directory.by_impu(f"sip:{impi}") != found:
            raise SystemExit(f"{impi} not found by IMPI and IMPU alike")
        looked += 1
    lookup_us = (time.perf_counter() - started) / looked / 2 * 1e6
    return {
        "format": Path(path).suffix.lstrip("."),
        "subscribers": count,
        "load_wall_s": round(wall, 1),
        "load_cpu_s": round(cpu, 1),
        "rss_before_mib": round(before, 1),
        "rss_after_mib": round(after, 1),
        "rss_peak_mib": round(status_mib("VmHWM"), 1),
        "bytes_per_subscriber": round((after - before) * 2**20 / count),
        "first_lookup_us": round(lookup_us, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000, help="default 1,000,000")
    parser.add_argument("--format", choices=["jsonl", "yaml", "both"], default="jsonl")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.subscribers < 1:
        parser.error("--subscribers must be at least 1")
    if args.measure:
        print(json.dumps(measure(args.measure, args.subscribers)))
        return 0
    formats = ["jsonl", "yaml"] if args.format == "both" else [args.format]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for suffix in formats:
            path = Path(folder) / f"subscribers.{suffix}"
            write_file(path, args.subscribers)
            command = [sys.executable, __file__, "--measure", str(path)]
            command += ["--subscribers", str(args.subscribers)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            path.unlink()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for figures in results:
            print(", ".join(f"{k} {v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
