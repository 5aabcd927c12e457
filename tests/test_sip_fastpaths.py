"""The cheaper paths of the SIP message layer give what the general ones gave (issue 13).

The URI parser keeps the URIs it parsed lately, the header splitter skips the checks of a name it
has checked before, responses copy the request's lines in one pass and parameter look-ups lower-case
only when they must. Each test here pins a case where such a short cut could go wrong.
"""

from __future__ import annotations

import random

import pytest

from imscore.sip import ParseError, SipUri, TelUri, grammar, parse_message, parse_uri
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
