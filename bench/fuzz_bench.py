"""Fuzzing a running ``imscore serve``: mutated SIP messages over UDP and TCP, and what became of them.

Starts ``imscore serve`` (memory store, UDP and TCP on loopback, short transaction timers) as a
subprocess, sends it ``--messages`` mutated messages at ``--rate`` a second (bounded by
``--max-seconds``), and reports:

- **answers** by status class (the first final answer to each message; 1xx-only and retransmitted
  answers apart), and **no answer** (nothing within ``--window`` seconds after the last message),
  with the bases that most often went unanswered;
- **ERROR lines and tracebacks** in the server's log (goal 0), the distinct errors, and, when there
  are some, the **culprits**: the messages sent around each ERROR line replayed one at a time, so
  that each error is pinned to the input that caused it;
- **stuck transactions** (goal 0): after the transaction timers had time to run out, what the
  server still holds when it stops (live transactions, fork contexts, tasks: read by a probe plugin
  at ``ims_server_stopping``), and whether it still answers OPTIONS promptly over UDP and TCP;
- the server's **RSS** before and after (``/proc/PID/status``), and its log's size.

The mutations start from valid REGISTER, INVITE, OPTIONS, SUBSCRIBE, MESSAGE and BYE requests and
the RFC 4475 torture messages of the shared corpus (``../shared/corpus/rfc4475`` or
``$IMSCORE_CORPUS``): byte flips, duplicated, deleted and truncated header lines, a cut message,
huge values, CRLF injection, random UTF-8 and invalid octets, typed headers with broken values.
Each message is derived from ``--seed`` and its number only, so a run is repeatable and one message
can be made again on its own. Every message is checked to name no IP address outside loopback (a
mutation that would is drawn again), the server's DNS is a dead loopback port, and ``--isolate``
runs the whole benchmark in a network namespace of its own (``unshare --net``, root only).

    python3 bench/fuzz_bench.py [--messages N] [--rate R] [--seed S] [--tcp-share F] [--json]

``tests/test_fuzz.py`` runs a few thousand messages of it in the test suite.
"""

from __future__ import annotations

import argparse
import array
import bisect
import contextlib
import ipaddress
import json
import os
import random
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("IMSCORE_CORPUS") or REPO.parent / "shared" / "corpus")
DOMAIN = "ims.example.test"
#: the token that ties an answer to the message it answers (in the Call-ID and the Via branch)
TOKEN = re.compile(rb"fz(\d+)x")
TIMERS = {"t1": 0.05, "t2": 0.4, "t4": 0.5}  # Timer J/H = 64*T1 = 3.2 s, Timer I/K = T4
UDP_LIMIT = 65000  # larger messages go over TCP

# --------------------------------------------------------------------------------------------------
# What is mutated
# --------------------------------------------------------------------------------------------------
_HEAD = "Via: SIP/2.0/{TP} 127.0.0.1:{PORT};branch=z9hG4bK-{TOK};rport\r\nMax-Forwards: 70\r\n"
TEMPLATES: dict[str, str] = {
    "REGISTER": (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n{_HEAD}"
        f"From: <sip:alice@{DOMAIN}>;tag=r{{TOK}}\r\nTo: <sip:alice@{DOMAIN}>\r\n"
        "Call-ID: {TOK}@127.0.0.1\r\nCSeq: 1 REGISTER\r\n"
        'Contact: <sip:alice@127.0.0.1:{PORT};transport={tp}>;+sip.instance="<urn:uuid:00000000-0000'
        '-1000-8000-000a95a0e128>";reg-id=1;expires=600\r\n'
        "Expires: 600\r\nSupported: path, outbound, gruu\r\nUser-Agent: fuzz/1\r\n"
        "Content-Length: 0\r\n\r\n"
    ),
    "INVITE": (
        f"INVITE sip:bob@{DOMAIN} SIP/2.0\r\n{_HEAD}"
        f'From: "Alice" <sip:alice@{DOMAIN}>;tag=i{{TOK}}\r\nTo: <sip:bob@{DOMAIN}>\r\n'
        "Call-ID: {TOK}@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
        "Contact: <sip:alice@127.0.0.1:{PORT};transport={tp}>\r\n"
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\nContent-Type: application/sdp\r\n"
        "Content-Length: {LEN}\r\n\r\n{BODY}"
    ),
    "OPTIONS": (
        f"OPTIONS sip:{DOMAIN} SIP/2.0\r\n{_HEAD}"
        f"From: <sip:alice@{DOMAIN}>;tag=o{{TOK}}\r\nTo: <sip:{DOMAIN}>\r\n"
        "Call-ID: {TOK}@127.0.0.1\r\nCSeq: 7 OPTIONS\r\nAccept: application/sdp\r\n"
        "Content-Length: 0\r\n\r\n"
    ),
    "SUBSCRIBE": (
        f"SUBSCRIBE sip:alice@{DOMAIN} SIP/2.0\r\n{_HEAD}"
        f"From: <sip:alice@{DOMAIN}>;tag=s{{TOK}}\r\nTo: <sip:alice@{DOMAIN}>\r\n"
        "Call-ID: {TOK}@127.0.0.1\r\nCSeq: 1 SUBSCRIBE\r\nEvent: reg\r\nExpires: 600\r\n"
        "Accept: application/reginfo+xml\r\nContact: <sip:alice@127.0.0.1:{PORT};transport={tp}>\r\n"
        f"Route: <sip:{DOMAIN};lr>\r\nContent-Length: 0\r\n\r\n"
    ),
    "MESSAGE": (
        f"MESSAGE sip:bob@{DOMAIN} SIP/2.0\r\n{_HEAD}"
        f"From: <sip:alice@{DOMAIN}>;tag=m{{TOK}}\r\nTo: <sip:bob@{DOMAIN}>\r\n"
        "Call-ID: {TOK}@127.0.0.1\r\nCSeq: 3 MESSAGE\r\n"
        "P-Preferred-Identity: <tel:+15551230001>\r\nContent-Type: text/plain;charset=utf-8\r\n"
        "Content-Length: {LEN}\r\n\r\n{BODY}"
    ),
    "BYE": (
        f"BYE sip:bob@127.0.0.1:5999 SIP/2.0\r\n{_HEAD}"
        f"From: <sip:alice@{DOMAIN}>;tag=b{{TOK}}\r\nTo: <sip:bob@{DOMAIN}>;tag=callee7\r\n"
        "Call-ID: {TOK}@127.0.0.1\r\nCSeq: 2 BYE\r\nRoute: <sip:127.0.0.1:{SERVER};lr>\r\n"
        "Content-Length: 0\r\n\r\n"
    ),
}
SDP = (
    "v=0\r\no=alice 2890844526 2890844526 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 49170 RTP/AVP 0 8 97\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:97 iLBC/8000\r\n"
)
BODIES = {"INVITE": SDP, "MESSAGE": "hello, bob \u2603\r\n"}
#: typed headers with values that must not parse (each must become a status, never a traceback)
BROKEN_TYPED = [
    ("Route", "<sip:''>"),
    ("Route", "<sip:127.0.0.1;lr"),
    ("Record-Route", "<>"),
    ("Contact", "<sip:alice@>;expires=x"),
    ("Contact", '"unterminated <sip:a@b>'),
    ("Contact", "*;q=2"),
    ("From", "<sip:alice@ims.example.test;tag=a"),
    ("To", "sip:"),
    ("To", "isbn:1234"),
    ("Via", "SIP/2.0/UDP"),
    ("Via", "SIP/2.0/UDP 127.0.0.1:99999;branch="),
    ("CSeq", "36893488147419103232 INVITE"),
    ("CSeq", "1"),
    ("Max-Forwards", "-1"),
    ("Max-Forwards", "99999999999999999999"),
    ("Expires", "-5"),
    ("Expires", "4294967296000"),
    ("Content-Length", "-1"),
    ("Content-Length", "1180591620717411303424"),
    ("Event", ";id="),
    ("Authorization", "Digest username=, nonce"),
    (
        "Authorization",
        'Digest username="alice@ims.example.test", realm="ims.example.test", '
        'nonce="AAAA", uri="sip:ims.example.test", response="zz", algorithm=MD5',
    ),
    ("Proxy-Require", ""),
    ("Require", "\x00"),
    ("Path", "<sip:[::1>"),
    ("Service-Route", "<sip:a@b;lr>>"),
    ("P-Asserted-Identity", "<tel:>"),
    ("Supported", ",,,"),
    ("Accept-Contact", '*;+sip.instance="<urn:'),
    ("Reason", 'Q.850;cause=abc;text="'),
]
HEADER_NAMES = [
    "Via",
    "v",
    "From",
    "f",
    "To",
    "t",
    "Call-ID",
    "i",
    "CSeq",
    "Contact",
    "m",
    "Route",
    "Record-Route",
    "Max-Forwards",
    "Expires",
    "Content-Length",
    "l",
    "Content-Type",
    "c",
    "Event",
    "o",
    "Authorization",
    "Require",
    "Supported",
    "k",
    "Path",
    "Accept",
    "Allow",
]
#: code points random UTF-8 is drawn from: ASCII controls, Latin, RTL, combining, CJK, BOM, emoji
UNICODE_RANGES = [
    (0x00, 0x1F),
    (0x7F, 0xFF),
    (0x0590, 0x05FF),
    (0x0300, 0x036F),
    (0x4E00, 0x4FFF),
    (0xFEFF, 0xFEFF),
    (0x200B, 0x200F),
    (0x1F600, 0x1F64F),
    (0xFFF0, 0xFFFF),
]


def load_corpus(corpus: Path = CORPUS) -> list[tuple[str, bytes]]:
    """The RFC 4475 torture messages (name, octets) made ready to send: see :func:`prepare`."""
    return [
        (f"rfc4475/{path.stem}", prepare(path.read_bytes()))
        for path in sorted((corpus / "rfc4475").glob("*.dat"))
    ]


_VIA_START = re.compile(rb"(?:via|v)[ \t]*:", re.IGNORECASE)
_LENGTH = re.compile(rb"((?:content-length|l)[ \t]*:[ \t]*)(\d{1,9})([ \t]*)$", re.IGNORECASE)
_CALL_ID = re.compile(rb"(?:call-id|i)[ \t]*:[ \t]*", re.IGNORECASE)


def prepare(raw: bytes) -> bytes:
    """A corpus message with every IP literal made a loopback one (each Content-Length moved by
    what that did to the body, so a right one stays right and a wrong one as wrong), the first Via
    (with its continuation lines) replaced by one naming our socket with ``rport`` (answers come
    back to us and go nowhere else), and the token before the Call-ID's value."""
    end = raw.find(b"\r\n\r\n")
    head, body = (raw, b"") if end < 0 else (raw[:end], raw[end:])
    loopback_body = to_loopback(body)
    delta = len(loopback_body) - len(body)
    lines: list[bytes] = []
    via_done = call_id_done = skipping = False
    for n, line in enumerate(to_loopback(head).split(b"\r\n")):
        if skipping and line[:1] in (b" ", b"\t"):
            continue
        skipping = False
        if n and not via_done and _VIA_START.match(line):
            lines.append(b"Via: SIP/2.0/{TP} 127.0.0.1:{PORT};rport;branch=z9hG4bK-{TOK}")
            via_done = skipping = True
            continue
        length = _LENGTH.match(line) if n else None
        if length and delta:
            line = length.group(1) + str(int(length.group(2)) + delta).encode() + length.group(3)
        call_id = _CALL_ID.match(line) if n and not call_id_done else None
        if call_id:
            line = line[: call_id.end()] + b"{TOK}-" + line[call_id.end() :]
            call_id_done = True
        lines.append(line)
    return b"\r\n".join(lines) + loopback_body


# (bounded repetitions and a boundary before each start: linear even on 64 KB of hex digits)
_IPV4 = re.compile(rb"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
_IPV6 = re.compile(rb"\[([0-9A-Fa-f:.%]{0,64})\]")
_IPV6_BARE = re.compile(
    rb"(?<![0-9A-Fa-f:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,8}(?:\.\d{1,3}){0,3}"
)


def to_loopback(data: bytes) -> bytes:
    """Every IPv4 literal made 127.0.0.1 and every bracketed IPv6 one [::1]."""
    data = _IPV4.sub(lambda m: b"127.0.0.1" if _ip(m.group(0)) is not None else m.group(0), data)
    return _IPV6.sub(lambda m: b"[::1]" if _ip(m.group(1)) is not None else m.group(0), data)


def _ip(text: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None


def names_only_loopback(data: bytes) -> bool:
    """Whether every IP address the message names (v4, v6 bracketed or bare) is a loopback one:
    a server that follows the message (a Route, a Via maddr, a Request-URI) stays on this host."""
    for match in _IPV4.finditer(data):
        if match.group(0).startswith(b"127."):  # loopback, or no address at all (127.0.0.999)
            continue
        address = _ip(match.group(0))
        if address is not None and not address.is_loopback:
            return False
    for match in (*_IPV6.finditer(data), *_IPV6_BARE.finditer(data)):
        text = match.group(1) if match.re is _IPV6 else match.group(0)
        for candidate in _ipv6_readings(text):
            address = _ip(candidate)
            if address is not None and not address.is_loopback:
                return False
    return True


def _ipv6_readings(text: bytes) -> Iterator[bytes]:
    """The ways a host:port-ish run of hex and colons may be read as an address."""
    for start in (text, text.lstrip(b":")):
        yield start
        head = start
        while b":" in head:
            head = head.rsplit(b":", 1)[0]
            yield head
        yield start.split(b"%", 1)[0]


@dataclass
class Base:
    """A message before mutation: a template's text, or a corpus message's octets."""

    name: str
    template: str | None = None
    raw: bytes = b""

    def render(self, token: str, transport: str, port: int, server_port: int) -> bytes:
        if self.template is not None:
            body = BODIES.get(self.name, "").encode()
            text = (
                self.template.replace("{TOK}", token)
                .replace("{TP}", transport.upper())
                .replace("{tp}", transport)
                .replace("{PORT}", str(port))
                .replace("{SERVER}", str(server_port))
                .replace("{LEN}", str(len(body)))
            )
            return text.replace("{BODY}", "").encode() + body
        return (
            self.raw.replace(b"{TOK}", token.encode())
            .replace(b"{TP}", transport.upper().encode())
            .replace(b"{PORT}", str(port).encode())
        )


def bases(corpus: Path = CORPUS) -> list[Base]:
    made = [Base(name, template) for name, template in TEMPLATES.items()]
    return made + [Base(name, raw=raw) for name, raw in load_corpus(corpus)]


class Mutator:
    """Message number ``seq`` of a run of seed ``seed``: its base, its mutations, its octets."""

    def __init__(self, seed: int, choices: list[Base]) -> None:
        self.seed = seed
        self.bases = choices
        self.mutations: list[tuple[str, Callable[[random.Random, bytes], bytes]]] = [
            ("byte-flips", self._flip),
            ("duplicated-header", self._duplicate),
            ("deleted-header", self._delete),
            ("truncated-header", self._truncate_line),
            ("cut-message", self._cut),
            ("huge-value", self._huge),
            ("crlf-injection", self._crlf),
            ("random-utf8", self._utf8),
            ("invalid-octets", self._octets),
            ("broken-typed-header", self._broken_typed),
            ("renamed-header", self._rename),
        ]

    def message(
        self, seq: int, transport: str, port: int, server_port: int
    ) -> tuple[bytes, str, list[str]]:
        """``(octets, base name, mutation names)``; tries again (same seed) while the mutated
        message would name an address off loopback, and falls back to the base unmutated."""
        rng = random.Random(self.seed * 1_000_003 + seq)
        base = rng.choice(self.bases)
        token = f"fz{seq}x"
        original = base.render(token, transport, port, server_port)
        for _ in range(8):
            data = original
            names = []
            if rng.random() < 0.04:  # some pass unmutated: the baseline answers
                return data, base.name, []
            for _ in range(1 + int(rng.random() < 0.35) + int(rng.random() < 0.1)):
                name, mutate = rng.choice(self.mutations)
                data = mutate(rng, data) if data else data
                names.append(name)
            if names_only_loopback(data):
                return data, base.name, names
        return original, base.name, ["(unmutated: mutations named foreign addresses)"]

    # -- mutations --------------------------------------------------------------------------------
    @staticmethod
    def _lines(data: bytes) -> tuple[list[bytes], bytes]:
        end = data.find(b"\r\n\r\n")
        head, body = (data, b"") if end < 0 else (data[:end], data[end:])
        return head.split(b"\r\n"), body

    @staticmethod
    def _flip(rng: random.Random, data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(rng.choice((1, 1, 2, 3, 8))):
            at = rng.randrange(len(out))
            out[at] = out[at] ^ (1 << rng.randrange(8)) if rng.random() < 0.6 else rng.randrange(256)
        return bytes(out)

    def _duplicate(self, rng: random.Random, data: bytes) -> bytes:
        lines, body = self._lines(data)
        if len(lines) < 2:
            return data
        at = rng.randrange(1, len(lines))
        times = rng.choice((1, 1, 2, 5, 50, 400))
        return b"\r\n".join(lines[: at + 1] + [lines[at]] * times + lines[at + 1 :]) + body

    def _delete(self, rng: random.Random, data: bytes) -> bytes:
        lines, body = self._lines(data)
        if len(lines) < 2:
            return data
        del lines[rng.randrange(1, len(lines))]
        return b"\r\n".join(lines) + body

    def _truncate_line(self, rng: random.Random, data: bytes) -> bytes:
        lines, body = self._lines(data)
        at = rng.randrange(len(lines))
        lines[at] = lines[at][: rng.randrange(len(lines[at]) + 1)]
        return b"\r\n".join(lines) + body

    @staticmethod
    def _cut(rng: random.Random, data: bytes) -> bytes:
        return data[: rng.randrange(1, len(data) + 1)]

    def _huge(self, rng: random.Random, data: bytes) -> bytes:
        lines, body = self._lines(data)
        if len(lines) < 2:
            return data
        at = rng.randrange(1, len(lines))
        name = lines[at].split(b":", 1)[0] or b"X-Huge"
        value = rng.choice(
            (
                b"9" * rng.choice((11, 20, 40, 400)),
                b"A" * rng.choice((1000, 8000, 30000, 64000)),
                b"<sip:" + b"a" * 5000 + b"@" + DOMAIN.encode() + b">",
                b"<sip:x@"
                + DOMAIN.encode()
                + b">;"
                + b";".join(b"p%d=%d" % (n, n) for n in range(2000)),
                b",".join([b"<sip:c%d@127.0.0.1>" % n for n in range(1500)]),
            )
        )
        lines[at] = name + b": " + value
        return b"\r\n".join(lines) + body

    @staticmethod
    def _crlf(rng: random.Random, data: bytes) -> bytes:
        at = rng.randrange(len(data) + 1)
        piece = rng.choice(
            (
                b"\r\n",
                b"\r\n\r\n",
                b"\n",
                b"\r",
                b"\r\n ",
                b"\r\nVia: SIP/2.0/UDP 127.0.0.1:1\r\n",
                b"\r\nContent-Length: 999\r\n",
                b"\r\n\r\nINVITE sip:x SIP/2.0\r\n",
                b"\x00\r\n",
            )
        )
        return data[:at] + piece + data[at:]

    @staticmethod
    def _utf8(rng: random.Random, data: bytes) -> bytes:
        low, high = rng.choice(UNICODE_RANGES)
        text = "".join(chr(rng.randint(low, high)) for _ in range(rng.choice((1, 3, 20, 200))))
        at = rng.randrange(len(data) + 1)
        return data[:at] + text.encode("utf-8", "surrogatepass") + data[at:]

    @staticmethod
    def _octets(rng: random.Random, data: bytes) -> bytes:
        junk = rng.choice(
            (b"\xff\xfe", b"\xc0\x80", b"\xed\xa0\x80", b"\x80" * 5, b"\xf8\x88\x80\x80\x80")
        )
        at = rng.randrange(len(data) + 1)
        return data[:at] + junk + data[at:]

    def _broken_typed(self, rng: random.Random, data: bytes) -> bytes:
        lines, body = self._lines(data)
        name, value = rng.choice(BROKEN_TYPED)
        line = f"{name}: {value}".encode()
        existing = [
            n for n, text in enumerate(lines) if text.lower().startswith(name.lower().encode() + b":")
        ]
        if existing and rng.random() < 0.6:
            lines[rng.choice(existing)] = line
        else:
            lines.insert(rng.randrange(1, len(lines) + 1) if len(lines) > 1 else 1, line)
        return b"\r\n".join(lines) + body

    def _rename(self, rng: random.Random, data: bytes) -> bytes:
        lines, body = self._lines(data)
        if len(lines) < 2:
            return data
        at = rng.randrange(1, len(lines))
        _, sep, value = lines[at].partition(b":")
        lines[at] = rng.choice(HEADER_NAMES).encode() + (sep or b":") + value
        return b"\r\n".join(lines) + body


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------
PROBE_MODULE = '''"""Writes what the server still holds when it stops (fuzz_bench's probe)."""
import json
import os

from imscore.plugin import hookimpl


@hookimpl
def ims_server_stopping(server):
    proxy = getattr(getattr(server, "proxying", None), "core", None)
    counters = server.core.counters
    held = {
        "transactions": len(server.core.layer),
        "fork_contexts": len(getattr(proxy, "_by_server", ())),
        "proxy_branches": len(getattr(proxy, "_by_client", ())),
        "tasks": len(getattr(server, "_tasks", ())),
        "answered": {str(k): v for k, v in counters.answered.items()},
        "parse_errors": getattr(counters, "parse_errors", None),
        "shed": getattr(counters, "shed", None),
    }
    try:
        held["stats"] = server.stats()
    except Exception as exc:  # (an older server): what was read is enough
        held["stats"] = repr(exc)
    with open(os.environ["IMSCORE_FUZZ_PROBE"], "w") as out:
        json.dump(held, out, default=str)
'''

READY = re.compile(r"ready: listening on (.*?) \(profile")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Server:
    """``imscore serve`` on loopback UDP and TCP with short timers, a dead DNS port and the probe."""

    def __init__(self, folder: Path, log_level: str = "INFO") -> None:
        self.folder = folder
        self.log_path = folder / "imscore.log"
        self.probe_path = folder / "held.json"
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None
        self.udp: tuple[str, int] = ("127.0.0.1", 0)
        self.tcp: tuple[str, int] = ("127.0.0.1", 0)
        self.exit_status: int | None = None

    def _profile(self) -> Path:
        import yaml

        profile = yaml.safe_load((REPO / "imscore" / "profiles" / "default.yaml").read_text())
        profile.update(name="fuzz", store="memory:", timers=dict(TIMERS))
        path = self.folder / "fuzz.yaml"
        path.write_text(yaml.safe_dump(profile))
        return path

    def _probe(self) -> Path:
        where = self.folder / "probe"
        info = where / "imscore_fuzz_probe-0.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (where / "imscore_fuzz_probe.py").write_text(PROBE_MODULE)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: imscore-fuzz-probe\nVersion: 0\n")
        (info / "entry_points.txt").write_text("[imscore]\nfuzz_probe = imscore_fuzz_probe\n")
        return where

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self._probe()), env.get("PYTHONPATH")]))
        env["IMSCORE_FUZZ_PROBE"] = str(self.probe_path)
        env.pop("IMSCORE_DISABLE_PLUGIN_AUTOLOAD", None)
        command = [
            sys.executable,
            "-m",
            "imscore",
            "serve",
            "--profile",
            str(self._profile()),
            "--listen",
            "udp:127.0.0.1:0",
            "--listen",
            "tcp:127.0.0.1:0",
            "--dns",
            f"127.0.0.1:{free_port()}",
            "--log-level",
            self.log_level,
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.folder
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"imscore serve exited ({self.process.returncode}):\n{self.log()[-3000:]}"
                )
            found = READY.search(self.log())
            if found:
                for spec in found.group(1).split():
                    transport, rest = spec.split(":", 1)
                    host, _, port = rest.rpartition(":")
                    if transport == "udp":
                        self.udp = (host.strip("[]"), int(port))
                    elif transport == "tcp":
                        self.tcp = (host.strip("[]"), int(port))
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("imscore serve not ready after 60 s:\n" + self.log()[-3000:])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM to the server's own pid; SIGKILL after 20 s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.exit_status = self.process.returncode
        self.process = None

    def held(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.probe_path.read_text())
        except (OSError, ValueError):
            return None
        return data


# --------------------------------------------------------------------------------------------------
# Sending and receiving
# --------------------------------------------------------------------------------------------------
@dataclass
class Tally:
    """What became of each message."""

    count: int
    final: array.array[int] = field(init=False)
    provisional: bytearray = field(init=False)
    sent_at: array.array[float] = field(init=False)
    transport: bytearray = field(init=False)  # 0 not sent, 1 udp, 2 tcp
    retransmitted: int = 0
    unmatched: int = 0
    requests_from_server: int = 0
    tcp_closed_by_server: int = 0
    tcp_send_failures: int = 0
    tcp_connections: int = 0
    udp_send_errors: int = 0

    def __post_init__(self) -> None:
        self.final = array.array("H", bytes(2 * self.count))
        self.provisional = bytearray(self.count)
        self.sent_at = array.array("d", bytes(8 * self.count))
        self.transport = bytearray(self.count)

    def answer(self, data: bytes) -> None:
        if not data.startswith(b"SIP/2.0 "):
            if data.strip():
                self.requests_from_server += 1
            return
        try:
            status = int(data[8:11])
        except ValueError:
            self.unmatched += 1
            return
        found = TOKEN.search(data, 0, 4096)
        seq = int(found.group(1)) if found else -1
        if not 0 <= seq < self.count or not self.transport[seq]:
            self.unmatched += 1
            return
        if status < 200:
            self.provisional[seq] = 1
        elif self.final[seq]:
            self.retransmitted += 1
        else:
            self.final[seq] = status


class TcpLink:
    """One TCP connection of the fuzzer, replaced after ``uses`` messages or when closed."""

    def __init__(self, address: tuple[str, int], uses: int) -> None:
        self.sock = socket.create_connection(address, timeout=2.0)
        self.sock.settimeout(0.5)
        self.port = int(self.sock.getsockname()[1])
        self.left = uses
        self.buffer = b""
        self.closed = False
        self.retired_at: float | None = None


class Fuzzer:
    def __init__(self, server: Server, mutator: Mutator, tally: Tally, args: argparse.Namespace) -> None:
        self.server = server
        self.mutator = mutator
        self.tally = tally
        self.args = args
        self.selector = selectors.DefaultSelector()
        self.udp: list[socket.socket] = []
        for _ in range(8):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            self.selector.register(sock, selectors.EVENT_READ, None)
            self.udp.append(sock)
        self.links: list[TcpLink | None] = [None] * args.tcp_connections
        self.retired: list[TcpLink] = []
        self.bases: Counter[str] = Counter()
        self.mutations: Counter[str] = Counter()
        self.base_of = bytearray(tally.count)  # index into mutator.bases, for the unanswered count
        self.base_index = {base.name: n for n, base in enumerate(mutator.bases)}
        self.unmutated = bytearray(tally.count)

    def close(self) -> None:
        for sock in self.udp:
            sock.close()
        for link in [*self.links, *self.retired]:
            if link is not None and not link.closed:
                link.sock.close()
        self.selector.close()

    # -- sending ----------------------------------------------------------------------------------
    def send(self, seq: int) -> None:
        rng = random.Random(self.args.seed * 7919 + seq)
        over_tcp = rng.random() < self.args.tcp_share
        if over_tcp:
            slot = seq % len(self.links)
            link = self._link(slot)
            if link is None:
                return
            data, base, names = self.mutator.message(seq, "tcp", link.port, self.server.udp[1])
            self._count(seq, base, names, 2)
            try:
                link.sock.sendall(data)
            except OSError:  # the server closed it, or stopped reading (a body it waits for)
                self.tally.tcp_send_failures += 1
                self._drop(slot)
                return
            link.left -= 1
            if link.left <= 0:
                self._retire(slot)
            return
        sock = self.udp[seq % len(self.udp)]
        data, base, names = self.mutator.message(
            seq, "udp", int(sock.getsockname()[1]), self.server.udp[1]
        )
        if len(data) > UDP_LIMIT:
            data = data[:UDP_LIMIT]
            names = [*names, "cut-to-datagram"]
        self._count(seq, base, names, 1)
        try:
            sock.sendto(data, self.server.udp)
        except OSError:
            self.tally.udp_send_errors += 1

    def _count(self, seq: int, base: str, names: list[str], transport: int) -> None:
        self.tally.transport[seq] = transport
        self.unmutated[seq] = not names
        self.tally.sent_at[seq] = time.time()
        self.bases[base] += 1
        self.base_of[seq] = self.base_index[base]
        for name in names:
            self.mutations[name] += 1

    def _link(self, slot: int) -> TcpLink | None:
        link = self.links[slot]
        if link is None or link.closed:
            try:
                link = TcpLink(self.server.tcp, self.args.tcp_uses)
            except OSError:
                self.tally.tcp_send_failures += 1
                return None
            self.tally.tcp_connections += 1
            self.links[slot] = link
            self.selector.register(link.sock, selectors.EVENT_READ, link)
        return link

    def _retire(self, slot: int) -> None:
        link = self.links[slot]
        if link is not None:
            link.retired_at = time.monotonic()
            self.retired.append(link)
        self.links[slot] = None

    def _drop(self, slot: int) -> None:
        link = self.links[slot]
        if link is not None:
            self._close(link)
        self.links[slot] = None

    def _close(self, link: TcpLink) -> None:
        if not link.closed:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(link.sock)
            link.sock.close()
            link.closed = True

    # -- receiving --------------------------------------------------------------------------------
    def pump(self, timeout: float) -> None:
        for key, _ in self.selector.select(max(timeout, 0.0)):
            if key.data is None:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                for _ in range(64):
                    try:
                        data = sock.recv(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:  # an ICMP error for something we sent
                        break
                    self.tally.answer(data)
            else:
                self._stream(key.data)
        now = time.monotonic()
        for link in list(self.retired):
            if link.closed or (link.retired_at is not None and now - link.retired_at > 2.0):
                self._close(link)
                self.retired.remove(link)

    def _stream(self, link: TcpLink) -> None:
        try:
            chunk = link.sock.recv(262144)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.tally.tcp_closed_by_server += 1
            self._close(link)
            return
        link.buffer += chunk
        *blocks, link.buffer = link.buffer.split(b"\r\n\r\n")
        for block in blocks:
            start = block.find(b"SIP/2.0 ")
            if start >= 0:
                self.tally.answer(block[start:])

    def run(self) -> float:
        """Send every message at the rate asked for; the seconds it took."""
        started = time.monotonic()
        rate = self.args.rate
        for seq in range(self.tally.count):
            due = started + seq / rate
            while (now := time.monotonic()) < due:
                self.pump(due - now)
            if now - started > self.args.max_seconds:
                break
            self.send(seq)
            if seq % 64 == 0:
                self.pump(0)
        elapsed = time.monotonic() - started
        end = time.monotonic() + self.args.window
        while (now := time.monotonic()) < end:
            self.pump(end - now)
        return elapsed


def options_answered(address: tuple[str, int], transport: str, timeout: float = 2.0) -> float | None:
    """Seconds a clean OPTIONS took to get its 200 (over UDP or TCP), or ``None``."""
    branch = f"probe{time.monotonic_ns()}"
    started = time.monotonic()
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(timeout)
            sock.sendto(_options(branch, "UDP", int(sock.getsockname()[1])), address)
            try:
                while True:
                    if sock.recv(65535).startswith(b"SIP/2.0 200"):
                        return time.monotonic() - started
            except OSError:
                return None
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(_options(branch, "TCP", int(sock.getsockname()[1])))
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65535)
                if not chunk:
                    return None
                data += chunk
            return time.monotonic() - started if data.startswith(b"SIP/2.0 200") else None
    except OSError:
        return None


def _options(branch: str, transport: str, port: int) -> bytes:
    return (
        f"OPTIONS sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{port};branch=z9hG4bK{branch};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:probe@{DOMAIN}>;tag={branch}\r\nTo: <sip:{DOMAIN}>\r\n"
        f"Call-ID: {branch}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


# --------------------------------------------------------------------------------------------------
# Reading the server's log
# --------------------------------------------------------------------------------------------------
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (\w+) ")


def read_log(text: str) -> dict[str, Any]:
    """ERROR lines, tracebacks (and the exceptions they end with), levels, size."""
    lines = text.splitlines()
    levels: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    exceptions: Counter[str] = Counter()
    error_times: list[float] = []
    tracebacks = 0
    in_traceback = False
    for line in lines:
        stamp = _STAMP.match(line)
        if stamp:
            in_traceback = False
            levels[stamp.group(3)] += 1
            if stamp.group(3) in ("ERROR", "CRITICAL"):
                message = line[stamp.end() :]
                errors[re.sub(r"\d+", "N", message)[:160]] += 1
                moment = time.mktime(time.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S"))
                error_times.append(moment + int(stamp.group(2)) / 1000)
        elif line.startswith("Traceback"):
            tracebacks += 1
            in_traceback = True
        elif (
            in_traceback
            and line
            and not line.startswith((" ", "\t"))
            and "During handling" not in line
            and "direct cause" not in line
        ):
            exceptions[line[:200]] += 1
            in_traceback = False
    return {
        "lines": len(lines),
        "octets": len(text.encode()),
        "levels": dict(levels),
        "error_lines": levels["ERROR"] + levels["CRITICAL"],
        "tracebacks": tracebacks,
        "errors": errors.most_common(10),
        "exceptions": exceptions.most_common(10),
        "error_times": error_times,
        "stopped": next((line for line in lines if "imscore stopped" in line), None),
    }


def find_culprits(
    server: Server, fuzzer: Fuzzer, error_times: list[float], limit: int
) -> list[dict[str, Any]]:
    """Replay the messages sent shortly before each ERROR line one at a time; those after which a
    new ERROR line appears are the culprits (with that line and the exception it ends with)."""
    tally = fuzzer.tally
    sent = sum(1 for kind in tally.transport if kind)
    times = tally.sent_at[:sent]  # in sending order, so sorted
    candidates: dict[int, None] = {}
    for moment in sorted(set(round(t, 3) for t in error_times)):
        # the latest first: the message just before the error line is the likeliest
        for seq in range(
            bisect.bisect_right(times, moment + 0.05) - 1,
            bisect.bisect_left(times, moment - 1.0) - 1,
            -1,
        ):
            candidates.setdefault(seq)
        if len(candidates) >= limit:
            break
    culprits: list[dict[str, Any]] = []
    seen_length = len(server.log())
    for seq in list(candidates)[:limit]:
        over_tcp = tally.transport[seq] == 2
        if over_tcp:
            try:
                with socket.create_connection(server.tcp, timeout=1.0) as sock:
                    data, base, names = fuzzer.mutator.message(
                        seq, "tcp", int(sock.getsockname()[1]), server.udp[1]
                    )
                    with contextlib.suppress(OSError):
                        sock.sendall(data)
                        time.sleep(0.05)
            except OSError:
                continue
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                data, base, names = fuzzer.mutator.message(
                    seq, "udp", int(sock.getsockname()[1]), server.udp[1]
                )
                with contextlib.suppress(OSError):
                    sock.sendto(data[:UDP_LIMIT], server.udp)
                time.sleep(0.05)
        text = server.log()
        new, seen_length = text[seen_length:], len(text)
        found = read_log(new)
        if found["error_lines"] or found["tracebacks"]:
            culprits.append(
                {
                    "seq": seq,
                    "transport": "tcp" if over_tcp else "udp",
                    "base": base,
                    "mutations": names,
                    "message": data[:600].decode("latin-1"),
                    "errors": [text for text, _ in found["errors"]],
                    "exceptions": [text for text, _ in found["exceptions"]],
                }
            )
    return culprits


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="imscore-fuzz-"))
    server = Server(folder, args.log_level)
    choices = bases(Path(args.corpus))
    mutator = Mutator(args.seed, choices)
    tally = Tally(args.messages)
    server.start()
    fuzzer: Fuzzer | None = None
    try:
        time.sleep(0.3)
        rss_before = rss_kib(server.pid)
        fuzzer = Fuzzer(server, mutator, tally, args)
        elapsed = fuzzer.run()
        sent = sum(1 for t in tally.transport if t)
        udp_probe = options_answered(server.udp, "udp")
        tcp_probe = options_answered(server.tcp, "tcp")
        # let every transaction timer run out (Timer J/H = 64*T1, then T4; the probes' too),
        # absorbing retransmissions and late answers
        settle = 64 * TIMERS["t1"] + TIMERS["t4"] + 1.5
        end = time.monotonic() + settle
        while (now := time.monotonic()) < end:
            fuzzer.pump(end - now)
        rss_after = rss_kib(server.pid)
        log = read_log(server.log())
        culprits = []
        if (log["error_lines"] or log["tracebacks"]) and args.culprits > 0:
            culprits = find_culprits(server, fuzzer, log["error_times"], args.culprits)
    finally:
        if fuzzer is not None:
            fuzzer.close()
        server.stop()
    held = server.held()
    log = read_log(server.log())
    classes: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    unanswered: Counter[str] = Counter()
    unanswered_unmutated: Counter[str] = Counter()
    by_transport: dict[str, Counter[str]] = {"udp": Counter(), "tcp": Counter()}
    for seq in range(tally.count):
        kind = tally.transport[seq]
        if not kind:
            continue
        status = tally.final[seq]
        name = (
            f"{status // 100}xx" if status else ("1xx only" if tally.provisional[seq] else "no answer")
        )
        classes[name] += 1
        if status:
            statuses[status] += 1
        by_transport["udp" if kind == 1 else "tcp"][name] += 1
        if name == "no answer" and fuzzer is not None:
            unanswered[choices[fuzzer.base_of[seq]].name] += 1
            if fuzzer.unmutated[seq]:  # (over TCP, an earlier message may have broken the stream)
                where = "udp" if kind == 1 else "tcp"
                unanswered_unmutated[f"{where} {choices[fuzzer.base_of[seq]].name}"] += 1
    report: dict[str, Any] = {
        "command": " ".join(["python3", "bench/fuzz_bench.py", *sys.argv[1:]]),
        "seed": args.seed,
        "messages_asked": args.messages,
        "messages_sent": sent,
        "rate_asked": args.rate,
        "seconds_sending": round(elapsed, 1),
        "rate_sent": round(sent / elapsed, 1) if elapsed else 0.0,
        "answers": dict(sorted(classes.items())),
        "answers_by_transport": {k: dict(sorted(v.items())) for k, v in by_transport.items()},
        "answers_by_status": dict(statuses.most_common(20)),
        "answers_retransmitted": tally.retransmitted,
        "answers_unmatched": tally.unmatched,
        "requests_from_server": tally.requests_from_server,
        "unanswered_bases": unanswered.most_common(8),
        "unanswered_unmutated": unanswered_unmutated.most_common(20),
        "tcp": {
            "connections": tally.tcp_connections,
            "closed_by_server": tally.tcp_closed_by_server,
            "send_failures": tally.tcp_send_failures,
        },
        "bases": dict(fuzzer.bases.most_common()) if fuzzer else {},
        "mutations": dict(fuzzer.mutations.most_common()) if fuzzer else {},
        "error_lines": log["error_lines"],
        "tracebacks": log["tracebacks"],
        "errors": log["errors"],
        "exceptions": log["exceptions"],
        "culprits": culprits,
        "log": {"lines": log["lines"], "octets": log["octets"], "levels": log["levels"]},
        "stopped_line": log["stopped"],
        "held_at_stop": held,
        "stuck_transactions": None if held is None else held["transactions"] + held["fork_contexts"],
        "options_after": {
            "udp_seconds": None if udp_probe is None else round(udp_probe, 4),
            "tcp_seconds": None if tcp_probe is None else round(tcp_probe, 4),
        },
        "rss_kib": {"before": rss_before, "after": rss_after},
        "server_exit_status": server.exit_status,
    }
    if args.keep:
        report["folder"] = str(folder)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return report


def show(report: dict[str, Any]) -> str:
    lines = [
        f"imscore fuzz: {report['messages_sent']:,} of {report['messages_asked']:,} messages sent "
        f"in {report['seconds_sending']} s ({report['rate_sent']:,}/s), seed {report['seed']}",
        "  answers: " + ", ".join(f"{k} {v:,}" for k, v in report["answers"].items()),
    ]
    for transport, counted in report["answers_by_transport"].items():
        lines.append(f"    {transport}: " + ", ".join(f"{k} {v:,}" for k, v in counted.items()))
    by_status = report.get("answers_by_status", {})
    lines.append("    by status: " + ", ".join(f"{k} {v:,}" for k, v in by_status.items()))
    lines += [
        f"  answers retransmitted {report['answers_retransmitted']:,}, unmatched "
        f"{report['answers_unmatched']:,}; requests from the server {report['requests_from_server']}",
        "  unanswered most often: " + ", ".join(f"{k} {v:,}" for k, v in report["unanswered_bases"]),
        "  unanswered though unmutated: "
        + (", ".join(f"{k} {v:,}" for k, v in report["unanswered_unmutated"]) or "none"),
        f"  tcp: {report['tcp']['connections']:,} connections, {report['tcp']['closed_by_server']:,} "
        f"closed by the server, {report['tcp']['send_failures']:,} send failures",
        f"  ERROR lines {report['error_lines']}, tracebacks {report['tracebacks']} (goal 0)",
    ]
    for text, count in report["errors"]:
        lines.append(f"    {count:6,} x {text}")
    for text, count in report["exceptions"]:
        lines.append(f"    {count:6,} x {text}")
    for culprit in report["culprits"]:
        mutations = "+".join(culprit["mutations"]) or "unmutated"
        lines.append(
            f"  culprit #{culprit['seq']} ({culprit['transport']}, {culprit['base']}, {mutations}): "
            f"{culprit['exceptions'] or culprit['errors']}"
        )
        lines.append("    " + repr(culprit["message"][:400]))
    held = report["held_at_stop"]
    kept = ("transactions", "fork_contexts", "proxy_branches", "tasks")
    lines += [
        f"  held at stop (after the timers ran): {held if held is None else {k: held[k] for k in kept}}"
        f" -> stuck transactions {report['stuck_transactions']} (goal 0)",
        f"  OPTIONS after the run: udp {report['options_after']['udp_seconds']} s, tcp "
        f"{report['options_after']['tcp_seconds']} s",
        f"  server RSS {report['rss_kib']['before'] / 1024:.1f} MiB before, "
        f"{report['rss_kib']['after'] / 1024:.1f} MiB after; log {report['log']['lines']:,} lines, "
        f"{report['log']['octets'] / 1e6:.1f} MB ({report['log']['levels']})",
        f"  {report['stopped_line']}",
        f"  server exit status {report['server_exit_status']}",
    ]
    return "\n".join(lines)


def isolated(argv: list[str]) -> int:
    """Run this benchmark again inside a network namespace of its own (only a loopback)."""
    inner = [a for a in argv if a != "--isolate"]
    env = dict(os.environ, IMSCORE_FUZZ_INSIDE="1")
    command = [
        "unshare",
        "--net",
        "--",
        "sh",
        "-c",
        'ip link set lo up && exec "$@"',
        "sh",
        sys.executable,
        str(Path(__file__).resolve()),
        *inner,
    ]
    return subprocess.call(command, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="how many (default 1,000,000)")
    parser.add_argument("--rate", type=float, default=1500.0, help="messages a second (default 1500)")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="stop sending after this")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tcp-share", type=float, default=0.25, help="share sent over TCP (0.25)")
    parser.add_argument("--tcp-connections", type=int, default=4, help="TCP connections at once")
    parser.add_argument("--tcp-uses", type=int, default=10, help="messages per TCP connection")
    parser.add_argument("--window", type=float, default=2.0, help="seconds to wait for late answers")
    parser.add_argument("--culprits", type=int, default=400, help="messages replayed to find culprits")
    parser.add_argument("--corpus", default=str(CORPUS), help="the shared corpus folder")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--isolate", action="store_true", help="run in a network namespace (root)")
    parser.add_argument("--keep", action="store_true", help="keep the server's log and profile")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stop the server too
    if args.isolate and os.environ.get("IMSCORE_FUZZ_INSIDE") != "1":
        return isolated(sys.argv[1:] if argv is None else argv)
    report = run(args)
    print(json.dumps(report, indent=2) if args.json else show(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
