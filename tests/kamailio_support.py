"""Real Kamailio processes for the IMS interop tests (tests/test_kamailio_*.py).

:class:`Kamailio` runs Debian's ``kamailio`` in the foreground (``-DD -E``, its log on standard
error, written to a file nobody has to read while it runs) with one of our configs from
``tests/kamailio/`` and ``-A NAME=VALUE`` defines, in a temporary working directory (where a core
file would land), and stops it by its PID. :func:`need_kamailio` skips a test (with the reason)
when the binary or a module it loads is missing; CI's ``IMSCORE_REQUIRE_ALL=1`` turns that skip
into a failure (tests/conftest.py). :func:`dbtext_directory` makes the db_text database that
Kamailio's presence module (needed by ims_usrloc_scscf) opens. :class:`HssProcess` is ``imscore
hss`` as a subprocess with the Origin-Host a cdp peer entry can name and resolve. :func:`run_sipp`
runs one SIPp scenario and gives back the messages of its trace, which :func:`responses` and
:func:`header` read.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from devices import stop_process

CONFIGS = Path(__file__).parent / "kamailio"
#: where Debian installs Kamailio's modules (the multiarch directory of this machine)
MODULES = next(iter(sorted(Path("/usr/lib").glob("*/kamailio/modules"))), Path("/usr/lib/kamailio"))
#: the db_text table definitions Debian's kamailio package ships
DBTEXT_TABLES = Path("/usr/share/kamailio/dbtext/kamailio")


def need_kamailio(modules: Sequence[str]) -> str:
    """The path of ``kamailio``; skips the test when it, or one of ``modules`` (names without
    ``.so``), is not installed."""
    binary = shutil.which("kamailio") or (
        "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None
    )
    if binary is None:
        pytest.skip("binary missing: kamailio (Debian package kamailio)")
    missing = [name for name in modules if not (MODULES / f"{name}.so").exists()]
    if missing:
        pytest.skip(
            f"Kamailio modules missing: {', '.join(missing)} (Debian packages kamailio-ims-modules, "
            "kamailio-presence-modules)"
        )
    return binary


def sipp_binary() -> str:
    """The path of ``sipp``; skips the test when it is not installed."""
    path = shutil.which("sipp")
    if path is None:
        pytest.skip("binary missing: sipp (Debian package sip-tester)")
    return path


def run_sipp(
    target: tuple[str, int],
    scenario: Path,
    rows: Sequence[str],
    workdir: Path,
    domain: str,
    port: int | None = None,
) -> list[str]:
    """Run ``scenario`` once per CSV row (``rows``, fields joined by ``;``) against ``target``
    from local UDP ``port`` (default: a free one); fails with SIPp's errors unless every call
    passes. The SIP messages of its trace, in order."""
    workdir.mkdir(parents=True, exist_ok=True)
    csv = workdir / "users.csv"
    csv.write_text("SEQUENTIAL\n" + "".join(f"{row}\n" for row in rows))
    trace, errors = workdir / "messages.log", workdir / "errors.log"
    result = subprocess.run(
        [
            sipp_binary(), f"{target[0]}:{target[1]}", "-sf", str(scenario), "-inf", str(csv),
            "-i", "127.0.0.1", "-p", str(port or free_udp_port()), "-auth_uri", domain,
            "-m", str(len(rows)), "-timeout", "20", "-timeout_error", "-nostdin",
            "-trace_msg", "-message_file", str(trace), "-trace_err", "-error_file", str(errors),
        ],
        capture_output=True, text=True, timeout=60, cwd=workdir, check=False,
    )  # fmt: skip
    messages = trace.read_text(errors="replace") if trace.exists() else ""
    failed = errors.read_text(errors="replace") if errors.exists() else ""
    assert result.returncode == 0, (failed[-3000:], messages[-3000:], result.stdout[-1500:])
    # SIPp's trace separates messages with "----" lines and timestamps; keep the SIP ones
    return [block.strip() for block in re.split(r"\n-{5,}[^\n]*\n", messages) if "SIP/2.0" in block]


def responses(messages: Sequence[str], status: int) -> list[str]:
    """The traced responses with ``status``, their CRLF line ends made LF."""
    found = []
    for block in messages:
        at = block.find("SIP/2.0 ")
        if at >= 0 and block[at:].startswith(f"SIP/2.0 {status} "):
            found.append(block[at:].replace("\r\n", "\n"))
    return found


def header(message: str, name: str) -> str | None:
    """The first ``name`` header field's value in ``message`` (no compact forms), or ``None``."""
    for line in message.split("\n"):
        field, _, value = line.partition(":")
        if field.strip().lower() == name.lower():
            return value.strip()
    return None


def free_udp_port() -> int:
    """A loopback UDP port free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_tcp_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def dbtext_directory(directory: Path, tables: Sequence[str]) -> Path:
    """A db_text database in ``directory`` with the ``version`` table and ``tables`` (empty, their
    definitions copied from the kamailio package); skips when the definitions are missing."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("version", *tables):
        source = DBTEXT_TABLES / name
        if not source.exists():
            pytest.skip(f"db_text table definition missing: {source} (Debian package kamailio)")
        shutil.copyfile(source, directory / name)
    return directory


def define(value: str | int) -> str:
    """A ``-A`` define's value: integers bare, anything else a quoted string for the config."""
    return str(value) if isinstance(value, int) else '"' + value.replace('"', '\\"') + '"'


class Kamailio:
    """One ``kamailio -DD -E -f CONFIG`` in ``workdir``; its log in ``workdir/kamailio.log``."""

    def __init__(
        self, config: Path, workdir: Path, defines: Mapping[str, str | int], memory_mb: int = 64
    ) -> None:
        self.config = config
        self.workdir = workdir
        self.defines = dict(defines)
        self.memory_mb = memory_mb
        self.log_path = workdir / "kamailio.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready: str, timeout: float = 15.0) -> None:
        """Start it and wait until its log matches the regular expression ``ready``; fails with
        the log's end when it exits or ``timeout`` passes first."""
        binary = need_kamailio([])
        args = [
            binary,
            "-DD",
            "-E",
            "-f",
            str(self.config),
            "-w",
            str(self.workdir),
            "-m",
            str(self.memory_mb),
        ]
        for name, value in self.defines.items():
            args += ["-A", f"{name}={define(value)}"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        self.wait_for(ready, timeout)

    def log(self) -> str:
        """Everything it logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until the log matches ``pattern``; fails with the log's end when Kamailio exits
        or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log())
            if match is not None:
                return match
            exited = self.process is None or self.process.poll() is not None
            if exited or time.monotonic() > deadline:
                what = "exited" if exited else f"did not log {pattern!r} within {timeout} s"
                raise AssertionError(f"kamailio {what}:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def crashed(self) -> bool:
        """Whether a child process of it died by a signal (Kamailio then logs it and ends)."""
        return "exited by a signal" in self.log()

    def stop(self) -> None:
        """SIGTERM to its PID (the main process ends its children), then SIGKILL after 5 s."""
        process, self.process = self.process, None
        stop_process(process, grace=5.0)
        remove_cdp_fifos()


def remove_cdp_fifos(folder: Path = Path("/tmp")) -> int:
    """Remove the named pipes cdp leaves behind: each of its processes makes
    ``/tmp/cdp_send_<pid>_<n>_<time>`` FIFOs and never removes them. Only those whose process is
    gone (another Kamailio may be running); how many were removed."""
    removed = 0
    for fifo in folder.glob("cdp_send_*"):
        pid = fifo.name.split("_")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and fifo.is_fifo():
            with contextlib.suppress(OSError):
                fifo.unlink()
                removed += 1
    return removed


class HssProcess:
    """``imscore hss`` on a free loopback port serving ``subscribers``; :attr:`port` is the one its
    start-up line names. ``origin_host`` defaults to ``localhost``, a name cdp can resolve."""

    def __init__(
        self, subscribers: Path, realm: str, origin_host: str = "localhost", *extra: str
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imscore", "hss", "--listen", "tcp:127.0.0.1:0",
             "--subscribers", str(subscribers), "--origin-realm", realm, "--origin-host", origin_host,
             *extra],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.process.stderr is not None
        line = self.process.stderr.readline()
        match = re.search(r"Cx on tcp:127\.0\.0\.1:(\d+) as ", line)
        if match is None:
            stop_process(self.process)
        assert match, line
        self.port = int(match.group(1))

    def stop(self) -> str:
        """Stop it by its PID; what it wrote on standard error after the start-up line."""
        stop_process(self.process)
        assert self.process.stderr is not None
        return self.process.stderr.read()
