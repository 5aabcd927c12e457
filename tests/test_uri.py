"""URIs: parsing table, round-trips and RFC 3261 §19.1.4 / RFC 3966 §4 equality."""

from __future__ import annotations

import pytest

from imscore.sip import AbsoluteUri, ParseError, SipUri, TelUri, parse_uri

PARSE_TABLE = [
    # text, scheme, user, password, host, port, params, headers
    ("sip:alice@ims.example.test", "sip", "alice", None, "ims.example.test", None, [], []),
    ("sips:alice@ims.example.test:5061", "sips", "alice", None, "ims.example.test", 5061, [], []),
    ("sip:ims.example.test;lr", "sip", None, None, "ims.example.test", None, [("lr", None)], []),
    (
        "sip:a:secret@10.0.0.1:5070;transport=TCP",
        "sip",
        "a",
        "secret",
        "10.0.0.1",
        5070,
        [("transport", "TCP")],
        [],
    ),
    ("sip:[2001:db8::1]:5060", "sip", None, None, "[2001:db8::1]", 5060, [], []),
    (
        "sip:+15551230001;npdi@ims.example.test;user=phone",
        "sip",
        "+15551230001;npdi",
        None,
        "ims.example.test",
        None,
        [("user", "phone")],
        [],
    ),
    (
        "sip:bob@biloxi.example.com?subject=project%20x&priority=urgent",
        "sip",
        "bob",
        None,
        "biloxi.example.com",
        None,
        [],
        [("subject", "project%20x"), ("priority", "urgent")],
    ),
    (
        "sip:alice@pc33.atlanta.example.com;gr=urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
        "sip",
        "alice",
        None,
        "pc33.atlanta.example.com",
        None,
        [("gr", "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6")],
        [],
    ),
    ("SIP:Alice@Example.COM", "sip", "Alice", None, "Example.COM", None, [], []),
    ("sip:host.example.com.", "sip", None, None, "host.example.com.", None, [], []),
]


@pytest.mark.parametrize(
    ("text", "scheme", "user", "password", "host", "port", "params", "headers"), PARSE_TABLE
)
def test_sip_uri_table(
    text: str,
    scheme: str,
    user: str | None,
    password: str | None,
    host: str,
    port: int | None,
    params: list[tuple[str, str | None]],
    headers: list[tuple[str, str]],
) -> None:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        scheme,
        user,
        password,
        host,
        port,
    )
    assert uri.params.items() == params
    assert uri.headers == headers
    assert str(uri) == text  # round-trips as written


BAD_URIS = [
    "sip:",
    "sip:@example.com",
    "sip:a@b@example.com",
    "sip:2001:db8::10",  # IPv6 without brackets (RFC 5118 §4.2)
    "sip:alice@[2001:db8::zz]",
    "sip:alice@300.1.1.1",
    "sip:alice@example.com:99999",
    "sip:alice@exa mple.com",
    "sip:alice@example.com;;lr",
    "sip:alice@example.com;=x",
    "sip:alice@example.com?novalue",
    "sip:al<ice@example.com",
    "sip:alice@-bad-.example.com",
    "tel:",
    "tel:+",
    "tel:5551234",  # a local number needs phone-context
    "tel:+1-555-x",
    "tel:+15551234;=x",
    "1abc:opaque",
    ":nothing",
    "nocolon",
    "http:",
]


@pytest.mark.parametrize("text", BAD_URIS)
def test_bad_uris_raise_parse_error_400(text: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_uri(text)
    assert info.value.status == 400
    assert info.value.reason


def test_tel_uris() -> None:
    tel = parse_uri("tel:+1-555-123-0001;ext=22")
    assert isinstance(tel, TelUri)
    assert tel.is_global and tel.digits == "+15551230001"
    assert str(tel) == "tel:+1-555-123-0001;ext=22"
    local = parse_uri("tel:7042;phone-context=example.com")
    assert isinstance(local, TelUri) and not local.is_global
    assert local.aor == "tel:7042;phone-context=example.com"
    assert parse_uri("tel:*21#;phone-context=+1555").scheme == "tel"


EQUAL = [
    # RFC 3261 §19.1.4 examples of equivalent URIs
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    (
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ),
    ("sip:alice@[2001:db8::1]", "sip:alice@[2001:DB8:0:0:0:0:0:1]"),
    ("tel:+1-555-123-0001", "tel:+15551230001"),
    ("tel:+1-555-123-0001;ext=1-2", "tel:+15551230001;EXT=12"),
    ("tel:7042;phone-context=Example.COM", "tel:7042;phone-context=example.com"),
]

NOT_EQUAL = [
    # RFC 3261 §19.1.4 examples of non-equivalent URIs
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
    ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
    ("sip:a%3Bb@x.com", "sip:a;b@x.com"),  # reserved characters are not equal to their escape
    ("tel:+15551230001", "tel:+15551230002"),
    ("tel:+15551230001", "tel:+15551230001;ext=1"),
    ("tel:+15551230001", "sip:+15551230001@example.com"),
]


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_equal_uris(a: str, b: str) -> None:
    ua, ub = parse_uri(a), parse_uri(b)
    assert ua == ub and ub == ua
    assert hash(ua) == hash(ub)


@pytest.mark.parametrize(("a", "b"), NOT_EQUAL)
def test_unequal_uris(a: str, b: str) -> None:
    ua, ub = parse_uri(a), parse_uri(b)
    assert ua != ub and ub != ua


def test_user_comparison_is_case_sensitive_host_is_not() -> None:
    assert parse_uri("sip:Alice@example.com") != parse_uri("sip:alice@example.com")
    assert parse_uri("sip:alice@EXAMPLE.com") == parse_uri("sip:alice@example.com")


def test_absolute_uri_keeps_its_text() -> None:
    uri = parse_uri("urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6")
    assert isinstance(uri, AbsoluteUri)
    assert uri.scheme == "urn" and str(uri) == "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"


def test_building_a_uri_in_code() -> None:
    uri = SipUri("ims.example.test", "alice", port=5060)
    uri.params.set("transport", "tcp")
    uri.params.set("lr")
    assert str(uri) == "sip:alice@ims.example.test:5060;transport=tcp;lr"
    assert uri == parse_uri(str(uri))
    assert uri.transport == "tcp" and uri.lr
    assert uri.aor == "sip:alice@ims.example.test:5060"
    assert parse_uri("sip:%61lice@IMS.example.test.;user=phone?x=1").aor == "sip:alice@ims.example.test"
    assert parse_uri("sips:[2001:DB8::0:1]").aor == "sips:[2001:db8::1]"
    copy = uri.copy()
    copy.params.remove("lr")
    assert uri.lr and not copy.lr
