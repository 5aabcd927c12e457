"""RFC 4475 and RFC 5118 torture messages: every verdict from the corpus index, checked exactly."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import CORPUS

from imscore.sip import (
    AbsoluteUri,
    Request,
    Response,
    SipError,
    SipUri,
    StreamFramer,
    UnsupportedUriScheme,
    parse_datagram,
)

RFC4475 = CORPUS / "rfc4475"
RFC5118 = CORPUS / "rfc5118"

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus missing: {CORPUS}")


def _index(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["name"]: row for row in csv.DictReader(handle, delimiter="\t")}


INDEX_4475 = _index(RFC4475 / "INDEX.tsv")
INDEX_5118 = _index(RFC5118 / "INDEX.tsv")

# What we answer to each invalid RFC 4475 message: the status, and whether the error is found when
# the message is framed (parse_datagram) or only when its headers are all parsed (validate()).
# ``None`` status means "a response: dropped, never answered".
INVALID_4475: dict[str, tuple[int | None, str]] = {
    "badinv01": (400, "parse"),
    "clerr": (400, "parse"),
    "ncl": (400, "parse"),
    "scalar02": (400, "parse"),
    "scalarlg": (None, "parse"),
    "quotbal": (400, "parse"),
    "ltgtruri": (400, "parse"),
    "lwsruri": (400, "parse"),
    "lwsstart": (400, "parse"),
    "trws": (400, "parse"),
    "escruri": (400, "parse"),
    "regbadct": (400, "validate"),
    "badaspec": (400, "parse"),
    "baddn": (400, "parse"),
    "badvers": (505, "parse"),
    "mismatch01": (400, "parse"),
    "mismatch02": (400, "parse"),
    "bigcode": (None, "parse"),
    "insuf": (400, "parse"),
    "multi01": (400, "parse"),
    "mcl01": (400, "parse"),
}
# Valid (well-formed) messages still refused with 400 by check_framing_headers(), and why: RFC 4475
# §3.3.4 says a registrar rejects a REGISTER whose To is not a SIP/SIPS AOR (RFC 3261 §10.2: MUST),
# and that is checked before routing, by the transport.
SEMANTIC_400 = {"unksm2": "To of a REGISTER must be a SIP, SIPS or tel URI"}
# Invalid cases where RFC 4475 lets a liberal element accept, and we do.
LIBERAL_4475 = {"baddate": "the Date header is not interpreted by the core"}


def _load(path: Path) -> bytes:
    return path.read_bytes()


def _receive(data: bytes) -> Request | Response:
    """What a transport does with a datagram: frame it, then check the headers every element needs."""
    message = parse_datagram(data)
    assert message is not None
    message.check_framing_headers()
    return message


def _parse_all(data: bytes) -> Request | Response:
    message = parse_datagram(data)
    assert message is not None
    message.validate()
    return message


@needs_corpus
def test_index_covers_every_file() -> None:
    names = {p.stem for p in RFC4475.glob("*.dat")}
    assert names == set(INDEX_4475)
    classified = set(INVALID_4475) | set(LIBERAL_4475)
    invalid = {n for n, row in INDEX_4475.items() if row["verdict"] == "invalid"}
    assert invalid == classified


@needs_corpus
@pytest.mark.parametrize(
    "name", sorted(n for n, r in INDEX_4475.items() if r["verdict"] == "valid") or ["<none>"]
)
def test_rfc4475_valid_messages_parse(name: str) -> None:
    if name in SEMANTIC_400:  # well-formed, but its method's rules refuse it before any routing
        parsed = parse_datagram(_load(RFC4475 / f"{name}.dat"))
        assert parsed is not None
        message = parsed
        with pytest.raises(SipError) as info:
            message.check_framing_headers()
        assert (info.value.status, info.value.reason) == (400, SEMANTIC_400[name])
    else:
        message = _parse_all(_load(RFC4475 / f"{name}.dat"))
    # every valid message serialises to bytes that parse to the same header list and body
    again = parse_datagram(message.to_bytes())
    assert again is not None
    assert [(f.key, f.value) for f in again.headers] == [(f.key, f.value) for f in message.headers]
    assert again.body == message.body
    assert again.start_line() == message.start_line()


@needs_corpus
@pytest.mark.parametrize("name", sorted(INVALID_4475))
def test_rfc4475_invalid_messages_are_rejected(name: str) -> None:
    status, where = INVALID_4475[name]
    data = _load(RFC4475 / f"{name}.dat")
    if where == "validate":
        message = parse_datagram(data)
        assert message is not None
        with pytest.raises(SipError) as info:
            message.validate()
    else:
        with pytest.raises(SipError) as info:
            _receive(data)
    error = info.value
    assert error.reason  # names what was wrong
    if status is None:
        assert error.is_request is False, "a broken response must be recognised as one (dropped)"
    else:
        assert error.status == status
        assert error.is_request is True


@needs_corpus
def test_baddn_fixed_variant_is_rejected_too() -> None:
    with pytest.raises(SipError) as info:
        _receive(_load(RFC4475 / "variants" / "baddn.crlf-fixed.dat"))
    assert info.value.status == 400
    assert "display name" in info.value.reason


@needs_corpus
def test_liberal_acceptance_of_baddate() -> None:
    message = _parse_all(_load(RFC4475 / "baddate.dat"))
    assert "EST" in (message.headers.get("Date") or "")


@needs_corpus
def test_test_dat_unclassified_is_rejected() -> None:
    with pytest.raises(SipError) as info:
        _receive(_load(RFC4475 / "test.dat"))
    assert info.value.status == 400


# --- what the valid messages mean -----------------------------------------------------------------
def _msg(name: str) -> Request | Response:
    return _parse_all(_load(RFC4475 / f"{name}.dat"))


def _req(name: str) -> Request:
    message = _msg(name)
    assert isinstance(message, Request)
    return message


@needs_corpus
def test_wsinv_semantics() -> None:
    m = _req("wsinv")
    assert m.method == "INVITE"
    assert m.to.tag == "1918181833n"
    assert m.from_.tag == "98asjd8"
    assert m.from_.display_name == 'J Rosenberg \\"'
    assert m.max_forwards == 68
    assert (m.cseq.seq, m.cseq.method) == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in m.via] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    (contact,) = m.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.q == 0.33
    assert contact.params.get("newparam") == "newvalue"
    assert "secondparam" in contact.params
    assert m.headers.get("Subject") == ""
    assert m.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert len(m.body) == 150
    route = m.route[0].uri
    assert isinstance(route, SipUri) and route.lr and route.params.get("unknownwith") == "value"


@needs_corpus
def test_intmeth_semantics() -> None:
    m = _req("intmeth")
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.cseq.method == m.method
    uri = m.uri
    assert isinstance(uri, SipUri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_.display == "token1~` token2'+_ token3*%!.-"
    assert m.from_.tag == "_token~1'+`*%!-."
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.max_forwards == 255


@needs_corpus
def test_escapes() -> None:
    m = _req("esc01")
    assert isinstance(m.uri, SipUri)
    assert m.uri.user_unescaped == "sips:user@example.com"
    assert m.to.uri == SipUri.parse("sip:user@example.com")
    (contact,) = m.contacts
    assert contact.uri == SipUri.parse("sip:caller@host5.example.net;lr;name=value%41")
    n = _req("escnull")
    assert isinstance(n.to.uri, SipUri)
    assert n.to.uri.user_unescaped == "null-\x00-null"
    assert [c.uri.user for c in n.contacts if isinstance(c.uri, SipUri)] == ["%00", "%00%00"]


@needs_corpus
def test_esc02_is_an_unknown_method_with_two_contacts() -> None:
    m = _req("esc02")
    assert m.method == "RE%47IST%45R"
    assert m.method != "REGISTER"
    assert len(m.contacts) == 2  # 'C%6Fntact' is an extension header, not Contact
    assert m.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert m.to.display_name == "%Z%45"


@needs_corpus
def test_dblreq_discards_the_second_request() -> None:
    m = _req("dblreq")
    assert m.method == "REGISTER"
    assert m.body == b""
    assert b"INVITE" not in m.to_bytes()


@needs_corpus
def test_semiuri_user_keeps_its_semicolon() -> None:
    m = _req("semiuri")
    assert isinstance(m.uri, SipUri)
    assert m.uri.user == "user;par=u%40example.net"
    assert m.uri.host == "example.com"
    assert not m.uri.params
    assert len(m.headers.values("Accept")) == 6


@needs_corpus
def test_transports_and_bcast() -> None:
    assert [v.transport for v in _req("transports").via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    r = _msg("bcast")
    assert isinstance(r, Response)
    assert r.via[1].host == "255.255.255.255"


@needs_corpus
def test_bodies_and_reason_phrases() -> None:
    m = _req("mpart01")
    assert m.content_length == len(m.body)
    assert b"\n" in m.body and any(b > 0x7F for b in m.body)
    u = _msg("unreason")
    assert isinstance(u, Response) and u.status == 200
    assert "2**3 * 5**2" in u.reason and not u.reason.isascii()
    n = _msg("noreason")
    assert isinstance(n, Response) and (n.status, n.reason) == (100, "")


@needs_corpus
def test_other_schemes_parse_and_416_on_demand() -> None:
    m = _req("unkscm")
    assert isinstance(m.uri, AbsoluteUri) and m.uri.scheme == "nobodyknowsthisscheme"
    with pytest.raises(UnsupportedUriScheme) as info:
        _ = m.sip_uri
    assert info.value.status == 416
    assert str(m.uri) == "nobodyKnowsThisScheme:totallyopaquecontent"
    assert _req("novelsc").uri.scheme == "soap.beep"
    u = parse_datagram(_load(RFC4475 / "unksm2.dat"))
    assert isinstance(u, Request)
    assert u.to.uri.scheme == "isbn"
    assert u.from_.uri.scheme == "http"
    assert u.contacts[0].uri.scheme == "name"


@needs_corpus
def test_extensions_auth_and_contact_params() -> None:
    b = _req("bext01")
    assert b.require == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert b.proxy_require == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
    (auth,) = _req("regaut01").authorization
    assert auth.scheme == "NoOneKnowsThisScheme" and not auth.is_digest
    (c1,) = _req("cparam01").contacts
    assert isinstance(c1.uri, SipUri) and not c1.uri.params and "unknownparam" in c1.params
    (c2,) = _req("cparam02").contacts
    assert isinstance(c2.uri, SipUri) and "unknownparam" in c2.uri.params and not c2.params
    assert str(c2.uri) == "sip:+19725552222@gw1.example.net;unknownparam"
    (c3,) = _req("regescrt").contacts
    assert isinstance(c3.uri, SipUri)
    assert c3.uri.headers == [("Route", "%3Csip:sip.example.com%3E")]
    assert str(c3) == "<sip:user@example.com?Route=%3Csip:sip.example.com%3E>"


@needs_corpus
def test_zero_max_forwards_badbranch_and_rfc2543() -> None:
    assert _req("zeromf").max_forwards == 0
    assert _req("badbranch").top_via.branch == "z9hG4bK"
    old = _req("inv2543")
    assert old.top_via.branch is None
    assert old.from_.tag is None
    assert old.max_forwards is None
    assert old.content_length is None


# --- stream framing over the same corpus ----------------------------------------------------------
def _stream_ok(name: str) -> bool:
    return INDEX_4475[name]["verdict"] == "valid" and name not in {"dblreq", "inv2543"}


@needs_corpus
@pytest.mark.parametrize("name", sorted(n for n in INDEX_4475 if _stream_ok(n)) or ["<none>"])
def test_rfc4475_valid_messages_through_the_stream_framer(name: str) -> None:
    data = _load(RFC4475 / f"{name}.dat")
    expected = parse_datagram(data)
    assert expected is not None
    wire = expected.to_bytes()
    for chunks in ([wire * 2], [bytes([b]) for b in wire + wire]):
        framer = StreamFramer()
        events = [e for chunk in chunks for e in framer.feed(chunk)]
        assert len(events) == 2
        for event in events:
            assert isinstance(event, Request | Response)
            assert event.to_bytes() == wire
        assert framer.buffered == 0


# --- RFC 5118 (IPv6) ------------------------------------------------------------------------------
@needs_corpus
@pytest.mark.parametrize("name", sorted(INDEX_5118) or ["<none>"])
def test_rfc5118_wire_copies(name: str) -> None:
    data = _load(RFC5118 / "ersip-crlf" / f"{name}.dat")
    if INDEX_5118[name]["verdict"] == "valid":
        _parse_all(data)
    else:
        with pytest.raises(SipError) as info:
            _receive(data)
        assert info.value.status == 400


@needs_corpus
def test_rfc5118_meanings() -> None:
    wire = RFC5118 / "ersip-crlf"
    amb = _parse_all(_load(wire / "port-ambiguous.dat"))
    assert isinstance(amb, Request) and isinstance(amb.uri, SipUri)
    assert (amb.uri.host, amb.uri.port) == ("[2001:db8::10:5070]", None)
    una = _parse_all(_load(wire / "port-unambiguous.dat"))
    assert isinstance(una, Request) and isinstance(una.uri, SipUri)
    assert (una.uri.host, una.uri.port) == ("[2001:db8::10]", 5070)
    three = _parse_all(_load(wire / "ipv6-bug-abnf-3-colons.dat"))
    two = _parse_all(_load(wire / "ipv6-correct-abnf-2-colons.dat"))
    assert isinstance(three, Request) and isinstance(two, Request)
    assert three.uri == two.uri  # [2001:db8:::192.0.2.1] is tolerated as [2001:db8::192.0.2.1]
    no_delim = _parse_all(_load(wire / "via-received-param-no-delim.dat"))
    assert no_delim.top_via.received == "2001:db8::9:255"
    with_delim = _parse_all(_load(wire / "via-received-param-with-delim.dat"))
    assert with_delim.top_via.received == "[2001:db8::9:255]"
    mixed = _parse_all(_load(wire / "mult-ip-in-header.dat"))
    assert any(v.host.startswith("[") for v in mixed.via)
    assert any(not v.host.startswith("[") for v in mixed.via)


@needs_corpus
@pytest.mark.parametrize("name", sorted(p.stem for p in RFC5118.glob("*.dat")) or ["<none>"])
def test_rfc5118_archive_form_with_lf_line_ends(name: str) -> None:
    """The archive copies use bare LF and some carry the RFC's own wrong Content-Length.

    Bare LF is accepted liberally; a Content-Length larger than the body is a 400 on a datagram
    exactly as RFC 3261 §18.3 says (the index documents which ones the RFC got wrong).
    """
    data = _load(RFC5118 / f"{name}.dat")
    row = INDEX_5118[name]
    short_body = name in {"ipv6-in-sdp", "mult-ip-in-sdp"}  # Content-Length > body, per the index
    if row["verdict"] == "invalid" or short_body:
        with pytest.raises(SipError) as info:
            _receive(data)
        assert info.value.status == 400
        if short_body:
            assert "Content-Length" in info.value.reason
    else:
        _parse_all(data)


@needs_corpus
@pytest.mark.parametrize("name", sorted(n for n, (s, _) in INVALID_4475.items() if s is not None))
def test_rfc4475_invalid_requests_can_be_answered(name: str) -> None:
    """RFC 3261 §8.2.6.2: each broken request has an answer built from what of it can be read,
    its Via lines copied as received (the transport sends it: see tests/test_wire_verdicts.py)."""
    status, where = INVALID_4475[name]
    data = _load(RFC4475 / f"{name}.dat")
    with pytest.raises(SipError) as info:
        message = _receive(data)
        if where == "validate":
            message.validate()
    request = info.value.message
    assert isinstance(request, Request)
    answer = request.make_error_response(info.value.status, info.value.phrase, to_tag="x1")
    assert answer is not None
    assert answer.status == status
    sent = parse_datagram(answer.to_bytes())
    assert isinstance(sent, Response)
    vias = [f.raw for f in request.headers.readable_fields() if f.key == "via"]
    assert [f.raw for f in sent.headers if f.key == "via"] == vias
