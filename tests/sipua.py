"""Tiny UDP user agents for the proxy tests: phones that register and take calls, and a caller.

Each agent owns one loopback UDP socket and is driven step by step by the test (no threads): it
sends what the test says and returns what arrives, so a test reads like a ladder diagram.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Sequence

from imscore.auth.digest import credentials
from imscore.sip import Request, Response, SipError, StreamFramer, parse_datagram

DOMAIN = "ims.example.test"


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


class Agent:
    """One socket on 127.0.0.1 (UDP, or a TCP connection to the server) and the messages it
    received but nobody asked for yet."""

    def __init__(self, server: tuple[str, int], name: str = "agent", transport: str = "udp") -> None:
        self.server = server
        self.name = name
        self.transport = transport
        if transport == "tcp":  # one connection to the server, kept open: every message uses it
            self.sock = socket.create_connection(server, timeout=5)
            self.framer: StreamFramer | None = StreamFramer()
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
            self.framer = None
        self.host, self.port = self.sock.getsockname()
        self.inbox: list[Request | Response] = []
        self.seen: list[Request | Response] = []
        #: whether a message that fails validate() is an error (else it is counted and skipped)
        self.strict = True
        self.garbage = 0
        self._ready: list[Request | Response] = []

    def via_sent_by(self) -> str:
        """``SIP/2.0/UDP host:port`` for this agent's transport and address."""
        return f"SIP/2.0/{self.transport.upper()} {self.host}:{self.port}"

    def send(self, message: Request | Response, to: tuple[str, int] | None = None) -> None:
        if self.framer is not None:
            self.sock.sendall(message.to_bytes())
        else:
            self.sock.sendto(message.to_bytes(), to or self.server)

    def _receive(self, deadline: float) -> Request | Response | None:
        while not self._ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                return None
            if self.framer is None:
                parsed = parse_datagram(data)
                assert parsed is not None, data
                self._ready.append(parsed)
                continue
            assert data, f"{self.name}: the server closed the connection"
            for event in self.framer.feed(data):
                if isinstance(event, Request | Response):
                    self._ready.append(event)
        message = self._ready.pop(0)
        try:
            message.validate()
        except SipError:
            if self.strict:
                raise
            self.garbage += 1  # e.g. a fuzzed request a proxy forwarded: not ours to judge
            return self._receive(deadline)
        self.seen.append(message)
        return message

    def expect(self, kind: str, timeout: float = 5.0) -> Request | Response:
        """The next message matching ``kind``: a method name (``"INVITE"``) or a status (``"180"``,
        ``"2xx"`` for any 2xx, ``"final"`` for >= 200). Others are kept in the inbox."""
        deadline = time.monotonic() + timeout
        while True:
            for i, message in enumerate(self.inbox):
                if _matches(message, kind):
                    return self.inbox.pop(i)
            message = self._receive(deadline)
            if message is None:
                got = ", ".join(_label(m) for m in self.inbox) or "nothing"
                raise AssertionError(f"{self.name}: no {kind} within {timeout}s (inbox: {got})")
            self.inbox.append(message)

    def quiet(self, kind: str, wait: float) -> bool:
        """Whether no message matching ``kind`` arrives within ``wait`` seconds."""
        try:
            self.expect(kind, wait)
        except AssertionError:
            return True
        return False

    from_uri = "sip:anonymous@anonymous.invalid"
    tag = "agent"

    def request(
        self,
        method: str,
        uri: str,
        *,
        call_id: str | None = None,
        cseq: int = 1,
        headers: Sequence[tuple[str, object]] = (),
        to_tag: str | None = None,
        branch: str | None = None,
    ) -> Request:
        to = f"<{uri}>" + (f";tag={to_tag}" if to_tag else "")
        fields: list[tuple[str, object]] = [
            ("Via", f"{self.via_sent_by()};branch={branch or new_branch()};rport"),
            ("Max-Forwards", 70),
            ("From", f"<{self.from_uri}>;tag={self.tag}"),
            ("To", to),
            ("Call-ID", call_id or f"{secrets.token_hex(8)}@caller"),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", f"<sip:{self.name}@{self.host}:{self.port}>"),
            *headers,
        ]
        return Request(method, uri, fields)

    def invite(self, uri: str, **kwargs: object) -> Request:
        request = self.request("INVITE", uri, **kwargs)  # type: ignore[arg-type]
        self.send(request)
        return request

    def cancel(self, invite: Request) -> Request:
        from imscore.sip.transaction import build_cancel

        cancel = build_cancel(invite)
        self.send(cancel)
        return cancel

    def close(self) -> None:
        self.sock.close()


def _label(message: Request | Response) -> str:
    return message.method if isinstance(message, Request) else str(message.status)


def _matches(message: Request | Response, kind: str) -> bool:
    if isinstance(message, Request):
        return message.method == kind
    if kind == "final":
        return message.status >= 200
    if kind == "2xx":
        return 200 <= message.status < 300
    return kind.isdigit() and message.status == int(kind)


class Phone(Agent):
    """A device of a subscriber: registers its contact, answers what the test tells it to."""

    def __init__(
        self,
        server: tuple[str, int],
        name: str,
        impi: str = "alice@ims.example.test",
        password: str = "alice-secret",
        impu: str = "sip:alice@ims.example.test",
        transport: str = "udp",
    ) -> None:
        super().__init__(server, name, transport)
        self.impi, self.password, self.impu = impi, password, impu
        self.from_uri = impu
        self.call_id = f"{secrets.token_hex(6)}@{name}"
        self.cseq = 0
        self.tag = secrets.token_hex(4)
        self.instance = f"<urn:uuid:{secrets.token_hex(4)}-0000-4000-8000-{secrets.token_hex(6)}>"

    @property
    def contact_uri(self) -> str:
        suffix = ";transport=tcp" if self.transport == "tcp" else ""
        return f"sip:{self.name}@{self.host}:{self.port}{suffix}"

    def _register_request(
        self, authorization: str | None, expires: int, q: float | None, contact: str | None
    ) -> Request:
        self.cseq += 1
        params = f';+sip.instance="{self.instance}"' + ("" if q is None else f";q={q}")
        headers: list[tuple[str, object]] = [
            (
                "Via",
                f"{self.via_sent_by()};branch={new_branch()};rport",
            ),
            ("Max-Forwards", 70),
            ("From", f"<{self.impu}>;tag={self.tag}"),
            ("To", f"<{self.impu}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} REGISTER"),
            ("Contact", f"<{contact or self.contact_uri}>{params}"),
            ("Expires", expires),
            ("User-Agent", f"test-phone {self.name}"),
        ]
        if authorization:
            headers.append(("Authorization", authorization))
        return Request("REGISTER", f"sip:{DOMAIN}", headers)

    def register(
        self, expires: int = 600, q: float | None = None, contact: str | None = None
    ) -> Response:
        """REGISTER with Digest (401, then credentials); returns the final response."""
        self.send(self._register_request(None, expires, q, contact))
        first = self.expect("final")
        assert isinstance(first, Response)
        if first.status != 401:
            return first
        (offered,) = first.www_authenticate
        answer = credentials(
            offered, username=self.impi, password=self.password, method="REGISTER", uri=f"sip:{DOMAIN}"
        )
        self.send(self._register_request(answer, expires, q, contact))
        final = self.expect("final")
        assert isinstance(final, Response)
        return final

    def reply(
        self,
        request: Request,
        status: int,
        *,
        to_tag: str | None = None,
        headers: Sequence[tuple[str, object]] = (),
    ) -> Response:
        """Answer ``request`` (our To tag, and a Contact on 2xx/1xx to INVITE)."""
        extra = list(headers)
        if request.method == "INVITE" and status < 300 and status > 100:
            extra.append(("Contact", f"<{self.contact_uri}>"))
            # §12.1.1: a UAS copies the Record-Route of a dialog-creating request into its answer
            extra.extend(("Record-Route", value) for value in request.headers.get_all("Record-Route"))
        tag = None if status == 100 else (to_tag or f"{self.name}-tag")
        response = request.make_response(status, None, extra, to_tag=tag)
        self.send(response, _via_target(request))
        return response


def _via_target(request: Request) -> tuple[str, int]:
    """Where a response goes (§18.2.2 with RFC 3581): received/rport of the top Via, else sent-by."""
    via = request.top_via
    host = via.received or via.host
    port = via.rport or via.port or 5060
    return host.strip("[]"), port


class Caller(Agent):
    """A UAC placing requests through the proxy."""

    def __init__(
        self, server: tuple[str, int], name: str = "caller", from_uri: str = "sip:carol@example.org"
    ) -> None:
        super().__init__(server, name)
        self.from_uri = from_uri
        self.tag = secrets.token_hex(4)
