"""Typed header values: Via, addresses (From/To/Contact/Route/...), CSeq, auth and media types.

Each class parses one header value (one element of a comma list) and serialises back; parameters keep
what was written. The parse functions raise only :class:`~imscore.sip.errors.ParseError`.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Collection, Mapping
from typing import Final, TypeVar

from . import grammar as g
from .errors import ParseError
from .params import Params
from .uri import AbsoluteUri, SipUri, Uri, forget_recent_uris, parse_uri

__all__ = [
    "Address",
    "AuthHeader",
    "CSeq",
    "Contact",
    "MediaType",
    "Parameterised",
    "Via",
    "forget_recent_texts",
    "parse_address",
    "parse_auth",
    "parse_charging_vector",
    "parse_contact",
    "parse_cseq",
    "parse_media_type",
    "parse_parameterised",
    "parse_via",
]


class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=...;received=...;rport``."""

    __slots__ = ("host", "params", "port", "protocol", "transport", "version")

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: Params | None = None,
        *,
        protocol: str = "SIP",
        version: str = "2.0",
    ) -> None:
        self.protocol = protocol
        self.version = version
        self.transport = transport.upper()
        self.host = host
        self.port = port
        self.params = params if params is not None else Params()

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The ``rport`` value, or ``None`` when absent or empty (see :attr:`has_rport`)."""
        value = self.params.get("rport")
        return None if value is None else int(value)

    @property
    def has_rport(self) -> bool:
        return "rport" in self.params

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def ttl(self) -> int | None:
        value = self.params.get("ttl")
        return None if value is None else int(value)

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return (self.host, self.port)

    def sent_by_key(self) -> tuple[str, int]:
        """``sent-by`` for transaction matching: lower-case host and the port with its default."""
        port = self.port
        if port is None:
            port = 5061 if self.transport in ("TLS", "TLS-SCTP", "WSS") else 5060
        return (self.host.lower(), port)

    def copy(self) -> Via:
        return Via(
            self.transport,
            self.host,
            self.port,
            self.params.copy(),
            protocol=self.protocol,
            version=self.version,
        )

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.version}/{self.transport} {self.host}{port}{self.params}"

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"


def _check_ip(value: str, what: str) -> None:
    text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if not _is_ip_literal(text):
        if ":" in text:
            g.parse_ipv6(text)
            return
        raise ParseError(f"bad {what} address {value[:45]!r} in Via") from None


@functools.lru_cache(maxsize=4096)
def _is_ip_literal(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address (cached: peers' addresses repeat in every Via)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_ViaParts = tuple[str, str, int | None, tuple[tuple[str, str | None], ...], str, str]
#: Via values parsed lately, by their text: the parts their parse gave (a Via handed out is always
#: new). A proxy reads the same Via text in many messages: its own Via of a branch comes back in
#: every response to that branch and goes out again in the branch's CANCEL and ACK.
_VIAS_SEEN: Final[dict[str, _ViaParts]] = {}
#: addresses (From, To, Contact, Route, ...) parsed lately, by class and text: the parts their
#: parse yields, as tuples (an address handed out is always new, its parameters a new list)
_AddressParts = tuple[str, str | None, tuple[tuple[str, str | None], ...], bool]
_ADDRESSES_SEEN: Final[dict[tuple[type, str], _AddressParts]] = {}
#: entries each of those keeps at most (emptied when full: the texts of live calls come back)
SEEN_MAX: Final = 2048


def forget_recent_texts() -> None:
    """Empty the memories of texts parsed lately (URIs, Vias, addresses).

    For a server once a burst of traffic is over (:mod:`imscore.server.memtrim`): the entries a
    flood left are scattered over the memory the flood took, and would keep the allocator from
    giving it back; the texts of the calls that go on are parsed again and remembered anew.
    """
    _VIAS_SEEN.clear()
    _ADDRESSES_SEEN.clear()
    forget_recent_uris()


def parse_via(value: str) -> Via:
    """Parse one Via value.

    Every call returns a new :class:`Via` the caller may change; a text parsed lately is rebuilt
    from the parts its first parse gave (errors are not kept: a bad text is parsed, and refused,
    anew).
    """
    seen = _VIAS_SEEN.get(value)
    if seen is not None:
        transport, host, port, items, protocol, version = seen
        return Via(transport, host, port, Params(items), protocol=protocol, version=version)
    via = _parse_via(value)
    if len(_VIAS_SEEN) >= SEEN_MAX:
        _VIAS_SEEN.clear()
    _VIAS_SEEN[value] = (
        via.transport, via.host, via.port, tuple(via.params.items()), via.protocol, via.version
    )
    return via


def _parse_via(value: str) -> Via:
    """:func:`parse_via` without its memory of texts seen before."""
    m = g.VIA_RE.match(value)
    if m is None:
        raise ParseError(f"bad Via: {value[:60]!r}")
    protocol, version, transport, sent_host, sent_port = m.groups()
    host = g.check_host(sent_host)
    port = g.check_port(sent_port) if sent_port is not None else None
    items, _ = g.parse_header_params(value, m.end(), "Via")
    params = Params(items)
    for name, pvalue in items:
        lname = name.lower()
        if lname == "branch":
            if not pvalue or pvalue.startswith('"'):
                raise ParseError("Via branch without a value")
        elif lname == "received":
            if pvalue is None:
                raise ParseError("Via received without a value")
            _check_ip(pvalue, "received")
        elif lname == "rport":
            if pvalue is not None:
                if not pvalue.isdigit():
                    raise ParseError(f"bad Via rport {pvalue[:20]!r}")
                g.check_port(pvalue)
        elif lname == "ttl":
            if pvalue is None or not pvalue.isdigit() or int(pvalue) > 255:
                raise ParseError("bad Via ttl")
        elif lname == "maddr" and (pvalue is None or not g.HOST_RE.fullmatch(pvalue)):
            raise ParseError("bad Via maddr")
    return Via(transport, host, port, params, protocol=protocol, version=version)


A = TypeVar("A", bound="Address")
#: the URI an address parsed lazily holds until its text is read (never shown: ``_uri`` is reset)
_UNREAD: Final = AbsoluteUri("unread", "address")


class Address:
    """A ``name-addr`` or ``addr-spec`` with header parameters (From, To, Route, Path, ...).

    ``display`` is the display name as written (quoted or a run of tokens), or ``None``. A parsed
    address parses its URI when :attr:`uri` is first read (From and To are matched on their tags
    far more often than on their URIs); :meth:`check` forces it.
    """

    __slots__ = ("_uri", "_uri_text", "bracketed", "display", "params")

    def __init__(
        self,
        uri: Uri | str,
        display: str | None = None,
        params: Params | None = None,
        *,
        bracketed: bool = True,
    ) -> None:
        self._uri: Uri | None = parse_uri(uri) if isinstance(uri, str) else uri
        self._uri_text = ""
        self.display = display
        self.params = params if params is not None else Params()
        self.bracketed = bracketed

    @classmethod
    def _lazy(cls: type[A], uri_text: str, display: str | None, params: Params, bracketed: bool) -> A:
        address = cls(_UNREAD, display, params, bracketed=bracketed)
        address._uri = None
        address._uri_text = uri_text
        return address

    @classmethod
    def parse(cls, value: str) -> Address:
        return parse_address(value, "address", cls).check()

    @property
    def uri(self) -> Uri:
        uri = self._uri
        if uri is None:
            uri = self._uri = parse_uri(self._uri_text)
        return uri

    @uri.setter
    def uri(self, value: Uri) -> None:
        self._uri = value

    def check(self: A) -> A:
        """Parse the URI now (raising :class:`ParseError` if it is bad); returns the address."""
        self.uri  # noqa: B018
        return self

    @property
    def display_name(self) -> str | None:
        """The display name without quotes and escapes."""
        return None if self.display is None else g.unquote(self.display)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def sip_uri(self) -> SipUri | None:
        return self.uri if isinstance(self.uri, SipUri) else None

    def copy(self: A) -> A:
        if self._uri is None:
            return self._lazy(self._uri_text, self.display, self.params.copy(), self.bracketed)
        return type(self)(self._uri.copy(), self.display, self.params.copy(), bracketed=self.bracketed)

    def echo(self, without: Collection[str] = ()) -> str:
        """The text of a copy of this address with its URI in ``<>`` and without the parameters
        named in ``without`` (lower-case names, any spelling removed): what ``str`` of
        :meth:`copy` gives after ``params.remove`` of each and ``bracketed = True``, without
        making the copy."""
        uri = self._uri_text if self._uri is None else str(self._uri)
        params = self.params
        if without and any(k.lower() in without for k in params):
            params = Params([(k, v) for k, v in params.items() if k.lower() not in without])
        if self.display is None:
            return f"<{uri}>{params}"
        return f"{self.display} <{uri}>{params}"

    def __str__(self) -> str:
        uri = self._uri_text if self._uri is None else str(self._uri)
        if not self.bracketed and self.display is None and not any(c in uri for c in ",;?"):
            return f"{uri}{self.params}"
        if self.display is None:
            return f"<{uri}>{self.params}"
        return f"{self.display} <{uri}>{self.params}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class Contact(Address):
    """A Contact value (never ``*``: see :attr:`imscore.sip.message.Message.contact_star`)."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: str) -> Contact:
        """Parse one Contact value with the checks of :func:`parse_contact`."""
        return parse_contact(value)

    @property
    def expires(self) -> int | None:
        """The ``expires`` parameter (delta-seconds, clamped to 2**32-1), or ``None``."""
        value = self.params.get("expires")
        if value is None:
            return None
        return g.parse_uint(value, "Contact expires", clamp=True)

    @property
    def q(self) -> float | None:
        value = self.params.get("q")
        return None if value is None else float(value)

    @property
    def instance(self) -> str | None:
        """``+sip.instance`` without its quotes, e.g. ``<urn:uuid:...>`` (RFC 5626)."""
        return self.params.unquoted(g.FEATURE_INSTANCE)

    @property
    def reg_id(self) -> int | None:
        value = self.params.get(g.PARAM_REG_ID)
        return None if value is None else int(value)


def parse_address(value: str, what: str, cls: type[A]) -> A:
    """Parse ``( name-addr / addr-spec ) *( SEMI generic-param )`` into ``cls``.

    Every call returns a new address; a text parsed lately (the From and To of a call come back in
    each of its messages) is rebuilt from the parts its first parse gave, without parsing again.
    Errors are not kept.
    """
    key = (cls, value)
    seen = _ADDRESSES_SEEN.get(key)
    if seen is not None:
        uri_text, display, items, bracketed = seen
        return cls._lazy(uri_text, display, Params(items), bracketed)
    address = _parse_address(value, what, cls)
    if len(_ADDRESSES_SEEN) >= SEEN_MAX:
        _ADDRESSES_SEEN.clear()
    _ADDRESSES_SEEN[key] = (
        address._uri_text, address.display, tuple(address.params.items()), address.bracketed
    )
    return address


def _parse_address(value: str, what: str, cls: type[A]) -> A:
    """:func:`parse_address` without its memory of texts seen before."""
    value = value.strip(" \t")
    if not value:
        raise ParseError(f"empty {what}")
    display: str | None = None
    if value[0] == '"' or "<" in value:
        if value[0] == '"':
            end = g.find_quoted_end(value, 0)
            display = value[:end]
            if not g.QUOTED_STRING_RE.fullmatch(display):
                raise ParseError(f"bad display name in {what}")
            lt = end
            while lt < len(value) and value[lt] in " \t":
                lt += 1
            if lt >= len(value) or value[lt] != "<":
                raise ParseError(f"quoted display name not followed by <URI> in {what}")
        else:
            lt = value.index("<")
            text = value[:lt].rstrip(" \t")
            if text:
                if not g.TOKEN_LIST_RE.fullmatch(text):
                    raise ParseError(f"bad display name {text[:40]!r} in {what} (quote it)")
                display = text
        gt = value.find(">", lt)
        if gt < 0:
            raise ParseError(f"missing '>' in {what}")
        uri_text = value[lt + 1 : gt]
        if not uri_text or " " in uri_text or "\t" in uri_text:
            raise ParseError(f"white space inside <URI> in {what}")
        items, _ = g.parse_header_params(value, gt + 1, what)
        return cls._lazy(uri_text, display, Params(items), True)
    semi = value.find(";")
    uri_text = value if semi < 0 else value[:semi].rstrip(" \t")
    if "?" in uri_text or "," in uri_text or " " in uri_text:
        raise ParseError(f"a URI with '?', ',' or spaces must be enclosed in <> in {what}")
    if ":" not in uri_text:
        raise ParseError(f"not a URI in {what}: {uri_text[:40]!r}")
    items = []
    if semi >= 0:
        items, _ = g.parse_header_params(value, semi, what)
    return cls._lazy(uri_text, None, Params(items), False)


def parse_contact(value: str) -> Contact:
    """Parse one Contact value (not ``*``) and check its well-known parameters."""
    contact = parse_address(value, "Contact", Contact).check()
    for name, pvalue in contact.params.items():
        lname = name.lower()
        if lname == "expires":
            if pvalue is None:
                raise ParseError("Contact expires without a value")
            g.parse_uint(pvalue, "Contact expires", clamp=True)
        elif lname == "q":
            if pvalue is None:
                raise ParseError("Contact q without a value")
            try:
                q = float(pvalue)
            except ValueError:
                raise ParseError(f"bad Contact q {pvalue[:20]!r}") from None
            if not 0.0 <= q <= 1.0 or not pvalue.replace(".", "", 1).isdigit():
                raise ParseError(f"Contact q {pvalue[:20]!r} outside 0..1")
        elif lname == g.PARAM_REG_ID:
            if pvalue is None or not pvalue.isdigit():
                raise ParseError("bad Contact reg-id")
        elif lname == g.FEATURE_INSTANCE and (pvalue is None or not pvalue.startswith('"')):
            raise ParseError("Contact +sip.instance must be a quoted string")
    return contact


class Parameterised:
    """A value (token or quoted string) with header parameters.

    The shape of P-Visited-Network-ID (``"Visited network";param``), P-Access-Network-Info
    (``3GPP-E-UTRAN-FDD;utran-cell-id-3gpp=...``) and Security-Client/-Server/-Verify
    (``ipsec-3gpp;alg=hmac-sha-1-96;spi-c=...``) values (TS 24.229 §7.2A, RFC 3329).
    """

    __slots__ = ("params", "value")

    def __init__(self, value: str, params: Params | None = None) -> None:
        self.value = value
        self.params = params if params is not None else Params()

    @property
    def text(self) -> str:
        """The value without quotes."""
        return g.unquote(self.value)

    def __str__(self) -> str:
        return f"{self.value}{self.params}"

    def __repr__(self) -> str:
        return f"Parameterised({str(self)!r})"


def parse_parameterised(value: str, what: str) -> Parameterised:
    m = g.PARAMETERISED_RE.match(value)
    if m is None:
        raise ParseError(f"bad {what}: {value[:40]!r}")
    items, _ = g.parse_header_params(value, m.end(), what)
    return Parameterised(m.group(1), Params(items))


def parse_charging_vector(value: str) -> Params:
    """P-Charging-Vector (TS 24.229 §7.2A.5): ``icid-value=...`` first, then charging parameters."""
    items, _ = g.parse_header_params(";" + value.strip(" \t"), 0, "P-Charging-Vector")
    if not items or items[0][0].lower() != g.ICID_PARAM or items[0][1] is None:
        raise ParseError("P-Charging-Vector must start with icid-value=")
    return Params(items)


class CSeq:
    """``CSeq: <number> <method>``."""

    __slots__ = ("method", "seq")

    def __init__(self, seq: int, method: str) -> None:
        self.seq = seq
        self.method = method

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"

    def __repr__(self) -> str:
        return f"CSeq({self.seq}, {self.method!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CSeq):
            return NotImplemented
        return self.seq == other.seq and self.method == other.method

    def __hash__(self) -> int:
        return hash((self.seq, self.method))


def parse_cseq(value: str) -> CSeq:
    m = g.CSEQ_RE.fullmatch(value)
    if m is None:
        raise ParseError(f"bad CSeq {value[:40]!r}")
    return CSeq(g.parse_uint(m.group(1), "CSeq number"), m.group(2))


class AuthHeader:
    """A challenge (WWW-/Proxy-Authenticate) or credentials (Authorization/Proxy-Authorization).

    ``params`` keeps values as written (change them with :meth:`set`); :meth:`get` returns them
    unquoted.
    """

    __slots__ = ("_index", "params", "scheme")

    def __init__(self, scheme: str, params: list[tuple[str, str]] | None = None) -> None:
        self.scheme = scheme
        self.params: list[tuple[str, str]] = params if params is not None else []
        #: lower-cased name -> unquoted value of its first occurrence, built on the first get
        self._index: dict[str, str] | None = None

    def get(self, name: str, default: str | None = None) -> str | None:
        index = self._index
        if index is None:
            index = self._indexed()
        return index.get(name.lower(), default)

    def unquoted(self) -> Mapping[str, str]:
        """The parameters by lower-cased name, each the unquoted value of its first occurrence
        (what :meth:`get` answers from; a reader asking for many lower-case names takes it to
        skip a call per name)."""
        index = self._index
        return self._indexed() if index is None else index

    def _indexed(self) -> dict[str, str]:
        index: dict[str, str] = {}
        for key, value in self.params:
            index.setdefault(key.lower(), g.unquote(value))
        self._index = index
        return index

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def set(self, name: str, value: str, *, quoted: bool = True) -> None:
        written = g.quote(value) if quoted else value
        self._index = None
        lname = name.lower()
        for i, (key, _) in enumerate(self.params):
            if key.lower() == lname:
                self.params[i] = (key, written)
                return
        self.params.append((name, written))

    @property
    def is_digest(self) -> bool:
        return self.scheme.lower() == "digest"

    def __str__(self) -> str:
        if not self.params:
            return self.scheme
        return f"{self.scheme} " + ", ".join(f"{k}={v}" for k, v in self.params)

    def __repr__(self) -> str:
        return f"AuthHeader({str(self)!r})"


def parse_auth(value: str, what: str) -> AuthHeader:
    """Parse ``scheme [auth-param *(COMMA auth-param)]``; unquoted values are taken liberally."""
    value = value.strip(" \t")
    m = g.TOKEN_RE.match(value)
    if m is None:
        raise ParseError(f"bad {what}: no scheme")
    scheme = m.group(0)
    rest = value[m.end() :]
    params: list[tuple[str, str]] = []
    if rest and rest[0] not in " \t":
        raise ParseError(f"bad {what}: {value[:40]!r}")
    rest = rest.strip(" \t")
    pos = 0
    n = len(rest)
    match = g.AUTH_PARAM_RE.match
    while pos < n:
        pm = match(rest, pos)
        if pm is None:
            # liberal: an unquoted value with characters a token does not allow (e.g. uri=sip:a@b)
            eq = rest.find("=", pos)
            comma = rest.find(",", pos)
            if eq < 0 or (0 <= comma < eq):
                raise ParseError(f"bad {what} parameter: {rest[pos : pos + 40]!r}")
            name = rest[pos:eq].strip(" \t")
            end = n if comma < 0 else comma
            raw = rest[eq + 1 : end].strip(" \t")
            if not g.TOKEN_RE.fullmatch(name) or not raw or '"' in raw:
                raise ParseError(f"bad {what} parameter: {rest[pos : pos + 40]!r}")
            params.append((name, raw))
            pos = end
        else:
            params.append(pm.groups())  # type: ignore[arg-type]  # (name, value): both groups match
            pos = pm.end()
        if pos < n:
            if rest[pos] != ",":
                raise ParseError(f"bad {what}: expected ',' at {rest[pos : pos + 20]!r}")
            pos += 1
            if pos >= n:
                raise ParseError(f"bad {what}: trailing ','")
    return AuthHeader(scheme, params)


class MediaType:
    """``type/subtype;params`` (Content-Type, Accept)."""

    __slots__ = ("params", "subtype", "type")

    def __init__(self, type_: str, subtype: str, params: Params | None = None) -> None:
        self.type = type_
        self.subtype = subtype
        self.params = params if params is not None else Params()

    @property
    def mime(self) -> str:
        """``type/subtype`` lower-cased, for comparisons."""
        return f"{self.type}/{self.subtype}".lower()

    def __str__(self) -> str:
        return f"{self.type}/{self.subtype}{self.params}"

    def __repr__(self) -> str:
        return f"MediaType({str(self)!r})"


def parse_media_type(value: str) -> MediaType:
    m = g.MEDIA_TYPE_RE.match(value)
    if m is None:
        raise ParseError(f"bad media type {value[:40]!r}")
    items, _ = g.parse_header_params(value, m.end(), "media type")
    return MediaType(m.group(1), m.group(2), Params(items))
