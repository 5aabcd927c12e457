"""SIP messages: requests and responses, their header list, typed accessors and serialisation.

Headers are kept in order with the text they were received as (folding included), names compare
case-insensitively and compact forms are understood. Typed accessors parse lazily and cache until the
headers change. A message that was parsed and not modified serialises back to the very bytes it came
from; a changed header is written as ``Name: value``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

from . import grammar as g
from .errors import ParseError, SipError, UnsupportedUriScheme, VersionNotSupported
from .headers import (
    Address,
    AuthHeader,
    Contact,
    CSeq,
    MediaType,
    Parameterised,
    Via,
    parse_address,
    parse_auth,
    parse_charging_vector,
    parse_contact,
    parse_cseq,
    parse_media_type,
    parse_parameterised,
    parse_via,
)
from .params import Params
from .uri import AbsoluteUri, SipUri, TelUri, Uri, parse_uri

__all__ = [
    "COMPACT_FORMS",
    "REASON_PHRASES",
    "HeaderField",
    "Headers",
    "Message",
    "Request",
    "Response",
    "canonical_name",
    "parse_message",
]

SIP_VERSION: Final = "SIP/2.0"

#: Compact form letter -> full header name (RFC 3261 §7.3.3 and the IANA SIP parameters registry).
COMPACT_FORMS: Final[dict[str, str]] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

#: Headers whose value is a comma-separated list (so several values may share one header line).
LIST_HEADERS: Final = frozenset(
    {
        "accept",
        "accept-contact",
        "accept-encoding",
        "accept-language",
        "alert-info",
        "allow",
        "allow-events",
        "call-info",
        "contact",
        "content-encoding",
        "content-language",
        "error-info",
        "history-info",
        "in-reply-to",
        "p-associated-uri",
        "p-asserted-identity",
        "p-preferred-identity",
        "path",
        "proxy-require",
        "reason",
        "record-route",
        "reject-contact",
        "request-disposition",
        "require",
        "route",
        "security-client",
        "security-server",
        "security-verify",
        "service-route",
        "supported",
        "unsupported",
        "via",
        "warning",
        "p-visited-network-id",
        "feature-caps",
        "recv-info",
        "p-access-network-info",
        "diversion",
    }
)

#: Headers that may appear at most once (two different Content-Length values are always an error).
SINGLE_HEADERS: Final = frozenset(
    {
        "call-id",
        "cseq",
        "from",
        "to",
        "max-forwards",
        "content-type",
        "expires",
        "min-expires",
        "p-charging-vector",
    }
)

#: Default reason phrases (RFC 3261 §21 and extensions used by the registrar and proxy).
REASON_PHRASES: Final[dict[int, str]] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    429: "Provide Referrer Identity",
    430: "Flow Failed",
    439: "First Hop Lacks Outbound Support",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_KEY_CACHE: dict[str, str] = {}
_KEY_CACHE_MAX: Final = 4096
#: header names (exactly as written) that the parser has already checked against the grammar
_VALID_NAMES: dict[str, str] = {}


def canonical_name(name: str) -> str:
    """The lookup key of a header name: lower-case long form (``v`` and ``VIA`` give ``via``)."""
    key = _KEY_CACHE.get(name)
    if key is None:
        lower = name.lower()
        long = COMPACT_FORMS.get(lower)
        key = long.lower() if long is not None else lower
        if len(_KEY_CACHE) < _KEY_CACHE_MAX:
            _KEY_CACHE[name] = key
    return key


def _checked_key(name: str) -> str:
    """The key of a header name read off the wire, after checking it is a token."""
    if not g.HEADER_NAME_RE.fullmatch(name):
        raise ParseError(f"bad header name {name[:30]!r}")
    key = canonical_name(name)
    if len(_VALID_NAMES) < _KEY_CACHE_MAX:
        _VALID_NAMES[name] = key
    return key


def _cached_header(key: str) -> str:
    """The header a typed value in a :attr:`Headers.cache` was read from (``top_via``: Via)."""
    return "via" if key == "top_via" else canonical_name(key)


# one stored field: (name as written, unfolded value, original line or None once changed)
_Item = tuple[str, str, str | None]
#: the fields of every Headers whose section is not split yet (shared, never changed: see _load)
_UNSPLIT_KEYS: Final[list[str]] = []
_UNSPLIT_ITEMS: Final[list[_Item]] = []


class HeaderField:
    """One header line: the name as written, its lookup key, the unfolded value and the raw text.

    ``raw`` is the original line (folding included) while the field is unmodified, else ``None``.
    """

    __slots__ = ("key", "name", "raw", "value")

    def __init__(self, name: str, value: str, raw: str | None = None, key: str | None = None) -> None:
        self.name = name
        self.key = key if key is not None else canonical_name(name)
        self.value = value
        self.raw = raw

    def line(self) -> str:
        return self.raw if self.raw is not None else f"{self.name}: {self.value}"

    def __repr__(self) -> str:
        return f"HeaderField({self.name!r}, {self.value!r})"


class Headers:
    """The ordered header fields of a message.

    Look-ups take any spelling or compact form of a name. :meth:`values` splits comma-separated list
    headers into their elements; :meth:`get_all` returns whole lines. Every change clears the typed
    cache of the owning message and the stored original bytes.
    """

    __slots__ = ("_items", "_keys", "_pending", "cache", "raw")

    def __init__(self, fields: Iterable[HeaderField] = ()) -> None:
        self._keys: list[str] = []
        self._items: list[_Item] = []
        for f in fields:
            self._keys.append(f.key)
            self._items.append((f.name, f.value, f.raw))
        self.cache: dict[str, Any] = {}
        #: the original bytes of the header section (each line ending in CRLF), while unmodified
        self.raw: bytes | None = None
        self._pending: bytes | None = None

    @classmethod
    def _from_parsed(cls, keys: list[str], items: list[_Item], raw: bytes | None) -> Headers:
        headers = cls()  # (not cls.__new__: mypyc's native classes have none to call)
        headers._keys = keys
        headers._items = items
        headers._pending = None
        headers.cache = {}
        headers.raw = raw
        return headers

    @classmethod
    def _from_block(cls, block: bytes) -> Headers:
        """Headers whose CRLF-separated lines are split into fields on first use."""
        return cls._from_section(block + b"\r\n" if block else b"")

    @classmethod
    def _from_section(cls, section: bytes) -> Headers:
        """Headers of a header section as on the wire (every line ending in CRLF, no empty line),
        split into fields on first use. The octets are kept once: they are both the lines still to
        split and what :meth:`to_bytes` gives while nothing changes."""
        headers = cls()
        headers._pending = section
        headers.raw = section
        # no lists of their own until the lines are split (every reader splits them first): a sent
        # response kept for retransmissions holds its octets and little more
        headers._keys = _UNSPLIT_KEYS
        headers._items = _UNSPLIT_ITEMS
        return headers

    def _load(self) -> None:
        section = self._pending
        if section is not None:
            self._keys, self._items = _split_fields(_section_lines(section))
            self._pending = None

    def check(self) -> None:
        """Split and check every header line now (a :class:`ParseError` names the bad one)."""
        self._load()

    def readable_fields(self) -> list[HeaderField]:
        """Every header field that can be read, skipping the lines that cannot (never raises).

        For answering broken input (RFC 3261 §8.2.6.2): when the header section does not split into
        fields, the lines that do (``Name: value``, a token name, with their continuation lines)
        are kept as received and the others dropped.
        """
        section = self._pending
        if section is None:
            return list(self)
        keys, items = _tolerant_fields(_section_lines(section))
        return [HeaderField(n, v, r, k) for k, (n, v, r) in zip(keys, items, strict=True)]

    def _changed(self) -> None:
        self.cache.clear()
        self.raw = None

    # -- reading ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[HeaderField]:
        if self._pending is not None:
            self._load()
        return (HeaderField(n, v, r, k) for k, (n, v, r) in zip(self._keys, self._items, strict=True))

    def __len__(self) -> int:
        if self._pending is not None:
            self._load()
        return len(self._keys)

    def __contains__(self, name: object) -> bool:
        if self._pending is not None:
            self._load()
        return isinstance(name, str) and canonical_name(name) in self._keys

    def count(self, name: str) -> int:
        """How many header lines carry that name."""
        if self._pending is not None:
            self._load()
        return self._keys.count(canonical_name(name))

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of the first field of that name, or ``default``."""
        if self._pending is not None:
            self._load()
        key = canonical_name(name)
        keys = self._keys
        if key not in keys:
            return default
        return self._items[keys.index(key)][1]

    def get_all(self, name: str) -> list[str]:
        """The values of every field of that name, one per header line, unsplit."""
        if self._pending is not None:
            self._load()
        key = canonical_name(name)
        keys = self._keys
        if key not in keys:
            return []
        return [item[1] for k, item in zip(keys, self._items, strict=True) if k == key]

    def values(self, name: str) -> list[str]:
        """Every element of a list header across all its lines (``Contact: a, b`` gives two)."""
        key = canonical_name(name)
        if key not in LIST_HEADERS:
            return self.get_all(name)
        out: list[str] = []
        for value in self.get_all(name):
            out.extend(g.split_list(value, allow_empty=True))
        return out

    def fields(self, name: str | None = None) -> list[HeaderField]:
        if name is None:
            return list(self)
        key = canonical_name(name)
        return [f for f in self if f.key == key]

    # -- changing --------------------------------------------------------------------------------
    def add(self, name: str, value: object) -> None:
        """Append a field (after any others)."""
        if self._pending is not None:
            self._load()
        self._keys.append(canonical_name(name))
        self._items.append((name, str(value), None))
        self._changed()

    def prepend(self, name: str, value: object) -> None:
        """Insert a field before the first field of that name (or at the top when there is none)."""
        if self._pending is not None:
            self._load()
        key = canonical_name(name)
        index = self._keys.index(key) if key in self._keys else 0
        self._keys.insert(index, key)
        self._items.insert(index, (name, str(value), None))
        self._changed()

    def set(self, name: str, value: object) -> None:
        """Replace every field of that name by one, at the place of the first (else appended)."""
        self.set_list(name, [value])

    def set_list(self, name: str, values: Iterable[object]) -> None:
        """Replace every field of that name by one field per value (removed when empty)."""
        if self._pending is not None:
            self._load()
        key = canonical_name(name)
        keys, items = self._keys, self._items
        index = keys.index(key) if key in keys else len(keys)
        pairs = [(k, i) for k, i in zip(keys, items, strict=True) if k != key]
        new = [(key, (name, str(v), None)) for v in values]
        pairs[index:index] = new
        self._keys = [k for k, _ in pairs]
        self._items = [i for _, i in pairs]
        self._changed()

    def remove(self, name: str) -> int:
        """Remove every field of that name; return how many were removed."""
        if self._pending is not None:
            self._load()
        key = canonical_name(name)
        removed = self._keys.count(key)
        if removed:
            self.set_list(name, [])
        return removed

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first element of a list header (the top Via, the first Route)."""
        if self._pending is not None:
            self._load()
        key = canonical_name(name)
        if key not in self._keys:
            return None
        i = self._keys.index(key)
        field_name, value, _ = self._items[i]
        elements = g.split_list(value, allow_empty=True)
        if len(elements) <= 1:
            del self._keys[i]
            del self._items[i]
        else:
            self._items[i] = (field_name, ", ".join(elements[1:]), None)
        self._changed()
        return elements[0] if elements else None

    def replace_first(self, name: str, value: object) -> None:
        """:meth:`pop_first` then :meth:`prepend` (the first element of that name replaced by
        ``value``, in a field of its own), forgetting only the typed values read of that name:
        those of the other fields stay read (a transport stamping the top Via of a request)."""
        key = canonical_name(name)
        kept = [(k, v) for k, v in self.cache.items() if _cached_header(k) != key]
        self.pop_first(name)
        self.prepend(name, value)
        self.cache.update(kept)

    def copy(self) -> Headers:
        if self._pending is not None:
            self._load()
        return Headers._from_parsed(list(self._keys), list(self._items), self.raw)

    def copy_without_first(self, key: str) -> Headers | None:
        """What :meth:`copy` then :meth:`pop_first` give when the first field of all is ``key``'s
        and holds one element (the top Via a proxy removes from a response it forwards), made
        without splitting or writing the other lines again: their octets are the section's, cut,
        and the Call-ID, CSeq and Content-Length already read stay read. ``None`` otherwise."""
        if self._pending is not None:
            self._load()
        keys = self._keys
        if not keys or keys[0] != key:
            return None
        _name, value, line = self._items[0]
        if "," in value or not value.strip(" \t"):
            return None  # more than one element, or none: pop_first splits them
        raw = self.raw
        if raw is not None and line is not None:
            first = line.encode("utf-8", "surrogateescape") + b"\r\n"
            raw = raw[len(first) :] if raw.startswith(first) else None
        else:
            raw = None
        headers = Headers._from_parsed(keys[1:], self._items[1:], raw)
        cache = self.cache
        if "call-id" in cache:
            headers.cache["call-id"] = cache["call-id"]
        if "content-length" in cache:
            headers.cache["content-length"] = cache["content-length"]
        cseq = cache.get("cseq")
        if cseq is not None:
            headers.cache["cseq"] = CSeq(cseq.seq, cseq.method)
        return headers

    def to_bytes(self) -> bytes:
        """The header section, each line ending in CRLF (without the empty line)."""
        if self.raw is not None:
            return self.raw
        self._load()
        text = "".join(
            [
                f"{raw}\r\n" if raw is not None else f"{name}: {value}\r\n"
                for name, value, raw in self._items
            ]
        )
        # kept until the next change (every change clears it): a server transaction re-sends the
        # same response to each retransmitted request, and under load most requests are retransmitted
        self.raw = text.encode("utf-8", "surrogateescape")
        return self.raw

    def __repr__(self) -> str:
        if self._pending is not None:
            self._load()
        return f"Headers({[(n, v) for n, v, _ in self._items]!r})"


HeaderInput = Iterable[tuple[str, object]]


class Message:
    """What requests and responses share: headers, body and typed header accessors.

    Typed accessors raise :class:`ParseError` (status 400) when the header is malformed, and are
    cached until the headers change.
    """

    __slots__ = ("_body", "headers")

    is_request: bool = False

    def __init__(self, headers: HeaderInput | Headers = (), body: bytes = b"") -> None:
        if isinstance(headers, Headers):
            self.headers = headers
        else:
            self.headers = Headers(HeaderField(k, str(v)) for k, v in headers)
        self._body = body

    # -- body ----------------------------------------------------------------------------------------
    @property
    def body(self) -> bytes:
        """The body octets. Setting it sets Content-Length too (Content-Type is kept as it is)."""
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        self._body = value
        self.headers.set("Content-Length", len(value))

    def set_body(self, body: bytes, content_type: str | None) -> None:
        """Set body, Content-Length and Content-Type (removed when ``content_type`` is ``None``)."""
        self.body = body
        if content_type is None:
            self.headers.remove("Content-Type")
        else:
            self.headers.set("Content-Type", content_type)

    # -- serialisation -------------------------------------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    def _start_bytes(self) -> bytes:
        return self.start_line().encode("utf-8", "surrogateescape")

    def to_bytes(self) -> bytes:
        """The message on the wire: start line, headers, empty line, body."""
        return b"".join((self._start_bytes(), b"\r\n", self.headers.to_bytes(), b"\r\n", self._body))

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def __str__(self) -> str:
        return self.to_bytes().decode("utf-8", "replace")

    # -- typed accessors -----------------------------------------------------------------------------
    def _cached(self, key: str) -> Any:
        return self.headers.cache.get(key)

    def _single(self, name: str) -> str:
        value = self._optional_single(name)
        if value is None:
            raise ParseError(f"missing {name} header")
        return value

    def _optional_single(self, name: str) -> str | None:
        headers = self.headers
        if headers._pending is not None:
            headers._load()
        keys = headers._keys
        key = canonical_name(name)
        n = keys.count(key)
        if n == 0:
            return None
        if n > 1:
            raise ParseError(f"more than one {name} header")
        return self.headers._items[keys.index(key)][1]

    def _addresses(self, name: str) -> list[Address]:
        cache = self.headers.cache
        found = cache.get(name)
        if found is None:
            found = [parse_address(v, name, Address) for v in self._elements(name)]
            cache[name] = found
        return list(found)

    def _elements(self, name: str) -> list[str]:
        out: list[str] = []
        for value in self.headers.get_all(name):
            out.extend(g.split_list(value))
        return out

    def _tags(self, name: str) -> list[str]:
        cache = self.headers.cache
        found = cache.get(name)
        if found is None:
            found = []
            for value in self.headers.get_all(name):
                for tag in g.split_list(value, allow_empty=True):
                    if not g.TOKEN_RE.fullmatch(tag):
                        raise ParseError(f"bad option tag {tag[:30]!r} in {name}")
                    found.append(tag)
            cache[name] = found
        return list(found)

    def _uint(self, name: str, limit: int = g.MAX_UINT32, *, clamp: bool = False) -> int | None:
        cache = self.headers.cache
        if name in cache:
            return cache[name]  # type: ignore[no-any-return]
        value = self._optional_single(name)
        number = None if value is None else g.parse_uint(value, name, limit=limit, clamp=clamp)
        cache[name] = number
        return number

    @property
    def via(self) -> list[Via]:
        """Every Via value, topmost first."""
        cache = self.headers.cache
        found = cache.get("via")
        if found is None:
            found = [parse_via(v) for v in self._elements("Via")]
            if not found:
                raise ParseError("missing Via header")
            cache["via"] = found
            cache["top_via"] = found[0]
        return list(found)

    @property
    def top_via(self) -> Via:
        """The topmost Via (parsed without parsing the others)."""
        cache = self.headers.cache
        top = cache.get("top_via")
        if top is None:
            first = self.headers.get("Via")
            if first is None:
                raise ParseError("missing Via header")
            elements = g.split_list(first)
            top = parse_via(elements[0])
            cache["top_via"] = top
        return top

    @property
    def from_(self) -> Address:
        found = self.headers.cache.get("from")
        if found is None:
            found = parse_address(self._single("From"), "From", Address)
            self.headers.cache["from"] = found
        return found

    @property
    def to(self) -> Address:
        found = self.headers.cache.get("to")
        if found is None:
            found = parse_address(self._single("To"), "To", Address)
            self.headers.cache["to"] = found
        return found

    @property
    def call_id(self) -> str:
        found = self.headers.cache.get("call-id")
        if found is None:
            found = self._single("Call-ID")
            if not g.CALL_ID_RE.fullmatch(found):
                raise ParseError(f"bad Call-ID {found[:40]!r}")
            self.headers.cache["call-id"] = found
        return found

    @property
    def cseq(self) -> CSeq:
        found = self.headers.cache.get("cseq")
        if found is None:
            found = parse_cseq(self._single("CSeq"))
            self.headers.cache["cseq"] = found
        return found

    @property
    def contact_star(self) -> bool:
        """True when the message carries ``Contact: *`` (and nothing else in Contact)."""
        if self.headers.cache.get("contact"):  # contacts parsed, and found: "*" was not there
            return False
        values = self._elements("Contact")
        if "*" not in values:
            return False
        if len(values) > 1:
            raise ParseError("Contact '*' mixed with other contacts")
        return True

    @property
    def contacts(self) -> list[Contact]:
        """Every Contact value (``[]`` for ``Contact: *``; see :attr:`contact_star`)."""
        cache = self.headers.cache
        found = cache.get("contact")
        if found is None:
            found = []
            values = self._elements("Contact")
            if "*" in values:
                if len(values) > 1:
                    raise ParseError("Contact '*' mixed with other contacts")
            else:
                found = [parse_contact(v) for v in values]
            cache["contact"] = found
        return list(found)

    @property
    def route(self) -> list[Address]:
        return self._addresses("Route")

    @property
    def record_route(self) -> list[Address]:
        return self._addresses("Record-Route")

    @property
    def path(self) -> list[Address]:
        return self._addresses("Path")

    @property
    def service_route(self) -> list[Address]:
        return self._addresses("Service-Route")

    @property
    def p_asserted_identity(self) -> list[Address]:
        """P-Asserted-Identity (RFC 3325): the identities a trusted element asserts (one SIP or
        SIPS URI and one tel URI at most)."""
        return self._addresses("P-Asserted-Identity")

    @property
    def p_associated_uri(self) -> list[Address]:
        return self._addresses("P-Associated-URI")

    @property
    def expires(self) -> int | None:
        """The Expires header (delta-seconds; values above 2**32-1 are clamped), or ``None``."""
        return self._uint("Expires", clamp=True)

    @property
    def min_expires(self) -> int | None:
        return self._uint("Min-Expires", clamp=True)

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (0..255), or ``None`` when absent."""
        return self._uint("Max-Forwards", 255)

    @property
    def content_length(self) -> int | None:
        """Content-Length, or ``None`` when absent. Several equal values are accepted."""
        cache = self.headers.cache
        if "content-length" in cache:
            return cache["content-length"]  # type: ignore[no-any-return]
        values = self.headers.get_all("Content-Length")
        number = None
        for value in values:
            parsed = g.parse_uint(value, "Content-Length")
            if number is not None and parsed != number:
                raise ParseError("Content-Length headers disagree")
            number = parsed
        cache["content-length"] = number
        return number

    @property
    def content_type(self) -> MediaType | None:
        value = self._optional_single("Content-Type")
        return None if value is None else parse_media_type(value)

    @property
    def require(self) -> list[str]:
        return self._tags("Require")

    @property
    def proxy_require(self) -> list[str]:
        return self._tags("Proxy-Require")

    @property
    def supported(self) -> list[str]:
        return self._tags("Supported")

    @property
    def unsupported(self) -> list[str]:
        return self._tags("Unsupported")

    # -- IMS headers (TS 24.229 §7.2A) ------------------------------------------------------------
    def _parameterised(self, name: str) -> list[Parameterised]:
        cache = self.headers.cache
        found = cache.get(name)
        if found is None:
            found = [parse_parameterised(v, name) for v in self._elements(name)]
            cache[name] = found
        return list(found)

    @property
    def p_visited_network_id(self) -> list[Parameterised]:
        return self._parameterised("P-Visited-Network-ID")

    @property
    def p_access_network_info(self) -> list[Parameterised]:
        return self._parameterised("P-Access-Network-Info")

    @property
    def security_client(self) -> list[Parameterised]:
        return self._parameterised("Security-Client")

    @property
    def security_server(self) -> list[Parameterised]:
        return self._parameterised("Security-Server")

    @property
    def security_verify(self) -> list[Parameterised]:
        return self._parameterised("Security-Verify")

    @property
    def p_charging_vector(self) -> Params | None:
        value = self._optional_single("P-Charging-Vector")
        return None if value is None else parse_charging_vector(value)

    def _auth(self, name: str) -> list[AuthHeader]:
        return [parse_auth(v, name) for v in self.headers.get_all(name)]

    @property
    def www_authenticate(self) -> list[AuthHeader]:
        return self._auth("WWW-Authenticate")

    @property
    def proxy_authenticate(self) -> list[AuthHeader]:
        return self._auth("Proxy-Authenticate")

    @property
    def authorization(self) -> list[AuthHeader]:
        return self._auth("Authorization")

    @property
    def proxy_authorization(self) -> list[AuthHeader]:
        return self._auth("Proxy-Authorization")

    # -- checks ---------------------------------------------------------------------------------------
    def check_framing_headers(self) -> None:
        """The checks every element needs before it can match a transaction or answer.

        From, To, Call-ID, CSeq and a top Via present, single and well-formed (for a request, the
        CSeq method equal to the request method; for a REGISTER, a SIP, SIPS or tel URI in To);
        Max-Forwards in range; Content-Length consistent. Raises :class:`ParseError` whose
        ``message`` is this message.
        """
        try:
            self._check_framing()
        except SipError as error:
            error.message = self
            raise

    def _check_framing(self) -> None:
        self.top_via  # noqa: B018
        self.from_  # noqa: B018
        self.to  # noqa: B018
        self.call_id  # noqa: B018
        self.cseq  # noqa: B018
        self.max_forwards  # noqa: B018
        self.content_length  # noqa: B018

    def validate(self) -> None:
        """Parse every header with a typed accessor, raising the first :class:`SipError` found.

        Parsing is lazy; an element that wants all-or-nothing (a registrar about to store a binding,
        a test) calls this. The error's ``message`` is this message.
        """
        try:
            self._validate()
        except SipError as error:
            error.message = self
            raise

    def _validate(self) -> None:
        self._check_framing()
        self.via  # noqa: B018
        self.contacts  # noqa: B018
        self.from_.check()
        self.to.check()
        # the checks below read headers a message mostly lacks: an absent one cannot fail, so
        # only those present are read (in the same order: the first error is the same)
        headers = self.headers
        if headers._pending is not None:
            headers._load()
        present = set(headers._keys)
        if not present.isdisjoint(_VALIDATED):
            self._validate_present(present)
        if len(present) < len(headers._keys):  # a name on more than one line
            for name in SINGLE_HEADERS:
                if headers.count(name) > 1:
                    raise ParseError(f"more than one {name} header")

    def _validate_present(self, present: set[str]) -> None:
        """:meth:`_validate`'s reading of the optional headers, for those in ``present``."""
        for name in ("Route", "Record-Route", "Path", "Service-Route", "P-Associated-URI"):
            if name.lower() in present:
                for address in self._addresses(name):
                    address.check()
        for name in ("Require", "Proxy-Require", "Supported", "Unsupported"):
            if name.lower() in present:
                self._tags(name)
        if "expires" in present:
            self.expires  # noqa: B018
        if "min-expires" in present:
            self.min_expires  # noqa: B018
        if "content-type" in present:
            self.content_type  # noqa: B018
        if "www-authenticate" in present:
            self.www_authenticate  # noqa: B018
        if "proxy-authenticate" in present:
            self.proxy_authenticate  # noqa: B018
        if "authorization" in present:
            self.authorization  # noqa: B018
        if "proxy-authorization" in present:
            self.proxy_authorization  # noqa: B018
        for name in ("P-Visited-Network-ID", "P-Access-Network-Info"):
            if name.lower() in present:
                self._parameterised(name)
        for name in ("Security-Client", "Security-Server", "Security-Verify"):
            if name.lower() in present:
                self._parameterised(name)
        if "p-charging-vector" in present:
            self.p_charging_vector  # noqa: B018


#: the header keys :meth:`Message._validate` reads beyond the framing ones, Via and Contact
_VALIDATED: Final = frozenset(
    {
        "route",
        "record-route",
        "path",
        "service-route",
        "p-associated-uri",
        "require",
        "proxy-require",
        "supported",
        "unsupported",
        "expires",
        "min-expires",
        "content-type",
        "www-authenticate",
        "proxy-authenticate",
        "authorization",
        "proxy-authorization",
        "p-visited-network-id",
        "p-access-network-info",
        "security-client",
        "security-server",
        "security-verify",
        "p-charging-vector",
    }
)


class Request(Message):
    """A SIP request. ``uri`` is the parsed Request-URI."""

    __slots__ = ("_method", "_start", "_uri")

    is_request = True

    _start: bytes | None  # the start line as received, until method or URI may have changed

    def __init__(
        self,
        method: str,
        uri: Uri | str,
        headers: HeaderInput | Headers = (),
        body: bytes = b"",
        *,
        received_start: bytes | None = None,
    ) -> None:
        super().__init__(headers, body)
        self._method = method
        self._uri: Uri = parse_uri(uri) if isinstance(uri, str) else uri
        #: a request read off the wire (``received_start``, its start line) is kept as it came:
        #: no Content-Length is added to it
        self._start = received_start
        if received_start is None and "content-length" not in self.headers:
            self.headers.add("Content-Length", len(body))

    @property
    def method(self) -> str:
        return self._method

    @method.setter
    def method(self, value: str) -> None:
        self._method = value
        self._start = None

    @property
    def uri(self) -> Uri:
        """The Request-URI. (Reading it gives the object itself, which may be changed in place,
        so the received start line is no longer reused when serialising.)"""
        self._start = None
        return self._uri

    @uri.setter
    def uri(self, value: Uri) -> None:
        self._uri = value
        self._start = None

    def start_line(self) -> str:
        return f"{self._method} {self._uri} {SIP_VERSION}"

    def __repr__(self) -> str:
        return f"<Request {self._method} {self._uri}>"

    def _start_bytes(self) -> bytes:
        if self._start is not None:
            return self._start
        return self.start_line().encode("utf-8", "surrogateescape")

    @property
    def sip_uri(self) -> SipUri:
        """The Request-URI as a SIP URI; :class:`UnsupportedUriScheme` (416) otherwise."""
        uri = self.uri
        if isinstance(uri, SipUri):
            return uri
        raise UnsupportedUriScheme(f"unsupported URI scheme {uri.scheme[:30]!r}")

    def _check_framing(self) -> None:
        super()._check_framing()
        if self.cseq.method != self._method:
            raise ParseError(f"CSeq method {self.cseq.method[:30]!r} does not match request method")
        if self._method == "REGISTER" and not isinstance(self.to.uri, SipUri | TelUri):
            # RFC 3261 §10.2: the To of a REGISTER is the address-of-record and MUST be a SIP or
            # SIPS URI (tel: too in IMS, TS 24.229 §5.4.1.2); without one the request is malformed
            # wherever it arrives, so it is a 400 before any routing (RFC 4475 §3.3.4, unksm2)
            raise ParseError("To of a REGISTER must be a SIP, SIPS or tel URI")

    def make_error_response(self, status: int, reason: str | None, *, to_tag: str) -> Response | None:
        """The stateless answer to this request when it failed to parse (RFC 3261 §8.2.6.2).

        When Via, From, To, Call-ID and CSeq all read well this is :meth:`make_response`. Otherwise
        it is built from the header lines that can be read: every Via line, then the first From,
        To, Call-ID and CSeq where present, copied as received (``to_tag`` added to a To that
        parses and has none), so the sender can match it to its request. ``None`` when there is no
        Via whose sent-protocol and sent-by can be read: nothing says where the answer goes.
        """
        try:
            response = self.make_response(status, reason, to_tag=to_tag)
            response.check_framing_headers()
        except SipError:
            pass
        else:
            return response
        fields = self.headers.readable_fields()
        vias = [f for f in fields if f.key == "via"]
        if not vias or not _readable_sent_by(vias[0].value):
            return None
        keys = [f.key for f in vias]
        items: list[_Item] = [(f.name, f.value, f.raw) for f in vias]
        for wanted in ("from", "to", "call-id", "cseq"):
            found = next((f for f in fields if f.key == wanted), None)
            if found is None:
                continue
            item: _Item = (found.name, found.value, found.raw)
            if wanted == "to" and _untagged_address(found.value):
                item = (found.name, f"{found.value};tag={to_tag}", None)
            keys.append(wanted)
            items.append(item)
        keys.append("content-length")
        items.append(("Content-Length", "0", None))
        return Response(status, reason, Headers._from_parsed(keys, items, None))

    def make_response(
        self,
        status: int,
        reason: str | None = None,
        headers: HeaderInput = (),
        *,
        to_tag: str | None = None,
        body: bytes = b"",
    ) -> Response:
        """A response to this request as RFC 3261 §8.2.6.2 says.

        Via (all values), From, To, Call-ID and CSeq are copied; ``to_tag`` is added to To unless
        To already has a tag; ``headers`` follow; Content-Length is always set.
        """
        self.headers._load()
        # one pass over the request's fields: each copied line goes to the list of its name, and
        # the lists are joined in the order above (Via lines first, each name in received order)
        copied: dict[str, list[_Item]] = {"via": [], "from": [], "to": [], "call-id": [], "cseq": []}
        for k, item in zip(self.headers._keys, self.headers._items, strict=True):
            found = copied.get(k)
            if found is not None:
                found.append(item)
        keys: list[str] = []
        items: list[_Item] = []
        for k, found in copied.items():
            if found:
                keys += [k] * len(found)
                items += found
        if to_tag is not None and copied["to"] and self.to.tag is None:
            # header parameters come last in both name-addr and addr-spec forms: append the tag
            i = keys.index("to")
            to_name, to_value, _ = items[i]
            items[i] = (to_name, f"{to_value};tag={to_tag}", None)
        for name, value in headers:
            keys.append(canonical_name(name))
            items.append((name, str(value), None))
        keys.append("content-length")
        items.append(("Content-Length", str(len(body)), None))
        response = Response(status, reason, Headers._from_parsed(keys, items, None), body)
        # Via, CSeq and Call-ID were copied unchanged, so they parse as the request's did: hand over
        # what is already parsed (copies of the mutable ones) rather than parse it again, since the
        # transaction layer reads the response's CSeq and top Via branch and the transport its top
        # Via. Under load this is done for every REGISTER answered.
        cache, response_cache = self.headers.cache, response.headers.cache
        response_cache["content-length"] = len(body)
        top_via = cache.get("top_via")
        if top_via is not None:
            response_cache["top_via"] = top_via.copy()
        cseq = cache.get("cseq")
        if cseq is not None:
            response_cache["cseq"] = CSeq(cseq.seq, cseq.method)
        call_id = cache.get("call-id")
        if call_id is not None:
            response_cache["call-id"] = call_id
        return response


class Response(Message):
    """A SIP response."""

    __slots__ = ("reason", "status")

    is_request = False

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: HeaderInput | Headers = (),
        body: bytes = b"",
        *,
        received: bool = False,
    ) -> None:
        super().__init__(headers, body)
        if not 100 <= status <= 699:
            raise SipError(f"cannot build a response with status {status} (not 100..699)", 500)
        self.status = status
        self.reason = REASON_PHRASES.get(status, "Unknown") if reason is None else reason
        # a response read off the wire (``received``) is kept as it came: no Content-Length added
        if not received and "content-length" not in self.headers:
            self.headers.add("Content-Length", len(body))

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason!r}>"

    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    @property
    def status_class(self) -> int:
        return self.status // 100


# --- parsing --------------------------------------------------------------------------------------
def _is_status_line(line: str) -> bool:
    return line[:4].upper() == "SIP/"


def _parse_start(line: str, block: bytes, lines: list[str] | None, body: bytes) -> Request | Response:
    """The message of start line ``line``, once it is checked, with its header section (``block``
    split on first use, or ``lines`` already split) and ``body``."""
    # RFC 3261 §7.1: the version string is case-insensitive (and sent upper-case)
    if _is_status_line(line):
        parts = line.split(" ", 2)
        if len(parts) < 3:
            if len(parts) == 2 and parts[1].isdigit():
                parts.append("")  # a missing reason phrase is forgiven
            else:
                raise ParseError("bad status line")
        version, code, reason = parts
        if version.upper() != SIP_VERSION:
            raise VersionNotSupported(f"unsupported version {version[:20]!r}")
        if len(code) != 3 or not code.isascii() or not code.isdigit() or not "100" <= code <= "699":
            raise ParseError(f"bad status code {code[:20]!r}")
        return Response(int(code), reason, _headers(block, lines), body, received=True)
    parts = line.split(" ")
    if len(parts) != 3:
        raise ParseError("bad request line (it must be METHOD SP URI SP SIP/2.0)")
    method, uri_text, version = parts
    if version.upper() != SIP_VERSION:
        if version.upper().startswith("SIP/"):
            raise VersionNotSupported(f"unsupported version {version[:20]!r}")
        raise ParseError(f"bad version {version[:20]!r}")
    if not g.METHOD_RE.fullmatch(method):
        raise ParseError(f"bad method {method[:30]!r}")
    if uri_text.startswith("<"):
        raise ParseError("Request-URI must not be enclosed in <>")
    uri = parse_uri(uri_text)
    if isinstance(uri, SipUri) and uri.headers:
        raise ParseError("headers are not allowed in a Request-URI")
    start = line.encode("utf-8", "surrogateescape")
    return Request(method, uri, _headers(block, lines), body, received_start=start)


def _readable_sent_by(value: str) -> bool:
    """Whether a Via value starts with a sent-protocol and a sent-by that can be read."""
    m = g.VIA_RE.match(value)
    if m is None:
        return False
    try:
        g.check_host(m.group(4))
        if m.group(5) is not None:
            g.check_port(m.group(5))
    except SipError:
        return False
    return True


def _untagged_address(value: str) -> bool:
    """Whether a To value parses as an address without a tag (so one may be appended)."""
    try:
        return parse_address(value, "To", Address).tag is None
    except SipError:
        return False


def _tolerant_fields(lines: list[str]) -> tuple[list[str], list[_Item]]:
    """Like :func:`_split_fields`, but lines that cannot be read (and their continuation lines)
    are skipped instead of raising."""
    keys: list[str] = []
    items: list[_Item] = []
    keep = False  # whether the last field line was kept (so its continuation lines are too)
    for line in lines:
        if line[:1] in (" ", "\t"):
            if keep:
                name, value, raw = items[-1]
                more = line.strip(" \t")
                value = f"{value} {more}" if value and more else value or more
                items[-1] = (name, value, f"{raw}\r\n{line}")
            continue
        try:
            k, i = _split_fields([line])
        except SipError:
            keep = False
            continue
        keys.extend(k)
        items.extend(i)
        keep = True
    return keys, items


def _section_lines(section: bytes) -> list[str]:
    """The lines of a header section whose every line ends in CRLF."""
    if not section:
        return []
    lines = section.decode("utf-8", "surrogateescape").split("\r\n")
    lines.pop()  # the empty text after the last line's CRLF
    return lines


def _split_fields(lines: list[str]) -> tuple[list[str], list[_Item]]:
    """Header lines to keys and items; folded lines are unfolded (their raw text kept)."""
    keys: list[str] = []
    items: list[_Item] = []
    valid = _VALID_NAMES.get
    for line in lines:
        name, sep, value = line.partition(":")
        key = valid(name) if sep else None
        if key is not None:
            # a name already checked before a ':' (a token: no SP or HT, so not a continuation line)
            keys.append(key)
            items.append((name, value.strip(" \t"), line))
            continue
        c = line[:1]
        if c == " " or c == "\t":
            if not items:
                raise ParseError("continuation line before any header")
            name, value, raw = items[-1]
            more = line.strip(" \t")
            value = f"{value} {more}" if value and more else value or more
            items[-1] = (name, value, f"{raw}\r\n{line}")
            continue
        colon = line.find(":")
        if colon <= 0:
            if not line:
                raise ParseError("empty line inside the header section")
            raise ParseError(f"header line without ':' ({line[:30]!r})")
        name = line[:colon]
        key = valid(name)
        if key is None:
            name = name.rstrip(" \t")
            key = _checked_key(name)
        keys.append(key)
        items.append((name, line[colon + 1 :].strip(" \t"), line))
    return keys, items


def parse_message(head: bytes, body: bytes = b"") -> Request | Response:
    """Parse a start line and header section (``head``, without its empty line) with its body.

    This checks the start line (method, Request-URI, version, status code) and the shape of every
    header line; header values are parsed lazily by the typed accessors, and
    :meth:`Message.check_framing_headers` checks the ones every element needs. Raises only
    :class:`SipError`; when the start line could be read, the error says whether it was a request.
    """
    if head.count(b"\n") == head.count(b"\r\n"):
        nl = head.find(b"\r\n")
        first = (head if nl < 0 else head[:nl]).decode("utf-8", "surrogateescape")
        block = b"" if nl < 0 else head[nl + 2 :]
        lines = None
    else:  # liberal: bare LF line ends (as some archives and a few stacks send them)
        lines = head.decode("utf-8", "surrogateescape").replace("\r\n", "\n").split("\n")
        first = lines.pop(0)
        block = b""
    if not first:
        raise ParseError("empty start line")
    try:
        message = _parse_start(first, block, lines, body)
    except SipError as error:
        error.request_hint = not _is_status_line(first)
        if error.request_hint and error.message is None:
            error.message = _partial_request(first, block, lines)
        raise
    return message


def _headers(block: bytes, lines: list[str] | None) -> Headers:
    if lines is None:
        return Headers._from_block(block)
    keys, items = _split_fields(lines)
    return Headers._from_parsed(keys, items, None)


def _partial_request(first: str, block: bytes, lines: list[str] | None) -> Request:
    """A request whose start line is broken, kept only so that the error can be answered from its
    Via, From, To, Call-ID and CSeq (its Request-URI is a placeholder)."""
    if lines is None:
        headers = Headers._from_block(block)
    else:
        keys, items = _tolerant_fields(lines)
        headers = Headers._from_parsed(keys, items, None)
    method = first.split(" ", 1)[0][:60] or "UNKNOWN"
    start = first.encode("utf-8", "surrogateescape")
    return Request(method, AbsoluteUri("invalid", "request-line"), headers, received_start=start)
