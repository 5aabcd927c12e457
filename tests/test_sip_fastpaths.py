"""The cheaper paths of the SIP message layer give what the general ones gave (issue 13).

The URI, Via and address parsers keep what they parsed lately, the header splitter skips the
checks of a name it has checked before, responses copy the request's lines in one pass and
parameter look-ups lower-case only when they must. Each test here pins a case where such a short
cut could go wrong.
"""

from __future__ import annotations

import random

import pytest

from imscore.sip import ParseError, SipUri, TelUri, grammar, parse_message, parse_uri
from imscore.sip import headers as headers_module
from imscore.sip import uri as uri_module
from imscore.sip.params import Params


def test_a_uri_parsed_again_is_a_new_object_unchanged_by_edits_of_the_last() -> None:
    text = "sip:alice@ims.example.test;transport=tcp"
    first = parse_uri(text)
    assert isinstance(first, SipUri)
    first.params.set("transport", "udp")
    first.host = "elsewhere.example.test"
    first.user = "mallory"
    again = parse_uri(text)
    assert again is not first
    assert str(again) == text
    assert isinstance(again, SipUri)
    assert (again.user, again.host, again.params.get("transport")) == (
        "alice",
        "ims.example.test",
        "tcp",
    )
    again.params.set("lr")
    assert str(parse_uri(text)) == text


def test_tel_and_other_schemes_parsed_again_are_copies_too() -> None:
    tel = parse_uri("tel:+1-555-0100;ext=7")
    assert isinstance(tel, TelUri)
    tel.params.set("ext", "9")
    assert str(parse_uri("tel:+1-555-0100;ext=7")) == "tel:+1-555-0100;ext=7"
    other = parse_uri("urn:service:sos")
    assert str(other) == "urn:service:sos"
    assert parse_uri("urn:service:sos") is not other


def test_a_bad_uri_is_refused_every_time() -> None:
    for _ in range(3):
        with pytest.raises(ParseError):
            parse_uri("sip:alice@bad host")
        with pytest.raises(ParseError):
            parse_uri("tel:5550100")  # a local number without phone-context


def test_the_memory_of_uris_stays_bounded_and_right() -> None:
    limit = uri_module._SEEN_MAX
    texts = [f"sip:user{i}@ims.example.test:{5060 + i % 7}" for i in range(limit + limit // 2)]
    for text in texts:
        assert str(parse_uri(text)) == text
        assert len(uri_module._SEEN) <= limit
    for text in texts[:10] + texts[-10:]:
        uri = parse_uri(text)
        assert isinstance(uri, SipUri)
        assert str(uri) == text
        assert uri.port == int(text.rsplit(":", 1)[1])


def test_aor_keys_of_texts_are_the_parsed_uris_keys_and_stay_bounded() -> None:
    """``aor_of`` answers ``parse_uri(text).aor`` (from its memory the second time), raises what
    the parser raises, keeps at most as many texts as the URI memory and forgets with it."""
    texts = [
        "sip:Alice@IMS.Example.Test.:5060;transport=udp?x=y",
        "sips:%61lice@ims.example.test",
        "sip:ims.example.test",
        "tel:+1-555-123-0001;phone-context=x",
        "tel:+15551230001",
        "urn:service:sos",
        "sip:[2001:DB8::1]:5070",
    ]
    for text in texts * 2:
        assert uri_module.aor_of(text) == parse_uri(text).aor
    for bad in ("nothing", "sip:", "tel:5550100"):
        for _ in range(2):
            with pytest.raises(ParseError):
                uri_module.aor_of(bad)
            assert bad not in uri_module._AORS
    limit = uri_module._SEEN_MAX
    for i in range(limit + limit // 2):
        text = f"sip:user{i}@ims.example.test"
        assert uri_module.aor_of(text) == text
        assert len(uri_module._AORS) <= limit
    headers_module.forget_recent_texts()
    assert not uri_module._AORS


def test_the_builtin_resolver_keys_texts_as_the_parser_does() -> None:
    """The builtin ``ims_identity_resolve`` keys an IMPU's text with ``aor_of``: the parsed URI's
    key, ``None`` for text that is not a URI."""
    from imscore.plugin import builtin

    builtin._aor_key.cache_clear()
    for text in ("sip:Bob@Example.TEST;user=phone", "tel:+1-555-0100", "sip:%62ob@example.test"):
        assert builtin._aor_key(text) == parse_uri(text).aor
    assert builtin._aor_key("not a uri") is None and builtin._aor_key("sip:") is None


def _register(*lines: str) -> bytes:
    """A REGISTER's start line and header section, as :func:`parse_message` takes them."""
    return "\r\n".join(("REGISTER sip:ims.example.test SIP/2.0", *lines)).encode()


BASE = (
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1",
    "From: <sip:alice@ims.example.test>;tag=a",
    "To: <sip:alice@ims.example.test>",
    "Call-ID: c1@192.0.2.1",
    "CSeq: 1 REGISTER",
)


def test_a_known_header_name_without_a_colon_is_still_a_400() -> None:
    parse_message(_register(*BASE)).headers.check()  # every name of BASE is now known
    for bad in ("Via", "To", "CSeq 1 REGISTER"):
        message = parse_message(_register(*BASE, bad))
        with pytest.raises(ParseError, match="without ':'") as raised:
            message.headers.check()
        assert raised.value.status == 400


def test_a_known_name_after_a_fold_and_a_name_with_spaces_before_its_colon() -> None:
    message = parse_message(_register(*BASE, "Contact: <sip:alice@192.0.2.1>", "  ;expires=60"))
    assert message.headers.get("Contact") == "<sip:alice@192.0.2.1> ;expires=60"
    spaced = parse_message(_register(*BASE[:4], "CSeq  : 1 REGISTER"))
    assert str(spaced.cseq) == "1 REGISTER"


def test_make_response_copies_vias_first_then_from_to_call_id_cseq_in_received_order() -> None:
    request = parse_message(
        _register(
            "CSeq: 7 REGISTER",
            "Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK-top",
            "To: <sip:alice@ims.example.test>",
            "Max-Forwards: 70",
            "v: SIP/2.0/TCP 192.0.2.8;branch=z9hG4bK-second, SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK-3",
            "i: c2@192.0.2.9",
            "f: <sip:alice@ims.example.test>;tag=f1",
            "Expires: 600",
        )
    )
    request.check_framing_headers()
    response = request.make_response(200, None, [("Expires", 600)], to_tag="t9")
    assert response.to_bytes() == (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK-top\r\n"
        b"v: SIP/2.0/TCP 192.0.2.8;branch=z9hG4bK-second, SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK-3\r\n"
        b"f: <sip:alice@ims.example.test>;tag=f1\r\n"
        b"To: <sip:alice@ims.example.test>;tag=t9\r\n"
        b"i: c2@192.0.2.9\r\n"
        b"CSeq: 7 REGISTER\r\n"
        b"Expires: 600\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert [via.branch for via in response.via] == ["z9hG4bK-top", "z9hG4bK-second", "z9hG4bK-3"]


def test_make_response_of_a_request_without_a_to_adds_no_tag() -> None:
    request = parse_message(_register(BASE[0], BASE[1], BASE[3], BASE[4]))
    response = request.make_response(400, "Missing To", to_tag="t1")
    assert "to" not in [field.key for field in response.headers]
    assert b"tag=t1" not in response.to_bytes()


def test_parameter_look_ups_are_case_insensitive_and_the_first_match_wins() -> None:
    params = Params([("Tag", "first"), ("tag", "second"), ("lr", None), ("BRANCH", "z9hG4bK-x")])
    assert params.get("tag") == "first"
    assert params.get("TAG") == "first"
    assert params.get("branch") == "z9hG4bK-x"
    assert "LR" in params and "lr" in params and "l" not in params
    assert params.get("ta") is None and params.get("tags", "none") == "none"
    assert Params().get("tag", "absent") == "absent"
    assert str(Params()) == "" and str(params) == ";Tag=first;tag=second;lr;BRANCH=z9hG4bK-x"


@pytest.mark.parametrize(
    "text",
    [
        "sip:ims.example.test",
        "SIP:Alice@IMS.example.test",
        "sips:alice:secret@10.0.0.1:5061;transport=tcp?subject=x&priority=urgent",
        "sip:[2001:db8::1]:5070;lr",
        "Sips:bob@biloxi.example.com;maddr=239.255.255.1;ttl=15",
    ],
)
def test_sip_uris_serialise_as_written(text: str) -> None:
    assert str(parse_uri(text)) == text


def test_a_changed_scheme_is_written_as_changed() -> None:
    uri = parse_uri("SIP:alice@ims.example.test:5060")
    assert isinstance(uri, SipUri)
    uri.scheme = "sips"
    uri.port = None
    assert str(uri) == "sips:alice@ims.example.test"


def _params_by_patterns(text: str, pos: int) -> list[tuple[str, str | None]] | str:
    """What the header-parameter patterns alone make of ``text[pos:]`` (the items, or 'bad')."""
    if pos >= len(text):
        return []
    if grammar.HEADER_PARAMS_RE.fullmatch(text, pos) is None:
        return "bad"
    return [(k, v or None) for k, v in grammar.HEADER_PARAM_FIND.findall(text, pos)]


def test_header_parameters_split_without_patterns_read_as_the_patterns_do() -> None:
    pieces = [";", "=", " ", "\t", "a", "B", "z9", "-", ".", "!", "%", "*", "_", "+", "`", "'"]
    pieces += ["~", ":", "[", "]", '"', "\\", ",", "<", "é", "\x00", "\r", "0", "rport", "tag"]
    chance = random.Random(3261)
    split_plainly = 0
    for _ in range(20000):
        text = "".join(chance.choice(pieces) for _ in range(chance.randint(0, 12)))
        pos = chance.randint(0, 2)
        text = "xy"[:pos] + text
        expected = _params_by_patterns(text, pos)
        try:
            got: list[tuple[str, str | None]] | str = grammar.parse_header_params(text, pos, "t")[0]
        except ParseError:
            got = "bad"
        assert got == expected, text
        if '"' not in text and grammar._plain_params(text, pos) is not None:
            split_plainly += 1
    assert split_plainly > 1000  # the split path was taken often, not only the patterns


def test_a_host_checked_once_is_refused_or_passed_alike_again() -> None:
    for _ in range(3):
        assert grammar.check_host("192.0.2.10") == "192.0.2.10"
        with pytest.raises(ParseError, match="bad IPv4"):
            grammar.check_host("192.0.2.256")
        with pytest.raises(ParseError):
            grammar.check_host("[2001:db8::g]")
    assert "192.0.2.256" not in grammar._HOSTS_OK


# -- Via and address texts parsed lately ------------------------------------------------------------


def test_a_via_parsed_again_is_a_new_object_unchanged_by_edits_of_the_last() -> None:
    text = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKmemo1;rport"
    first = headers_module.parse_via(text)
    first.params.set("received", "198.51.100.7")
    first.params.set("rport", "4000")
    first.host, first.port = "elsewhere.example.test", 1
    again = headers_module.parse_via(text)
    assert again is not first and again.params is not first.params
    assert str(again) == text
    assert (again.host, again.port, again.branch, again.received) == (
        "192.0.2.1", 5060, "z9hG4bKmemo1", None,
    )  # fmt: skip


def test_an_address_parsed_again_is_a_new_object_unchanged_by_edits_of_the_last() -> None:
    text = '"Alice" <sip:alice@ims.example.test>;tag=a1'
    first = headers_module.parse_address(text, "To", headers_module.Address)
    first.params.set("tag", "changed")
    first.display = None
    assert str(first.uri) == "sip:alice@ims.example.test"
    first.uri = parse_uri("sip:mallory@example.test")
    again = headers_module.parse_address(text, "To", headers_module.Address)
    assert again is not first and again.params is not first.params
    assert (again.display, again.tag, str(again.uri)) == (
        '"Alice"', "a1", "sip:alice@ims.example.test",
    )  # fmt: skip
    assert str(again) == text
    # a Contact of the same text is a Contact, not the Address kept for it
    contact = headers_module.parse_address(text, "Contact", headers_module.Contact)
    assert type(contact) is headers_module.Contact and str(contact) == text


def test_a_bad_via_or_address_is_refused_every_time() -> None:
    for _ in range(3):
        with pytest.raises(ParseError):
            headers_module.parse_via("SIP/2.0/UDP host;branch")
        with pytest.raises(ParseError, match="in From"):
            headers_module.parse_address("<sip:a@b", "From", headers_module.Address)


def test_via_and_address_memos_give_what_a_fresh_parse_gives() -> None:
    """Seeded texts, each parsed twice (the second from the memo) and once without it."""
    rng = random.Random(13)
    hosts = ["192.0.2.1", "[2001:db8::1]", "pbx.example.test", "Host.Example.Test"]
    params = [";branch=z9hG4bK{n}", ";rport", ";rport=5062", ";received=192.0.2.9", ";ttl=3",
              ";maddr=192.0.2.200", ";x", ";X=Y", ";branch=", ";ttl=999", ";received"]  # fmt: skip
    for n in range(3000):
        via = f"SIP/2.0/{rng.choice(['UDP', 'tcp', 'TLS'])} {rng.choice(hosts)}"
        via += rng.choice(["", ":5060", ":65536", ":7"])
        via += "".join(rng.choice(params) for _ in range(rng.randrange(4))).format(n=n % 50)
        address = rng.choice(['"Bob" ', "Bob ", "", '"a\\"b" ']) + rng.choice(
            ["<sip:bob@b.example>", "sip:bob@b.example", "<tel:+1555>", "<sip:b@x", "sip:b@x?h=1"]
        ) + "".join(rng.choice([";tag=t1", ";expires=30", ";q=0.5", ";lr", ";=x"]) for _ in range(2))
        for text, memo, fresh in (
            (via, headers_module.parse_via, headers_module._parse_via),
            (address, lambda t: headers_module.parse_address(t, "To", headers_module.Address),
             lambda t: headers_module._parse_address(t, "To", headers_module.Address)),
        ):  # fmt: skip
            outcomes = []
            for parse in (memo, memo, fresh):
                try:
                    value = parse(text)
                except ParseError as error:
                    outcomes.append(("error", str(error)))
                else:
                    shape = [str(value), repr(value.params.items())]
                    if isinstance(value, headers_module.Via):
                        shape += [value.host, str(value.port), value.transport]
                    else:
                        shape += [str(value.display), str(value.bracketed)]
                    outcomes.append(("ok", "|".join(shape)))
            assert outcomes[0] == outcomes[1] == outcomes[2], text


def test_forget_recent_texts_empties_the_uri_via_and_address_memories() -> None:
    """What a server calls once a flood is over (imscore.server.memtrim): nothing of the flood's
    texts stays, and what is parsed next is parsed and remembered anew."""
    headers_module.parse_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKforget")
    headers_module.parse_address("<sip:forget@example.test>;tag=f", "From", headers_module.Address)
    parse_uri("sip:forget@example.test")
    headers_module.forget_recent_texts()
    assert not headers_module._VIAS_SEEN and not headers_module._ADDRESSES_SEEN
    assert not uri_module._SEEN and not uri_module._AORS
    via = headers_module.parse_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKforget")
    assert via.branch == "z9hG4bKforget"
    assert list(headers_module._VIAS_SEEN) == ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKforget"]
