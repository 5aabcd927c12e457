"""Messages: header list behaviour, typed accessors (table-driven), builders and serialisation."""

from __future__ import annotations

import pytest

from imscore.sip import (
    COMPACT_FORMS,
    Address,
    Contact,
    ParseError,
    Request,
    Response,
    SipError,
    SipUri,
    TelUri,
    VersionNotSupported,
    canonical_name,
    parse_datagram,
)
from imscore.sip.headers import parse_address, parse_auth, parse_contact, parse_via


def wire(*lines: str, body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


BASE = [
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport",
    "Max-Forwards: 70",
    "To: <sip:alice@ims.example.test>",
    "From: <sip:alice@ims.example.test>;tag=456248",
    "Call-ID: 843817637684230@998sdasdh09",
    "CSeq: 1826 REGISTER",
]


def register(*extra: str, body: bytes = b"") -> Request:
    message = parse_datagram(
        wire(
            "REGISTER sip:ims.example.test SIP/2.0",
            *BASE,
            *extra,
            f"Content-Length: {len(body)}",
            body=body,
        )
    )
    assert isinstance(message, Request)
    return message


def test_compact_forms_table_is_complete() -> None:
    expected = set("abcdefijklmnorstuvxy")
    assert set(COMPACT_FORMS) == expected
    for letter, name in COMPACT_FORMS.items():
        assert canonical_name(letter) == canonical_name(letter.upper()) == name.lower()


def test_names_are_case_insensitive_and_compact() -> None:
    m = register("m: <sip:alice@192.0.2.10>", "k: path, gruu", "SUPPORTED: outbound")
    assert m.headers.get("contact") == m.headers.get("M") == "<sip:alice@192.0.2.10>"
    assert m.supported == ["path", "gruu", "outbound"]
    assert "Contact" in m.headers and "m" in m.headers and "Route" not in m.headers
    # names are kept as written
    assert [f.name for f in m.headers.fields("supported")] == ["k", "SUPPORTED"]


def test_folded_lines_are_unfolded_but_kept_raw() -> None:
    data = wire(
        "OPTIONS sip:ims.example.test SIP/2.0",
        *BASE[:5],
        "CSeq: 1",
        "  OPTIONS",
        "Subject: one",
        "\ttwo  ",
        "Content-Length: 0",
    )
    m = parse_datagram(data)
    assert m is not None
    assert (m.cseq.seq, m.cseq.method) == (1, "OPTIONS")
    assert m.headers.get("Subject") == "one two"
    assert m.to_bytes() == data


def test_multi_valued_headers_split_around_quotes_and_brackets() -> None:
    m = register('Contact: "Doe, John" <sip:a@x>, <sip:b,c@y;p=1>', "Contact: sip:c@z;expires=60")
    contacts = m.contacts
    assert [str(c.uri) for c in contacts] == ["sip:a@x", "sip:b,c@y;p=1", "sip:c@z"]
    assert contacts[0].display_name == "Doe, John"
    assert contacts[2].expires == 60
    assert m.headers.values("Contact")[0] == '"Doe, John" <sip:a@x>'


CONTACT_TABLE = [
    # value, uri, expires, q, instance, reg_id, params as written
    (
        "<sip:alice@192.0.2.10:5060;transport=udp>;expires=3600;q=0.7",
        "sip:alice@192.0.2.10:5060;transport=udp",
        3600,
        0.7,
        None,
        None,
        [("expires", "3600"), ("q", "0.7")],
    ),
    (
        '<sip:alice@[2001:db8::10]>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1',
        "sip:alice@[2001:db8::10]",
        None,
        None,
        "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>",
        1,
        [("+sip.instance", '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'), ("reg-id", "1")],
    ),
    (
        '<sip:ue@10.0.0.1>;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.mmtel";+g.3gpp.smsip;EXPIRES=99999999999',
        "sip:ue@10.0.0.1",
        2**32 - 1,
        None,
        None,
        None,
        [
            ("+g.3gpp.icsi-ref", '"urn%3Aurn-7%3A3gpp-service.ims.icsi.mmtel"'),
            ("+g.3gpp.smsip", None),
            ("EXPIRES", "99999999999"),
        ],
    ),
    ("sip:phone@192.0.2.3;q=1", "sip:phone@192.0.2.3", None, 1.0, None, None, [("q", "1")]),
    ("Desk Phone <tel:+15551230001>", "tel:+15551230001", None, None, None, None, []),
]


@pytest.mark.parametrize(("value", "uri", "expires", "q", "instance", "reg_id", "params"), CONTACT_TABLE)
def test_contact_table(
    value: str,
    uri: str,
    expires: int | None,
    q: float | None,
    instance: str | None,
    reg_id: int | None,
    params: list[tuple[str, str | None]],
) -> None:
    contact = parse_contact(value)
    assert str(contact.uri) == uri
    assert (contact.expires, contact.q, contact.instance, contact.reg_id) == (
        expires,
        q,
        instance,
        reg_id,
    )
    assert contact.params.items() == params
    assert parse_contact(str(contact)).params.items() == params  # parameters round-trip unmangled
    assert "Expires" in contact.params or expires is None  # names case-insensitive


BAD_CONTACTS = [
    "<sip:a@b>;q=2",
    "<sip:a@b>;q=abc",
    "<sip:a@b>;expires",
    "<sip:a@b>;expires=-1",
    "<sip:a@b>;reg-id=x",
    "<sip:a@b>;+sip.instance=<urn:uuid:1>",
    "<sip:a@b>;;",
    "<sip:a@b",
    "Bell, Alexander <sip:a@b>",
    '"unterminated <sip:a@b>',
    "sip:a@b?Route=x",
    "< sip:a@b >",
]


@pytest.mark.parametrize("value", BAD_CONTACTS)
def test_bad_contacts(value: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_contact(value)
    assert info.value.status == 400


def test_contact_star() -> None:
    m = register("Contact: *", "Expires: 0")
    assert m.contact_star and m.contacts == [] and m.expires == 0
    mixed = register("Contact: *, <sip:a@b>")
    with pytest.raises(ParseError):
        _ = mixed.contacts
    with pytest.raises(ParseError):
        _ = mixed.contact_star
    assert register().contacts == [] and not register().contact_star


def test_contact_star_after_the_contacts_were_read() -> None:
    """Once the contacts were parsed (and found), contact_star answers from them, as before."""
    plain = register("Contact: <sip:a@192.0.2.1:5060>")
    assert len(plain.contacts) == 1 and not plain.contact_star
    star = register("Contact: *", "Expires: 0")
    assert star.contacts == [] and star.contact_star
    changed = register("Contact: <sip:a@192.0.2.1:5060>")
    assert changed.contacts and not changed.contact_star
    changed.headers.remove("Contact")
    changed.headers.add("Contact", "*")  # a change forgets the parsed contacts
    assert changed.contact_star and changed.contacts == []


ECHOES = [
    "<sip:a@192.0.2.1:5060>",
    "sip:a@192.0.2.1:5060;expires=60",
    "<sip:a@192.0.2.1:5060;transport=tcp>;Expires=60;q=0.5;+sip.instance=\"<urn:uuid:1>\"",
    '"Alice" <sip:a@192.0.2.1>;pub-gruu="sip:x";TEMP-GRUU="sip:y";reg-id=1;expires=0',
    "Bob <sips:b@example.test>;q=1",
    "<tel:+15551230001;phone-context=x>;expires=3600",
    "<urn:service:sos>;expires=10;x",
]


@pytest.mark.parametrize("value", ECHOES)
@pytest.mark.parametrize("parsed", [False, True])
def test_address_echo_is_a_bracketed_copy_without_the_named_params(value: str, parsed: bool) -> None:
    contact = parse_contact(value) if parsed else parse_address(value, "Contact", Contact)
    before = str(contact)
    without = frozenset({"expires", "pub-gruu", "temp-gruu"})
    for names in (without, frozenset()):
        copy = contact.copy()
        for name in names:
            copy.params.remove(name)
        copy.bracketed = True
        assert contact.echo(names) == str(copy)
    assert str(contact) == before  # the address itself is left as it was


VIA_TABLE = [
    (
        "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776;rport",
        "UDP",
        "192.0.2.10",
        5060,
        "z9hG4bK776",
        None,
        True,
        None,
    ),
    (
        "SIP/2.0/TCP client.example.com;branch=z9hG4bKx;received=192.0.2.1;rport=5070",
        "TCP",
        "client.example.com",
        None,
        "z9hG4bKx",
        "192.0.2.1",
        True,
        5070,
    ),
    (
        "SIP / 2.0 / tls [2001:db8::9]:5061 ; branch = z9hG4bKy",
        "TLS",
        "[2001:db8::9]",
        5061,
        "z9hG4bKy",
        None,
        False,
        None,
    ),
]


@pytest.mark.parametrize(
    ("value", "transport", "host", "port", "branch", "received", "has_rport", "rport"), VIA_TABLE
)
def test_via_table(
    value: str,
    transport: str,
    host: str,
    port: int | None,
    branch: str,
    received: str | None,
    has_rport: bool,
    rport: int | None,
) -> None:
    via = parse_via(value)
    assert (via.transport, via.host, via.port, via.branch) == (transport, host, port, branch)
    assert (via.received, via.has_rport, via.rport) == (received, has_rport, rport)
    assert parse_via(str(via)).params == via.params


@pytest.mark.parametrize(
    "value",
    [
        "SIP/2.0/UDP",
        "SIP/2.0 192.0.2.1",
        "SIP/2.0/UDP 192.0.2.1;branch",
        "SIP/2.0/UDP 192.0.2.1;received=host.example.com",
        "SIP/2.0/UDP 192.0.2.1;rport=abc",
        "SIP/2.0/UDP 192.0.2.1;ttl=300",
        "SIP/2.0/UDP 192.0.2.1:70000",
        "SIP/2.0/UDP 192.0.2.1;;",
    ],
)
def test_bad_vias(value: str) -> None:
    with pytest.raises(ParseError):
        parse_via(value)


def test_address_headers() -> None:
    m = register(
        "Path: <sip:term@pcscf.visited.test;lr>",
        "Route: <sip:scscf.ims.example.test;lr>, <sip:as.ims.example.test;lr>",
        "P-Associated-URI: <sip:alice@ims.example.test>, <tel:+15551230001>",
        "Service-Route: <sip:orig@scscf.ims.example.test;lr>",
    )
    assert [str(a.uri) for a in m.path] == ["sip:term@pcscf.visited.test;lr"]
    assert len(m.route) == 2 and len(m.record_route) == 0
    pau = m.p_associated_uri
    assert isinstance(pau[1].uri, TelUri) and pau[1].uri.digits == "+15551230001"
    assert isinstance(m.service_route[0].uri, SipUri) and m.service_route[0].uri.lr


def test_auth_headers() -> None:
    m = register(
        'Authorization: Digest username="alice@ims.example.test", realm="ims.example.test", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="sip:ims.example.test", '
        'response="6629fae49393a05397450978507c4ef1", algorithm=MD5, qop=auth, nc=00000001, '
        'cnonce="0a4f113b"'
    )
    (auth,) = m.authorization
    assert auth.is_digest
    assert auth.get("username") == "alice@ims.example.test"
    assert auth.get("ALGORITHM") == "MD5" and auth.get("nc") == "00000001"
    assert parse_auth(str(auth), "Authorization").params == auth.params
    challenge = parse_auth(
        'Digest realm="ims.example.test", nonce="abc", qop="auth,auth-int", algorithm=AKAv1-MD5',
        "WWW-Authenticate",
    )
    assert challenge.get("qop") == "auth,auth-int" and challenge.get("algorithm") == "AKAv1-MD5"
    for bad in ("", "Digest realm=", 'Digest realm="x",', 'Digest realm="x" nonce="y"'):
        with pytest.raises(ParseError):
            parse_auth(bad, "Authorization")


def test_scalar_headers() -> None:
    m = register("Expires: 600", "Min-Expires: 60", "Require: sec-agree", "Unsupported: foo")
    assert (m.expires, m.min_expires, m.max_forwards) == (600, 60, 70)
    assert m.require == ["sec-agree"] and m.unsupported == ["foo"]
    assert register("Expires: 99999999999").expires == 2**32 - 1
    with pytest.raises(ParseError):
        _ = register("Expires: soon").expires
    with pytest.raises(ParseError):
        _ = register("Expires: 1", "Expires: 2").expires
    with pytest.raises(ParseError):
        _ = register("Require: a b").require


def test_content_type_and_length() -> None:
    sdp = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    m = register("Content-Type: application/sdp;charset=utf-8", body=sdp)
    assert m.content_type is not None and m.content_type.mime == "application/sdp"
    assert m.content_type.params.get("charset") == "utf-8"
    assert m.content_length == len(sdp) and m.body == sdp


BAD_MESSAGES = [
    # description, bytes, status
    ("no Via", wire("OPTIONS sip:a@b SIP/2.0", *BASE[1:5], "CSeq: 1 OPTIONS"), 400),
    (
        "two Call-IDs",
        wire("OPTIONS sip:a@b SIP/2.0", *BASE[:5], "Call-ID: x", "CSeq: 1 OPTIONS"),
        400,
    ),
    (
        "Max-Forwards 256",
        wire("OPTIONS sip:a@b SIP/2.0", *BASE[2:5], BASE[0], "Max-Forwards: 256", "CSeq: 1 OPTIONS"),
        400,
    ),
    ("CSeq without method", wire("OPTIONS sip:a@b SIP/2.0", *BASE[:5], "CSeq: 1"), 400),
    (
        "header without colon",
        wire("OPTIONS sip:a@b SIP/2.0", *BASE[:5], "CSeq: 1 OPTIONS", "Oops"),
        400,
    ),
    (
        "bad header name",
        wire("OPTIONS sip:a@b SIP/2.0", *BASE[:5], "CSeq: 1 OPTIONS", "B@d: x"),
        400,
    ),
    ("continuation first", wire("OPTIONS sip:a@b SIP/2.0", " folded", *BASE[:5]), 400),
    ("SIP/3.0", wire("OPTIONS sip:a@b SIP/3.0", *BASE[:5], "CSeq: 1 OPTIONS"), 505),
    ("HTTP", wire("GET / HTTP/1.1", "Host: x"), 400),
    (
        "bad Call-ID",
        wire("OPTIONS sip:a@b SIP/2.0", *BASE[:4], "Call-ID: a b", "CSeq: 1 OPTIONS"),
        400,
    ),
    (
        "To not a URI",
        wire("OPTIONS sip:a@b SIP/2.0", BASE[0], BASE[1], "To: alice", *BASE[3:5], "CSeq: 1 OPTIONS"),
        400,
    ),
    ("empty start line", b"\r\n\r\n\r\nX", 400),
    ("no empty line", b"OPTIONS sip:a@b SIP/2.0\r\nVia: x", 400),
    ("status 099", wire("SIP/2.0 099 Odd", *BASE[:5], "CSeq: 1 OPTIONS"), 400),
]


@pytest.mark.parametrize(("what", "data", "status"), BAD_MESSAGES, ids=[b[0] for b in BAD_MESSAGES])
def test_bad_messages(what: str, data: bytes, status: int) -> None:
    with pytest.raises(SipError) as info:
        message = parse_datagram(data)
        assert message is not None
        message.check_framing_headers()
    assert info.value.status == status, what
    assert info.value.reason


def test_version_is_case_insensitive_and_broken_start_lines_can_be_answered() -> None:
    lower = parse_datagram(wire("OPTIONS sip:a@b sip/2.0", *BASE[:5], "CSeq: 1 OPTIONS"))
    assert isinstance(lower, Request)
    lower.check_framing_headers()
    for start, status in (("OPTIONS sip:a@b SIP/3.0", 505), ("OPTIONS <sip:a@b> SIP/2.0", 400)):
        with pytest.raises(SipError) as info:
            parse_datagram(wire(start, *BASE[:5], "CSeq: 1 OPTIONS"))
        assert info.value.status == status and info.value.is_request is True
        stand_in = info.value.message
        assert isinstance(stand_in, Request)
        answer = stand_in.make_response(info.value.status, info.value.phrase, to_tag="x")
        assert answer.top_via.branch == "z9hG4bK776asdhds" and answer.cseq.seq == 1
        assert answer.to.tag == "x" and answer.status == status


def test_error_family_and_partial_message() -> None:
    data = wire("OPTIONS sip:a@b SIP/2.0", *BASE[:5], "CSeq: 1 INVITE")
    parsed = parse_datagram(data)
    assert parsed is not None
    with pytest.raises(ParseError) as info:
        parsed.check_framing_headers()
    partial = info.value.message
    assert isinstance(partial, Request)
    assert partial.top_via.branch == "z9hG4bK776asdhds"  # enough to answer 400
    assert info.value.is_request is True
    with pytest.raises(VersionNotSupported) as v:
        parse_datagram(wire("OPTIONS sip:a@b SIP/2.1", *BASE[:5], "CSeq: 1 OPTIONS"))
    assert v.value.status == 505 and v.value.is_request is True
    assert isinstance(v.value, SipError)
    assert "\r" not in ParseError("bad\r\nthing").phrase


def test_unmodified_message_serialises_to_its_own_bytes() -> None:
    data = wire("REGISTER sip:ims.example.test SIP/2.0", *BASE, "x-Odd :  spaced   ", "l: 0")
    m = parse_datagram(data)
    assert m is not None
    assert m.to_bytes() == data
    m.headers.set("Max-Forwards", 69)
    out = m.to_bytes()
    assert b"Max-Forwards: 69\r\n" in out and b"x-Odd :  spaced   \r\n" in out
    assert out.index(b"Max-Forwards") < out.index(b"To:")  # kept its place


def test_lazy_cache_follows_changes() -> None:
    m = register("Contact: <sip:a@192.0.2.1>")
    assert len(m.contacts) == 1
    m.headers.add("Contact", "<sip:b@192.0.2.2>")
    assert len(m.contacts) == 2
    m.headers.remove("Contact")
    assert m.contacts == []
    assert m.headers.pop_first("Via") is not None
    with pytest.raises(ParseError):
        _ = m.top_via


def test_proxy_style_editing() -> None:
    m = register("Route: <sip:p1.example.test;lr>, <sip:p2.example.test;lr>")
    m.headers.prepend("Via", "SIP/2.0/UDP proxy.example.test;branch=z9hG4bKproxy1")
    assert [v.host for v in m.via] == ["proxy.example.test", "192.0.2.10"]
    assert m.headers.pop_first("Route") == "<sip:p1.example.test;lr>"
    assert [str(r.uri) for r in m.route] == ["sip:p2.example.test;lr"]
    m.headers.set_list("Record-Route", ["<sip:rr1;lr>", "<sip:rr2;lr>"])
    assert len(m.headers.get_all("Record-Route")) == 2
    again = parse_datagram(m.to_bytes())
    assert again is not None and len(again.via) == 2 and len(again.record_route) == 2


def test_building_a_request_and_response() -> None:
    request = Request(
        "REGISTER",
        "sip:ims.example.test",
        [
            ("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds7"),
            ("Max-Forwards", 70),
            ("From", Address("sip:alice@ims.example.test", params=None)),
            ("To", "<sip:alice@ims.example.test>"),
            ("Call-ID", "a84b4c76e66710"),
            ("CSeq", "1 REGISTER"),
            ("Contact", Contact("sip:alice@192.0.2.10")),
        ],
    )
    request.from_.params.set("tag", "x")  # a typed value is a view: change it through headers
    request.headers.set("From", "<sip:alice@ims.example.test>;tag=9fxced76sl")
    assert request.from_.tag == "9fxced76sl"
    parsed = parse_datagram(request.to_bytes())
    assert isinstance(parsed, Request)
    parsed.validate()
    assert parsed.contacts[0].uri == SipUri.parse("sip:alice@192.0.2.10")

    response = parsed.make_response(
        200,
        headers=[("Contact", "<sip:alice@192.0.2.10>;expires=3600")],
        to_tag="reg-1",
    )
    assert isinstance(response, Response)
    assert response.start_line() == "SIP/2.0 200 OK"
    assert response.to.tag == "reg-1" and response.from_.tag == "9fxced76sl"
    assert response.call_id == "a84b4c76e66710" and response.cseq.seq == 1
    assert response.top_via.branch == "z9hG4bKnashds7"
    assert response.content_length == 0
    echoed = parse_datagram(response.to_bytes())
    assert isinstance(echoed, Response)
    echoed.validate()
    assert echoed.contacts[0].expires == 3600
    # a To that already has a tag keeps it
    assert echoed.status == 200
    again = parsed.make_response(486, "Busy Here", to_tag="other")
    assert again.reason == "Busy Here"


def test_body_setter_keeps_content_length_true() -> None:
    m = register()
    m.set_body(b"hello", "text/plain")
    again = parse_datagram(m.to_bytes())
    assert again is not None and again.body == b"hello" and again.content_length == 5
    assert again.content_type is not None and again.content_type.mime == "text/plain"


def test_address_rendering() -> None:
    plain = parse_address("sip:a@b;tag=1", "To", Address)
    assert str(plain) == "sip:a@b;tag=1"
    uri_with_params = Address(SipUri.parse("sip:a@b;lr"))
    assert str(uri_with_params) == "<sip:a@b;lr>"
    named = parse_address('"Alice A." <sip:a@b>;tag=2', "From", Address)
    assert str(named) == '"Alice A." <sip:a@b>;tag=2'
    assert named.display_name == "Alice A."


def test_ims_headers_of_ts_24_229() -> None:
    m = register(
        'P-Visited-Network-ID: "Visited network number 1", other.net.example;x=1',
        "P-Access-Network-Info: 3GPP-E-UTRAN-FDD;utran-cell-id-3gpp=2344000A1B2C3D4E5",
        "P-Charging-Vector: icid-value=1234bc9876e;icid-generated-at=192.0.2.10;orig-ioi=home1.net",
        "Security-Client: ipsec-3gpp;alg=hmac-sha-1-96;spi-c=1111;spi-s=2222;port-c=5062;port-s=5064",
        'Contact: <sip:ue@192.0.2.10>;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.mmtel";'
        "+g.3gpp.smsip;sos",
        'Authorization: Digest username="ue@ims.example.test", realm="ims.example.test", '
        'nonce="", uri="sip:ims.example.test", response="", integrity-protected="no"',
    )
    m.validate()
    first, second = m.p_visited_network_id
    assert first.text == "Visited network number 1" and second.value == "other.net.example"
    assert second.params.get("x") == "1"
    (access,) = m.p_access_network_info
    assert access.value == "3GPP-E-UTRAN-FDD"
    assert access.params.get("utran-cell-id-3gpp") == "2344000A1B2C3D4E5"
    vector = m.p_charging_vector
    assert vector is not None and vector.get("icid-value") == "1234bc9876e"
    assert vector.get("orig-ioi") == "home1.net"
    (mechanism,) = m.security_client
    assert mechanism.value == "ipsec-3gpp" and mechanism.params.get("spi-s") == "2222"
    (contact,) = m.contacts
    assert contact.params.unquoted("+g.3gpp.icsi-ref") == "urn%3Aurn-7%3A3gpp-service.ims.icsi.mmtel"
    assert "+g.3gpp.smsip" in contact.params and "sos" in contact.params
    assert m.authorization[0].get("integrity-protected") == "no"
    with pytest.raises(ParseError):
        _ = register("P-Charging-Vector: orig-ioi=home1.net").p_charging_vector
    with pytest.raises(ParseError):
        _ = register("Security-Client: ipsec-3gpp;;alg=x").security_client
