#!/usr/bin/env python3
"""Registration Rate (RFC 7501 §3.4.2) of ``imscore serve`` and of the reference Kamailio, found by
the step search of RFC 7502 §4.10 in one run, with server CPU per registration and SIPp's response
times at one rate all of them sustain.

Usage::

    apt-get install -y kamailio sip-tester          # Kamailio and SIPp
    python3 bench/register_bench.py [--seconds S] [--start-rate R] [--max-rate R] [--json]

The reference setup is read from ``$IMSCORE_PEER``, else ``shared/peer`` beside the repository
(``kamailio.sh``, ``kamailio-registrar.cfg``, ``register-auth.xml``). Kamailio is started with the
peer's ``kamailio.sh start 1`` (digest on, udp:127.0.0.1:5070). Every target gets the same SIPp
scenario: the peer's ``register-auth.xml`` (REGISTER, 401, REGISTER with MD5 credentials, 200)
with SIPp response-time marks added (``start_rtd``/``rtd``; the messages are the peer's, byte for
byte), the same ``users.csv`` (as the peer's ``make-users.py`` writes it; imscore gets the matching
subscriber file) and the options of the peer's ``register-rate.sh`` (``-rp 1000 -l 5000``).

For each target (Kamailio; imscore with ``--store memory:`` in one process; imscore with
``--workers N`` and its default SQLite store; optionally imscore with SQLite in one process) the
search of ``stepsearch.py`` offers rates for ``--seconds`` each (SIPp ``-r R -m R*S``): doubling from
``--start-rate`` while a trial passes, then halving the gap between the highest rate that passed and
the lowest that failed, ``--max-steps`` trials at most. A trial passes when every registration
succeeded, SIPp kept its schedule (its achieved call rate >= ``--schedule`` of the offered one), no
retransmission timed out, no message was unexpected and SIPp retransmitted at most
``--max-retrans`` of its messages. The server runs through the trials and is started afresh after a
trial that failed. The Registration Rate is the highest rate that passed.

Then, at ``--cpu-rate`` (default: 80 % of the lowest Registration Rate found, so every target
sustains it), each target, started afresh, takes ``--cpu-trials`` more trials (the targets taking
turns, so a change in the machine's load falls on all of them), from which come: server CPU
microseconds per registration (user + system time of all the server's processes, from
/proc/PID/stat of the server and its descendants) and SIPp's response times p50/p99 for each of the
two requests (SIPp ``-trace_rtt``; SIPp counts whole milliseconds). The trial with the median CPU
figure is the one reported; every trial's figure is listed beside it, since on a shared machine one
short trial's CPU figure moves by a fifth or more from one trial to the next.

``--rate R`` skips the search: one trial per target at R. ``--profile S`` adds one imscore (memory
store) trial at the CPU rate under ``py-spy record`` for S seconds and prints the heaviest functions.
Only ratios from one run mean anything: the machine is shared and its load moves the absolute rates.

Exit status: 0 when the search (and the CPU trial) ran for every target, 1 when the CPU trial of a
target failed, 2 when the setup is missing (no sipp, kamailio or peer folder).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stepsearch import Criteria, Search, Trial, round_rate, sipp_verdict, step_search

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "ims.example.test"
KAMAILIO_ADDRESS = ("127.0.0.1", 5070)
SCENARIO = "register-auth.xml"
#: SIPp options of the peer's register-rate.sh, besides target, scenario, users, local port, rate,
#: count and timeout.
SIPP_LOAD = [
    "-auth_uri",
    DOMAIN,
    "-rp",
    "1000",
    "-l",
    "5000",
    "-nostdin",
    "-timeout_error",
    "-max_recv_loops",
    "10000",
]
TARGETS = ("kamailio", "imscore-memory", "imscore-sqlite", "imscore-workers")
#: ``--baseline DIR``: imscore --workers N run from another source tree, beside the installed one
BASELINE_TARGET = "imscore-workers-base"
#: the response-time marks SIPp measures: REGISTER -> 401, REGISTER with credentials -> 200
RTDS = {"1": "401", "2": "200"}


def peer_dir() -> Path:
    env = os.environ.get("IMSCORE_PEER")
    return Path(env) if env else REPO.parent / "shared" / "peer"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def udp_port_busy(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of one process alone (``None`` where /proc cannot tell): the top
    process of a server, imscore's parent with ``--workers``, Kamailio's main process."""
    fields = None if pid is None else _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(root: int | None) -> float | None:
    """User + system CPU seconds of a process and of its descendants that are alive now (read from
    /proc; Kamailio's UDP children, imscore's workers). ``None`` where /proc cannot tell."""
    if root is None or _stat_fields(root) is None:
        return None
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
    tree, changed = {root}, True
    while changed:
        grown = tree | {pid for pid, parent in parents.items() if parent in tree}
        changed, tree = grown != tree, grown
    total = 0
    for pid in tree:
        fields = _stat_fields(pid)
        if fields is not None:  # fields[11], fields[12]: utime, stime (after pid and comm)
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def udp_rcvbuf_errors() -> int | None:
    """The host's UDP RcvbufErrors counter (datagrams dropped because a socket buffer was full)."""
    try:
        lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    except OSError:
        return None
    rows = [line for line in lines if line and line[0] == "Udp:"]
    if len(rows) < 2 or "RcvbufErrors" not in rows[0]:
        return None
    return int(rows[1][rows[0].index("RcvbufErrors")])


# --------------------------------------------------------------------------------------------------
# Input files
# --------------------------------------------------------------------------------------------------
def write_users(folder: Path, users: int) -> tuple[Path, Path]:
    """users.csv exactly as the peer's make-users.py writes it, and the matching subscriber file."""
    csv = folder / "users.csv"
    with csv.open("w") as out:
        out.write("SEQUENTIAL\n")
        for i in range(users):
            out.write(
                f"user{i:05d};{DOMAIN};[authentication username=user{i:05d}@{DOMAIN} password=secret]\n"
            )
    subscribers = folder / "subscribers.yaml"
    with subscribers.open("w") as out:
        out.write("subscribers:\n")
        for i in range(users):
            impi = f"user{i:05d}@{DOMAIN}"
            out.write(f"  - {{impi: {impi}, password: secret, implicit_sets: [[sip:{impi}]]}}\n")
    return csv, subscribers


# --------------------------------------------------------------------------------------------------
# One SIPp load
# --------------------------------------------------------------------------------------------------
@dataclass
class Load:
    target: str
    #: the trial's number in its search (a round, in proxy_bench)
    round: int
    #: succeeded scenarios over the wall time of the SIPp run
    rate: float = 0.0
    #: the rate offered (SIPp -r) and the scenarios asked for (SIPp -m)
    offered: float = 0.0
    calls: int = 0
    #: SIPp's own cumulative call rate: calls it created over its elapsed time
    achieved: float | None = None
    ok: int = 0
    failed: int = 0
    elapsed: float = 0.0
    sipp_status: int | None = None
    #: per scenario step: [name, messages, retransmissions, timeouts, unexpected]
    steps: list[list[Any]] = field(default_factory=list)
    #: what the SIPp error file says, counted: retransmission timeouts, unexpected statuses ...
    errors: dict[str, int] = field(default_factory=dict)
    rcvbuf_drops: int | None = None
    #: CPU seconds (user + system) the server's processes used during the SIPp run, and SIPp's own
    server_cpu: float | None = None
    #: the same for the server's top process alone (imscore's parent with --workers)
    server_top_cpu: float | None = None
    sipp_cpu: float | None = None
    #: SIPp's response times per request (RTDS): p50, p99, mean, max in milliseconds, and count
    rtt: dict[str, dict[str, float]] = field(default_factory=dict)
    note: str = ""

    @property
    def retransmissions(self) -> int:
        return sum(step[2] for step in self.steps)

    @property
    def timeouts(self) -> int:
        return sum(step[3] for step in self.steps)

    @property
    def unexpected(self) -> int:
        return sum(step[4] for step in self.steps)

    @property
    def sent(self) -> int:
        """Messages SIPp sent (the steps whose arrow points at the server), retransmissions aside."""
        return sum(step[1] for step in self.steps if step[5] == "send")

    def verdict(self, criteria: Criteria) -> str:
        """Why this load does not pass (stepsearch.sipp_verdict, then what SIPp's error file says
        most often), "" when it does."""
        reason = sipp_verdict(
            offered=self.offered,
            achieved=self.achieved,
            calls=self.calls,
            ok=self.ok,
            failed=self.failed,
            retransmissions=self.retransmissions,
            timeouts=self.timeouts,
            unexpected=self.unexpected,
            sent=self.sent,
            criteria=criteria,
        )
        if reason and self.errors:
            top = sorted(self.errors.items(), key=lambda item: -item[1])[:2]
            reason += " [SIPp: " + ", ".join(f"{count} x {name}" for name, count in top) + "]"
        return reason


STEP = re.compile(r"^\s+(\S+)\s+(-+>|<-+)\s+(?:[BE]-RTD\d+\s+)?(\d+)\s+(\d+)\s+(\d+)(?:\s+(\d+))?\s*$")


def parse_sipp_output(text: str, load: Load) -> None:
    for line in text.splitlines():  # like register-rate.sh's awk: the last value wins
        if "Successful call" in line:
            load.ok = int(line.split("|")[2].split()[0])
        elif "Failed call" in line:
            load.failed = int(line.split("|")[2].split()[0])
        elif line.lstrip().startswith("Call Rate") and line.count("|") >= 2:
            with contextlib.suppress(ValueError, IndexError):
                load.achieved = float(line.split("|")[2].split()[0])
    screen = text.rsplit("Scenario Screen", 1)[-1]
    load.steps = []
    for line in screen.splitlines():
        match = STEP.match(line)
        if match:
            name, arrow, messages, retrans, timeouts, unexpected = match.groups()
            direction = "send" if arrow.endswith(">") else "recv"
            load.steps.append(
                [name, int(messages), int(retrans), int(timeouts), int(unexpected or 0), direction]
            )


def summarise_error_file(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    text = path.read_text(errors="replace")
    counts: collections.Counter[str] = collections.Counter()
    counts["retransmission timeout (call aborted)"] = text.count(
        "Aborting call on UDP retransmission timeout"
    )
    for status in re.findall(
        r"Aborting call on unexpected message.*?received 'SIP/2\.0 (\d{3})", text, re.S
    ):
        counts[f"unexpected {status} (call aborted)"] += 1
    for status in re.findall(
        r"Dead call \S+ \(aborted at index \d+\), received 'SIP/2\.0 (\d{3})", text
    ):
        counts[f"dead-call answer {status} (to SIPp's clean-up)"] += 1
    counts["other aborted calls"] = len(re.findall(r"Aborting call", text)) - sum(
        v for k, v in counts.items() if "aborted" in k
    )
    return {key: value for key, value in counts.items() if value}


def rtd_scenario(peer: Path, folder: Path) -> Path:
    """The peer's register-auth.xml with SIPp response-time marks: RTD 1 from the first REGISTER
    to its 401, RTD 2 from the REGISTER with credentials to its 200. The messages are untouched."""
    text = (peer / SCENARIO).read_text()
    sends = text.split('<send retrans="500">')
    if len(sends) != 3 or '<recv response="401" auth="true" />' not in text:
        raise RuntimeError(f"{peer / SCENARIO} is not the two-REGISTER scenario this script knows")
    text = sends[0] + '<send retrans="500" start_rtd="1">' + sends[1]
    text += '<send retrans="500" start_rtd="2">' + sends[2]
    text = text.replace(
        '<recv response="401" auth="true" />', '<recv response="401" auth="true" rtd="1" />'
    )
    text = text.replace('<recv response="200" />', '<recv response="200" rtd="2" />')
    path = folder / "register-auth-rtd.xml"
    path.write_text(text)
    return path


def read_rtt(folder: Path, scenario: Path, names: dict[str, str]) -> dict[str, dict[str, float]]:
    """Percentiles of the response times SIPp -trace_rtt wrote (``<scenario>_<pid>_rtt.csv`` in
    ``folder``, removed once read), per RTD named by ``names``."""
    times: dict[str, list[float]] = collections.defaultdict(list)
    for path in folder.glob(f"{scenario.stem}_*_rtt.csv"):
        for line in path.read_text(errors="replace").splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 3:
                with contextlib.suppress(ValueError):
                    times[names.get(parts[2].strip(), parts[2].strip())].append(float(parts[1]))
        path.unlink()
    return {name: percentiles(values) for name, values in times.items() if values}


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    return {
        "p50": at(0.50),
        "p99": at(0.99),
        "mean": statistics.fmean(ordered),
        "max": ordered[-1],
        "count": float(len(ordered)),
    }


def run_load(
    target: str,
    trial: int,
    address: tuple[str, int],
    rate: int,
    seconds: float,
    args: argparse.Namespace,
    csv: Path,
    folder: Path,
    scenario: Path,
    server_pid: int | None = None,
    *,
    settle: float = 0.0,
) -> Load:
    """One SIPp trial at ``rate`` registrations a second for ``seconds``."""
    calls = max(1, int(rate * seconds))
    load = Load(target, trial, offered=float(rate), calls=calls)
    error_file = folder / f"errors-{target}-{trial}.log"
    error_file.unlink(missing_ok=True)
    command = [
        args.sipp,
        f"{address[0]}:{address[1]}",
        "-sf",
        str(scenario),
        "-inf",
        str(csv),
        "-i",
        "127.0.0.1",
        "-p",
        str(free_udp_port()),
        "-r",
        str(rate),
        "-m",
        str(calls),
        "-timeout",
        f"{seconds + args.sipp_timeout:g}",
        *SIPP_LOAD,
        "-trace_err",
        "-error_file",
        str(error_file),
        "-trace_rtt",
    ]
    output = run_sipp(
        command,
        load,
        timeout=seconds + args.sipp_timeout + 30,
        folder=folder,
        server_pid=server_pid,
        settle=settle,
    )
    parse_sipp_output(output, load)
    count_missing(load, calls)
    load.errors = summarise_error_file(error_file)
    load.rtt = read_rtt(folder, scenario, RTDS)
    (folder / f"sipp-{target}-{trial}.out").write_text(output)
    return load


def run_sipp(
    command: list[str],
    load: Load,
    *,
    timeout: float,
    folder: Path,
    server_pid: int | None,
    settle: float = 0.0,
) -> str:
    """Run one SIPp load and return its output; fills in ``load``'s wall time, SIPp's exit status,
    the CPU seconds of the server (its process tree, read ``settle`` seconds after SIPp ended, so
    the work the last messages caused is in) and of SIPp, and the host's UDP drops."""
    drops_before = udp_rcvbuf_errors()
    cpu_before = tree_cpu_seconds(server_pid)
    top_before = process_cpu_seconds(server_pid)
    children_before = os.times()
    start = time.time()
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            cwd=folder,
            check=False,
        )
        output, load.sipp_status = result.stdout + result.stderr, result.returncode
    except subprocess.TimeoutExpired as exc:  # SIPp's own -timeout should come first
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        load.note = f"SIPp killed after {timeout:g} s"
    load.elapsed = time.time() - start
    if settle > 0:
        time.sleep(settle)
    cpu_after = tree_cpu_seconds(server_pid)
    top_after = process_cpu_seconds(server_pid)
    if cpu_before is not None and cpu_after is not None:
        load.server_cpu = cpu_after - cpu_before
    if top_before is not None and top_after is not None:
        load.server_top_cpu = top_after - top_before
    children_after = os.times()  # SIPp is the only child reaped meanwhile
    load.sipp_cpu = (children_after.children_user - children_before.children_user) + (
        children_after.children_system - children_before.children_system
    )
    drops_after = udp_rcvbuf_errors()
    if drops_before is not None and drops_after is not None:
        load.rcvbuf_drops = drops_after - drops_before
    return output


def count_missing(load: Load, calls: int) -> None:
    """Calls SIPp neither completed nor failed count as failed; then the rate over the wall time."""
    if load.ok + load.failed < calls:
        missing = calls - load.ok - load.failed
        load.note = (load.note + "; " if load.note else "") + f"{missing} calls never completed"
        load.failed += missing
    load.rate = load.ok / load.elapsed if load.elapsed > 0 else 0.0


# --------------------------------------------------------------------------------------------------
# The servers
# --------------------------------------------------------------------------------------------------
class Kamailio:
    """The peer's Kamailio, started and stopped with its kamailio.sh (digest auth on)."""

    def __init__(self, peer: Path) -> None:
        self.script = peer / "kamailio.sh"
        self.run_dir = Path(os.environ.get("PEER_RUN", "/tmp/peer"))
        self.pid: int | None = None

    def start(self) -> tuple[str, int]:
        if udp_port_busy(*KAMAILIO_ADDRESS):
            raise RuntimeError(f"udp:{KAMAILIO_ADDRESS[0]}:{KAMAILIO_ADDRESS[1]} is already in use")
        result = subprocess.run(
            ["bash", str(self.script), "start", "1"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        with contextlib.suppress(OSError, ValueError):
            self.pid = int((self.run_dir / "kam.pid").read_text().split()[0])
        if result.returncode != 0:
            log = self.run_dir / "kam.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else result.stderr[-1500:]
            self.stop()
            raise RuntimeError(f"kamailio.sh start 1 failed ({result.returncode}):\n{tail}")
        return KAMAILIO_ADDRESS

    def stop(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(
                ["bash", str(self.script), "stop"], capture_output=True, timeout=30, check=False
            )
        if self.pid is not None:  # kamailio.sh stop sends SIGTERM; make sure it is gone
            for _ in range(50):
                if not pid_alive(self.pid):
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            self.pid = None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def options_probe(address: tuple[str, int], port: int) -> bytes:
    branch = f"z9hG4bK-bench-{time.monotonic_ns()}"
    return (
        f"OPTIONS sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:bench@{DOMAIN}>;tag=bench\r\nTo: <sip:{DOMAIN}>\r\n"
        f"Call-ID: {branch}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class Imscore:
    """``imscore serve`` on a free loopback UDP port, stopped with SIGTERM."""

    def __init__(
        self,
        subscribers: Path,
        store: str,
        folder: Path,
        log_level: str,
        workers: int = 1,
        *,
        name: str | None = None,
        extra: Sequence[str] = (),
        source: Path | None = None,
    ) -> None:
        self.subscribers, self.store, self.folder, self.log_level = subscribers, store, folder, log_level
        self.workers = workers
        #: more ``imscore serve`` options (``--node-id A``)
        self.extra = list(extra)
        #: another imscore source tree to run instead of the installed one (``--baseline``)
        self.source = source
        self.process: subprocess.Popen[bytes] | None = None
        self.log_start = 0
        if name is None:
            name = store.split(":")[0] + (f"-{workers}-workers" if workers > 1 else "")
        self.log = folder / f"imscore-{name}.log"
        self.exit_status: int | None = None

    def start(self) -> tuple[str, int]:
        port = free_udp_port()
        command = [
            sys.executable,
            "-m",
            "imscore",
            "serve",
            "--listen",
            f"udp:127.0.0.1:{port}",
            "--subscribers",
            str(self.subscribers),
            "--log-level",
            self.log_level,
        ]
        if self.store != "default":
            command += ["--store", self.store]
        if self.workers > 1:
            command += ["--workers", str(self.workers)]
        command += self.extra
        self.log_start = self.log.stat().st_size if self.log.exists() else 0
        env = None
        if self.source is not None:  # its imscore package first on the path, before the install
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.source), env.get("PYTHONPATH", "")) if p
            )
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, env=env
            )
        self.wait_ready(("127.0.0.1", port))
        return ("127.0.0.1", port)

    def wait_ready(self, address: tuple[str, int], timeout: float = 30.0) -> None:
        """The ready line is logged at INFO only, so at WARNING ask: an OPTIONS answered 200."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            probe.settimeout(0.2)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"imscore exited ({self.process.returncode}):\n{self.log_tail()}")
                if "ready: listening on" in self.log_since_start():
                    return
                probe.sendto(options_probe(address, probe.getsockname()[1]), address)
                with contextlib.suppress(TimeoutError):
                    if probe.recv(65535).startswith(b"SIP/2.0 200"):
                        return
        self.stop()
        raise RuntimeError(f"imscore not ready after {timeout} s:\n{self.log_tail()}")

    def log_since_start(self) -> str:
        """What this start of the server logged (the log file is appended to across restarts)."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as log:
            log.seek(self.log_start)
            return log.read().decode(errors="replace")

    def log_tail(self, size: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.exit_status = self.process.returncode
        self.process = None


def make_server(
    target: str, peer: Path, subscribers: Path, folder: Path, args: argparse.Namespace
) -> Any:
    if target == "kamailio":
        return Kamailio(peer)
    store = "memory:" if target == "imscore-memory" else "default"
    workers = args.workers if target.startswith("imscore-workers") else 1
    if target == BASELINE_TARGET:
        return Imscore(
            subscribers, store, folder, args.log_level, workers, name="baseline", source=args.baseline
        )
    return Imscore(subscribers, store, folder, args.log_level, workers)


def fresh_server(
    target: str, peer: Path, subscribers: Path, folder: Path, args: argparse.Namespace
) -> tuple[Any, tuple[str, int]]:
    """A started server for ``target`` with an empty store, and its address."""
    if target in ("imscore-sqlite", "imscore-workers", BASELINE_TARGET):
        for suffix in ("", "-wal", "-shm"):
            (folder / f"imscore.db{suffix}").unlink(missing_ok=True)
    server = make_server(target, peer, subscribers, folder, args)
    return server, server.start()


def server_note(server: Any) -> str:
    """imscore's exit status and last ERROR/WARNING line, when there is one."""
    if not isinstance(server, Imscore):
        return ""
    notes = []
    if server.exit_status not in (0, None):
        notes.append(f"imscore exited {server.exit_status}")
    problems = [
        line for line in server.log_tail(4000).splitlines() if " ERROR " in line or " WARNING " in line
    ]
    if problems:
        notes.append(f"imscore log: {problems[-1][:200]}")
    return "; ".join(notes)


def add_note(load: Load, note: str) -> None:
    if note:
        load.note = (load.note + "; " if load.note else "") + note


@dataclass
class Setup:
    """What every trial of a run shares."""

    peer: Path
    csv: Path
    subscribers: Path
    folder: Path
    scenario: Path
    args: argparse.Namespace

    @property
    def criteria(self) -> Criteria:
        return Criteria(schedule=self.args.schedule, retransmissions=self.args.max_retrans)


def search_target(target: str, setup: Setup) -> Search:
    """The step search for one target: the server runs through passing trials, and is started
    afresh after a failed one (a failed trial may leave a backlog behind)."""
    args = setup.args
    server: Any = None
    address: tuple[str, int] = ("127.0.0.1", 0)
    count = 0

    def trial(rate: int) -> Trial:
        nonlocal server, address, count
        if server is None:
            server, address = fresh_server(target, setup.peer, setup.subscribers, setup.folder, args)
        count += 1
        load = run_load(
            target,
            count,
            address,
            rate,
            args.seconds,
            args,
            setup.csv,
            setup.folder,
            setup.scenario,
            server.pid,
        )
        reason = load.verdict(setup.criteria)
        if reason:
            server.stop()
            add_note(load, server_note(server))
            server = None
        else:
            time.sleep(args.pause)
        return Trial(rate, not reason, reason, asdict(load))

    print(f"{target}:", file=sys.stderr, flush=True)
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
        if server is not None:
            server.stop()


def fixed_rate(trial: Any, rate: int) -> Search:
    """One trial at ``rate`` (``--rate``), in the shape of a search."""
    outcome = trial(rate)
    print(
        f"  {rate:>7} /s  {'pass' if outcome.passed else 'FAIL: ' + outcome.reason}",
        file=sys.stderr,
        flush=True,
    )
    return Search(rate if outcome.passed else 0, None if outcome.passed else rate, "--rate", [outcome])


def cpu_trial(target: str, rate: int, setup: Setup) -> Load:
    """One trial at ``rate`` on a fresh server, for CPU per registration and response times."""
    args = setup.args
    server, address = fresh_server(target, setup.peer, setup.subscribers, setup.folder, args)
    try:
        load = run_load(
            target,
            0,
            address,
            rate,
            args.seconds,
            args,
            setup.csv,
            setup.folder,
            setup.scenario,
            server.pid,
            settle=0.5,
        )
    finally:
        server.stop()
    add_note(load, server_note(server))
    reason = load.verdict(setup.criteria)
    if reason:
        add_note(load, f"did not pass: {reason}")
    return load


def median_load(loads: Sequence[Load]) -> Load:
    """Of several CPU trials of one target, a failed one if any failed (so the failure is
    reported), else the one with the median server CPU per registration (the lower middle one of an
    even count)."""
    failed = [ld for ld in loads if "did not pass" in ld.note]
    if failed:
        return failed[0]
    ranked = sorted(loads, key=lambda load: server_us(load) or 0.0)
    return ranked[(len(ranked) - 1) // 2]


def server_us(load: Load) -> float | None:
    """The server's CPU microseconds per successful registration (``None`` where /proc could not
    tell)."""
    return None if load.server_cpu is None else 1e6 * load.server_cpu / (load.ok or 1)


def cpu_figures(load: Load) -> dict[str, Any]:
    """Microseconds of CPU per successful registration (server, SIPp) and the response times."""
    per = load.ok or 1
    return {
        "rate": load.offered,
        "ok": load.ok,
        "failed": load.failed,
        "server_us": server_us(load),
        "top_us": None if load.server_top_cpu is None else 1e6 * load.server_top_cpu / per,
        "sipp_us": None if load.sipp_cpu is None else 1e6 * load.sipp_cpu / per,
        "rtt": load.rtt,
        "passed": "did not pass" not in load.note,
    }


# --------------------------------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------------------------------
def profile(setup: Setup, rate: int) -> dict[str, Any]:
    """One imscore (memory store) trial at ``rate`` under ``py-spy record``; the heaviest functions."""
    args, folder = setup.args, setup.folder
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        return {"error": "py-spy not found (python3 -m pip install py-spy)"}
    raw = folder / "imscore-register.collapsed"
    server = Imscore(setup.subscribers, "memory:", folder, args.log_level, name="profiled")
    recorder: subprocess.Popen[bytes] | None = None
    try:
        address = server.start()
        recorder = subprocess.Popen(
            [
                pyspy,
                "record",
                "--format",
                "raw",
                "-o",
                str(raw),
                "-d",
                str(args.profile),
                "-r",
                "200",
                "--pid",
                str(server.pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # let py-spy attach
        load = run_load(
            "imscore-profiled",
            0,
            address,
            rate,
            args.seconds,
            args,
            setup.csv,
            folder,
            setup.scenario,
            server.pid,
        )
        try:
            _, err = recorder.communicate(timeout=args.profile + 30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            _, err = recorder.communicate(timeout=5)
        recorder = None
    finally:
        if recorder is not None and recorder.poll() is None:
            recorder.kill()
            recorder.wait(timeout=5)
        server.stop()
    if not raw.exists():
        return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"}
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [short_frame(frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return {
        "samples": total,
        "collapsed": str(raw),
        "load": asdict(load),
        "own": [[name, count, 100.0 * count / total] for name, count in own.most_common(args.top)],
        "inclusive": [
            [name, count, 100.0 * count / total] for name, count in inclusive.most_common(args.top + 8)
        ],
    }


def short_frame(frame: str) -> str:
    """``func (path/to/file.py:123)`` → ``func (imscore/sip/message.py:123)``."""
    match = re.match(r"(.*) \((.*):(\d+)\)$", frame)
    if not match:
        return frame
    name, path, line = match.groups()
    for marker in ("/imscore/", "/lib/python3", "site-packages/"):
        if marker in path:
            path = path[path.index(marker) + 1 :]
            break
    return f"{name} ({path}:{line})"


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def format_steps(steps: list[list[Any]]) -> str:
    """SIPp's scenario screen in one line: per step its messages, retransmissions, timeouts."""
    return ", ".join(
        f"{s[0]}#{i + 1}: {s[1]} msgs {s[2]} retrans {s[3]} timeouts"
        f"{f' {s[4]} unexpected' if s[4] else ''}"
        for i, s in enumerate(steps)
    )


def describe_run(ld: Load, calls: int, prefix: str, *, role: str = "", more: Sequence[str] = ()) -> None:
    """One run's outcome, note, SIPp errors and steps, and the host's drops, a line each; ``role``
    names the SIPp whose errors and steps these are, ``more`` adds lines (a device's errors)."""
    print(
        f"{prefix}round {ld.round + 1} {ld.target}: {ld.failed} failed of {calls}"
        f"{'; ' + ld.note if ld.note else ''}"
    )
    for name, count in ld.errors.items():
        print(f"{prefix}    {role + ': ' if role else ''}{count:6d} x {name}")
    for line in more:
        print(f"{prefix}    {line}")
    print(f"{prefix}    {role + ' ' if role else ''}SIPp steps: {format_steps(ld.steps)}")
    if ld.rcvbuf_drops is not None:
        print(f"{prefix}    host UDP receive-buffer drops during the run: {ld.rcvbuf_drops}")


def summarise(
    searches: dict[str, Search], cpu: dict[str, Load], *, searched: bool = True
) -> dict[str, Any]:
    """Rates and CPU figures with their ratios to Kamailio, and the issue's targets checked (the
    capacity targets only when the rates come from a search, not from ``--rate``)."""
    rates = {t: s.rate for t, s in searches.items()}
    kam = rates.get("kamailio") or 0
    ratios = {t: (r / kam if kam else None) for t, r in rates.items() if t != "kamailio"}
    figures = {t: cpu_figures(ld) for t, ld in cpu.items()}
    kam_us = figures.get("kamailio", {}).get("server_us")
    cpu_ratios = {
        t: (f["server_us"] / kam_us if kam_us and f["server_us"] is not None else None)
        for t, f in figures.items()
        if t != "kamailio"
    }
    imscore = [t for t in rates if t.startswith("imscore")]
    best = max(imscore, key=lambda t: rates[t], default=None)
    best_us = min(
        (figures[t]["server_us"] for t in imscore if t in figures and figures[t]["server_us"]),
        default=None,
    )
    targets = {}
    if best is not None and kam and searched:
        targets["capacity >= 0.5x Kamailio (best imscore)"] = rates[best] >= 0.5 * kam
        targets["capacity >= 1.0x Kamailio (goal)"] = rates[best] >= kam
    if best_us is not None:
        targets["<= 250 us server CPU per registration (best imscore)"] = best_us <= 250
        if kam_us:
            targets["server CPU per registration <= Kamailio's (goal)"] = best_us <= kam_us
    return {
        "rates": rates,
        "ratios": ratios,
        "best_imscore": best,
        "cpu": figures,
        "cpu_ratios": cpu_ratios,
        "targets": targets,
    }


def describe_trial(trial: dict[str, Any]) -> str:
    return f"{trial['rate']} {'ok' if trial['passed'] else 'FAIL (' + trial['reason'] + ')'}"


def rtt_text(rtt: dict[str, dict[str, float]], name: str) -> str:
    figures = rtt.get(name)
    return "-" if not figures else f"{figures['p50']:g}/{figures['p99']:g}"


def print_report(result: dict[str, Any], args: argparse.Namespace) -> None:
    summary = result["summary"]
    print("Registration Rate (RFC 7501 §3.4.2), step search of RFC 7502 §4.10")
    print(
        f"  SIPp {SCENARIO} from {result['peer']} (with RTD marks), {args.users} users,"
        f" trials of {args.seconds:g} s; host {result['host']}"
    )
    print(
        f"  a trial passes with 0 failed registrations, 0 timeouts, 0 unexpected messages,"
        f" <= {100 * args.max_retrans:g} % retransmitted and SIPp's achieved rate"
        f" >= {100 * args.schedule:g} % of the offered"
    )
    print()
    header = f"{'target':<20} {'reg/s':>8} {'vs Kam.':>8}  {'trials':>6}  stopped because"
    print(header)
    print("-" * 100)
    for target, search in result["searches"].items():
        ratio = summary["ratios"].get(target)
        print(
            f"{target:<20} {search['rate']:>8} {'' if ratio is None else f'{ratio:7.3f}x':>8}"
            f"  {len(search['trials']):>6}  {search['stopped']}"
        )
        print(f"{'':<20}   trials: " + ", ".join(describe_trial(t) for t in search["trials"]))
    cpu = summary["cpu"]
    if cpu:
        print()
        print(
            f"At {result['cpu_rate']} registrations/s for {args.seconds:g} s, each target started afresh"
            " (CPU: user + system of all the server's processes, and of its top process alone: imscore's"
            " parent with --workers; response times: SIPp -trace_rtt, ms); the median of"
            f" {args.cpu_trials} trials"
        )
        header = (
            f"{'target':<20} {'ok':>7} {'failed':>6} {'srv us/reg':>10} {'vs Kam.':>8}"
            f" {'top us/reg':>10} {'sipp us/reg':>11} {'401 p50/p99':>12} {'200 p50/p99':>12}"
        )
        print(header)
        print("-" * len(header))
        for target, fig in cpu.items():
            ratio = summary["cpu_ratios"].get(target)
            srv = "" if fig["server_us"] is None else f"{fig['server_us']:10.0f}"
            sipp = "" if fig["sipp_us"] is None else f"{fig['sipp_us']:11.0f}"
            top = "" if fig.get("top_us") is None else f"{fig['top_us']:10.0f}"
            print(
                f"{target:<20} {fig['ok']:>7} {fig['failed']:>6} {srv:>10}"
                f" {'' if ratio is None else f'{ratio:7.2f}x':>8} {top:>10} {sipp:>11}"
                f" {rtt_text(fig['rtt'], '401'):>12} {rtt_text(fig['rtt'], '200'):>12}"
                f"{'' if fig['passed'] else '  <-- did not pass'}"
            )
        spread = result.get("cpu_trials") or {}
        if any(len(v) > 1 for v in spread.values()):
            print()
            print("server CPU us/registration of each trial, in the order run:")
            for target, values in spread.items():
                shown = ", ".join("-" if v is None else f"{v:.0f}" for v in values)
                print(f"  {target:<20} {shown}")
    if summary["targets"]:
        print()
        for name, met in summary["targets"].items():
            print(f"issue 13 target {name}: {'met' if met else 'NOT met'}")
    failed_cpu = [Load(**ld) for ld in result["cpu_loads"].values() if "did not pass" in ld["note"]]
    if failed_cpu:
        print()
        print("!" * 100)
        print("!!! CPU trials that did not pass (their figures are not comparable):")
        for ld in failed_cpu:
            describe_run(ld, ld.calls, "!!! ")
        print("!" * 100)
    if result.get("profile"):
        print_profile(result["profile"], args)
    if result["kept"]:
        print(f"\nfiles kept in {result['folder']}")


def print_profile(prof: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    if "error" in prof:
        print(f"profile: {prof['error']}")
        return
    ld = prof["load"]
    print(
        f"py-spy profile of imscore (memory store), {args.profile} s, {prof['samples']} samples,"
        f" during a load of {ld['ok']} ok / {ld['failed']} failed; stacks: {prof['collapsed']}"
    )
    print("  own samples:")
    for name, count, pct in prof["own"]:
        print(f"    {pct:5.1f}%  {count:6d}  {name}")
    print("  inclusive samples:")
    for name, count, pct in prof["inclusive"]:
        print(f"    {pct:5.1f}%  {count:6d}  {name}")


def add_search_options(parser: argparse.ArgumentParser, *, start: int, max_rate: int) -> None:
    """The options of the step search and of a trial's verdict (pool_bench and proxy_bench too)."""
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="length of one trial, seconds (default 8)"
    )
    parser.add_argument(
        "--start-rate", type=int, default=start, help=f"first rate tried, per second ({start})"
    )
    parser.add_argument(
        "--max-rate", type=int, default=max_rate, help=f"highest rate tried ({max_rate})"
    )
    parser.add_argument("--max-steps", type=int, default=8, help="trials per search at most (8)")
    parser.add_argument(
        "--resolution",
        type=float,
        default=0.1,
        help="stop when the gap between passed and failed is this share of the failed rate (0.1)",
    )
    parser.add_argument(
        "--rate", type=int, default=0, help="no search: one trial per target at this rate"
    )
    parser.add_argument(
        "--schedule",
        type=float,
        default=0.95,
        help="SIPp's achieved rate must reach this share of the offered one (0.95)",
    )
    parser.add_argument(
        "--max-retrans",
        type=float,
        default=0.001,
        help="share of SIPp's messages it may retransmit in a passing trial (0.001)",
    )
    parser.add_argument(
        "--pause", type=float, default=2.0, help="seconds between two trials on one server (2)"
    )
    parser.add_argument(
        "--sipp-timeout",
        type=float,
        default=30.0,
        help="SIPp -timeout beyond the trial's length, seconds (30)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=30000, help="users in users.csv (30000)")
    add_search_options(parser, start=1000, max_rate=24000)
    parser.add_argument(
        "--cpu-rate",
        type=int,
        default=0,
        help="rate of the CPU and response-time trial (default: 80 %% of the lowest rate found)",
    )
    parser.add_argument(
        "--cpu-trials",
        type=int,
        default=3,
        help="CPU trials per target, each on a fresh server; the median is reported (3)",
    )
    parser.add_argument(
        "--stores",
        default="memory,workers",
        help="imscore targets, comma separated: memory (one process, memory store), sqlite (one "
        "process, SQLite), workers (--workers N, SQLite); default memory,workers",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes of the 'workers' target (2)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run the workers target from this imscore source tree (a git worktree of another "
        "commit; its package goes first on PYTHONPATH), reported as imscore-workers-base",
    )
    parser.add_argument("--no-kamailio", action="store_true", help="leave Kamailio out")
    parser.add_argument("--log-level", default="WARNING", help="imscore --log-level (WARNING)")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="S",
        help="also run imscore under py-spy record for S seconds at the CPU rate; print hotspots",
    )
    parser.add_argument("--top", type=int, default=15, help="hotspots listed with --profile (15)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (SIPp output, logs)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    args = parser.parse_args(argv)
    if args.cpu_trials < 1:
        parser.error(f"--cpu-trials: expected at least 1, got {args.cpu_trials}")

    peer = peer_dir()
    missing = [p.name for p in (peer / "kamailio.sh", peer / SCENARIO) if not p.exists()]
    args.sipp = shutil.which("sipp")
    problems = []
    if missing:
        problems.append(f"peer folder {peer} lacks {', '.join(missing)} (set IMSCORE_PEER)")
    if args.sipp is None:
        problems.append("sipp not found (apt-get install -y sip-tester)")
    if shutil.which("kamailio") is None and not args.no_kamailio:
        problems.append("kamailio not found (apt-get install -y kamailio)")
    if problems:
        print("register_bench: " + "; ".join(problems), file=sys.stderr)
        return 2
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    targets = ([] if args.no_kamailio else ["kamailio"]) + [
        f"imscore-{s}" for s in stores if s in ("memory", "sqlite", "workers")
    ]
    if args.baseline is not None:
        if not (args.baseline / "imscore" / "__init__.py").exists():
            print(f"register_bench: --baseline {args.baseline}: no imscore package", file=sys.stderr)
            return 2
        targets.append(BASELINE_TARGET)

    folder = Path(tempfile.mkdtemp(prefix="register-bench-"))
    result: dict[str, Any] = {}
    try:
        csv, subscribers = write_users(folder, args.users)
        setup = Setup(peer, csv, subscribers, folder, rtd_scenario(peer, folder), args)
        searches = {target: search_target(target, setup) for target in targets}
        found = [s.rate for s in searches.values() if s.rate]
        cpu_rate = args.cpu_rate or args.rate or (round_rate(0.8 * min(found)) if found else 0)
        cpu: dict[str, Load] = {}
        spread: dict[str, list[float | None]] = {}
        if cpu_rate:
            print(f"CPU trials at {cpu_rate}/s:", file=sys.stderr, flush=True)
            trials: dict[str, list[Load]] = {target: [] for target in targets}
            for _ in range(args.cpu_trials):
                for target in targets:
                    trials[target].append(cpu_trial(target, cpu_rate, setup))
                    print(f"  {target}: {cpu_figures(trials[target][-1])}", file=sys.stderr, flush=True)
            cpu = {target: median_load(loads) for target, loads in trials.items()}
            spread = {target: [server_us(ld) for ld in loads] for target, loads in trials.items()}
        prof = profile(setup, cpu_rate or args.start_rate) if args.profile else None
        keep = args.keep or bool(args.profile) or any("did not pass" in ld.note for ld in cpu.values())
        result = {
            "peer": str(peer),
            "folder": str(folder),
            "kept": keep,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "host": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "options": {
                k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "sipp"
            },
            "targets": targets,
            "searches": {t: s.as_dict() for t, s in searches.items()},
            "cpu_rate": cpu_rate,
            "cpu_loads": {t: asdict(ld) for t, ld in cpu.items()},
            "cpu_trials": spread,
            "summary": summarise(searches, cpu, searched=not args.rate),
            "profile": prof,
        }
    finally:
        if not result.get("kept"):
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result, args)
    return 1 if any("did not pass" in ld.note for ld in cpu.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
