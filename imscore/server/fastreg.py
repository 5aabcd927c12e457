"""The common REGISTER datagram, answered without the general path's layers (issue 13, decision 3).

Most of what a registrar reads under load is one shape of REGISTER: SIPp's ``register-auth.xml`` and
ordinary phones send a start line ``REGISTER sip:<domain> SIP/2.0``, one Via of their own address
with an RFC 3261 branch, From, To, Call-ID, CSeq, one Contact, Expires, ``Content-Length: 0`` and,
the second time, Digest credentials. The general path takes such a datagram through the transport
(framing, framing-header checks, Via stamping), the server core's event sorting, a coroutine per
request, the registrar's generic preamble (Request-URI, Require, credentials, identity look-up and
the ``ims_identity_resolve`` hook) and a response made from parsed headers and then slimmed back to
octets. :class:`FastRegister` is the specialisation for that shape. It is handed every datagram
the retransmission cache did not recognise (the transport's ``datagram_shortcut``) and answers
``False`` — *not mine*, before it touched any state — for everything it has not checked:

- the octets: the start line above for a domain served here; only the header names listed in
  :data:`TAKEN`, each spelled so, once, on one line (``Name: value``, no folding, no compact form,
  no white space around the value); a Via ``SIP/2.0/UDP <IPv4>:<port>;branch=z9hG4bK…`` whose
  address is the datagram's source (so §18.2.1 and RFC 3581 stamp nothing); From
  ``<sip:user@host>;tag=…`` and To ``<sip:user@host>``; a Call-ID of RFC 3261's form; CSeq
  ``<n> REGISTER``; Max-Forwards 0 to 255 if present; Content-Length 0 and no body. Whatever the
  general path would refuse, stamp or read differently does not pass these checks.
- the transaction: the request must create a new server transaction (a request matching a live one
  goes the general way).
- the decision, for a REGISTER without credentials (half of every registration's datagrams): the
  To names a subscriber of the memory subscriber store that would be challenged with Digest, no
  plugin but the builtin implements ``ims_identity_resolve`` or ``ims_auth_select_scheme``, hook
  calls are not traced, and the subscriber store holds no credentials of its own (no Cx HSS).

A REGISTER without credentials is then answered here: its server transaction is made by the
transaction layer (:meth:`~imscore.sip.transaction.TransactionLayer.receive`) from a request built
from the checked lines (the same header fields the parser would give, the Via and CSeq parsed by
the same functions), filed in the retransmission cache, challenged by the registrar's own
:class:`~imscore.registrar.authenticator.Authenticator`, and answered through the core
(:meth:`~imscore.server.core.ServerCore.respond`: counters, Timer J) and the server's sending path,
the 401's octets written straight from the request's lines as
:meth:`~imscore.sip.message.Request.make_response` would write them (the same deterministic To tag
as the registrar's). A REGISTER with credentials skips the transport's checks and the core's
sorting, and, when the subscriber store is the memory one without an HSS and only the builtin
implements ``ims_identity_resolve``, the registrar's preamble too: the subscriber of the Digest
username and the implicit set its unbarred To resolves to (the builtin's answer) are found here,
and the server's deferred-request path runs
:meth:`~imscore.registrar.register.Registrar.register_known` (check the credentials, then store and
answer, as :meth:`~imscore.registrar.register.Registrar.register` goes on) instead of
``register``. Every other checked REGISTER goes to the deferred-request path as it is.

Equality with the general path is what ``tests/test_fastreg_differential.py`` shows: the same corpus
(the torture messages that are REGISTERs, the benchmark's, seeded mutations of both) through a
server with this path and one without, the responses compared byte for byte with only nonces masked,
then the binding stores, counters and transaction state.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from imscore.plugin import builtin
from imscore.registrar import FlowInfo
from imscore.registrar.authenticator import AuthOutcome, AuthResult
from imscore.registrar.identity import phone_number
from imscore.sip import CSeq, Request, Response, SipError
from imscore.sip.grammar import CALL_ID_RE
from imscore.sip.headers import parse_cseq, parse_via
from imscore.sip.message import Headers
from imscore.sip.transaction import RequestReceived, ServerTransaction
from imscore.subscribers import MemorySubscriberStore, Subscriber, SubscriberDirectory
from imscore.transport import Flow

from .outcomes import registrar_outcome, source_of

if TYPE_CHECKING:
    from imscore.registrar.register import RegisterOutcome

    from .runtime import Decide, Server

__all__ = ["DISABLE_ENV", "TAKEN", "FastRegister", "fast_register_for"]

#: the environment variable that switches the path off when set to ``0`` (to compare the two)
DISABLE_ENV: Final = "IMSCORE_FASTREG"

#: the header names a datagram may carry (each once, spelled so) and their keys
TAKEN: Final[dict[bytes, str]] = {
    b"Via": "via",
    b"Max-Forwards": "max-forwards",
    b"From": "from",
    b"To": "to",
    b"Call-ID": "call-id",
    b"CSeq": "cseq",
    b"Contact": "contact",
    b"Expires": "expires",
    b"Authorization": "authorization",
    b"User-Agent": "user-agent",
    b"Allow": "allow",
    b"Content-Length": "content-length",
}
#: the ones a datagram must carry
_REQUIRED: Final = frozenset({"via", "from", "to", "call-id", "cseq", "content-length"})
#: hooks whose builtin answer the challenge path takes for granted
_HOOKS: Final = ("ims_identity_resolve", "ims_auth_select_scheme")
#: the hook whose builtin answer a REGISTER with credentials takes for granted
_RESOLVE: Final = ("ims_identity_resolve",)

_START: Final = re.compile(rb"REGISTER sip:([A-Za-z0-9.-]{1,253}) SIP/2\.0")
#: a header value: visible ASCII and spaces, none at either end
_VALUE: Final = re.compile(rb"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
_OCTET: Final = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4: Final = _OCTET + rb"(?:\." + _OCTET + rb"){3}"
_LABEL: Final = rb"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_TOP: Final = rb"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST: Final = rb"(?:(?:" + _LABEL + rb"\.)*" + _TOP + rb"|" + _IPV4 + rb")"
_TOKEN: Final = rb"[A-Za-z0-9.!%*_+`'~-]{1,128}"
_VIA: Final = re.compile(
    rb"SIP/2\.0/UDP (" + _IPV4 + rb"):([1-9][0-9]{0,4});branch=(z9hG4bK[A-Za-z0-9.!%*_+`'~-]{1,120})"
)
_USER: Final = rb"[A-Za-z0-9._-]{1,64}"
_FROM: Final = re.compile(rb"<sip:" + _USER + rb"@" + _HOST + rb">;tag=" + _TOKEN)
_TO: Final = re.compile(rb"<sip:(" + _USER + rb"@" + _HOST + rb")>")
_CSEQ: Final = re.compile(rb"([1-9][0-9]{0,8}) REGISTER")
_MAX_FORWARDS: Final = re.compile(rb"25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]")

_CRLF: Final = b"\r\n"


def to_tag(branch: str, call_id: str, cseq: int) -> str:
    """The registrar's To tag (the same for retransmissions of one request, different between
    requests): the first 12 hex digits of SHA-256 over ``branch|call-id|cseq``."""
    key = f"{branch}|{call_id}|{cseq}"
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]


class _Checked:
    """What the octet checks found in one datagram."""

    __slots__ = ("authorized", "branch", "call_id", "cseq", "fields", "host", "lines", "start", "to")

    def __init__(
        self,
        start: bytes,
        host: str,
        lines: list[bytes],
        fields: dict[str, bytes],
        branch: str,
        call_id: str,
        cseq: int,
        to: str,
    ) -> None:
        self.start = start
        self.host = host
        self.lines = lines
        self.fields = fields
        self.branch = branch
        self.call_id = call_id
        self.cseq = cseq
        self.to = to
        self.authorized = "authorization" in fields


def check(data: bytes, source: str, domains: frozenset[str] | set[str]) -> _Checked | None:
    """The checks of the octets (see the module's notes), for a datagram from ``source`` (an IPv4
    address as the socket gives it); ``None`` when one fails."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or body:
        return None
    lines = head.split(_CRLF)
    start = _START.fullmatch(lines[0])
    if start is None:
        return None
    host = start.group(1).decode("ascii")
    if host.lower().rstrip(".") not in domains:
        return None
    fields: dict[str, bytes] = {}
    taken = TAKEN.get
    value_ok = _VALUE.fullmatch
    for line in lines[1:]:
        name, sep, value = line.partition(b": ")
        key = taken(name)
        if key is None or key in fields or not sep or value_ok(value) is None:
            return None
        fields[key] = value
    if not _REQUIRED.issubset(fields) or fields["content-length"] != b"0":
        return None
    via = _VIA.fullmatch(fields["via"])
    if via is None or via.group(1).decode("ascii") != source or int(via.group(2)) > 65535:
        return None
    if _FROM.fullmatch(fields["from"]) is None:
        return None
    to = _TO.fullmatch(fields["to"])
    cseq = _CSEQ.fullmatch(fields["cseq"])
    if to is None or cseq is None:
        return None
    forwards = fields.get("max-forwards")
    if forwards is not None and _MAX_FORWARDS.fullmatch(forwards) is None:
        return None
    call_id = fields["call-id"].decode("ascii")
    if CALL_ID_RE.fullmatch(call_id) is None:
        return None
    return _Checked(
        lines[0],
        host,
        lines[1:],
        fields,
        via.group(3).decode("ascii"),
        call_id,
        int(cseq.group(1)),
        "sip:" + to.group(1).decode("ascii"),
    )


def build_request(checked: _Checked) -> Request:
    """The request the parser would give for the checked datagram: the same header fields (name,
    value and line as received, split as the parser splits them) and start line, with what the
    transport's framing checks would have parsed (top Via, CSeq, Call-ID, Max-Forwards,
    Content-Length) already in its cache, parsed by the same functions."""
    keys: list[str] = []
    items: list[tuple[str, str, str | None]] = []
    section: list[bytes] = []
    taken = TAKEN
    for line in checked.lines:
        name, _, value = line.partition(b": ")
        text = line.decode("ascii")
        keys.append(taken[name])
        items.append((name.decode("ascii"), value.decode("ascii"), text))
        section.append(line)
        section.append(_CRLF)
    headers = Headers._from_parsed(keys, items, b"".join(section))
    fields = checked.fields
    cache = headers.cache
    cache["top_via"] = parse_via(fields["via"].decode("ascii"))
    cache["cseq"] = parse_cseq(fields["cseq"].decode("ascii"))
    cache["call-id"] = checked.call_id
    forwards = fields.get("max-forwards")
    cache["max-forwards"] = None if forwards is None else int(forwards)
    cache["content-length"] = 0
    return Request("REGISTER", f"sip:{checked.host}", headers, received_start=checked.start)


def response_section(checked: _Checked, header: tuple[str, str] | None) -> bytes:
    """The header section of the registrar's answer to the checked REGISTER, as
    :meth:`~imscore.sip.message.Request.make_response` writes it with the registrar's To tag and at
    most one header of its own: Via, From, To (with the tag), Call-ID and CSeq as received, in that
    order, then the header and ``Content-Length: 0``."""
    fields = checked.fields
    tag = to_tag(checked.branch, checked.call_id, checked.cseq)
    parts = [
        b"Via: ", fields["via"], _CRLF,
        b"From: ", fields["from"], _CRLF,
        b"To: ", fields["to"], b";tag=", tag.encode("ascii"), _CRLF,
        b"Call-ID: ", fields["call-id"], _CRLF,
        b"CSeq: ", fields["cseq"], _CRLF,
    ]  # fmt: skip
    if header is not None:
        name, value = header
        parts += [name.encode("ascii"), b": ", value.encode("utf-8", "surrogateescape"), _CRLF]
    parts.append(b"Content-Length: 0\r\n")
    return b"".join(parts)


def answer(
    checked: _Checked,
    request: Request,
    status: int,
    reason: str | None,
    header: tuple[str, str] | None = None,
) -> Response:
    """The registrar's answer (``Registrar._reply``) as a :class:`Response` holding its octets, as a
    sent response is kept, with the top Via, CSeq and Call-ID that the transaction layer and the
    transport read already parsed (copies of the request's, as ``make_response`` hands them over)."""
    section = response_section(checked, header)
    # received=True: the section ends with its Content-Length already (none is to be added)
    response = Response(status, reason, Headers._from_section(section), received=True)
    cache, asked = response.headers.cache, request.headers.cache
    cache["content-length"] = 0
    cache["top_via"] = asked["top_via"].copy()
    cseq = asked["cseq"]
    cache["cseq"] = CSeq(cseq.seq, cseq.method)
    cache["call-id"] = checked.call_id
    return response


class FastRegister:
    """The specialisation for one started server (see the module's notes); made by
    :func:`fast_register_for`.

    :param server: the started server.
    :param remember: files a datagram's request under its server transaction (the retransmission
        cache's ``remember``).
    :param deferred: starts the general handling of a deferred request (the server's REGISTER path,
        as for a request the core put in its ``waiting`` list).
    """

    def __init__(
        self,
        server: Server,
        remember: Callable[[Request, Flow, Callable[[Request], object]], None],
        deferred: Callable[[ServerTransaction[Flow], Request, Flow, Decide | None], None],
    ) -> None:
        assert server.registrar is not None and server.transports is not None
        self.server = server
        self.registrar = server.registrar
        self.authenticator = server.registrar.authenticator
        self.layer = server.core.layer
        self.domains = frozenset(server.registrar.domains)
        self.max_size = server.transports.max_message_size
        self._remember = remember
        self._deferred = deferred
        #: REGISTERs challenged here, REGISTERs handed to the deferred path after the checks, and
        #: of those the ones whose subscriber and implicit set were found here
        self.challenged = 0
        self.handed = 0
        self.known = 0

    def take(self, data: bytes, flow: Flow) -> bool:
        """Handle one datagram if it is one this path knows; ``False``, with nothing done, if not."""
        if flow.transport != "udp" or len(data) > self.max_size or not data.startswith(b"REGISTER "):
            return False
        checked = check(data, flow.remote[0], self.domains)
        if checked is None:
            return False
        request = build_request(checked)
        decide: Decide | None = None
        subscriber: Subscriber | None = None
        if checked.authorized:
            decide = self._decider(request)
        else:
            subscriber = self._challengeable(checked, request)
        layer = self.layer
        if layer.find_server(request) is not None:
            return False  # it matches a live transaction: the general path says what that does
        # from here on, the general path's work in its order (the transport's checks, the core's
        # sorting and the first emit of nothing are what is left out)
        server = self.server
        if server.qualifier is not None:
            server.qualifier.seen(flow)
        outputs = layer.receive(request, flow, False, server.now())
        created = outputs[0]
        assert len(outputs) == 1 and isinstance(created, RequestReceived)
        transaction = created.transaction
        self._remember(request, flow, lambda _: transaction)
        if subscriber is None:
            self.handed += 1
            if decide is not None:
                self.known += 1
            self._deferred(transaction, request, flow, decide)
            return True
        started = server.now()
        result = self.authenticator.challenge_for(subscriber, server.clock(), request=request)
        response = self._response(checked, request, result)
        server.emit(server.core.respond(transaction, response, server.now()))
        response.headers.cache.clear()  # kept for Timer J as its octets only, as a slimmed one is
        self.challenged += 1
        outcomes = server.outcomes
        if outcomes.active:
            source = source_of(flow.transport, flow.remote)
            now = server.now()
            outcomes.finished(registrar_outcome(request, response, source, now - started), now)
        return True

    def _directory(self, hooks: tuple[str, ...]) -> SubscriberDirectory | None:
        """The subscribers, when they are a memory store's without credentials of an HSS and no
        plugin but the builtin implements ``hooks`` (so their answers are the builtin's)."""
        registrar = self.registrar
        store = registrar.subscribers
        if type(store) is not MemorySubscriberStore or registrar.remote is not None:
            return None
        if self.authenticator.remote_credentials:
            return None
        only = getattr(registrar.plugins, "only_builtin", None)
        if only is None or not all(only(name) for name in hooks):
            return None
        return store.directory

    def _decider(self, request: Request) -> Decide | None:
        """For a REGISTER with credentials: ``Registrar.register`` with what it would find before
        checking them (the subscriber of the Digest username, the implicit set the To resolves
        to) found here, or ``None`` when this path is not sure of it (the registrar decides it all
        then). Only parses the request (its own), touching no state."""
        directory = self._directory(_RESOLVE)
        if directory is None:
            return None
        try:
            credentials = next((c for c in request.authorization if c.is_digest), None)
            to_uri = request.to.uri
        except SipError:
            return None
        if credentials is None or not credentials.get("response"):
            return None
        username = credentials.get("username")
        if not username or phone_number(to_uri) is not None:
            return None
        subscriber = directory.by_impi(username)
        if subscriber is None or subscriber.is_barred(to_uri):
            return None
        # the builtin ims_identity_resolve, as resolve_identity asks it: the subscriber's set
        resolved = builtin.ims_identity_resolve(
            impu=str(to_uri), subscribers=[subscriber.hook_record()]
        )
        if resolved is None or resolved.subscriber.impi != subscriber.impi or not resolved.implicit_set:
            return None
        implicit_set = subscriber.implicit_set_of(resolved.implicit_set[0])
        if implicit_set is None:
            return None
        known = self.registrar.register_known

        def decide(request: Request, flow: FlowInfo, now: float) -> Coroutine[Any, Any, RegisterOutcome]:
            return known(request, credentials, subscriber, implicit_set, flow, now)

        return decide

    def _challengeable(self, checked: _Checked, request: Request) -> Subscriber | None:
        """The subscriber a REGISTER without credentials is challenged for here (with Digest), or
        ``None`` when this path cannot be sure the general path would answer just that."""
        directory = self._directory(_HOOKS)
        if directory is None:
            return None
        authenticator = self.authenticator
        subscriber = directory.by_impu(checked.to)
        if subscriber is None or authenticator.scheme_for(subscriber, request) != "digest":
            return None
        return subscriber

    @staticmethod
    def _response(checked: _Checked, request: Request, result: AuthResult) -> Response:
        """The registrar's answer for the authenticator's result (as ``Registrar._register``)."""
        if result.outcome is AuthOutcome.CHALLENGE:
            assert result.challenge is not None
            return answer(checked, request, 401, None, ("WWW-Authenticate", result.challenge))
        if result.outcome is AuthOutcome.BAD_REQUEST:
            return answer(checked, request, 400, result.reason)
        return answer(checked, request, 403, result.reason)


def fast_register_for(server: Server) -> FastRegister | None:
    """The specialisation for a started ``server``, or ``None`` where it is off: switched off
    (``server.fast_register``, or ``IMSCORE_FASTREG=0`` in the environment), or no registrar or
    transports. What each datagram needs besides is checked per datagram (see the module's notes).
    """
    if not server.fast_register or os.environ.get(DISABLE_ENV, "") == "0":
        return None
    if server.registrar is None or server.transports is None:
        return None
    return FastRegister(server, server.remember_datagram, server.defer)
