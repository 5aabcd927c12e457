#!/usr/bin/env python3
"""Session Establishment Rate (RFC 7501 §3.4.3) of a call forked in parallel to three registered
devices, through the proxy of ``imscore serve`` and through the reference Kamailio, found by the step
search of RFC 7502 §4.10 in one run.

Usage::

    apt-get install -y kamailio sip-tester          # Kamailio and SIPp
    python3 bench/proxy_bench.py [--seconds S] [--start-rate R] [--max-rate R] [--record-route]
                                 [--targets kamailio,imscore,imscore-workers] [--workers N] [--json]

The reference Kamailio is the peer's (``$IMSCORE_PEER``, else ``shared/peer`` beside the
repository): ``kamailio.sh start 1`` (Digest on REGISTER, udp:127.0.0.1:5070) with
``kamailio-registrar.cfg``, which forks a call to a registered user with ``lookup`` + ``t_relay``
and record-routes it. imscore runs ``imscore serve --profile multi-device --store memory:`` on a
free loopback UDP port (``--record-route``: the same profile with ``proxy.record_route: true``), with
a subscriber file giving the benchmark user the password Kamailio checks. The ``imscore-workers``
target (``--targets``) runs the same with ``--workers N`` (``--workers``, default 2) and a SQLite
store in the run's folder: every message of a call meets in the worker its Call-ID names, the
devices' bindings are shared through the store.

A trial at a rate R: the target is started afresh; three SIPp UAS processes
(``bench/sipp/uas-answer.xml`` once, ``bench/sipp/uas-ring.xml`` twice) REGISTER their contact as
the same user with Digest (``bench/sipp/register.xml``, a one-call SIPp run from the very port the UAS
then listens on); one SIPp UAC (``bench/sipp/uac-call.xml``) makes R x ``--seconds`` calls at R
calls/s, each INVITE -> (100, three 180) -> 200 -> ACK -> BYE -> 200 through the proxy; the ringing
devices get the proxy's CANCEL (200, 487, ACK). The caller's From is in another domain, so neither
target asks for credentials on the INVITE. The trial passes when every call succeeded (a call
imscore's overload control refused with 503 counts as failed), no retransmission timed out, the
caller retransmitted at most ``--max-retrans`` of its messages, kept its schedule (achieved rate >=
``--schedule`` of R) and the answering device got the ACK of every answered call. The search
(``stepsearch.py``: doubling from ``--start-rate``, then bisecting, ``--max-steps`` trials at most)
gives the highest rate that passed.

Then one more trial per target at ``--cpu-rate`` (default 80 % of the lowest rate found) gives the
server's CPU microseconds per call (user + system of all its processes, from /proc) and the SIPp
processes' CPU. Failed calls and what SIPp and the devices logged are printed. Only ratios from one
run mean anything: the machine is shared.

Exit status: 0 when the searches and CPU trials ran and the CPU trials passed, 1 when a CPU trial
failed, 2 when the setup is missing (no sipp, kamailio or peer folder).
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
    add_search_options,
    count_missing,
    describe_run,
    describe_trial,
    fixed_rate,
    free_udp_port,
    parse_sipp_output,
    peer_dir,
    run_sipp,
    summarise_error_file,
    tree_cpu_seconds,
)
from stepsearch import Criteria, Search, Trial, round_rate, sipp_verdict, step_search

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "sipp"
REPO = HERE.parent
USER = "bench"
PASSWORD = "secret"  # the one password kamailio-registrar.cfg checks
CALLER = "sip:caller@example.org"  # another domain: no credentials asked on the INVITE
TARGETS = ("kamailio", "imscore", "imscore-workers")
#: what runs unless --targets says otherwise
DEFAULT_TARGETS = ("kamailio", "imscore")
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


def run_calls(
    target: str,
    rnd: int,
    address: tuple[str, int],
    rate: int,
    seconds: float,
    args: argparse.Namespace,
    folder: Path,
    server_pid: int | None,
) -> Run:
    """Register the three devices at ``address``, then drive calls at ``rate`` a second for
    ``seconds``; the run's figures."""
    calls = max(1, int(rate * seconds))
    run = Run(target, rnd, offered=float(rate), calls=calls)
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
            str(rate),
            "-m",
            str(calls),
            "-l",
            "5000",
            # a late 180 (after the 200) is logged and ignored, not a reason to abort the call
            "-default_behaviors",
            "all,-abortunexp",
            "-timeout",
            f"{seconds + args.sipp_timeout:g}",
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
            command,
            run,
            timeout=seconds + args.sipp_timeout + 30,
            folder=folder,
            server_pid=server_pid,
            settle=0.5,
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
        count_missing(run, calls)
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


def verdict(run: Run, criteria: Criteria) -> str:
    """Why a call trial does not pass, "" when it does. A late 180 (a cancelled branch's, after
    the 200) is an unexpected message SIPp logs and ignores; it does not fail the trial. An
    answered call whose ACK never reached the answering device does."""
    reason = sipp_verdict(
        offered=run.offered,
        achieved=run.achieved,
        calls=run.calls,
        ok=run.ok,
        failed=run.failed,
        retransmissions=run.retransmissions,
        timeouts=run.timeouts,
        unexpected=0,
        sent=run.sent,
        criteria=criteria,
    )
    if run.acks_at_callee is not None and run.acks_at_callee < run.ok:
        missing = f"{run.ok - run.acks_at_callee} ACKs missing at the answering device"
        reason = f"{reason}; {missing}" if reason else missing
    return reason


@dataclass
class Setup:
    """What every trial of a run shares."""

    peer: Path
    subscribers: Path
    profile: str
    folder: Path
    args: argparse.Namespace

    @property
    def criteria(self) -> Criteria:
        return Criteria(schedule=self.args.schedule, retransmissions=self.args.max_retrans)


def measure(target: str, trial: int, rate: int, setup: Setup) -> Run:
    """Start the target, register the devices, drive one trial of calls, stop it all."""
    args = setup.args
    server: Kamailio | Imscore
    if target == "kamailio":
        server = Kamailio(setup.peer)
    else:
        workers = target == "imscore-workers"
        store = "memory:"
        if workers:  # a fresh SQLite file per trial, as the memory store is per run
            path = setup.folder / f"proxy-workers-{trial}.sqlite"
            for stale in setup.folder.glob(f"{path.name}*"):
                stale.unlink()
            store = f"sqlite:{path}"
        server = Imscore(
            setup.subscribers,
            store,
            setup.folder,
            args.log_level,
            args.workers if workers else 1,
            name="proxy-workers" if workers else "proxy",
            extra=["--profile", setup.profile],
        )
    try:
        address = server.start()
        run = run_calls(target, trial, address, rate, args.seconds, args, setup.folder, server.pid)
    finally:
        server.stop()
    if isinstance(server, Imscore):
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


def search_target(target: str, setup: Setup) -> Search:
    """The step search for one target; every trial on a freshly started server and devices."""
    count = 0

    def trial(rate: int) -> Trial:
        nonlocal count
        count += 1
        run = measure(target, count, rate, setup)
        reason = verdict(run, setup.criteria)
        return Trial(rate, not reason, reason, asdict(run))

    print(f"{target}:", file=sys.stderr, flush=True)
    args = setup.args
    if args.rate:
        return fixed_rate(trial, args.rate)
    return step_search(
        trial,
        start=args.start_rate,
        max_rate=args.max_rate,
        max_steps=args.max_steps,
        resolution=args.resolution,
    )


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def summarise(
    searches: dict[str, Search], cpu: dict[str, Run], *, searched: bool = True
) -> dict[str, Any]:
    """Rates, the ratio imscore / Kamailio, CPU per call at the common rate; the issue's rate
    targets only when the rates come from a search, not from ``--rate``."""
    rates = {t: s.rate for t, s in searches.items()}
    kam = rates.get("kamailio") or 0
    per_call = {
        t: (1e6 * r.server_cpu / r.ok if r.server_cpu is not None and r.ok else None)
        for t, r in cpu.items()
    }
    kam_us = per_call.get("kamailio")
    imscore_us = per_call.get("imscore")
    ratio = rates["imscore"] / kam if kam and "imscore" in rates else None
    workers = rates.get("imscore-workers")
    best = max((rates[t] for t in ("imscore", "imscore-workers") if t in rates), default=None)
    best_ratio = best / kam if kam and best is not None else None
    targets = {}
    if best_ratio is not None and searched:  # the best of one process and --workers
        targets["forked-call rate >= 0.7x Kamailio"] = best_ratio >= 0.7
        targets["forked-call rate >= 1.0x Kamailio (goal)"] = best_ratio >= 1.0
    return {
        "rates": rates,
        "ratio": ratio,
        "workers_ratio": workers / kam if kam and workers is not None else None,
        "server_us_per_call": per_call,
        "cpu_ratio": imscore_us / kam_us if kam_us and imscore_us else None,
        "targets": targets,
    }


def print_report(result: dict[str, Any], args: argparse.Namespace) -> None:
    summary = result["summary"]
    print(
        "Session Establishment Rate (RFC 7501 §3.4.3), step search of RFC 7502 §4.10: each call"
        " forked in parallel to 3 registered devices (1 answers, 2 ring and are cancelled)"
    )
    print(
        f"  trials of {args.seconds:g} s on a fresh server; imscore profile {result['profile']};"
        f" host {result['host']}"
    )
    print(
        "  a trial passes with 0 failed or refused calls, 0 timeouts, every ACK at the answering"
        f" device, <= {100 * args.max_retrans:g} % retransmitted and the caller's achieved rate"
        f" >= {100 * args.schedule:g} % of the offered"
    )
    print()
    print(f"{'target':<16} {'calls/s':>8}  {'trials':>6}  stopped because")
    print("-" * 100)
    for target, search in result["searches"].items():
        print(f"{target:<16} {search['rate']:>8}  {len(search['trials']):>6}  {search['stopped']}")
        print(f"{'':<16}   trials: " + ", ".join(describe_trial(t) for t in search["trials"]))
    if summary["ratio"] is not None:
        print(f"ratio imscore/Kamailio: {summary['ratio']:.3f}x")
    if summary.get("workers_ratio") is not None:
        print(f"ratio imscore-workers/Kamailio: {summary['workers_ratio']:.3f}x")
    if result["cpu_runs"]:
        print()
        print(
            f"At {result['cpu_rate']} calls/s for {args.seconds:g} s (CPU: user + system of all the"
            " server's processes; uac/uas: the caller's and the three devices' SIPp)"
        )
        header = (
            f"{'target':<16} {'ok':>6} {'failed':>6} {'srv us/call':>11}"
            f" {'uac cpu s':>9} {'uas cpu s':>9}"
        )
        print(header)
        print("-" * len(header))
        for target, raw in result["cpu_runs"].items():
            r = as_run(raw)
            us = summary["server_us_per_call"].get(target)
            uas = sum(v for v in r.device_cpu.values() if v is not None)
            print(
                f"{target:<16} {r.ok:>6} {r.failed:>6} {'' if us is None else f'{us:11.0f}':>11}"
                f" {r.sipp_cpu or 0:9.1f} {uas:9.1f}"
                f"{'  <-- did not pass: ' + raw['verdict'] if raw['verdict'] else ''}"
            )
        if summary["cpu_ratio"] is not None:
            print(f"ratio imscore/Kamailio: {summary['cpu_ratio']:.2f}x server CPU per call")
    for name, met in summary["targets"].items():
        print(f"issue 13 target {name}: {'met' if met else 'NOT met'}")
    noted = [as_run(raw) for raw in result["cpu_runs"].values() if raw["verdict"] or raw["note"]]
    if noted:
        print()
        print("notes of the CPU trials:")
        for r in noted:
            describe_call_run(r, r.calls, "    ")
    if result["kept"]:
        print(f"files kept in {result['folder']}")


def as_run(raw: dict[str, Any]) -> Run:
    """A :class:`Run` back from its JSON form (with the verdict the report added)."""
    return Run(**{k: v for k, v in raw.items() if k != "verdict"})


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
    add_search_options(parser, start=100, max_rate=3200)
    parser.add_argument(
        "--cpu-rate",
        type=int,
        default=0,
        help="rate of the CPU trial (default: 80 %% of the lowest rate found)",
    )
    parser.add_argument(
        "--record-route",
        action="store_true",
        help="run imscore with proxy.record_route: true (Kamailio record-routes)",
    )
    parser.add_argument("--log-level", default="WARNING", help="imscore --log-level (WARNING)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="SIPp message traces of the caller and the devices (in the kept folder)",
    )
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help="targets to run, comma separated: kamailio, imscore, imscore-workers (default "
        "kamailio,imscore)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes of imscore-workers (default 2)"
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
            f"proxy_bench: unknown target {', '.join(unknown)} (expected {', '.join(TARGETS)})",
            file=sys.stderr,
        )
        return 2
    folder = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    result: dict[str, Any] = {}
    cpu: dict[str, Run] = {}
    verdicts: dict[str, str] = {}
    try:
        setup = Setup(
            peer, write_subscribers(folder), write_profile(folder, args.record_route), folder, args
        )
        searches = {t: search_target(t, setup) for t in TARGETS if t in chosen}
        found = [s.rate for s in searches.values() if s.rate]
        cpu_rate = args.cpu_rate or args.rate or (round_rate(0.8 * min(found)) if found else 0)
        if cpu_rate:
            print(f"CPU trials at {cpu_rate}/s:", file=sys.stderr, flush=True)
            for target in searches:
                cpu[target] = measure(target, 0, cpu_rate, setup)
                verdicts[target] = verdict(cpu[target], setup.criteria)
                print(f"  {target}: {verdicts[target] or 'pass'}", file=sys.stderr, flush=True)
        keep = args.keep or args.trace or any(verdicts.values())
        result = {
            "peer": str(peer),
            "folder": str(folder),
            "kept": keep,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "profile": "multi-device" + (" + proxy.record_route" if args.record_route else ""),
            "host": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "options": {k: v for k, v in vars(args).items() if k != "sipp"},
            "searches": {t: s.as_dict() for t, s in searches.items()},
            "cpu_rate": cpu_rate,
            "cpu_runs": {t: {**asdict(r), "verdict": verdicts[t]} for t, r in cpu.items()},
            "summary": summarise(searches, cpu, searched=not args.rate),
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
