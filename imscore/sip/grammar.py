"""The SIP grammar in one place: RFC 3261 §25, RFC 3966 (tel) and the IMS parameters of TS 24.229.

Everything here is a compiled pattern or a small pure scanning function over ``str``. Header values
reach these functions already unfolded (every CRLF followed by whitespace became one SP) and decoded
from UTF-8 with ``surrogateescape``, so any octet the peer sent is still there.

Nothing in this module raises anything but :class:`~imscore.sip.errors.ParseError`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from .errors import ParseError

# --- character classes (as regex class bodies) ----------------------------------------------------
ALPHANUM: Final = "A-Za-z0-9"
MARK: Final = r"\-_.!~*'()"
UNRESERVED: Final = ALPHANUM + MARK
ESCAPED: Final = r"%[0-9A-Fa-f]{2}"
TOKEN_CHARS: Final = r"A-Za-z0-9\-.!%*_+`'~"
#: RFC 3261 ``word``: token characters plus ( ) < > : \ " / [ ] ? { }
WORD_CHARS: Final = TOKEN_CHARS + r"()<>:\\\"/\[\]?{}"
#: ``user-unreserved`` = & = + $ , ; ? /
USER_UNRESERVED: Final = r"&=+$,;?/"
#: ``param-unreserved`` = [ ] / : & + $
PARAM_UNRESERVED: Final = r"\[\]/:&+$"
#: ``hnv-unreserved`` = [ ] / ? : + $
HNV_UNRESERVED: Final = r"\[\]/?:+$"
#: characters that RFC 3261 §19.1.4 says are *not* equivalent to their escaped form
RESERVED: Final = frozenset(";/?:@&=+$,")

TOKEN: Final = f"[{TOKEN_CHARS}]+"
WORD: Final = f"[{WORD_CHARS}]+"
# quoted-string after unfolding: qdtext is any char but DQUOTE, backslash and controls (HTAB allowed);
# quoted-pair is a backslash and any octet but CR and LF. Written as qdtext runs between quoted-pairs
# (``"q*(?:pq*)*"``, the same strings as ``"(?:q|p)*"``, each matched one way only): the regex engine
# then takes each run of qdtext in one step instead of one alternation per character.
_QDTEXT: Final = r'[^"\\\x00-\x08\x0a-\x1f\x7f]'
_QUOTED_PAIR: Final = r"\\[\x00-\x09\x0b\x0c\x0e-\x7f]"
QUOTED_STRING: Final = rf'"{_QDTEXT}*(?:{_QUOTED_PAIR}{_QDTEXT}*)*"'

TOKEN_RE: Final = re.compile(TOKEN)
METHOD_RE: Final = TOKEN_RE
CALL_ID_RE: Final = re.compile(f"{WORD}(?:@{WORD})?")
QUOTED_STRING_RE: Final = re.compile(QUOTED_STRING)
SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
HEADER_NAME_RE: Final = TOKEN_RE
#: a display name made of tokens separated by linear white space
TOKEN_LIST_RE: Final = re.compile(f"{TOKEN}(?:[ \t]+{TOKEN})*")

# --- hosts ----------------------------------------------------------------------------------------
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_TOPLABEL: Final = r"[A-Za-z](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
HOSTNAME: Final = rf"(?:{_LABEL}\.)*{_TOPLABEL}\.?"
IPV4: Final = r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"
IPV6REF: Final = r"\[[0-9A-Fa-f:.]+\]"
HOST: Final = f"(?:{IPV6REF}|{IPV4}|{HOSTNAME})"
IPV4_RE: Final = re.compile(IPV4)
HOST_RE: Final = re.compile(HOST)

# --- URI pieces -----------------------------------------------------------------------------------
PARAMCHARS: Final = f"(?:[{PARAM_UNRESERVED}{UNRESERVED}]|{ESCAPED})+"
URI_PARAM_RE: Final = re.compile(f";({PARAMCHARS})(?:=({PARAMCHARS}))?")
_URI_PARAMS: Final = f"((?:;{PARAMCHARS}(?:={PARAMCHARS})?)*)"
#: the whole of a SIP URI after ``sip:``: userinfo, host, port, parameters and headers
SIP_URI_USER_RE: Final = re.compile(
    rf"((?:[{UNRESERVED}{USER_UNRESERVED}]|{ESCAPED})+)(?::((?:[{UNRESERVED}&=+$,]|{ESCAPED})*))?@"
    rf"({HOST})(?::([0-9]+))?{_URI_PARAMS}(?:\?(.*))?",
    re.DOTALL,
)
SIP_URI_HOST_RE: Final = re.compile(rf"({HOST})(?::([0-9]+))?{_URI_PARAMS}(?:\?(.*))?", re.DOTALL)
_HNV: Final = f"(?:[{HNV_UNRESERVED}{UNRESERVED}]|{ESCAPED})"
URI_HEADER_RE: Final = re.compile(f"({_HNV}+)=({_HNV}*)")
#: uric characters of RFC 2396 (for absolute URIs of schemes we do not interpret)
URIC_RE: Final = re.compile(rf"(?:[{UNRESERVED};/?:@&=+$,\[\]#]|{ESCAPED})*")

# RFC 3966 tel URI
TEL_GLOBAL_RE: Final = re.compile(r"\+[0-9\-.()]*[0-9][0-9\-.()]*")
TEL_LOCAL_RE: Final = re.compile(r"[0-9A-Fa-f*#\-.()]*[0-9A-Fa-f*#][0-9A-Fa-f*#\-.()]*")
TEL_PARAM_RE: Final = re.compile(f";([A-Za-z0-9\\-]+)(?:=({PARAMCHARS}))?")
TEL_VISUAL_SEPARATORS: Final = str.maketrans("", "", "-.()")

# --- header parameters (generic-param, with SEMI/EQUAL allowing LWS) ------------------------------
#: gen-value = token / host / quoted-string; ':' is admitted so that an IPv6 address written without
#: brackets (RFC 5118 §4.5 ``received=2001:db8::9:255``) stays one value.
GEN_VALUE: Final = rf"(?:{QUOTED_STRING}|[{TOKEN_CHARS}:\[\]]+)"
HEADER_PARAMS_RE: Final = re.compile(rf"(?:[ \t]*;[ \t]*{TOKEN}(?:[ \t]*=[ \t]*{GEN_VALUE})?)*[ \t]*")
HEADER_PARAM_FIND: Final = re.compile(rf";[ \t]*({TOKEN})(?:[ \t]*=[ \t]*({GEN_VALUE}))?")

# --- Via ------------------------------------------------------------------------------------------
VIA_RE: Final = re.compile(
    rf"[ \t]*({TOKEN})[ \t]*/[ \t]*({TOKEN})[ \t]*/[ \t]*({TOKEN})[ \t]+"
    rf"({HOST})(?:[ \t]*:[ \t]*([0-9]+))?[ \t]*"
)

# --- CSeq, auth -----------------------------------------------------------------------------------
CSEQ_RE: Final = re.compile(rf"[ \t]*([0-9]+)[ \t]+({TOKEN})[ \t]*")
AUTH_PARAM_RE: Final = re.compile(rf"[ \t]*({TOKEN})[ \t]*=[ \t]*({QUOTED_STRING}|{TOKEN})[ \t]*(?=,|$)")
MEDIA_TYPE_RE: Final = re.compile(rf"[ \t]*({TOKEN})[ \t]*/[ \t]*({TOKEN})[ \t]*")

# --- IMS (3GPP TS 24.229 §7) -------------------------------------------------------------------------
#: a value followed by parameters: P-Visited-Network-ID's vnetwork-spec (token or quoted-string),
#: P-Access-Network-Info's access-net-spec, Security-Client/-Server/-Verify's sec-mechanism
PARAMETERISED_RE: Final = re.compile(rf"[ \t]*({QUOTED_STRING}|{TOKEN})[ \t]*")
#: P-Charging-Vector starts with ``icid-value``
ICID_PARAM: Final = "icid-value"
#: Contact feature tags and parameters the registrar reads (RFC 3840, RFC 5626, TS 24.229)
FEATURE_INSTANCE: Final = "+sip.instance"
PARAM_REG_ID: Final = "reg-id"
FEATURE_ICSI_REF: Final = "+g.3gpp.icsi-ref"
FEATURE_IARI_REF: Final = "+g.3gpp.iari-ref"
FEATURE_SMSIP: Final = "+g.3gpp.smsip"
FEATURE_ACCESSTYPE: Final = "+g.3gpp.accesstype"
#: the ``sos`` Contact/URI parameter of an emergency registration (TS 24.229 §5.1.6)
PARAM_SOS: Final = "sos"
#: Authorization parameters of IMS AKA: re-synchronisation token and the integrity flag
PARAM_AUTS: Final = "auts"
PARAM_INTEGRITY_PROTECTED: Final = "integrity-protected"
#: option tags of IMS registration: Path (RFC 3327), sec-agree (RFC 3329), gruu, outbound
OPTION_TAGS_IMS: Final = frozenset({"path", "sec-agree", "gruu", "outbound", "timer", "100rel"})

MAX_UINT32: Final = 2**32 - 1


_IPV6_SEEN: dict[str, ipaddress.IPv6Address] = {}


def parse_ipv6(text: str) -> ipaddress.IPv6Address:
    """Parse the inside of an IPv6 reference, tolerating the three-colon form of RFC 5118 §4.10."""
    seen = _IPV6_SEEN.get(text)
    if seen is not None:
        return seen
    address = _parse_ipv6(text)
    if len(_IPV6_SEEN) < 4096:
        _IPV6_SEEN[text] = address
    return address


def _parse_ipv6(text: str) -> ipaddress.IPv6Address:
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        pass
    if ":::" in text:
        try:
            return ipaddress.IPv6Address(text.replace(":::", "::", 1))
        except ValueError:
            pass
    raise ParseError(f"bad IPv6 address {text!r}")


#: hosts :func:`check_host` passed (peers' addresses and domains repeat in every message)
_HOSTS_OK: Final[set[str]] = set()


def check_host(host: str) -> str:
    """Validate a host matched by :data:`HOST_RE` beyond what the pattern can say."""
    if host in _HOSTS_OK:
        return host
    if host[0] == "[":
        parse_ipv6(host[1:-1])
    elif (
        host[-1].isdigit()
        and IPV4_RE.fullmatch(host)
        and any(int(part) > 255 for part in host.split("."))
    ):
        raise ParseError(f"bad IPv4 address {host!r}")
    if len(_HOSTS_OK) < 4096:
        _HOSTS_OK.add(host)
    return host


def check_port(text: str) -> int:
    """Turn a run of digits into a port, 0..65535."""
    port = int(text)
    if port > 65535:
        raise ParseError(f"port {text} out of range")
    return port


def find_quoted_end(text: str, start: int) -> int:
    """Index just past the quoted string that opens at ``text[start] == '"'``."""
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return i + 1
        if c == "\\":
            i += 2
            continue
        i += 1
    raise ParseError("unterminated quoted string")


_LIST_SCAN: Final = re.compile(r'"(?:[^"\\]|\\.)*"|"|[<>,]', re.DOTALL)


def split_list(value: str, *, allow_empty: bool = False) -> list[str]:
    """Split a comma-separated header value into its elements.

    Commas inside quoted strings and inside ``<...>`` do not split. Elements are stripped. An empty
    element (``a,,b``) is a :class:`ParseError` unless ``allow_empty``, in which case it is dropped.
    """
    if "," not in value:
        # one element: its own parser checks its quotes and brackets
        parts = [value.strip(" \t")]
    elif '"' not in value and "<" not in value:
        parts = [p.strip(" \t") for p in value.split(",")]
    else:
        parts = []
        depth = 0
        begin = 0
        for m in _LIST_SCAN.finditer(value):
            token = m.group()
            c = token[0]
            if c == '"':
                if len(token) == 1:
                    raise ParseError("unterminated quoted string")
            elif c == "<":
                depth += 1
            elif c == ">":
                if depth:
                    depth -= 1
            elif not depth:
                parts.append(value[begin : m.start()].strip(" \t"))
                begin = m.end()
        if depth:
            raise ParseError("unbalanced '<' in header value")
        parts.append(value[begin:].strip(" \t"))
    if "" in parts:
        if not allow_empty:
            if len(parts) == 1:
                raise ParseError("empty header value")
            raise ParseError("empty element in comma-separated header value")
        parts = [p for p in parts if p]
    return parts


def parse_header_params(text: str, pos: int, what: str) -> tuple[list[tuple[str, str | None]], int]:
    """Parse ``*( SEMI generic-param )`` from ``pos``; return the pairs (values as written) and the end.

    The whole rest of ``text`` must be parameters; anything else is a :class:`ParseError` naming
    ``what``.
    """
    n = len(text)
    if pos >= n:
        return [], pos
    if '"' not in text:
        plain = _plain_params(text, pos)
        if plain is not None:
            return plain, n
    if HEADER_PARAMS_RE.fullmatch(text, pos) is None:
        m = HEADER_PARAMS_RE.match(text, pos)
        at = m.end() if m is not None else pos
        raise ParseError(f"bad parameter in {what}: {text[at : at + 40]!r}")
    return [(k, v or None) for k, v in HEADER_PARAM_FIND.findall(text, pos)], n


#: the characters of a token, and of a gen-value that is not a quoted string (see GEN_VALUE)
_TOKEN_SET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~"
_PLAIN_VALUE_SET: Final = _TOKEN_SET + ":[]"


def _plain_params(text: str, pos: int) -> list[tuple[str, str | None]] | None:
    """The parameters from ``pos`` as :func:`parse_header_params` reads them, found by splitting
    on ``;`` and ``=``, or ``None`` when that is not certain to give the same (a quoted string, an
    empty or odd element: the patterns decide, and name the fault)."""
    parts = text[pos:].split(";")
    if parts[0].strip(" \t"):
        return None
    items: list[tuple[str, str | None]] = []
    for i in range(1, len(parts)):
        name, eq, value = parts[i].partition("=")
        name = name.strip(" \t")
        if not name or name.lstrip(_TOKEN_SET):
            return None
        if eq:
            value = value.strip(" \t")
            if not value or value.lstrip(_PLAIN_VALUE_SET):
                return None
            items.append((name, value))
        else:
            items.append((name, None))
    return items


def unquote(value: str) -> str:
    """Remove the quotes and the backslash escapes of a quoted string; other values pass through."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        if "\\" not in inner:
            return inner
        out = []
        i = 0
        while i < len(inner):
            c = inner[i]
            if c == "\\" and i + 1 < len(inner):
                i += 1
                c = inner[i]
            out.append(c)
            i += 1
        return "".join(out)
    return value


def quote(value: str) -> str:
    """Make a quoted string of ``value``, escaping backslash and DQUOTE."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_HEX: Final = "0123456789ABCDEFabcdef"


def unescape(text: str, *, keep_reserved: bool = False) -> str:
    """Decode ``%HH`` escapes (as UTF-8 where they form it, else surrogate-escaped octets).

    With ``keep_reserved`` an escape whose octet is a reserved character stays escaped (upper-cased),
    which is the normal form RFC 3261 §19.1.4 compares on.
    """
    if "%" not in text:
        return text
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "%" and i + 2 < n and text[i + 1] in _HEX and text[i + 2] in _HEX:
            octet = int(text[i + 1 : i + 3], 16)
            if keep_reserved and chr(octet) in RESERVED:
                out += text[i : i + 3].upper().encode()
            else:
                out.append(octet)
            i += 3
            continue
        out += c.encode("utf-8", "surrogateescape")
        i += 1
    return out.decode("utf-8", "surrogateescape")


def escape(text: str, safe: str) -> str:
    """%-escape every character of ``text`` that is not unreserved and not in ``safe``."""
    out = []
    for c in text:
        if c.isascii() and (c.isalnum() or c in "-_.!~*'()" or c in safe):
            out.append(c)
        else:
            out.extend(f"%{b:02X}" for b in c.encode("utf-8", "surrogateescape"))
    return "".join(out)


def parse_uint(text: str, what: str, *, limit: int = MAX_UINT32, clamp: bool = False) -> int:
    """Parse ``1*DIGIT`` (surrounding LWS allowed). Above ``limit``: clamp or :class:`ParseError`."""
    text = text.strip(" \t")
    if not text.isascii() or not text.isdigit():
        raise ParseError(f"bad {what}: {text[:40]!r} is not a number")
    number = int(text)
    if number > limit:
        if clamp:
            return limit
        raise ParseError(f"bad {what}: {text[:40]} is larger than {limit}")
    return number
