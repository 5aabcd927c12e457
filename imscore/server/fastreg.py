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

A REGISTER that passed these is this path's; what it decides here rather than hand to the server's
deferred-request path (the registrar's general handling) is checked next, again before any state
is touched. A REGISTER without credentials (half of every registration's datagrams) is challenged
here when its To names a subscriber of the memory subscriber store that would be challenged with
Digest, no plugin but the builtin implements ``ims_identity_resolve`` or
``ims_auth_select_scheme`` (:meth:`~imscore.plugin.manager.ImsPluginManager.only_builtin`, asked
per datagram: hook calls are not traced either), and the subscriber store holds no credentials of
its own (no Cx HSS). Its server transaction is made by the
transaction layer (:meth:`~imscore.sip.transaction.TransactionLayer.receive_new`) from a request built
from the checked lines (the same header fields the parser would give, the Via and CSeq as the
parser reads them), filed in the retransmission cache, challenged by the registrar's own
:class:`~imscore.registrar.authenticator.Authenticator`, and answered through the core
(:meth:`~imscore.server.core.ServerCore.respond`: counters, Timer J) and the server's sending path,
the 401's octets written straight from the request's lines as
:meth:`~imscore.sip.message.Request.make_response` would write them (the same deterministic To tag
as the registrar's). A REGISTER with credentials skips the transport's checks and the core's
sorting, and, when the subscriber store is the memory one without an HSS and only the builtin
implements ``ims_identity_resolve``, the registrar's preamble too: the subscriber of the Digest
username and the implicit set its unbarred To resolves to (the builtin's answer) are found here.
When it registers one plain contact (``<sip:user@IPv4:port>``) on a binding store of this process
(memory or SQLite: their calls never wait), it is registered here, without the deferred path's
coroutines: the credentials checked by the authenticator, the expiry, the binding, the CSeq order,
the ``ims_binding_policy_apply`` hook (asked as the registrar asks it, whoever implements it), the
merge, the store's save, the reg-event and third-party news all by the registrar's own pieces in
the order ``Registrar._bind`` takes them, and the answer (the 200 OK's header fields from
:meth:`~imscore.registrar.register.Registrar.ok_headers`, a refusal's status and reason) written
from the request's lines; the deferred path's guards (a header that does not parse, a store
error, a failure) answer as there. Otherwise the deferred-request path runs
:meth:`~imscore.registrar.register.Registrar.register_known` (the same steps, with the store's
calls awaited) instead of ``register``; every other checked REGISTER goes to the deferred-request
path as it is.

Equality with the general path is what ``tests/test_fastreg_differential.py`` shows: the same corpus
(the torture messages that are REGISTERs, the benchmark's, devices registering again, seeded
mutations of them) through a server with this path and one without, over the memory and the SQLite
store, the responses compared byte for byte with only nonces and To tags masked, then the binding
stores, counters, transport statistics, transactions and Timer J. See ``docs/benchmarks.rst``
("The REGISTER specialisation") for what it saves.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from imscore.registrar import FlowInfo
from imscore.registrar.authenticator import AuthOutcome, AuthResult
from imscore.registrar.identity import phone_number
from imscore.registrar.model import StoredBinding, new_flow
from imscore.registrar.register import to_tag
from imscore.registrar.store import MemoryBindingStore, SqliteBindingStore
from imscore.sip import Address, Contact, CSeq, Request, Response, SipError, SipUri
from imscore.sip.grammar import CALL_ID_RE, MAX_UINT32
from imscore.sip.headers import Via
from imscore.sip.message import Headers
from imscore.sip.params import Params
from imscore.sip.transaction import PLAIN_SECTION_KEY, RequestReceived, ServerTransaction
from imscore.store import StoreError
from imscore.subscribers import ImplicitSet, MemorySubscriberStore, Subscriber, SubscriberDirectory
from imscore.transport import Flow

from .outcomes import registrar_outcome, source_of

if TYPE_CHECKING:
    from imscore.registrar.register import RegisterOutcome

    from .runtime import Decide, Server

__all__ = ["DISABLE_ENV", "TAKEN", "FastRegister", "fast_register_for"]

#: the environment variable that switches the path off when set to ``0`` (to compare the two)
DISABLE_ENV: Final = "IMSCORE_FASTREG"

#: the header names a datagram may carry (each once, spelled so) and their keys
TAKEN: Final[dict[str, str]] = {
    "Via": "via",
    "Max-Forwards": "max-forwards",
    "From": "from",
    "To": "to",
    "Call-ID": "call-id",
    "CSeq": "cseq",
    "Contact": "contact",
    "Expires": "expires",
    "Authorization": "authorization",
    "User-Agent": "user-agent",
    "Allow": "allow",
    "Content-Length": "content-length",
}
#: the ones a datagram must carry
_REQUIRED: Final = frozenset({"via", "from", "to", "call-id", "cseq", "content-length"})
#: hooks whose builtin answer the challenge path takes for granted
_HOOKS: Final = ("ims_identity_resolve", "ims_auth_select_scheme")
#: the hook whose builtin answer a REGISTER with credentials takes for granted
_RESOLVE: Final = ("ims_identity_resolve",)
#: the authentication schemes there are
_SCHEMES: Final = frozenset({"aka", "digest"})
#: binding stores whose calls never wait (they run on this thread)
_STORES: Final = (MemoryBindingStore, SqliteBindingStore)

#: the server's logger: the guards' lines are the deferred path's
log = logging.getLogger("imscore.server")

#: the start line of a datagram this path may take
_START: Final = re.compile(r"REGISTER sip:[A-Za-z0-9.-]{1,253} SIP/2\.0")
#: the octets a start line or header line may hold: visible ASCII and the space
_PRINTABLE: Final = bytes(range(0x20, 0x7F))
#: header lines a datagram may carry at most, and octets a value may have
_MAX_LINES: Final = 40
_MAX_VALUE: Final = 2002
_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4: Final = _OCTET + r"(?:\." + _OCTET + r"){3}"
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_TOP: Final = r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST: Final = r"(?:(?:" + _LABEL + r"\.)*" + _TOP + r"|" + _IPV4 + r")"
_TOKEN: Final = r"[A-Za-z0-9.!%*_+`'~-]{1,128}"
_VIA: Final = re.compile(
    r"SIP/2\.0/UDP (" + _IPV4 + r"):([1-9][0-9]{0,4});branch=(z9hG4bK[A-Za-z0-9.!%*_+`'~-]{1,120})"
)
_USER: Final = r"[A-Za-z0-9._-]{1,64}"
_FROM: Final = re.compile(r"<sip:" + _USER + r"@" + _HOST + r">;tag=" + _TOKEN)
_TAG: Final = re.compile(_TOKEN)
_TO: Final = re.compile(r"<sip:(" + _USER + r")@(" + _HOST + r")>")
_CSEQ: Final = re.compile(r"([1-9][0-9]{0,8}) REGISTER")
_MAX_FORWARDS: Final = re.compile(r"25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]")
#: a Contact this path registers itself: one plain SIP URI of an IPv4 address and port
_CONTACT: Final = re.compile(r"<sip:(" + _USER + r")@(" + _IPV4 + r"):([1-9][0-9]{0,4})>")
#: the names of the header fields the registrar adds to its answers (tokens, each)
_REGISTRAR_NAMES: Final = frozenset(
    {"Contact", "Date", "Flow-Timer", "Min-Expires", "P-Associated-URI", "Path", "Require",
     "Service-Route", "Supported", "WWW-Authenticate"}
)  # fmt: skip
#: where the Request-URI's host starts in the start line
_HOST_AT: Final = len("REGISTER sip:")


class _Checked:
    """What the octet checks found in one datagram: its start line and header section as received,
    its header fields as the parser splits them (keys, and name, value and line of each), the
    values by key, and the Request-URI host, the Via's sent-by address and port, branch, Call-ID,
    CSeq number, and the To URI (its text, user and host)."""

    __slots__ = (
        "authorized", "branch", "call_id", "cseq", "fields", "host", "items", "keys", "section",
        "start", "to", "to_host", "to_key", "to_user", "via_host", "via_port",
    )  # fmt: skip

    def __init__(
        self,
        start: bytes,
        section: bytes,
        keys: list[str],
        items: list[tuple[str, str, str | None]],
        fields: dict[str, str],
        host: str,
        via_host: str,
        via_port: int,
        branch: str,
        cseq: int,
        to_user: str,
        to_host: str,
    ) -> None:
        self.start = start
        self.section = section
        self.keys = keys
        self.items = items
        self.fields = fields
        self.host = host
        self.via_host = via_host
        self.via_port = via_port
        self.branch = branch
        self.call_id = fields["call-id"]
        self.cseq = cseq
        self.to_user = to_user
        self.to_host = to_host
        self.to = f"sip:{to_user}@{to_host}"
        # its address-of-record key (SipUri.aor): the user has no escapes and the host no
        # trailing dot or IPv6 reference in what _TO matches, so only the host's case changes
        self.to_key = f"sip:{to_user}@{to_host.lower()}"
        self.authorized = "authorization" in fields


def check(data: bytes, source: str, domains: frozenset[str] | set[str]) -> _Checked | None:
    """The checks of the octets (see the module's notes), for a datagram from ``source`` (an IPv4
    address as the socket gives it); ``None`` when one fails."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or body:
        return None
    # visible ASCII and spaces only, but for the line ends (each CRLF leaves its two octets)
    if len(head.translate(None, _PRINTABLE)) != 2 * head.count(b"\r\n"):
        return None
    lines = head.decode("ascii").split("\r\n")
    if not 1 < len(lines) <= _MAX_LINES + 1:
        return None
    start = lines[0]
    if _START.fullmatch(start) is None:
        return None
    host = start[_HOST_AT:-8]  # before " SIP/2.0"
    if host.lower().rstrip(".") not in domains:
        return None
    keys: list[str] = []
    items: list[tuple[str, str, str | None]] = []
    fields: dict[str, str] = {}
    taken = TAKEN.get
    for line in lines[1:]:
        # ``Name: value``: a name of TAKEN, one space, a value of 1 to _MAX_VALUE octets that
        # neither starts nor ends with a space (a line without ": " has an empty value)
        name, _, value = line.partition(": ")
        key = taken(name)
        if key is None or key in fields or not value or len(value) > _MAX_VALUE:
            return None
        if value[0] == " " or value[-1] == " ":
            return None
        fields[key] = value
        keys.append(key)
        items.append((name, value, line))
    if not _REQUIRED.issubset(fields) or fields["content-length"] != "0":
        return None
    via = _VIA.fullmatch(fields["via"])
    if via is None:
        return None
    via_host, via_port, branch = via.groups()
    port = int(via_port)
    if via_host != source or port > 65535:
        return None
    to_value, from_value = fields["to"], fields["from"]
    to = _TO.fullmatch(to_value)
    # a From of the To's URI (a registration by its own user) is a checked To, ";tag=" and a tag
    if from_value.startswith(to_value) and from_value.startswith(";tag=", len(to_value)):
        if to is None or _TAG.fullmatch(from_value, len(to_value) + 5) is None:
            return None
    elif _FROM.fullmatch(from_value) is None:
        return None
    cseq = _CSEQ.fullmatch(fields["cseq"])
    if to is None or cseq is None or CALL_ID_RE.fullmatch(fields["call-id"]) is None:
        return None
    forwards = fields.get("max-forwards")
    if forwards is not None and _MAX_FORWARDS.fullmatch(forwards) is None:
        return None
    cut = len(start) + 2
    return _Checked(
        head[: cut - 2],
        head[cut:] + b"\r\n",
        keys,
        items,
        fields,
        host,
        via_host,
        port,
        branch,
        int(cseq.group(1)),
        to.group(1),
        to.group(2),
    )


def build_request(checked: _Checked) -> Request:
    """The request the parser would give for the checked datagram: the same header fields (name,
    value and line as received, split as the parser splits them) and start line, with what the
    transport's framing checks would have parsed (top Via, CSeq, Call-ID, Max-Forwards,
    Content-Length) already in its cache, as those checks parse them. The top Via and the CSeq are
    made from what :func:`check` matched rather than parsed again: ``SIP/2.0/UDP <IPv4>:<port>``
    with one parameter, ``branch`` (a token), reads as protocol ``SIP``, version ``2.0``, transport
    ``UDP``, that host and port and that one parameter, and ``<n> REGISTER`` as that number and
    method (``tests/test_fastreg_differential.py`` compares them with :func:`parse_via` and
    :func:`parse_cseq`)."""
    headers = Headers._from_parsed(checked.keys, checked.items, checked.section)
    fields = checked.fields
    cache = headers.cache
    cache["top_via"] = Via(
        "UDP", checked.via_host, checked.via_port, Params([("branch", checked.branch)])
    )
    cache["cseq"] = CSeq(checked.cseq, "REGISTER")
    cache["call-id"] = checked.call_id
    forwards = fields.get("max-forwards")
    cache["max-forwards"] = None if forwards is None else int(forwards)
    cache["content-length"] = 0
    return Request("REGISTER", f"sip:{checked.host}", headers, received_start=checked.start)


def checked_to(checked: _Checked) -> Address:
    """The To of the checked datagram as :attr:`Request.to` reads it, made from what :func:`check`
    matched: ``<sip:user@host>`` is an address without display name or parameters whose URI is
    that user and host, nothing else (``tests/test_fastreg_differential.py`` compares it with
    :func:`parse_address`)."""
    to = Address._lazy(checked.to, None, Params(), True)
    to.uri = SipUri(checked.to_host, checked.to_user)
    return to


def plain_contact(value: str) -> Contact | None:
    """The Contact ``value`` reads as when it is one plain SIP URI of an IPv4 address and port
    (``<sip:user@IPv4:port>``, no display name, no parameters), made from what the pattern matched
    (what :func:`parse_contact` gives for it: ``tests/test_fastreg_differential.py`` compares
    them); ``None`` when it is not one, or its port is above 65535 (which does not parse)."""
    found = _CONTACT.fullmatch(value)
    if found is None:
        return None
    user, host, digits = found.groups()
    port = int(digits)
    if port > 65535:
        return None
    contact = Contact._lazy(value[1:-1], None, Params(), True)
    contact.uri = SipUri(host, user, port=port)
    return contact


def response_section(
    checked: _Checked, headers: Sequence[tuple[str, object]]
) -> tuple[bytes, bool]:
    """The header section of the registrar's answer to the checked REGISTER, as
    :meth:`~imscore.sip.message.Request.make_response` writes it with the registrar's To tag and
    the registrar's own header fields: Via, From, To (with the tag), Call-ID and CSeq as received,
    in that order, then ``headers`` and ``Content-Length: 0``; and whether it is a plain section
    (every line a token, a colon and a value without CR or LF): the lines of the request are (the
    checks say so), the To tag is hex digits, and ``headers`` add one line each when their names
    are among the registrar's and no value holds a CR or LF."""
    fields = checked.fields
    tag = to_tag(checked.branch, checked.call_id, checked.cseq)
    extra = "".join([f"{name}: {value}\r\n" for name, value in headers])
    text = (
        f"Via: {fields['via']}\r\nFrom: {fields['from']}\r\nTo: {fields['to']};tag={tag}\r\n"
        f"Call-ID: {fields['call-id']}\r\nCSeq: {fields['cseq']}\r\n{extra}Content-Length: 0\r\n"
    )
    lines = len(headers)
    plain = extra.count("\r") == lines and extra.count("\n") == lines
    if plain:
        for name, _ in headers:
            if name not in _REGISTRAR_NAMES:
                plain = False
                break
    return text.encode("utf-8", "surrogateescape"), plain


def answer(
    checked: _Checked,
    request: Request,
    status: int,
    reason: str | None,
    headers: Sequence[tuple[str, object]] = (),
) -> Response:
    """The registrar's answer (``Registrar._reply``) as a :class:`Response` holding its octets, as a
    sent response is kept, with the top Via, CSeq and Call-ID that the transaction layer and the
    transport read already parsed (copies of the request's, as ``make_response`` hands them over)."""
    section, plain = response_section(checked, headers)
    # received=True: the section ends with its Content-Length already (none is to be added)
    response = Response(status, reason, Headers._from_section(section), received=True)
    cache, asked = response.headers.cache, request.headers.cache
    if plain:  # (kept while no field changes: a change empties the cache)
        cache[PLAIN_SECTION_KEY] = True
    cache["content-length"] = 0
    cache["top_via"] = asked["top_via"].copy()
    cseq = asked["cseq"]
    cache["cseq"] = CSeq(cseq.seq, cseq.method)
    cache["call-id"] = checked.call_id
    return response


def resolved_set(subscriber: Subscriber, key: str) -> ImplicitSet | None:
    """The implicit set of ``subscriber`` a To URI of address-of-record key ``key`` resolves to,
    as the builtin ``ims_identity_resolve`` answers it for that subscriber and
    ``resolve_identity`` then takes it (the set of its first IMPU), or ``None`` when it answers
    nothing. The builtin finds the first set with a member of the To's address-of-record key; a
    subscriber's sets hold each key once, so that is the set
    :meth:`~imscore.subscribers.model.Subscriber.implicit_set_of_key` finds for the key, whose
    first IMPU is in that set again (``tests/test_fastreg_differential.py`` compares the two over
    the test subscribers)."""
    return subscriber.implicit_set_of_key(key)


class _Known:
    """What the registrar would find for a REGISTER with credentials before checking them (a
    plain class: one is made per REGISTER, and a dataclass's ``__init__`` runs interpreted)."""

    __slots__ = ("credentials", "implicit_set", "subscriber")

    def __init__(self, credentials: Any, subscriber: Subscriber, implicit_set: ImplicitSet) -> None:
        self.credentials = credentials
        self.subscriber = subscriber
        self.implicit_set = implicit_set


class _Binding:
    """What steps 5 and 6 would read for a REGISTER of one plain contact: its Contact, the set's
    AOR and live bindings, the registrar's ``now``, and the binding store (one whose calls never
    wait: the registrar's)."""

    __slots__ = ("aor", "contact", "now", "store", "stored")

    def __init__(
        self,
        contact: Contact,
        aor: str,
        stored: list[StoredBinding],
        now: float,
        store: MemoryBindingStore | SqliteBindingStore,
    ) -> None:
        self.contact = contact
        self.aor = aor
        self.stored = stored
        self.now = now
        self.store = store


class FastRegister:
    """The specialisation for one started server (see the module's notes); made by
    :func:`fast_register_for`.

    :param server: the started server.
    :param remember: files a datagram's request under its server transaction (the retransmission
        cache's ``remember``).
    :param deferred: starts the general handling of a deferred request (the server's REGISTER path,
        as for a request the core put in its ``waiting`` list), with what stands for
        ``Registrar.register`` if not that.
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
        #: REGISTERs challenged here; registered (or refused) here; handed to the deferred path
        #: after the checks, and of those the ones whose subscriber and set were found here
        self.challenged = 0
        self.bound = 0
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
        known: _Known | None = None
        binding: _Binding | None = None
        subscriber: Subscriber | None = None
        if checked.authorized:
            known = self._known(checked, request)
            if known is not None:
                binding = self._binding(checked, request, known)
        else:
            subscriber = self._challengeable(checked, request)
        server = self.server
        # the general path's work in its order (the transport's checks, the core's sorting and the
        # first emit of nothing are what is left out): the transaction layer's first
        # (its time is also when the registrar's work started, for the outcome's duration)
        started = server._now()
        outputs = self.layer.receive_new(request, flow, False, started)
        if outputs is None:
            return False  # it matches a live transaction: the general path says what that does
        if server.qualifier is not None:
            server.qualifier.seen(flow)
        created = outputs[0]
        assert len(outputs) == 1 and isinstance(created, RequestReceived)
        transaction = created.transaction
        self._remember(request, flow, lambda _: transaction)
        if binding is not None:
            assert known is not None
            self.bound += 1
            self._register(transaction, checked, request, flow, known, binding, started)
            return True
        if subscriber is None:
            self.handed += 1
            decide = None if known is None else self._decide(known)
            if decide is not None:
                self.known += 1
            self._deferred(transaction, request, flow, decide)
            return True
        result = self.authenticator.challenge_for(subscriber, server.clock(), request=request)
        response = self._refusal(checked, request, result)
        assert response is not None  # a Digest subscriber is challenged
        self._answer(transaction, request, response, flow, (), started)
        self.challenged += 1
        return True

    def _answer(
        self,
        transaction: ServerTransaction[Flow],
        request: Request,
        response: Response,
        flow: Flow,
        notes: tuple[tuple[Request, FlowInfo], ...],
        started: float,
    ) -> None:
        """Send the registrar's answer as the deferred path does: through the core, then the
        reg-event NOTIFYs, then the outcome."""
        server = self.server
        if not transaction.terminated:
            server._emit(server.core.respond(transaction, response, server._now()))
        # kept for Timer J as its octets only, as a slimmed one is (with the mark of a plain
        # section, which the transaction layer reads when it slims it)
        cache = response.headers.cache
        plain = cache.get(PLAIN_SECTION_KEY)
        cache.clear()
        if plain is True:
            cache[PLAIN_SECTION_KEY] = True
        if notes:
            server.notify(notes)
        outcomes = server.outcomes
        if outcomes.active:
            source = source_of(flow.transport, flow.remote)
            now = server._now()
            outcomes.finished(registrar_outcome(request, response, source, now - started), now)

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
        if only is None:
            return None
        for name in hooks:
            if not only(name):
                return None
        return store.directory

    def _known(self, checked: _Checked, request: Request) -> _Known | None:
        """For a REGISTER with credentials: what ``Registrar.register`` would find before checking
        them (the subscriber of the Digest username, the implicit set the To resolves to), or
        ``None`` when this path is not sure of it. Only parses the request (its own)."""
        directory = self._directory(_RESOLVE)
        if directory is None:
            return None
        try:
            credentials = next((c for c in request.authorization if c.is_digest), None)
        except SipError:
            return None
        cache = request.headers.cache
        to = cache.get("to")
        if to is None:
            to = cache["to"] = checked_to(checked)
        to_uri = to.uri
        if credentials is None or not credentials.get("response"):
            return None
        username = credentials.get("username")
        if not username or phone_number(to_uri) is not None:
            return None
        subscriber = directory.by_impi(username)
        # (with nothing barred no URI is; the checked To has a key: user@host, no IPv6 to read)
        if subscriber is None or (subscriber.barred and subscriber.is_barred(to_uri)):
            return None
        implicit_set = resolved_set(subscriber, checked.to_key)
        if implicit_set is None:
            return None
        return _Known(credentials, subscriber, implicit_set)

    def _decide(self, known: _Known) -> Decide:
        """``Registrar.register`` with what was found here (``Registrar.register_known``)."""
        register_known = self.registrar.register_known

        def decide(request: Request, flow: FlowInfo, now: float) -> Coroutine[Any, Any, RegisterOutcome]:
            return register_known(
                request, known.credentials, known.subscriber, known.implicit_set, flow, now
            )

        return decide

    def _binding(self, checked: _Checked, request: Request, known: _Known) -> _Binding | None:
        """For a REGISTER with credentials of a known subscriber: what steps 5 and 6 would read,
        when it registers one plain contact (``<sip:user@IPv4:port>``, no parameters) on a store
        of this process (memory, SQLite) that answered at once; else ``None``. Reads the store."""
        registrar = self.registrar
        store = registrar.bindings
        if type(store) not in _STORES or self.server.store is not store:
            return None
        fields = checked.fields
        value = fields.get("contact")
        contact = None if value is None else plain_contact(value)
        if contact is None:
            return None
        # what request.contacts and request.expires would read (the registrar reads both): the one
        # Contact, and the Expires value (its text has no white space: the checks say so) as
        # delta-seconds clamped to 2**32-1 (parse_uint's reading); a value that is not digits
        # would not parse
        expires = fields.get("expires")
        if expires is not None and not expires.isdigit():
            return None
        cache = request.headers.cache
        cache["contact"] = [contact]
        cache["Expires"] = None if expires is None else min(int(expires), MAX_UINT32)
        # (a Contact without +sip.instance and reg-id does not ask for outbound: it never lacks it)
        aor = known.implicit_set.aor
        now = self.server.clock()
        direct = cast("MemoryBindingStore | SqliteBindingStore", store)  # (its type says so)
        try:
            loaded = direct.load_now(aor)  # what store.load(aor) gives, without its coroutine
        except StoreError:
            return None
        return _Binding(contact, aor, [b for b in loaded if not b.expired(now)], now, direct)

    def _register(
        self,
        transaction: ServerTransaction[Flow],
        checked: _Checked,
        request: Request,
        flow: Flow,
        known: _Known,
        binding: _Binding,
        started: float,
    ) -> None:
        """The deferred path's handling of the REGISTER, and the registrar's, for one plain
        contact: check the credentials, steps 6 and 7, store, answer; with the same guards
        (a header that does not parse: its status; the store failing: 503; anything else: 500).
        ``started``: the loop's time when it arrived."""
        server = self.server
        # FlowInfo(flow.transport, flow.remote, ...), with the remote host interned as the memory
        # store keeps it (so its copy need not make another FlowInfo), built without __init__
        host, port = flow.remote
        info = new_flow(flow.transport, (sys.intern(host), port), flow.local, flow.connection)
        notes: tuple[tuple[Request, FlowInfo], ...] = ()
        try:
            try:
                response, notes = self._store(checked, request, info, known, binding)
            except SipError as error:  # Registrar.register's guard
                response = answer(checked, request, error.status, error.phrase)
        except StoreError as exc:  # the server's guard (Server._handle_deferred)
            log.warning("%s from %s: %s", request.method, flow.remote, exc)
            retry = ("Retry-After", server.core.retry_after)
            response = request.make_response(503, "Store unavailable", [retry], to_tag="e503")
        except Exception:
            log.exception("%s from %s failed", request.method, flow.remote)
            response = request.make_response(500, "Registrar error", to_tag="e500")
        self._answer(transaction, request, response, flow, notes, started)

    def _store(
        self,
        checked: _Checked,
        request: Request,
        flow: FlowInfo,
        known: _Known,
        binding: _Binding,
    ) -> tuple[Response, tuple[tuple[Request, FlowInfo], ...]]:
        """``Registrar._known`` for one plain contact on a store that does not wait: its answer
        and the NOTIFYs, made with the registrar's own pieces in the order ``_bind`` takes."""
        registrar = self.registrar
        subscriber, implicit_set = known.subscriber, known.implicit_set
        now, aor, stored, contact = binding.now, binding.aor, binding.stored, binding.contact
        result = self.authenticator.check(request, known.credentials, subscriber, now)
        refused = self._refusal(checked, request, result)
        if refused is not None:
            return refused, ()
        expires = registrar._expires(request, contact)
        least = registrar.profile.registrar.min_expires
        if 0 < expires < least:
            return answer(checked, request, 423, None, [("Min-Expires", least)]), ()
        new = registrar._binding(request, contact, aor, subscriber, flow, expires, now)
        for old in stored:  # step 7
            if old.same_device(new) and old.call_id == new.call_id and new.cseq <= old.cseq:
                return answer(checked, request, 500, "Out-of-order REGISTER (CSeq)"), ()
        incoming = [new]
        decision = registrar._policy(stored, incoming, subscriber, now)
        if decision is None:
            return answer(checked, request, 500, "No binding policy answered"), ()
        if decision.reject_status is not None:
            reason = decision.reject_reason or None
            return answer(checked, request, decision.reject_status, reason), ()
        kept = registrar._merge(stored, incoming, decision)
        binding.store.save_now(aor, kept)  # registrar.bindings.save(aor, kept), at once
        registrar._changed(aor)
        notes = registrar.regevent.changed(aor, kept, now, deregistered=not kept)
        headers = registrar.ok_headers(request, subscriber, implicit_set, kept, now)
        ok = answer(checked, request, 200, None, headers)
        registrar._registration(request, ok, subscriber, implicit_set, flow, stored, kept, now)
        return ok, tuple(notes)

    def _challengeable(self, checked: _Checked, request: Request) -> Subscriber | None:
        """The subscriber a REGISTER without credentials is challenged for here (with Digest), or
        ``None`` when this path cannot be sure the general path would answer just that."""
        directory = self._directory(_HOOKS)
        if directory is None:
            return None
        subscriber = directory.by_key(checked.to_key)
        if subscriber is None or subscriber.password is None or subscriber.aka is not None:
            return None
        # Digest is then the one scheme the authenticator can choose (what the builtin
        # ims_auth_select_scheme names counts only when the subscriber has its credentials)
        schemes = self.authenticator.schemes
        return subscriber if "digest" in schemes and set(schemes) <= _SCHEMES else None

    @staticmethod
    def _refusal(checked: _Checked, request: Request, result: AuthResult) -> Response | None:
        """The registrar's answer to credentials it did not accept (``Registrar._refused``), or
        ``None`` when it accepted them."""
        if result.outcome is AuthOutcome.CHALLENGE:
            assert result.challenge is not None
            return answer(checked, request, 401, None, [("WWW-Authenticate", result.challenge)])
        if result.outcome is AuthOutcome.BAD_REQUEST:
            return answer(checked, request, 400, result.reason)
        if result.outcome in (AuthOutcome.FORBIDDEN, AuthOutcome.NEED_CREDENTIALS):
            return answer(checked, request, 403, result.reason)
        return None


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
