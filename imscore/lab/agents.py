"""Simulated user agents for lab runs: subscribers' devices and callers.

Agents are asyncio objects that speak SIP over a :class:`Port` (the in-process network in virtual
time, a loopback UDP socket in real time). They are deliberately simple user agents: no
retransmissions of their own (the lab network does not lose datagrams; the server's transactions
retransmit as they would), no media. What they saw is kept for the lab's result table.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from imscore.auth.aka import UeSim
from imscore.auth.digest import credentials
from imscore.auth.milenage import Milenage
from imscore.sip import AuthHeader, Request, Response, SipError, SipUri, parse_datagram
from imscore.sip.transaction import build_ack
from imscore.subscribers.model import AkaCredentials

from .scenario import Behaviour, CallerSpec, DeviceSpec

__all__ = ["CallOutcome", "Port", "SimCaller", "SimDevice", "Tokens"]

Address = tuple[str, int]


class Port(Protocol):
    """Where an agent sends from; the lab delivers what arrives to the agent's ``receive``."""

    local: Address

    def send(self, data: bytes, destination: Address) -> None: ...


class Tokens:
    """Tags, branches and Call-IDs from a counter: the same run gives the same tokens."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._count = itertools.count(1)

    def __call__(self, kind: str) -> str:
        return f"{self.prefix}{kind}{next(self._count)}"


def _host(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _via_target(request: Request | Response) -> Address:
    via = request.top_via
    return (via.received or via.host).strip("[]"), via.rport or via.port or 5060


@dataclass
class _Dialog:
    invite: Request
    timer: asyncio.TimerHandle | None = None
    answered: bool = False
    done: bool = False


class Agent:
    """What devices and callers share: a port, a name, tokens, and a log of what they saw."""

    def __init__(self, name: str, uri: str, port: Port, server: Address, tokens: Tokens) -> None:
        self.name = name
        self.uri = uri
        self.port = port
        self.server = server
        self.tokens = tokens
        self.cseq = itertools.count(1)
        self.seen: list[tuple[float, str]] = []  # (time, "INVITE" / "CANCEL" / "200" …)
        #: a journal shared by the lab's agents: (time, agent name, label) of every message received
        self.journal: list[tuple[float, str, str]] | None = None

    @property
    def contact(self) -> str:
        user = self.uri.split(":", 1)[1].split("@", 1)[0] if self.uri.startswith("sip") else self.name
        return f"sip:{user}@{_host(self.port.local)}"

    def via(self) -> str:
        return f"SIP/2.0/UDP {_host(self.port.local)};branch=z9hG4bK{self.tokens('b')};rport"

    def send(self, message: Request | Response, destination: Address | None = None) -> None:
        self.port.send(message.to_bytes(), destination or self.server)

    def respond(
        self, request: Request, status: int, extra: list[tuple[str, object]] | None = None
    ) -> None:
        headers = list(extra or [])
        if request.method == "INVITE" and 100 < status < 300:
            headers.append(("Contact", f"<{self.contact}>"))
            headers.extend(("Record-Route", v) for v in request.headers.get_all("Record-Route"))
        tag = None if status == 100 else f"{self.name}"
        self.send(request.make_response(status, None, headers, to_tag=tag), _via_target(request))

    def receive(self, data: bytes, source: Address) -> None:
        """A datagram arrived (called by the lab's network or socket)."""
        try:
            message = parse_datagram(data)
            if message is None:
                return
            message.check_framing_headers()  # the server's output: framing is enough here
        except SipError:
            return
        now = asyncio.get_running_loop().time()
        label = message.method if isinstance(message, Request) else str(message.status)
        self.seen.append((now, label))
        if self.journal is not None:
            self.journal.append((now, self.name, label))
        if isinstance(message, Request):
            self.on_request(message, source)
        else:
            self.on_response(message)

    def on_request(self, request: Request, source: Address) -> None:
        if request.method != "ACK":
            self.respond(request, 200 if request.method in ("OPTIONS", "NOTIFY", "BYE") else 481)

    def on_response(self, response: Response) -> None:
        pass


class SimDevice(Agent):
    """A subscriber's device: registers, de-registers, subscribes to reg, takes calls."""

    def __init__(
        self,
        spec: DeviceSpec,
        port: Port,
        server: Address,
        domain: str,
        tokens: Tokens,
        aka: AkaCredentials | None = None,
    ) -> None:
        super().__init__(spec.name, spec.impu, port, server, tokens)
        self.spec = spec
        #: the device's SIM when its subscriber has AKA credentials (its SQN a little behind)
        self.sim = (
            None
            if aka is None
            else UeSim(Milenage(aka.k, op=aka.op, opc=aka.opc), sqn_ms=max(0, aka.sqn - 32))
        )
        self.domain = domain
        self.behaviour: Behaviour = spec.on_call
        self.call_id = f"{tokens('reg')}@{spec.name}"
        self.online = True
        self._pending: dict[tuple[str, int], asyncio.Future[Response]] = {}
        self._dialogs: dict[str, _Dialog] = {}
        self.notifies = 0
        #: the calls this device places (``call: {from: DEVICE}``) share its address
        self.outgoing: SimCaller | None = None
        #: the last REGISTER's final reason phrase, and the algorithm of the challenge it answered
        #: (``"MD5"``, ``"AKAv1-MD5"``; ``""`` when it answered none)
        self.last_reason = ""
        self.last_algorithm = ""

    @property
    def contact(self) -> str:
        return f"sip:{self.spec.name}@{_host(self.port.local)}"

    async def _transact(self, request: Request, timeout: float = 40.0) -> Response:
        key = (request.call_id, request.cseq.seq)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        self.send(request)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(key, None)

    def _register_request(self, expires: int, authorization: str | None) -> Request:
        params = f';+sip.instance="{self.spec.instance}"' if self.spec.instance else ""
        if self.spec.reg_id is not None:
            params += f";reg-id={self.spec.reg_id}"
        supported = [tag for tag, on in (("gruu", self.spec.gruu), ("outbound", self.spec.reg_id)) if on]
        headers: list[tuple[str, object]] = [
            ("Via", self.via()),
            ("Max-Forwards", 70),
            ("From", f"<{self.spec.impu}>;tag={self.name}r"),
            ("To", f"<{self.spec.impu}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{next(self.cseq)} REGISTER"),
            ("Contact", f"<{self.contact}>{params}"),
            ("Expires", expires),
            ("User-Agent", self.spec.user_agent or f"imscore-lab {self.name}"),
        ]
        if supported:
            headers.append(("Supported", ", ".join(supported)))
        if authorization:
            headers.append(("Authorization", authorization))
        return Request("REGISTER", f"sip:{self.domain}", headers)

    def _empty_authorization(self) -> str:
        # TS 24.229 §5.1.1.2: the initial REGISTER names the IMPI in an Authorization header
        return (
            f'Digest username="{self.spec.impi}", realm="{self.domain}", nonce="", '
            f'uri="sip:{self.domain}", response=""'
        )

    def _credentials(self, offered: AuthHeader) -> str | None:
        """Credentials for a challenge: Digest with the password, or Digest-AKA with the SIM."""
        algorithm = (offered.get("algorithm") or "MD5").upper()
        uri = f"sip:{self.domain}"
        if algorithm.startswith("AKAV") and self.sim is not None:
            version = 2 if algorithm.startswith("AKAV2") else 1
            answer = self.sim.respond(offered.get("nonce") or "")
            value = credentials(
                offered,
                username=self.spec.impi,
                password=answer.password(version),
                method="REGISTER",
                uri=uri,
                cnonce=self.tokens("c"),
                algorithm_aliases={offered.get("algorithm") or "": "MD5"},
            )
            return value if answer.auts is None else f'{value}, auts="{answer.auts_param}"'
        if self.spec.password is None or algorithm.startswith("AKAV"):
            return None
        return credentials(
            offered,
            username=self.spec.impi,
            password=self.spec.password,
            method="REGISTER",
            uri=uri,
            cnonce=self.tokens("c"),
        )

    async def register(self, expires: int | None = None) -> int:
        """REGISTER, answering Digest or Digest-AKA challenges (an AKA re-synchronisation too);
        returns the final status (0 when nothing answered)."""
        wanted = self.spec.expires if expires is None else expires
        self.last_reason = self.last_algorithm = ""
        try:
            first = self._register_request(wanted, self._empty_authorization())
            response = await self._transact(first)
            for _ in range(3):  # a challenge, perhaps a re-synchronisation and a new challenge
                if response.status != 401 or not response.www_authenticate:
                    break
                offered = response.www_authenticate[0]
                answer = self._credentials(offered)
                if answer is None:
                    break
                self.last_algorithm = offered.get("algorithm") or "MD5"
                response = await self._transact(self._register_request(wanted, answer))
        except TimeoutError:
            self.last_reason = "no answer"
            return 0
        self.last_reason = response.reason
        return response.status

    async def subscribe(self, expires: int) -> int:
        headers: list[tuple[str, object]] = [
            ("Via", self.via()),
            ("Max-Forwards", 70),
            ("From", f"<{self.spec.impu}>;tag={self.name}s"),
            ("To", f"<{self.spec.impu}>"),
            ("Call-ID", f"{self.tokens('sub')}@{self.name}"),
            ("CSeq", f"{next(self.cseq)} SUBSCRIBE"),
            ("Contact", f"<{self.contact}>"),
            ("Event", "reg"),
            ("Accept", "application/reginfo+xml"),
            ("Expires", expires),
        ]
        try:
            response = await self._transact(Request("SUBSCRIBE", self.spec.impu, headers))
        except TimeoutError:
            return 0
        return response.status

    def on_response(self, response: Response) -> None:
        if self.outgoing is not None and response.cseq.method == "INVITE":
            self.outgoing.on_response(response)
            return
        future = self._pending.get((response.call_id, response.cseq.seq))
        if future is not None and not future.done() and response.status >= 200:
            future.set_result(response)

    def on_request(self, request: Request, source: Address) -> None:
        method = request.method
        if method == "INVITE":
            self._invite(request)
        elif method == "CANCEL":
            self.respond(request, 200)
            dialog = self._dialogs.get(request.call_id)
            if dialog is not None and not dialog.answered and not dialog.done:
                dialog.done = True
                if dialog.timer is not None:
                    dialog.timer.cancel()
                self.respond(dialog.invite, 487)
        elif method == "ACK":
            pass
        elif method == "NOTIFY":
            self.notifies += 1
            self.respond(request, 200)
        else:
            super().on_request(request, source)

    def _invite(self, invite: Request) -> None:
        if invite.call_id in self._dialogs:
            return  # a retransmission
        dialog = _Dialog(invite)
        self._dialogs[invite.call_id] = dialog
        kind = self.behaviour.kind
        if kind == "busy":
            dialog.done = True
            self.respond(invite, 486)
        elif kind == "decline":
            dialog.done = True
            self.respond(invite, self.behaviour.status)
        else:
            self.respond(invite, 180)
            if kind == "answer":
                loop = asyncio.get_running_loop()
                dialog.timer = loop.call_later(self.behaviour.after, self._answer, dialog)

    def _answer(self, dialog: _Dialog) -> None:
        if dialog.done:
            return
        dialog.answered = dialog.done = True
        self.respond(dialog.invite, 200)


@dataclass
class CallOutcome:
    """What the caller saw of one call."""

    status: int = 0
    reason: str = ""
    answered_by: str | None = None
    provisional: list[int] = field(default_factory=list)
    final_at: float | None = None
    all_2xx: int = 0


class SimCaller(Agent):
    """Places calls through the server and hangs up."""

    def __init__(self, spec: CallerSpec, port: Port, server: Address, tokens: Tokens) -> None:
        super().__init__(spec.name, spec.uri, port, server, tokens)
        self._calls: dict[str, tuple[Request, CallOutcome, asyncio.Future[None]]] = {}
        self._ok: dict[str, Response] = {}

    async def call(
        self,
        target: str,
        hangup_after: float,
        timeout: float,
        device_of_tag: Callable[[str | None], str | None],
    ) -> CallOutcome:
        loop = asyncio.get_running_loop()
        call_id = f"{self.tokens('call')}@{self.name}"
        invite = Request(
            "INVITE",
            target,
            [
                ("Via", self.via()),
                ("Max-Forwards", 70),
                ("From", f"<{self.uri}>;tag={self.name}{self.tokens('t')}"),
                ("To", f"<{target}>"),
                ("Call-ID", call_id),
                ("CSeq", f"{next(self.cseq)} INVITE"),
                ("Contact", f"<{self.contact}>"),
            ],
        )
        outcome = CallOutcome()
        finished: asyncio.Future[None] = loop.create_future()
        self._calls[call_id] = (invite, outcome, finished)
        started = loop.time()
        self.send(invite)
        try:
            await asyncio.wait_for(asyncio.shield(finished), timeout)
        except TimeoutError:
            outcome.reason = "no final response"
            return outcome
        outcome.final_at = (outcome.final_at or loop.time()) - started
        outcome.answered_by = device_of_tag(outcome.answered_by)
        if 200 <= outcome.status < 300:
            await asyncio.sleep(hangup_after)
            await self._bye(invite)
        return outcome

    async def _bye(self, invite: Request) -> None:
        ok = self._ok.get(invite.call_id)
        if ok is None:
            return
        contact = ok.contacts[0].uri if ok.contacts else invite.uri
        bye = self._in_dialog("BYE", invite, ok, str(contact))
        self.send(*bye)
        await asyncio.sleep(0.05)

    def _in_dialog(
        self, method: str, invite: Request, ok: Response, target: str
    ) -> tuple[Request, Address]:
        routes = [str(r.uri) for r in reversed(ok.record_route)]
        headers: list[tuple[str, object]] = [("Via", self.via()), ("Max-Forwards", 70)]
        headers.extend(("Route", f"<{r}>") for r in routes)
        cseq = invite.cseq.seq if method == "ACK" else next(self.cseq)
        headers += [
            ("From", invite.headers.get("From") or ""),
            ("To", ok.headers.get("To") or ""),
            ("Call-ID", invite.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        request = Request(method, target, headers)
        if routes:
            destination = self.server
        else:
            try:
                uri = SipUri.parse(target)
                destination = (uri.host.strip("[]"), uri.port or 5060)
            except SipError:
                destination = self.server
        return request, destination

    def on_response(self, response: Response) -> None:
        entry = self._calls.get(response.call_id)
        if entry is None:
            return
        invite, outcome, finished = entry
        if response.cseq.method != "INVITE":
            return
        loop = asyncio.get_running_loop()
        status = response.status
        if status < 200:
            outcome.provisional.append(status)
            return
        if status < 300:
            outcome.all_2xx += 1
            ack, destination = self._in_dialog(
                "ACK", invite, response, str(response.contacts[0].uri) if response.contacts else ""
            )
            self.send(ack, destination)
            if finished.done():
                return
            self._ok[invite.call_id] = response
        else:
            self.send(build_ack(invite, response))
            if finished.done():
                return
        outcome.status, outcome.reason = status, response.reason
        outcome.answered_by = response.to.tag if status < 300 else None
        outcome.final_at = loop.time()
        finished.set_result(None)
