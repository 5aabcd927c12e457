"""Property tests: generated messages round-trip; mutated input never raises anything but SipError."""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from conftest import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imscore.sip import (
    Request,
    Response,
    SipError,
    SipUri,
    StreamFramer,
    parse_datagram,
    parse_uri,
)

TOKEN = string.ascii_letters + string.digits + "-.!%*_+`'~"
UNRESERVED = string.ascii_letters + string.digits + "-_.!~*'()"

tokens = st.text(TOKEN, min_size=1, max_size=12)
labels = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.none() | st.integers(1, 65535)
users = st.text(UNRESERVED + "&=+$,", min_size=1, max_size=16) | st.builds(
    lambda s: "%" + s.hex().upper(), st.binary(min_size=1, max_size=1)
)
pvalues = st.text(UNRESERVED + "[]/:&+$", min_size=1, max_size=10)
pnames = st.text(UNRESERVED, min_size=1, max_size=10)
uri_params = st.lists(
    st.tuples(pnames, st.none() | pvalues), max_size=3, unique_by=lambda p: p[0].lower()
)
gen_values = st.one_of(
    tokens,
    st.text(string.ascii_letters + string.digits + " ,;:<>=@/", max_size=15).map(
        lambda s: '"' + s + '"'
    ),
)
# names the Contact grammar gives a meaning (and a value syntax) to are tested elsewhere
plain_names = tokens.filter(lambda t: t.lower() not in {"q", "expires", "reg-id", "+sip.instance"})
header_params = st.lists(
    st.tuples(plain_names, st.none() | gen_values), max_size=3, unique_by=lambda p: p[0].lower()
)
methods = st.sampled_from(["INVITE", "REGISTER", "OPTIONS", "MESSAGE", "BYE", "SUBSCRIBE"]) | tokens
display_names = st.none() | st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=12).map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
)


def sip_uri_text(
    scheme: str, user: str | None, host: str, port: int | None, params: list[tuple[str, str | None]]
) -> str:
    out = f"{scheme}:"
    if user is not None:
        out += f"{user}@"
    out += host
    if port is not None:
        out += f":{port}"
    for k, v in params:
        out += f";{k}" if v is None else f";{k}={v}"
    return out


sip_uris = st.builds(
    sip_uri_text, st.sampled_from(["sip", "sips"]), st.none() | users, hosts, ports, uri_params
)


def render_params(params: list[tuple[str, str | None]]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


@dataclass
class Spec:
    method: str
    ruri: str
    branch: str
    from_uri: str
    from_tag: str
    from_display: str | None
    to_uri: str
    call_id: str
    cseq: int
    contacts: list[tuple[str, list[tuple[str, str | None]]]]
    extras: list[tuple[str, str]]
    body: bytes
    compact: bool = False
    extra_fields: list[str] = field(default_factory=list)

    def render(self) -> bytes:
        def name(long: str, short: str) -> str:
            return short if self.compact else long

        lines = [
            f"{self.method} {self.ruri} SIP/2.0",
            f"{name('Via', 'v')}: SIP/2.0/UDP 192.0.2.1:5060;branch={self.branch};rport",
            "Max-Forwards: 70",
        ]
        display = f"{self.from_display} " if self.from_display else ""
        lines.append(f"{name('From', 'f')}: {display}<{self.from_uri}>;tag={self.from_tag}")
        lines.append(f"{name('To', 't')}: <{self.to_uri}>")
        lines.append(f"{name('Call-ID', 'i')}: {self.call_id}")
        lines.append(f"CSeq: {self.cseq} {self.method}")
        for uri, params in self.contacts:
            lines.append(f"{name('Contact', 'm')}: <{uri}>{render_params(params)}")
        for k, v in self.extras:
            lines.append(f"{k}: {v}")
        lines.append(f"{name('Content-Length', 'l')}: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


extension_names = tokens.filter(
    lambda t: (
        t.lower()
        not in {
            "via",
            "v",
            "from",
            "f",
            "to",
            "t",
            "call-id",
            "i",
            "cseq",
            "contact",
            "m",
            "content-length",
            "l",
            "max-forwards",
            "content-type",
            "c",
            "expires",
            "min-expires",
            "route",
            "record-route",
            "path",
            "service-route",
            "p-associated-uri",
            "require",
            "supported",
            "k",
            "unsupported",
            "proxy-require",
            "authorization",
            "www-authenticate",
            "proxy-authorization",
            "proxy-authenticate",
        }
    )
)
extension_values = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=30).map(
    lambda s: s.strip()
)

specs = st.builds(
    Spec,
    method=methods,
    ruri=sip_uris,
    branch=tokens.map(lambda t: "z9hG4bK" + t),
    from_uri=sip_uris,
    from_tag=tokens,
    from_display=display_names,
    to_uri=sip_uris,
    call_id=st.tuples(tokens, st.none() | hostnames).map(
        lambda t: t[0] if t[1] is None else "@".join(t)
    ),
    cseq=st.integers(0, 2**31 - 1),
    contacts=st.lists(st.tuples(sip_uris, header_params), max_size=3),
    extras=st.lists(st.tuples(extension_names, extension_values), max_size=3),
    body=st.binary(max_size=64),
    compact=st.booleans(),
)


@given(specs)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_generated_messages_round_trip(spec: Spec) -> None:
    data = spec.render()
    message = parse_datagram(data)
    assert isinstance(message, Request)
    message.validate()
    assert message.to_bytes() == data
    assert message.method == spec.method
    assert message.uri == parse_uri(spec.ruri)
    assert str(message.uri) == spec.ruri
    assert message.top_via.branch == spec.branch
    assert message.from_.tag == spec.from_tag
    assert message.from_.display == spec.from_display
    assert str(message.to.uri) == spec.to_uri
    assert message.call_id == spec.call_id
    assert (message.cseq.seq, message.cseq.method) == (spec.cseq, spec.method)
    assert [(str(c.uri), c.params.items()) for c in message.contacts] == spec.contacts
    for name, value in spec.extras:
        assert value in message.headers.get_all(name)
    assert message.body == spec.body
    # a rebuilt (not raw) serialisation parses to the same thing
    message.headers.set("Max-Forwards", 69)
    again = parse_datagram(message.to_bytes())
    assert isinstance(again, Request)
    assert [(f.key, f.value) for f in again.headers] == [(f.key, f.value) for f in message.headers]
    assert again.body == spec.body


@given(
    st.builds(
        sip_uri_text, st.sampled_from(["sip", "sips"]), st.none() | users, hosts, ports, uri_params
    )
)
def test_generated_uris_round_trip_and_equal_themselves(text: str) -> None:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    assert str(uri) == text
    shouting = uri.copy()
    shouting.host = uri.host.upper()
    assert uri == shouting
    assert hash(uri) == hash(parse_uri(str(uri)))


# --- mutation -------------------------------------------------------------------------------------
def _corpus_seeds() -> list[bytes]:
    seeds = []
    for folder in (CORPUS / "rfc4475", CORPUS / "rfc5118" / "ersip-crlf"):
        if folder.is_dir():
            seeds.extend(p.read_bytes() for p in sorted(folder.glob("*.dat")))
    return seeds


SEEDS = _corpus_seeds() or [
    Spec("OPTIONS", "sip:a@b", "z9hG4bK1", "sip:a@b", "1", None, "sip:b@c", "x", 1, [], [], b"").render()
]
INTERESTING = [
    b"\r\n",
    b"\r\n ",
    b":",
    b";",
    b",",
    b'"',
    b"<",
    b">",
    b"\\",
    b"%",
    b"=",
    b" ",
    b"\x00",
    b"\xff",
    b"@",
    b"[",
    b"]",
    b"SIP/2.0",
    b"Content-Length: 99999\r\n",
    b"9" * 30,
    b"Via: SIP/2.0/UDP x;branch=z9hG4bK\r\n",
    b"\r\n\r\n",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        op = draw(st.integers(0, 5))
        at = draw(st.integers(0, len(data) - 1))
        if op == 0:
            data[at] = draw(st.integers(0, 255))
        elif op == 1:
            data[at:at] = draw(st.sampled_from(INTERESTING))
        elif op == 2:
            end = draw(st.integers(at, min(len(data), at + 40)))
            del data[at:end]
        elif op == 3:
            del data[at:]
        elif op == 4:
            end = draw(st.integers(at, min(len(data), at + 60)))
            data[at:at] = data[at:end]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def _check_error(error: SipError) -> None:
    assert isinstance(error.status, int) and 400 <= error.status <= 699
    assert isinstance(error.reason, str) and error.reason


@given(mutated())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_mutated_datagrams_parse_or_raise_sip_error(data: bytes) -> None:
    try:
        message = parse_datagram(data)
        if message is None:
            return
        message.validate()
        _ = message.to_bytes()
        # everything a later layer may touch must keep to the contract as well
        for getter in ("via", "route", "record_route", "path", "contacts", "expires"):
            getattr(message, getter)
        if isinstance(message, Request):
            _ = str(message.uri)
        else:
            assert isinstance(message, Response)
    except SipError as error:
        _check_error(error)


@given(mutated(), st.lists(st.integers(1, 50), min_size=1, max_size=20))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_mutated_streams_frame_or_raise_sip_error(data: bytes, cuts: list[int]) -> None:
    framer = StreamFramer(max_size=8192)
    pos = 0
    i = 0
    stream = data + data
    try:
        while pos < len(stream):
            size = cuts[i % len(cuts)]
            i += 1
            for event in framer.feed(stream[pos : pos + size]):
                if isinstance(event, SipError):
                    _check_error(event)
            pos += size
    except SipError as error:
        _check_error(error)
        assert error.fatal
