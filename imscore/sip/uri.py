"""URIs: ``sip:``/``sips:`` (RFC 3261 §19.1), ``tel:`` (RFC 3966), and any other absolute URI.

Parsing keeps what was written (escapes, case, parameter order) so a URI serialises back unchanged;
comparison follows RFC 3261 §19.1.4 for SIP URIs and RFC 3966 §4 for tel URIs.
"""

from __future__ import annotations

from typing import Final

from . import grammar as g
from .errors import ParseError
from .params import Params

__all__ = ["AbsoluteUri", "SipUri", "TelUri", "Uri", "aor_of", "forget_recent_uris", "parse_uri"]

# URI parameters that, present in one SIP URI, must be present and equal in the other (§19.1.4).
_MUST_MATCH: Final = ("user", "ttl", "method", "maddr", "transport")


class SipUri:
    """A ``sip:`` or ``sips:`` URI.

    ``user`` and ``password`` keep their %-escapes as written (``user_unescaped`` decodes them);
    ``host`` is as written (an IPv6 reference keeps its brackets); ``port`` is ``None`` when absent.
    """

    __slots__ = ("headers", "host", "params", "password", "port", "scheme", "spelling", "user")

    def __init__(
        self,
        host: str,
        user: str | None = None,
        *,
        scheme: str = "sip",
        port: int | None = None,
        password: str | None = None,
        params: Params | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        #: the scheme lower-cased (``sip`` or ``sips``); ``spelling`` is how it was written
        self.scheme = scheme.lower()
        self.spelling = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = params if params is not None else Params()
        self.headers: list[tuple[str, str]] = headers if headers is not None else []

    @classmethod
    def parse(cls, text: str) -> SipUri:
        """Parse a SIP or SIPS URI; :class:`ParseError` if it is not one."""
        uri = parse_uri(text)
        if not isinstance(uri, SipUri):
            raise ParseError(f"not a SIP URI: {text[:60]!r}")
        return uri

    @classmethod
    def _parse_rest(cls, scheme: str, rest: str) -> SipUri:
        if "@" in rest:
            m = g.SIP_URI_USER_RE.fullmatch(rest)
            if m is None:
                raise ParseError(f"bad SIP URI: {scheme}:{rest[:60]!r}")
            user, password, host, port, params, headers = m.groups()
        else:
            m = g.SIP_URI_HOST_RE.fullmatch(rest)
            if m is None:
                raise ParseError(f"bad SIP URI: {scheme}:{rest[:60]!r}")
            user = password = None
            host, port, params, headers = m.groups()
        checked_host = g.check_host(host)
        checked_port = None if port is None else g.check_port(port)
        parsed = (
            Params([(k, v or None) for k, v in g.URI_PARAM_RE.findall(params)]) if params else Params()
        )
        fields: list[tuple[str, str]] = []
        if headers is not None:
            for part in headers.split("&"):
                hm = g.URI_HEADER_RE.fullmatch(part)
                if hm is None:
                    raise ParseError(f"bad URI header: {part[:40]!r}")
                fields.append((hm.group(1), hm.group(2)))
        return SipUri(
            checked_host,
            user,
            scheme=scheme,
            port=checked_port,
            password=password,
            params=parsed,
            headers=fields,
        )

    # -- convenience -------------------------------------------------------------------------------
    @property
    def user_unescaped(self) -> str | None:
        """The user part with %-escapes decoded."""
        return None if self.user is None else g.unescape(self.user)

    @property
    def host_lower(self) -> str:
        return self.host.lower()

    @property
    def is_ipv6(self) -> bool:
        return self.host.startswith("[")

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lower-cased, or ``None``."""
        value = self.params.get("transport")
        return None if value is None else value.lower()

    @property
    def lr(self) -> bool:
        return "lr" in self.params

    @property
    def secure(self) -> bool:
        return self.scheme == "sips"

    @property
    def aor(self) -> str:
        """The address-of-record key of RFC 3261 §10.3: scheme, user unescaped, host (lower-case,
        IPv6 normalised, no trailing dot) and port; parameters and headers removed."""
        user = self.user_unescaped
        host = self._host_key()
        port = "" if self.port is None else f":{self.port}"
        return f"{self.scheme}:{user}@{host}{port}" if user else f"{self.scheme}:{host}{port}"

    def copy(self) -> SipUri:
        return SipUri(
            self.host,
            self.user,
            scheme=self.spelling,
            port=self.port,
            password=self.password,
            params=self.params.copy(),
            headers=list(self.headers),
        )

    def __str__(self) -> str:
        scheme = self.spelling
        if scheme != self.scheme and scheme.lower() != self.scheme:
            scheme = self.scheme
        user = self.user
        if user is None:
            text = f"{scheme}:{self.host}"
        elif self.password is None:
            text = f"{scheme}:{user}@{self.host}"
        else:
            text = f"{scheme}:{user}:{self.password}@{self.host}"
        if self.port is not None:
            text = f"{text}:{self.port}"
        if self.params:
            text += str(self.params)
        if self.headers:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.headers)
        return text

    def __repr__(self) -> str:
        return f"SipUri({str(self)!r})"

    # -- RFC 3261 §19.1.4 comparison -----------------------------------------------------------------
    def _host_key(self) -> str:
        if self.is_ipv6:
            return "[" + str(g.parse_ipv6(self.host[1:-1])) + "]"
        return self.host.lower().rstrip(".")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SipUri):
            return NotImplemented
        if self.scheme != other.scheme:
            return False
        if _norm(self.user) != _norm(other.user) or _norm(self.password) != _norm(other.password):
            return False
        if self._host_key() != other._host_key() or self.port != other.port:
            return False
        mine = {k.lower(): v for k, v in self.params.items()}
        theirs = {k.lower(): v for k, v in other.params.items()}
        for name in _MUST_MATCH:
            if (name in mine) != (name in theirs):
                return False
        for name in mine.keys() & theirs.keys():
            a, b = mine[name], theirs[name]
            if (a is None) != (b is None):
                return False
            if a is not None and b is not None and _norm(a, fold=True) != _norm(b, fold=True):
                return False
        return _header_set(self.headers) == _header_set(other.headers)

    def __hash__(self) -> int:
        return hash((self.scheme, _norm(self.user), self._host_key(), self.port))


class TelUri:
    """A ``tel:`` URI (RFC 3966): a global (``+``) or local number and its parameters."""

    __slots__ = ("number", "params")

    def __init__(self, number: str, params: Params | None = None) -> None:
        self.number = number
        self.params = params if params is not None else Params()

    scheme = "tel"

    @classmethod
    def _parse_rest(cls, rest: str) -> TelUri:
        semi = rest.find(";")
        number = rest if semi < 0 else rest[:semi]
        params = Params()
        if semi >= 0:
            items = []
            pos = semi
            while pos < len(rest):
                m = g.TEL_PARAM_RE.match(rest, pos)
                if m is None:
                    raise ParseError(f"bad tel URI parameter: {rest[pos : pos + 40]!r}")
                items.append((m.group(1), m.group(2)))
                pos = m.end()
            params = Params(items)
        if number.startswith("+"):
            if not g.TEL_GLOBAL_RE.fullmatch(number):
                raise ParseError(f"bad global number in tel URI: {number[:40]!r}")
        elif not g.TEL_LOCAL_RE.fullmatch(number):
            raise ParseError(f"bad number in tel URI: {number[:40]!r}")
        elif "phone-context" not in params:
            raise ParseError("a local tel URI needs a phone-context parameter")
        return cls(number, params)

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")

    @property
    def digits(self) -> str:
        """The number without visual separators (``+1-555-0100`` gives ``+15550100``)."""
        return self.number.translate(g.TEL_VISUAL_SEPARATORS).upper()

    @property
    def aor(self) -> str:
        context = self.params.get("phone-context")
        base = f"tel:{self.digits}"
        return base if context is None else f"{base};phone-context={context.lower()}"

    def copy(self) -> TelUri:
        return TelUri(self.number, self.params.copy())

    def __str__(self) -> str:
        return f"tel:{self.number}{self.params}"

    def __repr__(self) -> str:
        return f"TelUri({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        """RFC 3966 §4: same number ignoring visual separators, same parameters in any order."""
        if not isinstance(other, TelUri):
            return NotImplemented
        if self.digits != other.digits:
            return False
        mine = {k.lower(): _tel_value(k, v) for k, v in self.params.items()}
        theirs = {k.lower(): _tel_value(k, v) for k, v in other.params.items()}
        return mine == theirs

    def __hash__(self) -> int:
        return hash(("tel", self.digits))


class AbsoluteUri:
    """A URI of any other scheme, kept opaque (the element answers 416 where it needs SIP)."""

    __slots__ = ("rest", "scheme", "spelling")

    def __init__(self, scheme: str, rest: str) -> None:
        self.scheme = scheme.lower()
        self.spelling = scheme
        self.rest = rest

    def copy(self) -> AbsoluteUri:
        return AbsoluteUri(self.spelling, self.rest)

    @property
    def aor(self) -> str:
        return str(self)

    def __str__(self) -> str:
        return f"{self.spelling}:{self.rest}"

    def __repr__(self) -> str:
        return f"AbsoluteUri({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AbsoluteUri):
            return NotImplemented
        return self.scheme == other.scheme and _norm(self.rest) == _norm(other.rest)

    def __hash__(self) -> int:
        return hash((self.scheme, _norm(self.rest)))


Uri = SipUri | TelUri | AbsoluteUri


#: URIs already parsed, by their text: private copies, never handed out (a parse returns a copy)
_SEEN: Final[dict[str, Uri]] = {}
_SEEN_MAX: Final = 2048


#: address-of-record keys by the text of their URI, of texts asked about lately (:func:`aor_of`)
_AORS: Final[dict[str, str]] = {}


def forget_recent_uris() -> None:
    """Empty :func:`parse_uri`'s and :func:`aor_of`'s memories of texts parsed lately (see
    :func:`imscore.sip.headers.forget_recent_texts`)."""
    _SEEN.clear()
    _AORS.clear()


def aor_of(text: str) -> str:
    """``parse_uri(text).aor``, raising what :func:`parse_uri` raises. The same texts are asked
    about again and again (a subscriber's IMPUs, the To of each REGISTER), so the keys of texts
    asked about lately are kept: a key is a string, shared safely."""
    aor = _AORS.get(text)
    if aor is None:
        aor = parse_uri(text).aor
        if len(_AORS) >= _SEEN_MAX:
            _AORS.clear()
        _AORS[text] = aor
    return aor


def parse_uri(text: str) -> Uri:
    """Parse any absolute URI; ``sip``, ``sips`` and ``tel`` are interpreted, others kept opaque.

    Every call returns a new object the caller may change. The same texts come back all the time
    (the Request-URI, the To and From of a user's REGISTER and its retry after a challenge), so the
    URIs parsed lately are kept and a text seen before is answered with a copy of its URI.
    """
    seen = _SEEN.get(text)
    if seen is not None:
        return seen.copy()
    uri = _parse_uri(text)
    if len(_SEEN) >= _SEEN_MAX:
        _SEEN.clear()
    _SEEN[text] = uri.copy()
    return uri


def _parse_uri(text: str) -> Uri:
    """:func:`parse_uri` without its memory of texts seen before."""
    colon = text.find(":")
    if colon <= 0:
        raise ParseError(f"not a URI: {text[:60]!r}")
    scheme = text[:colon]
    rest = text[colon + 1 :]
    lscheme = scheme.lower()
    if lscheme == "sip" or lscheme == "sips":
        return SipUri._parse_rest(scheme, rest)
    if lscheme == "tel":
        return TelUri._parse_rest(rest)
    if not g.SCHEME_RE.fullmatch(scheme):
        raise ParseError(f"bad URI scheme {scheme[:30]!r}")
    if not rest or not g.URIC_RE.fullmatch(rest):
        raise ParseError(f"bad {scheme[:30]} URI")
    return AbsoluteUri(scheme, rest)


def _norm(text: str | None, *, fold: bool = False) -> str | None:
    """Normal form for comparison: unreserved escapes decoded, reserved ones kept (upper-case)."""
    if text is None:
        return None
    out = g.unescape(text, keep_reserved=True)
    return out.lower() if fold else out


def _header_set(headers: list[tuple[str, str]]) -> set[tuple[str, str | None]]:
    return {(k.lower(), _norm(v)) for k, v in headers}


def _tel_value(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    value = g.unescape(value).lower()
    lname = name.lower()
    if lname in ("isub", "ext") or (lname == "phone-context" and value.startswith("+")):
        value = value.translate(g.TEL_VISUAL_SEPARATORS)
    return value
