#!/usr/bin/env python3
"""Digest REGISTER rate of ``imscore serve`` against the reference Kamailio registrar, in one run.

Usage::

    apt-get install -y kamailio sip-tester          # Kamailio and SIPp
    python3 bench/register_bench.py [--users N] [--calls N] [--rounds R] [--json]

The reference setup is read from ``$IMSCORE_PEER``, else ``shared/peer`` beside the repository
(``kamailio.sh``, ``kamailio-registrar.cfg``, ``register-auth.xml``, ``register-rate.sh``). Nothing of
it is copied: Kamailio is started with the peer's ``kamailio.sh start 1`` (digest on, udp:127.0.0.1:5070)
and SIPp runs the peer's ``register-auth.xml`` with the command line of ``register-rate.sh``
(REGISTER, 401, REGISTER with MD5 credentials, 200; ``-r 20000 -rp 1000 -l 5000 -timeout 60``).

In a temporary folder the script writes ``users.csv`` as the peer's ``make-users.py`` does and the
matching imscore subscriber file, then runs rounds. Each round loads every target once: Kamailio,
imscore with ``--store memory:`` and imscore with its default SQLite store (a file in the temporary
folder) and ``imscore serve --workers N`` (``--workers``, default 2) with that SQLite store; the
order alternates from round to round. The rate is, as in ``register-rate.sh``,
succeeded registrations over the wall time of the whole SIPp run. It prints every round, the
medians, the ratios imscore ÷ Kamailio and, loudly, every failure with what SIPp saw (retransmission
timeouts, unexpected responses and their status codes, UDP receive-buffer drops of the host).

``--profile S`` adds one more imscore (memory store) run under ``py-spy record`` for S seconds and
prints the heaviest functions (own and inclusive samples). Only ratios from one run mean anything:
the machine is shared and its load moves the absolute rates.

Exit status: 0 when every run completed with 0 failures, 1 when a run failed registrations, 2 when
the setup is missing (no sipp, kamailio or peer folder).
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

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "ims.example.test"
KAMAILIO_ADDRESS = ("127.0.0.1", 5070)
SCENARIO = "register-auth.xml"
#: SIPp options of the peer's register-rate.sh, besides target, scenario, users and local port.
SIPP_LOAD = [
    "-auth_uri",
    DOMAIN,
    "-rp",
    "1000",
    "-l",
    "5000",
    "-nostdin",
    "-timeout",
    "60",
    "-timeout_error",
    "-max_recv_loops",
    "10000",
]
TARGETS = ("kamailio", "imscore-memory", "imscore-sqlite", "imscore-workers")


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
    round: int
    rate: float = 0.0
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
    sipp_cpu: float | None = None
    note: str = ""


STEP = re.compile(r"^\s+(\S+)\s+(?:-+>|<-+)\s+(\d+)\s+(\d+)\s+(\d+)(?:\s+(\d+))?\s*$")


def parse_sipp_output(text: str, load: Load) -> None:
    for line in text.splitlines():  # like register-rate.sh's awk: the last value wins
        if "Successful call" in line:
            load.ok = int(line.split("|")[2].split()[0])
        elif "Failed call" in line:
            load.failed = int(line.split("|")[2].split()[0])
    screen = text.rsplit("Scenario Screen", 1)[-1]
    load.steps = []
    for line in screen.splitlines():
        match = STEP.match(line)
        if match:
            name, messages, retrans, timeouts, unexpected = match.groups()
            load.steps.append([name, int(messages), int(retrans), int(timeouts), int(unexpected or 0)])


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


def run_load(
    target: str,
    rnd: int,
    address: tuple[str, int],
    args: argparse.Namespace,
    csv: Path,
    folder: Path,
    peer: Path,
    server_pid: int | None = None,
) -> Load:
    load = Load(target, rnd)
    error_file = folder / f"errors-{target}-{rnd}.log"
    error_file.unlink(missing_ok=True)
    command = [
        args.sipp,
        f"{address[0]}:{address[1]}",
        "-sf",
        str(peer / SCENARIO),
        "-inf",
        str(csv),
        "-i",
        "127.0.0.1",
        "-p",
        str(free_udp_port()),
        "-r",
        str(args.rate),
        "-m",
        str(args.calls),
        *SIPP_LOAD,
        "-trace_err",
        "-error_file",
        str(error_file),
    ]
    output = run_sipp(command, load, timeout=args.sipp_timeout, folder=folder, server_pid=server_pid)
    parse_sipp_output(output, load)
    count_missing(load, args.calls)
    load.errors = summarise_error_file(error_file)
    (folder / f"sipp-{target}-{rnd}.out").write_text(output)
    return load


def run_sipp(
    command: list[str], load: Load, *, timeout: float, folder: Path, server_pid: int | None
) -> str:
    """Run one SIPp load and return its output; fills in ``load``'s wall time, SIPp's exit status,
    the CPU seconds of the server (its process tree) and of SIPp, and the host's UDP drops."""
    drops_before = udp_rcvbuf_errors()
    cpu_before = tree_cpu_seconds(server_pid)
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
    cpu_after = tree_cpu_seconds(server_pid)
    if cpu_before is not None and cpu_after is not None:
        load.server_cpu = cpu_after - cpu_before
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
        self, subscribers: Path, store: str, folder: Path, log_level: str, workers: int = 1
    ) -> None:
        self.subscribers, self.store, self.folder, self.log_level = subscribers, store, folder, log_level
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None
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
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder
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
                if "ready: listening on" in self.log_tail():
                    return
                probe.sendto(options_probe(address, probe.getsockname()[1]), address)
                with contextlib.suppress(TimeoutError):
                    if probe.recv(65535).startswith(b"SIP/2.0 200"):
                        return
        self.stop()
        raise RuntimeError(f"imscore not ready after {timeout} s:\n{self.log_tail()}")

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
    workers = args.workers if target == "imscore-workers" else 1
    return Imscore(subscribers, store, folder, args.log_level, workers)


def measure(
    target: str,
    rnd: int,
    peer: Path,
    csv: Path,
    subscribers: Path,
    folder: Path,
    args: argparse.Namespace,
) -> Load:
    if target in ("imscore-sqlite", "imscore-workers"):
        (folder / "imscore.db").unlink(missing_ok=True)  # each run starts with an empty store
    server = make_server(target, peer, subscribers, folder, args)
    try:
        address = server.start()
        load = run_load(target, rnd, address, args, csv, folder, peer, server.pid)
    finally:
        server.stop()
    if isinstance(server, Imscore) and server.exit_status not in (0, None):
        load.note = (load.note + "; " if load.note else "") + f"imscore exited {server.exit_status}"
    if isinstance(server, Imscore):
        tail = server.log_tail(4000)
        problems = [line for line in tail.splitlines() if " ERROR " in line or " WARNING " in line]
        if problems:
            load.note = (load.note + "; " if load.note else "") + f"imscore log: {problems[-1][:200]}"
    return load


# --------------------------------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------------------------------
def profile(
    peer: Path, csv: Path, subscribers: Path, folder: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One imscore (memory store) load under ``py-spy record``; the heaviest functions."""
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        return {"error": "py-spy not found (python3 -m pip install py-spy)"}
    raw = folder / "imscore-register.collapsed"
    server = Imscore(subscribers, "memory:", folder, args.log_level)
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
        load = run_load("imscore-profiled", 0, address, args, csv, folder, peer, server.pid)
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
def order_for(rnd: int, targets: list[str]) -> list[str]:
    return targets if rnd % 2 == 0 else list(reversed(targets))


def summarise(loads: list[Load], targets: list[str]) -> dict[str, Any]:
    medians = {
        t: statistics.median([ld.rate for ld in loads if ld.target == t] or [0.0]) for t in targets
    }
    failures = {t: sum(ld.failed for ld in loads if ld.target == t) for t in targets}
    kam = medians.get("kamailio", 0.0)
    ratios = {t: (medians[t] / kam if kam else None) for t in targets if t != "kamailio"}
    per_cpu = {
        t: statistics.median(
            [ld.ok / ld.server_cpu for ld in loads if ld.target == t and ld.server_cpu] or [0.0]
        )
        for t in targets
    }
    kam_cpu = per_cpu.get("kamailio", 0.0)
    per_cpu_ratios = {t: (per_cpu[t] / kam_cpu if kam_cpu else None) for t in targets if t != "kamailio"}
    return {
        "medians": medians,
        "failures": failures,
        "ratios": ratios,
        "per_cpu": per_cpu,
        "per_cpu_ratios": per_cpu_ratios,
    }


def print_report(result: dict[str, Any], args: argparse.Namespace) -> None:
    loads = [Load(**ld) for ld in result["loads"]]
    targets = result["targets"]
    print(f"Digest REGISTER rate, SIPp {SCENARIO} from {result['peer']}")
    print(
        f"  {args.calls} registrations per run, {args.users} users, SIPp -r {args.rate} -rp 1000 -l 5000"
        f" -timeout 60; {args.rounds} rounds, order alternating; host {result['host']}"
    )
    print()
    header = (
        f"{'round':>5}  {'target':<15} {'reg/s':>8} {'ok':>7} {'failed':>7} {'secs':>6}  {'ratio':>6}"
        f"  {'srv cpu':>7} {'reg/cpu-s':>9} {'sipp cpu':>8}"
    )
    print(header)
    print("-" * len(header))
    for rnd in range(args.rounds):
        kam = next((ld.rate for ld in loads if ld.round == rnd and ld.target == "kamailio"), 0.0)
        for ld in [ld for ld in loads if ld.round == rnd]:
            ratio = "" if ld.target == "kamailio" or not kam else f"{ld.rate / kam:6.3f}"
            flag = "  <-- FAILURES" if ld.failed else ""
            cpu = "" if ld.server_cpu is None else f"{ld.server_cpu:7.1f}"
            per_cpu = "" if not ld.server_cpu else f"{ld.ok / ld.server_cpu:9.0f}"
            sipp = "" if ld.sipp_cpu is None else f"{ld.sipp_cpu:8.1f}"
            print(
                f"{rnd + 1:>5}  {ld.target:<15} {ld.rate:8.0f} {ld.ok:7d} {ld.failed:7d} "
                f"{ld.elapsed:6.1f}  {ratio:>6}  {cpu:>7} {per_cpu:>9} {sipp:>8}{flag}"
            )
    print()
    summary = result["summary"]
    for t in targets:
        extra = "" if t == "kamailio" else f"   ratio imscore/Kamailio {summary['ratios'][t]:.3f}x"
        rate, failures = summary["medians"][t], summary["failures"][t]
        print(f"median {t:<15} {rate:8.0f} reg/s  failures {failures}{extra}")
    for t in targets:
        per_cpu = summary["per_cpu"].get(t)
        if per_cpu:
            extra = (
                ""
                if t == "kamailio" or not summary["per_cpu_ratios"].get(t)
                else (f"   ratio imscore/Kamailio {summary['per_cpu_ratios'][t]:.3f}x")
            )
            print(f"median {t:<15} {per_cpu:8.0f} reg per server CPU-second{extra}")
    print(
        "(srv cpu: user + system CPU seconds of the server's processes during the SIPp run; "
        "the box has 2 cores shared with SIPp)"
    )
    goal_met = (
        all(
            (summary["ratios"][t] or 0) >= 1.0 and summary["failures"][t] == 0
            for t in targets
            if t != "kamailio"
        )
        and summary["failures"].get("kamailio", 0) == 0
    )
    print(f"goal (imscore >= 1.0x Kamailio, 0 failures): {'met' if goal_met else 'NOT met'}")
    failed = [ld for ld in loads if ld.failed]
    noted = [ld for ld in loads if ld.note and not ld.failed]
    if failed:  # loudly: every run that lost registrations, with what SIPp saw
        print()
        print("!" * 100)
        print(
            f"!!! FAILURES in {len(failed)} of {len(loads)} runs "
            f"({sum(ld.failed for ld in loads)} registrations failed)"
        )
        for ld in failed:
            describe_run(ld, args.calls, "!!! ")
        print("!" * 100)
    if noted:  # runs without a failure whose server logged a warning (overload, for instance)
        print()
        print("warnings logged in runs without failures:")
        for ld in noted:
            describe_run(ld, args.calls, "    ")
    retrans = [(ld.target, ld.round, sum(s[2] for s in ld.steps)) for ld in loads]
    print()
    print("SIPp retransmissions (all runs): " + ", ".join(f"r{r + 1} {t} {n}" for t, r, n in retrans))
    if result.get("profile"):
        prof = result["profile"]
        print()
        if "error" in prof:
            print(f"profile: {prof['error']}")
        else:
            ld = prof["load"]
            print(
                f"py-spy profile of imscore (memory store), {args.profile} s, {prof['samples']} samples,"
                f" "
                f"during a load of {ld['ok']} ok / {ld['failed']} failed; stacks: {prof['collapsed']}"
            )
            print("  own samples:")
            for name, count, pct in prof["own"]:
                print(f"    {pct:5.1f}%  {count:6d}  {name}")
            print("  inclusive samples:")
            for name, count, pct in prof["inclusive"]:
                print(f"    {pct:5.1f}%  {count:6d}  {name}")
    print(f"\nfiles kept in {result['folder']}" if result["kept"] else "")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10000, help="users in users.csv (default 10000)")
    parser.add_argument("--calls", type=int, default=5000, help="registrations per run (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--rate", type=int, default=20000, help="SIPp -r, as register-rate.sh (20000)")
    parser.add_argument(
        "--stores",
        default="memory,sqlite,workers",
        help="imscore runs, comma separated: memory, sqlite (one process each), workers (SQLite "
        "store, --workers N processes); default all three",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes of the 'workers' run (default 2)"
    )
    parser.add_argument("--log-level", default="WARNING", help="imscore --log-level (default WARNING)")
    parser.add_argument(
        "--sipp-timeout", type=float, default=120.0, help="kill SIPp after S seconds (120)"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="S",
        help="also run imscore under py-spy record for S seconds and print hotspots",
    )
    parser.add_argument("--top", type=int, default=15, help="hotspots listed with --profile (15)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (SIPp output, logs)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    args = parser.parse_args(argv)

    peer = peer_dir()
    missing = [p.name for p in (peer / "kamailio.sh", peer / SCENARIO) if not p.exists()]
    args.sipp = shutil.which("sipp")
    problems = []
    if missing:
        problems.append(f"peer folder {peer} lacks {', '.join(missing)} (set IMSCORE_PEER)")
    if args.sipp is None:
        problems.append("sipp not found (apt-get install -y sip-tester)")
    if shutil.which("kamailio") is None:
        problems.append("kamailio not found (apt-get install -y kamailio)")
    if problems:
        print("register_bench: " + "; ".join(problems), file=sys.stderr)
        return 2
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    targets = ["kamailio"] + [f"imscore-{s}" for s in stores if s in ("memory", "sqlite", "workers")]

    folder = Path(tempfile.mkdtemp(prefix="register-bench-"))
    loads: list[Load] = []
    result: dict[str, Any] = {}
    try:
        csv, subscribers = write_users(folder, args.users)
        for rnd in range(args.rounds):
            for target in order_for(rnd, targets):
                if not args.json:
                    print(f"round {rnd + 1}: {target} ...", file=sys.stderr, flush=True)
                loads.append(measure(target, rnd, peer, csv, subscribers, folder, args))
        prof = profile(peer, csv, subscribers, folder, args) if args.profile else None
        keep = args.keep or bool(args.profile) or any(ld.failed for ld in loads)
        result = {
            "peer": str(peer),
            "folder": str(folder),
            "kept": keep,
            "host": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "options": {k: v for k, v in vars(args).items() if k != "sipp"},
            "targets": targets,
            "loads": [asdict(ld) for ld in loads],
            "summary": summarise(loads, targets),
            "profile": prof,
        }
    finally:
        if not result.get("kept"):
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result, args)
    return 1 if any(ld.failed for ld in loads) else 0


if __name__ == "__main__":
    sys.exit(main())
