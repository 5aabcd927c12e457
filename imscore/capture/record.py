"""What a capture holds: one :class:`MessageRecord` per SIP message, in a :class:`Capture`.

A record is one whole SIP message as it was on the wire, with when it was seen (seconds, virtual or
wall clock), the transport and both socket addresses. The renderers (:mod:`imscore.capture.pcap`,
:mod:`imscore.capture.ladder`) only read records; they never parse more of a message than its
start line, ``CSeq``, ``Call-ID``, the ``To`` tag and a challenge's scheme, and never fail on a
message that does not parse.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["TRANSPORTS", "Capture", "CaptureError", "MessageRecord", "Summary", "summarize"]

#: the transports imscore knows (a plugin's transport may bring another name: any token is accepted)
TRANSPORTS: Final = ("udp", "tcp", "tls", "sctp")
_TRANSPORT_RE: Final = re.compile(r"^[a-z][a-z0-9-]{0,15}$")

Address = tuple[str, int]


class CaptureError(ValueError):
    """A record or a capture file is not what was expected; the message says what and where."""


@functools.lru_cache(maxsize=4096)
def normalize_host(host: str) -> str:
    """An IP literal in one spelling: brackets removed, IPv6 compressed (``[::0001]`` -> ``::1``).
    Cached: a capture sees the same few addresses over and over.

    :raises CaptureError: when ``host`` is not an IPv4 or IPv6 literal.
    """
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        raise CaptureError(f"{host!r} is not an IPv4 or IPv6 address literal") from None


def format_address(address: Address) -> str:
    """``host:port``, with the IPv6 host in brackets."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address(value: object, what: str) -> Address:
    if not (isinstance(value, tuple) and len(value) == 2):
        raise CaptureError(f"{what} must be an (ip, port) tuple, not {value!r}")
    host, port = value
    if not isinstance(host, str):
        raise CaptureError(f"{what}: host must be a string, not {host!r}")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise CaptureError(f"{what}: port must be an integer from 0 to 65535, not {port!r}")
    return (normalize_host(host), port)


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One SIP message as seen on the wire.

    :param time: when it was seen, in seconds (virtual time of the lab, or ``time.time()`` live).
    :param transport: ``"udp"``, ``"tcp"``, ``"tls"`` or ``"sctp"`` (or a plugin transport's name;
        stored in lower case).
    :param src: the sender's ``(ip, port)``; the IP an IPv4 or IPv6 literal (stored in one spelling:
        no brackets, IPv6 compressed).
    :param dst: the receiver's ``(ip, port)``.
    :param data: the whole message, octet for octet.
    :raises CaptureError: for a transport that is not a name, a host that is not an IP literal, a
        port out of range, a negative or non-finite time, or data that is not bytes.
    """

    time: float
    transport: str
    src: Address
    dst: Address
    data: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.time, int | float) or not 0 <= self.time < float("inf"):
            raise CaptureError(f"time must be a finite number of seconds >= 0, not {self.time!r}")
        transport = self.transport.lower() if isinstance(self.transport, str) else ""
        if not _TRANSPORT_RE.match(transport):
            raise CaptureError(
                f"bad transport {self.transport!r} (expected a name such as {', '.join(TRANSPORTS)})"
            )
        if not isinstance(self.data, bytes | bytearray | memoryview):
            raise CaptureError(f"data must be bytes, not {type(self.data).__name__}")
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "src", _address(self.src, "src"))
        object.__setattr__(self, "dst", _address(self.dst, "dst"))
        object.__setattr__(self, "data", bytes(self.data))


class Capture:
    """Records in the order they were added, with optional names for the participants.

    :param records: records to start with.
    :param names: a label per ``(ip, port)`` (``"alice-phone"``, ``"imscore"``); addresses given the
        same name are drawn as one participant in ladders.
    """

    def __init__(
        self, records: Iterable[MessageRecord] = (), names: Mapping[Address, str] | None = None
    ) -> None:
        self._records: list[MessageRecord] = []
        self.names: dict[Address, str] = {}
        for address, name in (names or {}).items():
            self.names[_address(address, f"names key {address!r}")] = name
        for record in records:
            self.add(record)

    def add(self, record: MessageRecord) -> None:
        """Append one record (usable as a transport tap: ``transports.tap = capture.add``)."""
        if not isinstance(record, MessageRecord):
            raise CaptureError(f"expected a MessageRecord, not {type(record).__name__}")
        self._records.append(record)

    def __iter__(self) -> Iterator[MessageRecord]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def name(self, address: Address) -> str:
        """The label of an address: its name if given, else ``ip:port``."""
        key = (address[0], address[1])
        return self.names.get(key) or format_address(key)

    def participants(self, order: Iterable[str] = ()) -> list[str]:
        """Participant labels: those in ``order`` first, then the others by first appearance."""
        seen = list(dict.fromkeys(order))
        for record in self._records:
            for address in (record.src, record.dst):
                label = self.name(address)
                if label not in seen:
                    seen.append(label)
        return seen


# --- short labels -------------------------------------------------------------------------------------
_STATUS_RE: Final = re.compile(r"^SIP/\d+\.\d+\s+(\d{3})\s*(.*)$", re.IGNORECASE)
_REQUEST_RE: Final = re.compile(
    r"^([A-Za-z][!%*_+`'~.A-Za-z0-9-]*)\s+(\S+)\s+SIP/\d+\.\d+$", re.IGNORECASE
)
_CSEQ_RE: Final = re.compile(rb"^(?:cseq)[ \t]*:[ \t]*\d+[ \t]+([^\s]+)", re.IGNORECASE | re.MULTILINE)
_USER_RE: Final = re.compile(r"^(?:sips?|tel):(?:([^@;?]+)@|(\+?[0-9().-]+))", re.IGNORECASE)
_CALL_ID_RE: Final = re.compile(
    rb"^(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE
)
_TO_RE: Final = re.compile(rb"^(?:to|t)[ \t]*:([^\r\n]*)", re.IGNORECASE | re.MULTILINE)
_TAG_RE: Final = re.compile(rb";[ \t]*tag[ \t]*=[ \t]*([^;, \t>]+)", re.IGNORECASE)
_CHALLENGE_RE: Final = re.compile(
    rb"^(?:www|proxy)-authenticate[ \t]*:[ \t]*([A-Za-z0-9._-]+)([^\r\n]*)", re.IGNORECASE | re.MULTILINE
)
_ALGORITHM_RE: Final = re.compile(rb"algorithm[ \t]*=[ \t]*\"?([^\",\s]+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Summary:
    """What a ladder says about one message.

    :ivar kind: ``"request"``, ``"response"`` or ``"unknown"`` (the start line did not parse).
    :ivar method: the request method, or the CSeq method of a response (``""`` if unknown).
    :ivar status: the status code of a response, else ``None``.
    :ivar label: the short label: ``"INVITE bob"``, ``"200 OK (REGISTER)"``; a 401 or 407 names
        the challenge's algorithm (``"401 Unauthorized (REGISTER, AKAv1-MD5)"``).
    :ivar short: a shorter one where space is tight: ``"200 (REGISTER)"`` for a response,
        ``"401 AKAv1-MD5"`` for a challenge.
    :ivar call_id: the ``Call-ID`` (``""`` if none).
    :ivar to_tag: a response's ``To`` tag (``""`` if none): forked responses differ by it.
    :ivar auth: a challenge's algorithm (``"MD5"``, ``"AKAv1-MD5"``), its scheme when not Digest
        (``"Basic"``), ``"Digest"`` when it names none; several joined by ``/``; else ``""``.
    """

    kind: str
    method: str
    status: int | None
    label: str
    short: str
    call_id: str = ""
    to_tag: str = ""
    auth: str = ""


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 2] + ".."


def _challenge_auth(data: bytes) -> str:
    """The algorithms (or non-Digest schemes) of a response's challenges, ``/``-joined."""
    found: list[str] = []
    for match in _CHALLENGE_RE.finditer(data):
        scheme = match.group(1).decode("ascii", "replace")
        algorithm = _ALGORITHM_RE.search(match.group(2))
        if scheme.lower() != "digest":
            name = scheme
        else:
            name = algorithm.group(1).decode("ascii", "replace") if algorithm else "Digest"
        if name not in found:
            found.append(_clip(name, 16))
    return "/".join(found)


def summarize(data: bytes) -> Summary:
    """The short label of a message (never raises, whatever the octets).

    A request: its method and the user part of its Request-URI (``INVITE bob``; a URI without user
    part gives the method alone). A response: status and reason, then the CSeq method in
    parentheses, with a challenge's algorithm (``401 Unauthorized (REGISTER, MD5)``). Anything
    else: ``?`` and the first octets.
    """
    start = data.lstrip(b"\r\n")
    end = start.find(b"\n")
    first = (start if end < 0 else start[:end]).decode("utf-8", "replace").strip()
    match = _CSEQ_RE.search(start)
    cseq = match.group(1).decode("ascii", "replace") if match else ""
    call_match = _CALL_ID_RE.search(start)
    call_id = call_match.group(1).decode("utf-8", "replace") if call_match else ""
    status = _STATUS_RE.match(first)
    if status is not None:
        code = int(status.group(1))
        reason = _clip(status.group(2).strip(), 24)
        auth = _challenge_auth(start) if code in (401, 407) else ""
        inside = ", ".join(part for part in (cseq, auth) if part)
        text = f"{code} {reason}".strip() + (f" ({inside})" if inside else "")
        short = f"{code} {auth}" if auth else f"{code}" + (f" ({cseq})" if cseq else "")
        to = _TO_RE.search(start)
        tag = _TAG_RE.search(to.group(1)) if to else None
        to_tag = tag.group(1).decode("utf-8", "replace") if tag else ""
        return Summary("response", cseq, code, text, short, call_id, to_tag, auth)
    request = _REQUEST_RE.match(first)
    if request is not None:
        method = request.group(1).upper()
        user = _USER_RE.match(request.group(2))
        part = "" if user is None else (user.group(1) or user.group(2) or "")
        label = f"{method} {_clip(part, 20)}".strip()
        return Summary("request", method, None, label, label, call_id)
    shown = "".join(c if c.isprintable() else "." for c in first[:20])
    label = f"? {shown}".strip()
    return Summary("unknown", cseq, None, label, label)
