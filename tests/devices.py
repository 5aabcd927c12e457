"""Real test devices for the multi-device tests: SIPp devices and callers, and baresip phones.

Every device is a real process started on free loopback ports and stopped by its PID; what it sent
and received is kept in files under the test's ``workdir``, so a test can assert on it ("device X
received an INVITE and a CANCEL") and a failure message can show it.

* :class:`SippDevice` -- one ``sipp`` process that REGISTERs one contact (Digest, via
  ``tests/sipp/device-register.xml``) and then takes one call, as its ``behaviour`` says:
  ``"answer"`` (100, 180, ``ring_ms`` later 200 with SDP, ACK, BYE; or a CANCEL while it rings),
  ``"busy"`` (100, 486, ACK) or ``"noanswer"`` (100, 180, CANCEL, 487, ACK). The process exits
  0 at the end of its expected path (:meth:`SippDevice.finish`).
* :class:`SippCaller` -- one ``sipp`` UAC call: ``tests/sipp/caller.xml`` (expect a final status,
  200 being a full call with ACK and BYE) or, with ``cancel_after_ms``,
  ``tests/sipp/caller-cancel.xml`` (CANCEL while it rings, expect 487).
* :class:`Baresip` -- a baresip softphone (Debian ``baresip-core``) run headless from a temporary
  config directory: registers through an outbound proxy (the registrar), auto-answers by default;
  its state is read through its ``ctrl_tcp`` module (JSON in netstrings) and its SIP trace (``-s``).

Binaries missing: the constructors skip the test with the Debian package to install.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from imscore.sip import Message, parse_datagram

SCENARIOS = Path(__file__).parent / "sipp"
DOMAIN = "ims.example.test"
LOOPBACK = "127.0.0.1"
BEHAVIOURS = ("answer", "busy", "noanswer")

__all__ = [
    "BEHAVIOURS",
    "DOMAIN",
    "Baresip",
    "BaresipEvent",
    "SippCaller",
    "SippDevice",
    "TracedMessage",
    "free_tcp_port",
    "free_udp_port",
    "require_binary",
    "stop_all",
    "stop_process",
]


# -- helpers -----------------------------------------------------------------------------------------


def require_binary(name: str, package: str) -> str:
    """The path of ``name``; skips the test (naming the Debian package) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"binary missing: {name} (Debian package {package})")
    return path


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def stop_process(process: subprocess.Popen[Any] | None, signals: int = 1, grace: float = 3.0) -> None:
    """End one process we started, by its PID: SIGTERM (``signals`` times, ``grace`` seconds
    apart), then SIGKILL. Does nothing when it has already exited."""
    if process is None:
        return
    for _ in range(signals):
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            pass
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def _wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds have passed; its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _tail(path: Path, size: int = 4000) -> str:
    if not path.exists():
        return f"({path.name}: none)"
    text = path.read_text(errors="replace")
    return f"--- {path.name} ---\n" + (text if len(text) <= size else "..." + text[-size:])


# -- traced SIP messages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TracedMessage:
    """One SIP message a device sent or received, from its trace."""

    #: ``"sent"`` or ``"received"``
    direction: str
    #: the message as traced, lines joined with CRLF
    text: str
    #: when the device traced it (seconds since the epoch, local clock), None when the trace has no
    #: timestamp (baresip's)
    when: float | None = None

    @property
    def start_line(self) -> str:
        """The request line or status line."""
        return self.text.split("\r\n", 1)[0]

    @property
    def is_request(self) -> bool:
        """True for a request, False for a response."""
        return not self.start_line.startswith("SIP/2.0 ")

    @property
    def method(self) -> str:
        """The request's method, or the method of the response's CSeq."""
        if self.is_request:
            return self.start_line.split(" ", 1)[0]
        return self.header("CSeq").rsplit(" ", 1)[-1]

    @property
    def status(self) -> int | None:
        """The response's status code (None for a request)."""
        if self.is_request:
            return None
        return int(self.start_line.split(" ", 2)[1])

    def header(self, name: str) -> str:
        """The value of the first header ``name`` (case-insensitive), ``""`` when absent."""
        wanted = name.lower() + ":"
        for line in self.text.split("\r\n")[1:]:
            if not line:
                break
            if line.lower().startswith(wanted):
                return line[len(wanted) :].strip()
        return ""

    def parse(self) -> Message:
        """The message parsed by imscore's SIP parser (raises its ``SipError`` when invalid)."""
        return parse_datagram(self.text.encode())


_SIPP_BLOCK = re.compile(
    r"^-{20,} (?P<stamp>[^\n]*)\n(?:UDP|TCP|TLS|SCTP) message (?P<dir>sent|received) [^\n]*\n\n",
    re.MULTILINE,
)


def _sipp_time(stamp: str) -> float | None:
    """The time of a SIPp trace block header (``2026-01-31 12:00:00.123456``), None if unreadable."""
    try:
        return datetime.strptime(stamp.strip(), "%Y-%m-%d %H:%M:%S.%f").timestamp()
    except ValueError:
        return None


def _sipp_trace(path: Path) -> list[TracedMessage]:
    """The messages of a SIPp ``-trace_msg`` file."""
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    matches = list(_SIPP_BLOCK.finditer(text))
    messages = []
    ends = [m.start() for m in matches[1:]] + [len(text)] if matches else []
    for match, end in zip(matches, ends, strict=True):
        traced = _traced(match.group("dir"), text[match.end() : end])
        messages.append(
            TracedMessage(traced.direction, traced.text, _sipp_time(match.group("stamp")))
        )
    return messages


def _traced(direction: str, body: str) -> TracedMessage:
    """A traced message from its text (line ends normalised to CRLF, trailing blank lines cut)."""
    text = body.replace("\r\n", "\n").strip("\n").replace("\n", "\r\n")
    head, _, content = text.partition("\r\n\r\n")
    return TracedMessage(direction, head + "\r\n\r\n" + (content + "\r\n" if content else ""))


# -- SIPp ----------------------------------------------------------------------------------------------


class _Sipp:
    """One sipp process: its command line, files and exit."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.binary = require_binary("sipp", "sip-tester")
        self.trace = workdir / f"{name}.messages.log"
        self.errors = workdir / f"{name}.errors.log"
        self.logfile = workdir / f"{name}.log"
        self.output = workdir / f"{name}.out"
        self.process: subprocess.Popen[bytes] | None = None

    def _spawn(self, args: list[str]) -> None:
        for path in (self.trace, self.errors, self.logfile):
            path.unlink(missing_ok=True)
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    self.binary, *args, "-m", "1", "-nostdin",
                    "-trace_msg", "-message_file", str(self.trace),
                    "-trace_err", "-error_file", str(self.errors),
                    "-trace_logs", "-log_file", str(self.logfile),
                ],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
            )  # fmt: skip

    def messages(self) -> list[TracedMessage]:
        """Every SIP message sent and received so far, in order."""
        return _sipp_trace(self.trace)

    def received(self, method: str | None = None) -> list[TracedMessage]:
        """Requests received (of ``method`` only, when given)."""
        return [
            m
            for m in self.messages()
            if m.direction == "received" and m.is_request and method in (None, m.method)
        ]

    def received_methods(self) -> list[str]:
        """The methods of the requests received, in order (e.g. ``["INVITE", "CANCEL", "ACK"]``)."""
        return [m.method for m in self.received()]

    def running(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for the process to exit; its exit status, None if still running."""
        assert self.process is not None, f"{self.name} was not started"
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def finish(self, timeout: float = 10.0) -> None:
        """Assert that the process ends within ``timeout`` s with status 0 (its expected path)."""
        status = self.wait(timeout)
        if status is None:
            self.stop()
        assert status == 0, f"{self.name}: sipp exit status {status}\n{self.diagnostics()}"

    def stop(self) -> None:
        """Stop the process (by PID) if it still runs."""
        stop_process(self.process)

    def diagnostics(self) -> str:
        """The process's output, errors and message trace, for failure messages."""
        return "\n".join(_tail(path) for path in (self.output, self.errors, self.logfile, self.trace))

    def __enter__(self) -> _Sipp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SippDevice(_Sipp):
    """A SIPp device: REGISTERs ``sip:USER@DOMAIN`` with contact ``sip:NAME@127.0.0.1:PORT``,
    then takes one call as ``behaviour`` says (see the module docstring)."""

    def __init__(
        self,
        name: str,
        behaviour: str,
        registrar: tuple[str, int],
        workdir: Path,
        *,
        user: str = "alice",
        password: str = "alice-secret",
        impi: str | None = None,
        domain: str = DOMAIN,
        port: int | None = None,
        instance: str | bool = False,
        reg_id: int | None = None,
        q: float | None = None,
        expires: int = 600,
        ring_ms: int = 0,
        answer_uri_params: str = ";transport=UDP",
        timeout: float = 60.0,
    ) -> None:
        """``instance``: True for a random ``+sip.instance`` URN, or the URN itself; ``reg_id`` adds
        ``reg-id`` (RFC 5626); ``q`` adds the Contact's ``q`` (its preference, RFC 3261 §10.2.1.2);
        ``ring_ms``: how long an ``"answer"`` device rings before its 200; ``answer_uri_params``: the
        URI parameters of the Contact in its 180/200 (the remote target of the caller's ACK and BYE;
        ``""``: exactly the registered contact);
        ``timeout``: sipp's own limit on the whole run (it then exits with an error)."""
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {', '.join(BEHAVIOURS)}, not {behaviour!r}")
        super().__init__(name, workdir)
        self.behaviour = behaviour
        self.registrar = registrar
        self.user = user
        self.password = password
        self.impi = impi or f"{user}@{domain}"
        self.domain = domain
        self.port = port or free_udp_port()
        if instance is True:
            instance = f"urn:uuid:{uuid.uuid4()}"
        self.instance = instance or None
        self.reg_id = reg_id
        self.q = q
        self.expires = expires
        self.ring_ms = ring_ms
        self.answer_uri_params = answer_uri_params
        self.timeout = timeout

    @property
    def contact(self) -> str:
        """The contact URI it registers: the Request-URI a proxy forwards its calls to."""
        return f"sip:{self.name}@{LOOPBACK}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (UDP)."""
        return LOOPBACK, self.port

    def start(self) -> SippDevice:
        """Start the sipp process (it registers at once); returns self."""
        params = ""
        if self.instance:
            params += f';+sip.instance="<{self.instance}>"'
        if self.reg_id is not None:
            params += f";reg-id={self.reg_id}"
        if self.q is not None:
            params += f";q={self.q:g}"
        host, port = self.registrar
        self._spawn(
            [
                f"{host}:{port}",
                "-sf", str(SCENARIOS / "device-register.xml"),
                "-oocsf", str(SCENARIOS / f"device-{self.behaviour}.xml"),
                "-i", LOOPBACK, "-p", str(self.port),
                "-key", "aor_user", self.user, "-key", "domain", self.domain,
                "-key", "contact_user", self.name, "-key", "contact_params", params,
                "-key", "expires", str(self.expires),
                "-key", "answer_uri_params", self.answer_uri_params,
                "-set", "ring_ms", str(self.ring_ms),
                "-aa",  # 200 OK to OPTIONS (qualify pings), INFO, NOTIFY, UPDATE
                "-au", self.impi, "-ap", self.password, "-auth_uri", self.domain,
                "-timeout", f"{self.timeout:g}s", "-timeout_error",
            ]
        )  # fmt: skip
        return self

    def register_status(self) -> int | None:
        """The final status the registrar gave the credentialed REGISTER (None: none yet)."""
        for message in self.messages():
            if (
                message.direction == "received"
                and message.method == "REGISTER"
                and message.status is not None
                and message.status >= 200
                and message.header("CSeq").startswith("2 ")
            ):
                return message.status
        return None

    def wait_registered(self, timeout: float = 5.0) -> None:
        """Wait until the registrar answered 200 to the REGISTER with credentials; fails the test
        (with the device's logs) on another status, an early exit or the timeout."""

        def done() -> bool:
            return self.register_status() is not None or not self.running()

        _wait_until(done, timeout)
        status = self.register_status()
        assert status == 200, f"{self.name}: REGISTER ended with {status}\n{self.diagnostics()}"


class SippCaller(_Sipp):
    """A SIPp caller: one INVITE to ``ruri`` sent to ``target``, expecting final status ``expect``
    (200: ACK, ``talk_ms`` of call, BYE); or, with ``cancel_after_ms``, a CANCEL that many ms after
    the 180/183, expecting 487."""

    def __init__(
        self,
        name: str,
        target: tuple[str, int],
        ruri: str,
        workdir: Path,
        *,
        expect: int = 200,
        to: str | None = None,
        caller: str = f"sip:bob@{DOMAIN}",
        talk_ms: int = 0,
        cancel_after_ms: int | None = None,
        port: int | None = None,
        timeout: float = 30.0,
    ) -> None:
        """``to``: the To URI (default: ``ruri``); ``caller``: the From URI; ``timeout``: sipp's
        own limit on the call (it then exits with an error)."""
        super().__init__(name, workdir)
        self.target = target
        self.ruri = ruri
        self.expect = expect
        self.to = to or ruri
        self.caller = caller
        self.talk_ms = talk_ms
        self.cancel_after_ms = cancel_after_ms
        self.port = port or free_udp_port()
        self.timeout = timeout

    def start(self) -> SippCaller:
        """Start the call; returns self."""
        host, port = self.target
        if self.cancel_after_ms is None:
            scenario = ["-sf", str(SCENARIOS / "caller.xml"), "-set", "expect", str(self.expect)]
            pause = self.talk_ms
        else:
            scenario = ["-sf", str(SCENARIOS / "caller-cancel.xml")]
            pause = self.cancel_after_ms
        self._spawn(
            [
                f"{host}:{port}", *scenario,
                "-i", LOOPBACK, "-p", str(self.port),
                "-key", "ruri", self.ruri, "-key", "to", self.to, "-key", "from", self.caller,
                "-d", str(pause),
                "-timeout", f"{self.timeout:g}s", "-timeout_error",
            ]
        )  # fmt: skip
        return self

    def final_status(self) -> int | None:
        """The final status the INVITE got (None: none yet)."""
        for message in self.messages():
            status = message.status
            if (
                message.direction == "received"
                and message.method == "INVITE"
                and status
                and status >= 200
            ):
                return status
        return None

    def responses(self) -> list[int]:
        """The statuses received for the INVITE, in order (provisional ones included)."""
        return [
            m.status
            for m in self.messages()
            if m.direction == "received" and m.status is not None and m.method == "INVITE"
        ]


# -- baresip ---------------------------------------------------------------------------------------

_BARESIP_CONFIG = """\
# written by tests/devices.py: a headless baresip on loopback, no sound card
poll_method\t\tepoll
sip_listen\t\t{host}:{port}
call_local_timeout\t{local_timeout}
call_max_calls\t\t4
# no audio device: the aubridge module's devices are sinks/sources nobody else uses
audio_player\t\taubridge,{name}-play
audio_source\t\taubridge,{name}-src
audio_alert\t\taubridge,{name}-alert
rtp_ports\t\t{rtp_low}-{rtp_high}
module_path\t\t/usr/lib/baresip/modules
module\t\t\tg711.so
module\t\t\taubridge.so
module_tmp\t\tuuid.so
module_tmp\t\taccount.so
# menu: the commands (reginfo, hangup, accept ...); ctrl_tcp: commands and events over TCP
module_app\t\tmenu.so
module_app\t\tctrl_tcp.so
ctrl_tcp_listen\t\t{host}:{ctrl_port}
"""

_TRACE_BLOCK = re.compile(
    r"#\n(?P<proto>UDP|TCP|TLS) (?P<src>\S+) -> (?P<dst>\S+)\n(?P<body>.*?)\x1b\[;m", re.DOTALL
)


@dataclass
class BaresipEvent:
    """One event baresip's ctrl_tcp module reported (``CALL_INCOMING``, ``CALL_ESTABLISHED``,
    ``CALL_CLOSED``, ``REGISTER_OK`` ...), with the raw JSON object."""

    type: str
    call_id: str | None
    data: dict[str, Any] = field(repr=False)


class Baresip:
    """A baresip phone registering ``sip:USER@DOMAIN`` (Digest as ``impi``, default USER@DOMAIN)
    at ``registrar`` (its outbound proxy), listening on 127.0.0.1:``port`` (UDP and TCP).

    ``answermode``: ``"auto"`` (answers every call at once), ``"manual"`` (rings until cancelled:
    a phone nobody picks up) or ``"early"``."""

    def __init__(
        self,
        name: str,
        user: str,
        password: str,
        registrar: tuple[str, int],
        port: int | None = None,
        *,
        workdir: Path,
        impi: str | None = None,
        domain: str = DOMAIN,
        answermode: str = "auto",
        regint: int = 600,
        transport: str = "udp",
    ) -> None:
        """``regint``: the registration interval it asks for (its Expires); ``transport``: how it
        reaches the registrar (``udp`` or ``tcp``)."""
        if answermode not in ("auto", "manual", "early"):
            raise ValueError(f"answermode must be auto, manual or early, not {answermode!r}")
        self.binary = require_binary("baresip", "baresip-core")
        self.name = name
        self.user = user
        self.password = password
        self.registrar = registrar
        #: the SIP port was picked here (and may be picked again when another process took it)
        self._own_port = port is None
        self.port = port or free_udp_port()
        self.impi = impi or f"{user}@{domain}"
        self.domain = domain
        self.answermode = answermode
        self.regint = regint
        self.transport = transport
        self.ctrl_port = free_tcp_port()
        self.dir = workdir / name
        self.output = self.dir / "baresip.out"
        self.process: subprocess.Popen[bytes] | None = None
        self.events: list[BaresipEvent] = []
        self._responses: dict[str, dict[str, Any]] = {}
        self._lock = threading.Condition()
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._tokens = iter(range(1, 1 << 30))

    # -- process ---------------------------------------------------------------------------------
    def write_config(self) -> None:
        """Write ``config`` and ``accounts`` into the phone's own config directory."""
        self.dir.mkdir(parents=True, exist_ok=True)
        rtp = free_udp_port() & ~1
        (self.dir / "config").write_text(
            _BARESIP_CONFIG.format(
                host=LOOPBACK, port=self.port, ctrl_port=self.ctrl_port, name=self.name,
                local_timeout=120, rtp_low=rtp, rtp_high=rtp + 10,
            )
        )  # fmt: skip
        host, port = self.registrar
        outbound = f"sip:{host}:{port}" + (";transport=tcp" if self.transport == "tcp" else "")
        (self.dir / "accounts").write_text(
            f"<sip:{self.user}@{self.domain}>;auth_user={self.impi};auth_pass={self.password}"
            f';outbound="{outbound}";regint={self.regint};answermode={self.answermode}\n'
        )

    def start(self) -> Baresip:
        """Start baresip (it registers at once) and connect to its ctrl_tcp port; returns self.

        Ports are picked free a moment before baresip binds them (its SIP port on UDP and TCP, its
        ctrl_tcp port): when another process took one meanwhile, baresip says "Address already in
        use" and exits, and it is started again on new ports (three times at most)."""
        for attempt in range(3):
            try:
                return self._start()
            except AssertionError:
                taken = self.output.exists() and b"Address already in use" in self.output.read_bytes()
                if not taken or attempt == 2:
                    raise
                self.ctrl_port = free_tcp_port()
                if self._own_port:
                    self.port = free_udp_port()
        raise AssertionError("unreachable")

    def _start(self) -> Baresip:
        self.write_config()
        with self.output.open("wb") as out:
            # -s: SIP trace on stdout; stdin is not a terminal and no UI module reads it
            self.process = subprocess.Popen(
                [self.binary, "-f", str(self.dir), "-s"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir,
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while self._sock is None:
            if not self.running() or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{self.name}: ctrl_tcp did not come up\n{self.diagnostics()}")
            try:
                self._sock = socket.create_connection((LOOPBACK, self.ctrl_port), timeout=1)
            except OSError:
                time.sleep(0.05)
        self._reader = threading.Thread(target=self._read, name=f"baresip-{self.name}", daemon=True)
        self._reader.start()
        return self

    def running(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Stop baresip by its PID. On SIGTERM it un-registers (REGISTER Expires: 0) first; a
        second SIGTERM forces it out when the registrar does not answer, then SIGKILL."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        stop_process(self.process, signals=2, grace=3.0)
        if self._reader is not None:
            self._reader.join(timeout=5)

    def __enter__(self) -> Baresip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- ctrl_tcp: netstrings of JSON --------------------------------------------------------------
    def _read(self) -> None:
        sock = self._sock
        assert sock is not None
        sock.settimeout(None)
        buffer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self._lock:
                    self._lock.notify_all()
                return
            buffer += chunk
            while True:
                length, colon, rest = buffer.partition(b":")
                if not colon or not length.isdigit() or len(rest) < int(length) + 1:
                    break
                payload, buffer = rest[: int(length)], rest[int(length) + 1 :]
                self._dispatch(json.loads(payload))

    def _dispatch(self, data: dict[str, Any]) -> None:
        with self._lock:
            if data.get("event"):
                self.events.append(BaresipEvent(str(data.get("type")), data.get("id"), data))
            elif data.get("response"):
                self._responses[str(data.get("token"))] = data
            self._lock.notify_all()

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict[str, Any]:
        """Run a baresip command (``reginfo``, ``listcalls``, ``hangup``, ``accept`` ...) through
        ctrl_tcp; returns its JSON response (``ok``, ``data``)."""
        assert self._sock is not None, f"{self.name} was not started"
        token = f"t{next(self._tokens)}"
        payload = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._sock.sendall(str(len(payload)).encode() + b":" + payload + b",")
        with self._lock:
            if not self._lock.wait_for(lambda: token in self._responses, timeout):
                raise AssertionError(f"{self.name}: no answer to {command}\n{self.diagnostics()}")
            return self._responses.pop(token)

    # -- state -------------------------------------------------------------------------------------
    def registration_state(self) -> str:
        """``"OK"`` once registered, ``"ERR"`` after a failure, else ``"zzz"`` (what reginfo says)."""
        data = str(self.command("reginfo").get("data", ""))
        plain = re.sub(r"\x1b\[[0-9;]*m", "", data)
        match = re.search(rf"sip:{re.escape(self.user)}@\S+\s+(\S+)", plain)
        return match.group(1) if match else "?"

    def wait_registered(self, timeout: float = 5.0) -> None:
        """Wait until baresip reports its account registered; fails the test (with the logs) when
        the registration fails, the process exits or the timeout passes."""
        states: list[str] = []

        def done() -> bool:
            if not self.running():
                return True
            states.append(self.registration_state())
            return states[-1] in ("OK", "ERR")

        _wait_until(done, timeout, interval=0.1)
        assert states and states[-1] == "OK", (
            f"{self.name}: not registered (state {states[-1:] or 'none'})\n{self.diagnostics()}"
        )

    def sip_messages(self) -> list[TracedMessage]:
        """The SIP messages baresip sent and received, from its trace."""
        if not self.output.exists():
            return []
        text = self.output.read_text(errors="replace")
        messages = []
        registrar = "{}:{}".format(*self.registrar)
        for match in _TRACE_BLOCK.finditer(text):
            # received: to its SIP port, or from the registrar (over the TCP connection baresip
            # opened, whose local port is not its SIP port)
            received = match.group("dst").endswith(f":{self.port}") or match.group("src") == registrar
            messages.append(_traced("received" if received else "sent", match.group("body")))
        return messages

    @property
    def contact(self) -> str:
        """The contact URI baresip registered (its user part is generated: ``USER-0x...``)."""
        for message in self.sip_messages():
            if message.direction == "sent" and message.method == "REGISTER":
                found = re.search(r"<([^>]+)>", message.header("Contact"))
                if found:
                    return found.group(1)
        raise AssertionError(f"{self.name}: no REGISTER sent yet\n{self.diagnostics()}")

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens for SIP (UDP and TCP)."""
        return LOOPBACK, self.port

    def calls_seen(self) -> dict[str, list[str]]:
        """The calls ctrl_tcp reported, by Call-ID: the event types of each, in order."""
        calls: dict[str, list[str]] = {}
        with self._lock:
            for event in self.events:
                if event.call_id and event.type.startswith("CALL_"):
                    calls.setdefault(event.call_id, []).append(event.type)
        return calls

    def wait_for_event(
        self, type_: str, timeout: float = 5.0, call_id: str | None = None
    ) -> BaresipEvent:
        """The first event of this type (of that call, when given); fails the test on timeout."""

        def find() -> BaresipEvent | None:
            for event in self.events:
                if event.type == type_ and call_id in (None, event.call_id):
                    return event
            return None

        with self._lock:
            self._lock.wait_for(lambda: find() is not None or not self.running(), timeout)
            event = find()
        assert event is not None, f"{self.name}: no {type_} event\n{self.diagnostics()}"
        return event

    def wait_for_call(self, timeout: float = 5.0, state: str = "CALL_ESTABLISHED") -> str:
        """Wait for a call to reach ``state`` (an event type); returns its Call-ID."""
        event = self.wait_for_event(state, timeout)
        assert event.call_id is not None
        return event.call_id

    def received_methods(self) -> list[str]:
        """The methods of the requests it received, in order (REGISTER answers left out)."""
        return [m.method for m in self.sip_messages() if m.direction == "received" and m.is_request]

    def diagnostics(self) -> str:
        """Its output (log and SIP trace) and the events it reported, for failure messages."""
        events = "\n".join(f"{e.type} {e.call_id or ''}" for e in self.events)
        return _tail(self.output, 8000) + f"\n--- events ---\n{events}"


def stop_all(devices: Iterable[_Sipp | Baresip]) -> None:
    """Stop every device (each by its own PID), ignoring those that already exited."""
    for device in devices:
        device.stop()
