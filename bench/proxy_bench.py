#!/usr/bin/env python3
"""Calls per second through the forking proxy of ``imscore serve`` against the reference Kamailio,
each forking every call in parallel to three registered contacts, in one run.

Usage::

    apt-get install -y kamailio sip-tester          # Kamailio and SIPp
    python3 bench/proxy_bench.py [--calls N] [--rate R] [--rounds R] [--record-route] [--json]

The reference Kamailio is the peer's (``$IMSCORE_PEER``, else ``shared/peer`` beside the
repository): ``kamailio.sh start 1`` (Digest on REGISTER, udp:127.0.0.1:5070) with
``kamailio-registrar.cfg``, which forks a call to a registered user with ``lookup`` + ``t_relay``
and record-routes it. imscore runs ``imscore serve --profile multi-device --store memory:`` on a
free loopback UDP port (``--record-route``: the same profile with ``proxy.record_route: true``), with
a subscriber file giving the benchmark user the password Kamailio checks.

For each target, three long-lived SIPp UAS processes (``bench/sipp/uas-answer.xml`` once,
``bench/sipp/uas-ring.xml`` twice) first REGISTER their contact as the same user with Digest
(``bench/sipp/register.xml``, a one-call SIPp run from the very port the UAS then listens on). Then
one SIPp UAC (``bench/sipp/uac-call.xml``) makes ``--calls`` calls at ``--rate`` calls/s, each
INVITE -> (100, three 180) -> 200 -> ACK -> BYE -> 200 through the proxy; the ringing devices get
the proxy's CANCEL (200, 487, ACK). The caller's From is in another domain, so neither target asks
for credentials on the INVITE.

The rate is successful calls (SIPp's "Successful call" count) over the wall time of the whole UAC
run. Failed calls (and calls that never completed) are printed loudly with what SIPp saw, as are the
errors the UAS processes logged. CPU seconds: the server's processes (Kamailio's children too), the
UAC and the three UAS processes, read from /proc. Rounds alternate the order of the targets. Only
ratios from one run mean anything: the machine is shared.

Exit status: 0 when every run completed with 0 failures, 1 when calls failed, 2 when the setup is
missing (no sipp, kamailio or peer folder).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from register_bench import (
    DOMAIN,
    Imscore,
    Kamailio,
    Load,
    count_missing,
    describe_run,
    free_udp_port,
    parse_sipp_output,
    peer_dir,
    run_sipp,
    summarise_error_file,
    tree_cpu_seconds,
)

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "sipp"
REPO = HERE.parent
USER = "bench"
PASSWORD = "secret"  # the one password kamailio-registrar.cfg checks
CALLER = "sip:caller@example.org"  # another domain: no credentials asked on the INVITE
TARGETS = ("kamailio", "imscore")
#: an ACK a device's SIPp logged as ignored (after the BYE) or as reaching an ended call
LATE_ACK = re.compile(r"(?:Continuing call on unexpected message|Dead call)[^\n]*received 'ACK ")
#: the three devices: (name, scenario)
DEVICES = (("answer", "uas-answer.xml"), ("ring1", "uas-ring.xml"), ("ring2", "uas-ring.xml"))


def write_subscribers(folder: Path) -> Path:
    """The benchmark user for imscore, with Kamailio's password."""
    path = folder / "subscribers.yaml"
    impi = f"{USER}@{DOMAIN}"
    path.write_text(
        f"subscribers:\n  - {{impi: {impi}, password: {PASSWORD}, implicit_sets: [[sip:{impi}]]}}\n"
    )
    return path


def write_profile(folder: Path, record_route: bool) -> str:
    """The profile imscore runs: the shipped multi-device, or a copy with ``proxy.record_route``."""
    if not record_route:
        return "multi-device"
    shipped = REPO / "imscore" / "profiles" / "multi-device.yaml"
    path = folder / "multi-device-rr.yaml"
    path.write_text(shipped.read_text() + "\nproxy:\n  record_route: true\n")
    return str(path)


# --------------------------------------------------------------------------------------------------
# The devices: three long-lived SIPp UAS processes
# --------------------------------------------------------------------------------------------------
@dataclass
class Device:
    """One SIPp UAS: registered once from its port, then answering calls there until stopped."""

    name: str
    scenario: str
    folder: Path
    #: names this run's files (``kamailio-0``)
    run: str
    #: keep every message in a trace file (SIPp -trace_msg)
    trace: bool = False
    port: int = field(default_factory=free_udp_port)
    process: subprocess.Popen[bytes] | None = None
    cpu: float | None = None
    errors: dict[str, int] = field(default_factory=dict)
    #: how many ACKs it received (from SIPp's final screen), None when it printed none
    acks: int | None = None

    @property
    def error_file(self) -> Path:
        return self.folder / f"uas-{self.name}-{self.run}.errors.log"

    def register(self, sipp: str, address: tuple[str, int]) -> None:
        """REGISTER this device's contact (Digest), from its port; raises with SIPp's output."""
        command = [
            sipp,
            f"{address[0]}:{address[1]}",
            "-sf",
            str(SCENARIOS / "register.xml"),
            "-i",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            "1",
            "-nostdin",
            "-key",
            "user",
            USER,
            "-key",
            "domain",
            DOMAIN,
            "-key",
            "contact_user",
            self.name,
            "-au",
            f"{USER}@{DOMAIN}",
            "-ap",
            PASSWORD,
            "-auth_uri",
            DOMAIN,
            "-timeout",
            "10",
            "-timeout_error",
        ]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=30,
            cwd=self.folder,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"REGISTER of {self.name} failed (sipp {result.returncode}):\n"
                f"{(result.stdout + result.stderr)[-1500:]}"
            )

    def start(self, sipp: str, address: tuple[str, int]) -> None:
        """Start the UAS on the registered port (many calls; stopped by :meth:`stop`)."""
        self.error_file.unlink(missing_ok=True)
        trace = ["-trace_msg", "-message_file", str(self.folder / f"uas-{self.name}-{self.run}.msg")]
        log = (self.folder / f"uas-{self.name}-{self.run}.out").open("wb")
        with log:
            self.process = subprocess.Popen(
                [
                    sipp,
                    f"{address[0]}:{address[1]}",
                    "-sf",
                    str(SCENARIOS / self.scenario),
                    "-i",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-nostdin",
                    "-key",
                    "contact_user",
                    self.name,
                    "-trace_err",
                    "-error_file",
                    str(self.error_file),
                    "-max_recv_loops",
                    "10000",
                    # a late ACK (after the BYE) or a retransmission is logged, not fatal
                    "-default_behaviors",
                    "all,-abortunexp",
                    *(trace if self.trace else []),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
            )

    def stop(self) -> None:
        """Stop the UAS by its PID (SIGTERM, then SIGKILL); keep its CPU time and errors."""
        if self.process is None:
            return
        self.cpu = tree_cpu_seconds(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
        out = (self.folder / f"uas-{self.name}-{self.run}.out").read_text(errors="replace")
        counts = re.findall(r"^\s*-+> ACK\s+(\d+)", out, re.MULTILINE)
        self.errors = summarise_error_file(self.error_file)
        errors = self.error_file.read_text(errors="replace") if self.error_file.exists() else ""
        # an ACK that came after its BYE (logged and ignored, or after the call ended) reached it too
        late = len(re.findall(LATE_ACK, errors))
        self.acks = int(counts[-1]) + late if counts else None
        ignored = count_ignored(self.error_file)
        if ignored:
            self.errors["unexpected message ignored (call went on)"] = ignored


def count_ignored(path: Path) -> int:
    """Unexpected messages a SIPp process logged and ignored (-abortunexp off): the caller's late
    180s, a device's late ACK, retransmissions after a call ended."""
    if not path.exists():
        return 0
    return path.read_text(errors="replace").count("Continuing call on unexpected message")


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------
@dataclass
class Run(Load):
    """One UAC load (register_bench's :class:`Load`), plus the devices' CPU time and errors."""

    device_cpu: dict[str, float | None] = field(default_factory=dict)
    device_errors: dict[str, dict[str, int]] = field(default_factory=dict)
    #: ACKs for the 2xx that reached the answering device (one per successful call expected)
    acks_at_callee: int | None = None
    #: calls the proxy turned away with 503 (overload control); SIPp ends them as successful
    #: scenario runs, so they are taken out of ``ok`` and counted as failed
    refused: int = 0


class ImscoreProxy(Imscore):
    """``imscore serve`` with a profile (multi-device), a memory store, on a free UDP port."""

    def __init__(self, subscribers: Path, profile: str, folder: Path, log_level: str) -> None:
        super().__init__(subscribers, "memory:", folder, log_level)
        self.profile = profile
        self.log = folder / "imscore.log"

    def start(self) -> tuple[str, int]:
        port = free_udp_port()
        command = [
            sys.executable,
            "-m",
            "imscore",
            "serve",
            "--profile",
            self.profile,
            "--listen",
            f"udp:127.0.0.1:{port}",
            "--store",
            "memory:",
            "--subscribers",
            str(self.subscribers),
            "--log-level",
            self.log_level,
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder
            )
        self.wait_ready(("127.0.0.1", port))
        return ("127.0.0.1", port)


def run_calls(
    target: str,
    rnd: int,
    address: tuple[str, int],
    args: argparse.Namespace,
    folder: Path,
    server_pid: int | None,
) -> Run:
    """Register the three devices at ``address``, then drive the calls; the run's figures."""
    run = Run(target, rnd)
    devices = [
        Device(name, scenario, folder, f"{target}-{rnd}", args.trace) for name, scenario in DEVICES
    ]
    try:
        for device in devices:
            device.register(args.sipp, address)
        for device in devices:
            device.start(args.sipp, address)
        time.sleep(0.3)  # let the UAS processes bind their ports
        error_file = folder / f"uac-{target}-{rnd}.errors.log"
        error_file.unlink(missing_ok=True)
        command = [
            args.sipp,
            f"{address[0]}:{address[1]}",
            "-sf",
            str(SCENARIOS / "uac-call.xml"),
            "-i",
            "127.0.0.1",
            "-p",
            str(free_udp_port()),
            "-nostdin",
            "-key",
            "ruri",
            f"sip:{USER}@{DOMAIN}",
            "-key",
            "from",
            CALLER,
            "-r",
            str(args.rate),
            "-m",
            str(args.calls),
            "-l",
            "5000",
            # a late 180 (after the 200) is logged and ignored, not a reason to abort the call
            "-default_behaviors",
            "all,-abortunexp",
            "-timeout",
            str(args.sipp_timeout),
            "-timeout_error",
            "-max_recv_loops",
            "10000",
            "-trace_err",
            "-error_file",
            str(error_file),
        ]
        if args.trace:
            command += ["-trace_msg", "-message_file", str(folder / f"uac-{target}-{rnd}.msg")]
        output = run_sipp(
            command, run, timeout=args.sipp_timeout + 30, folder=folder, server_pid=server_pid
        )
        parse_sipp_output(output, run)
        refused = re.findall(r"^\s*503 <-+\s+(\d+)", output, re.MULTILINE)
        if refused and int(refused[-1]):
            run.refused = int(refused[-1])
            run.ok -= run.refused
            run.failed += run.refused
            run.note = (run.note + "; " if run.note else "") + (
                f"{run.refused} calls refused with 503 (overload control)"
            )
        count_missing(run, args.calls)
        run.errors = summarise_error_file(error_file)
        ignored = count_ignored(error_file)
        if ignored:
            run.errors["unexpected message ignored (call went on)"] = ignored
        (folder / f"uac-{target}-{rnd}.out").write_text(output)
        time.sleep(0.5)  # the last calls' CANCEL/487/ACK exchanges end at the devices
    finally:
        for device in devices:
            device.stop()
    run.device_cpu = {d.name: d.cpu for d in devices}
    run.device_errors = {d.name: d.errors for d in devices if d.errors}
    run.acks_at_callee = devices[0].acks
    if run.acks_at_callee is not None and run.acks_at_callee < run.ok:
        run.note = (run.note + "; " if run.note else "") + (
            f"only {run.acks_at_callee} ACKs for {run.ok} answered calls reached the answering device"
        )
    return run


def measure(
    target: str,
    rnd: int,
    peer: Path,
    subscribers: Path,
    profile: str,
    folder: Path,
    args: argparse.Namespace,
) -> Run:
    """Start the target, load it, stop it."""
    server: Kamailio | ImscoreProxy
    server = (
        Kamailio(peer)
        if target == "kamailio"
        else ImscoreProxy(subscribers, profile, folder, args.log_level)
    )
    try:
        address = server.start()
        run = run_calls(target, rnd, address, args, folder, server.pid)
    finally:
        server.stop()
    if isinstance(server, ImscoreProxy):
        if server.exit_status not in (0, None):
            run.note = (run.note + "; " if run.note else "") + f"imscore exited {server.exit_status}"
        problems = [
            line
            for line in server.log_tail(4000).splitlines()
            if " ERROR " in line or "Traceback" in line
        ]
        if problems:
            run.note = (run.note + "; " if run.note else "") + f"imscore log: {problems[-1][:200]}"
    return run


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def summarise(runs: list[Run]) -> dict[str, Any]:
    """Median rates, failures, the ratio imscore / Kamailio, calls per server CPU-second."""
    medians = {t: statistics.median([r.rate for r in runs if r.target == t] or [0.0]) for t in TARGETS}
    failures = {t: sum(r.failed for r in runs if r.target == t) for t in TARGETS}
    per_cpu = {
        t: statistics.median(
            [r.ok / r.server_cpu for r in runs if r.target == t and r.server_cpu] or [0.0]
        )
        for t in TARGETS
    }
    return {
        "medians": medians,
        "failures": failures,
        "ratio": medians["imscore"] / medians["kamailio"] if medians["kamailio"] else None,
        "per_cpu": per_cpu,
        "per_cpu_ratio": per_cpu["imscore"] / per_cpu["kamailio"] if per_cpu["kamailio"] else None,
    }


def print_report(result: dict[str, Any], args: argparse.Namespace) -> None:
    runs = [Run(**r) for r in result["runs"]]
    print("Calls through the proxy, parallel fork to 3 contacts (1 answers, 2 ring and are cancelled)")
    print(
        f"  {args.calls} calls per run at SIPp -r {args.rate}; {args.rounds} rounds, order alternating;"
        f" imscore profile {result['profile']}; host {result['host']}"
    )
    print()
    header = (
        f"{'round':>5}  {'target':<9} {'calls/s':>8} {'ok':>6} {'failed':>6} {'secs':>6} {'ratio':>6}"
        f"  {'srv cpu':>7} {'calls/cpu-s':>11} {'uac cpu':>7} {'uas cpu':>7}"
    )
    print(header)
    print("-" * len(header))
    for rnd in range(args.rounds):
        kam = next((r.rate for r in runs if r.round == rnd and r.target == "kamailio"), 0.0)
        for r in [r for r in runs if r.round == rnd]:
            ratio = "" if r.target == "kamailio" or not kam else f"{r.rate / kam:6.3f}"
            cpu = "" if r.server_cpu is None else f"{r.server_cpu:7.1f}"
            per_cpu = "" if not r.server_cpu else f"{r.ok / r.server_cpu:11.0f}"
            uac = "" if r.sipp_cpu is None else f"{r.sipp_cpu:7.1f}"
            uas_values = [v for v in r.device_cpu.values() if v is not None]
            uas = f"{sum(uas_values):7.1f}" if uas_values else ""
            flag = "  <-- FAILURES" if r.failed else ""
            print(
                f"{rnd + 1:>5}  {r.target:<9} {r.rate:8.1f} {r.ok:6d} {r.failed:6d} {r.elapsed:6.1f} "
                f"{ratio:>6}  {cpu:>7} {per_cpu:>11} {uac:>7} {uas:>7}{flag}"
            )
    print()
    summary = result["summary"]
    for t in TARGETS:
        print(
            f"median {t:<9} {summary['medians'][t]:8.1f} calls/s   failures {summary['failures'][t]}"
            f"   {summary['per_cpu'][t]:6.0f} calls per server CPU-second"
        )
    ratio, per_cpu_ratio = summary["ratio"], summary["per_cpu_ratio"]
    print(f"ratio imscore/Kamailio: {ratio:.3f}x calls/s" if ratio is not None else "ratio: n/a")
    if per_cpu_ratio is not None:
        print(f"ratio imscore/Kamailio: {per_cpu_ratio:.3f}x calls per server CPU-second")
    print(
        "(srv cpu: user + system CPU seconds of the server's processes during the UAC run; uac/uas"
        " cpu: SIPp's; the box has 2 cores shared by all of them)"
    )
    failed = [r for r in runs if r.failed]
    noted = [r for r in runs if not r.failed and (r.note or r.device_errors or r.errors)]
    if failed:  # loudly: every run that lost calls, with what SIPp saw
        print()
        print("!" * 100)
        print(
            f"!!! FAILURES: {sum(r.failed for r in runs)} calls failed in "
            f"{len(failed)} of {len(runs)} runs"
        )
        for r in failed:
            describe_call_run(r, args.calls, "!!! ")
        print("!" * 100)
    if noted:  # runs without a failed call that SIPp or the devices still logged something about
        print()
        print("notes of runs without failed calls:")
        for r in noted:
            describe_call_run(r, args.calls, "    ")
    retrans = ", ".join(f"r{r.round + 1} {r.target} {sum(s[2] for s in r.steps)}" for r in runs)
    print(f"\ncaller SIPp retransmissions: {retrans}")
    if result["kept"]:
        print(f"files kept in {result['folder']}")


def describe_call_run(r: Run, calls: int, prefix: str) -> None:
    """:func:`describe_run` of a call run: the caller's errors and steps, the devices' errors."""
    devices = [
        f"device {device}: {count:6d} x {name}"
        for device, errors in r.device_errors.items()
        for name, count in errors.items()
    ]
    describe_run(r, calls, prefix, role="caller", more=devices)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per run (SIPp -m, 5000)")
    parser.add_argument("--rate", type=int, default=200, help="calls per second offered (SIPp -r, 200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--record-route",
        action="store_true",
        help="run imscore with proxy.record_route: true (Kamailio record-routes)",
    )
    parser.add_argument("--log-level", default="WARNING", help="imscore --log-level (WARNING)")
    parser.add_argument(
        "--sipp-timeout", type=int, default=120, help="SIPp -timeout for the caller, seconds (120)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="SIPp message traces of the caller and the devices (in the kept folder)",
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="targets to run, comma separated: kamailio, imscore (default both)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    args = parser.parse_args(argv)

    peer = peer_dir()
    args.sipp = shutil.which("sipp")
    problems = []
    if not (peer / "kamailio.sh").exists():
        problems.append(f"peer folder {peer} lacks kamailio.sh (set IMSCORE_PEER)")
    if args.sipp is None:
        problems.append("sipp not found (apt-get install -y sip-tester)")
    if shutil.which("kamailio") is None:
        problems.append("kamailio not found (apt-get install -y kamailio)")
    if problems:
        print("proxy_bench: " + "; ".join(problems), file=sys.stderr)
        return 2

    chosen = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in TARGETS]
    if unknown:
        print(
            f"proxy_bench: unknown target {', '.join(unknown)} (expected kamailio, imscore)",
            file=sys.stderr,
        )
        return 2
    folder = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    runs: list[Run] = []
    result: dict[str, Any] = {}
    try:
        subscribers = write_subscribers(folder)
        profile = write_profile(folder, args.record_route)
        for rnd in range(args.rounds):
            order = [t for t in (TARGETS if rnd % 2 == 0 else reversed(TARGETS)) if t in chosen]
            for target in order:
                if not args.json:
                    print(f"round {rnd + 1}: {target} ...", file=sys.stderr, flush=True)
                runs.append(measure(target, rnd, peer, subscribers, profile, folder, args))
        keep = args.keep or args.trace or any(r.failed or r.device_errors for r in runs)
        result = {
            "peer": str(peer),
            "folder": str(folder),
            "kept": keep,
            "profile": "multi-device" + (" + proxy.record_route" if args.record_route else ""),
            "host": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "options": {k: v for k, v in vars(args).items() if k != "sipp"},
            "runs": [asdict(r) for r in runs],
            "summary": summarise(runs),
        }
    finally:
        if not result.get("kept"):
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result, args)
    return 1 if any(r.failed for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
