"""The Diameter codec (imscore.diameter): round trips, hand-assembled octets, malformed input.

The byte strings below are assembled by hand from the layouts of RFC 6733 §3 (the 20-octet
header: version, 24-bit length, flags R P E T, 24-bit command code, Application-ID, Hop-by-Hop,
End-to-End) and §4.1 (the AVP header: code, flags V M P, 24-bit length without padding, Vendor-ID
when V is set, data padded to 4 octets), not produced by the encoder under test.
"""

from __future__ import annotations

import random

import pytest

from imscore.diameter import dictionary as d
from imscore.diameter.codec import Avp, DiameterDecodeError, Message, decode_avps, decode_message
from imscore.diameter.framer import FramingError, StreamFramer
from imscore.diameter.messages import experimental_result, result_of

# DWR (280 = 0x000118), R flag, app 0, hop-by-hop 0x11223344, end-to-end 0x55667788, then
# Origin-Host (264 = 0x108, M, length 8 + 11 = 19, one octet of padding) "hss.example" and
# Origin-Realm (296 = 0x128, M, length 8 + 7 = 15, one octet of padding) "example": 20 + 20 + 16 = 56.
DWR_BYTES = bytes.fromhex(
    "01000038" "80000118" "00000000" "11223344" "55667788"
    "00000108" "40000013" + b"hss.example".hex() + "00"
    "00000128" "4000000f" + b"example".hex() + "00"
)  # fmt: skip

# Public-Identity (601 = 0x259), flags V M (0xc0), length 12 + 7 = 19, Vendor-ID 10415 = 0x28af,
# "sip:a@b", one octet of padding (RFC 6733 §4.1).
PUBLIC_IDENTITY_BYTES = bytes.fromhex("00000259c0000013000028af" + b"sip:a@b".hex() + "00")

# Experimental-Result (297 = 0x129, M, length 8 + 12 + 12 = 32) { Vendor-Id (266 = 0x10a) 10415,
# Experimental-Result-Code (298 = 0x12a) 5001 = 0x1389 } (RFC 6733 §4.4 Grouped, §7.6).
EXPERIMENTAL_BYTES = bytes.fromhex(
    "00000129" "40000020" "0000010a" "4000000c" "000028af" "0000012a" "4000000c" "00001389"
)  # fmt: skip


def test_a_dwr_encodes_to_the_rfc_6733_header_and_avp_layout() -> None:
    """RFC 6733 §3 header and §4.1 AVPs with padding, compared with hand-assembled octets."""
    message = Message(
        command=d.DWR,
        application=0,
        avps=(Avp.utf8(d.ORIGIN_HOST, "hss.example"), Avp.utf8(d.ORIGIN_REALM, "example")),
        hop_by_hop=0x11223344,
        end_to_end=0x55667788,
    )
    assert message.encode() == DWR_BYTES
    decoded = decode_message(DWR_BYTES)
    assert decoded == message
    assert decoded.request and not decoded.proxiable and not decoded.error
    assert decoded.find(d.ORIGIN_HOST) is not None
    assert decoded.find(d.ORIGIN_REALM).as_str() == "example"  # type: ignore[union-attr]


def test_a_vendor_avp_carries_its_vendor_id_and_the_v_flag() -> None:
    """RFC 6733 §4.1: with V set the header is 12 octets and the length counts them, not the pad."""
    avp = Avp.utf8(d.PUBLIC_IDENTITY, "sip:a@b", d.VENDOR_3GPP)
    assert avp.encode() == PUBLIC_IDENTITY_BYTES
    (back,) = decode_avps(PUBLIC_IDENTITY_BYTES)
    assert back == avp and back.vendor == 10415 and back.mandatory and back.as_str() == "sip:a@b"


def test_experimental_result_is_a_grouped_avp_and_reads_back_as_the_result() -> None:
    """RFC 6733 §4.4 (Grouped) and §7.6 (Experimental-Result), hand-assembled."""
    assert experimental_result(d.ERROR_USER_UNKNOWN).encode() == EXPERIMENTAL_BYTES
    message = Message(d.UAR, d.CX_APPLICATION, decode_avps(EXPERIMENTAL_BYTES), request=False)
    assert result_of(message) == (5001, 10415)
    assert result_of(Message(d.UAR, 0, (Avp.u32(d.RESULT_CODE, 2001),))) == (2001, 0)
    assert result_of(Message(d.UAR, 0)) is None


def test_every_avp_format_and_every_flag_round_trips() -> None:
    avps = (
        Avp.u32(d.RESULT_CODE, 0xFFFFFFFF),
        Avp.i32(9999, -5, mandatory=False),
        Avp.u64(9998, 1 << 40, 77),
        Avp.utf8(d.USER_NAME, "ünïcode@ims.example.test"),
        Avp.octets(d.SIP_AUTHENTICATE, bytes(range(32)), d.VENDOR_3GPP),
        Avp.address(d.HOST_IP_ADDRESS, "127.0.0.1"),
        Avp.address(d.HOST_IP_ADDRESS, "::1"),
        Avp(9997, b"x", 0, mandatory=True, protected=True),
        Avp.group(
            d.SIP_AUTH_DATA_ITEM,
            [
                Avp.u32(d.SIP_ITEM_NUMBER, 1, d.VENDOR_3GPP),
                Avp.octets(d.INTEGRITY_KEY, b"k" * 5, d.VENDOR_3GPP),
            ],
            d.VENDOR_3GPP,
        ),
    )
    message = Message(
        d.MAR, d.CX_APPLICATION, avps, request=False, proxiable=True, error=True, retransmit=True,
        hop_by_hop=1, end_to_end=0xFFFFFFFF,
    )  # fmt: skip
    raw = message.encode()
    assert len(raw) % 4 == 0 and int.from_bytes(raw[1:4], "big") == len(raw)
    assert raw[4] == 0x70  # P E T, no R
    back = decode_message(raw)
    assert back == message
    assert back.avps[0].as_u32() == 0xFFFFFFFF
    assert back.avps[1].as_i32() == -5 and not back.avps[1].mandatory
    assert back.avps[2].as_u64() == 1 << 40 and back.avps[2].vendor == 77
    assert back.avps[3].as_str() == "ünïcode@ims.example.test"
    assert back.avps[5].as_address() == "127.0.0.1" and back.avps[6].as_address() == "::1"
    assert back.avps[7].protected
    item = back.avps[8]
    assert item.find(d.SIP_ITEM_NUMBER, d.VENDOR_3GPP).as_u32() == 1  # type: ignore[union-attr]
    assert item.find(d.INTEGRITY_KEY, d.VENDOR_3GPP).data == b"kkkkk"  # type: ignore[union-attr]
    assert item.find(d.INTEGRITY_KEY) is None  # the vendor is part of the name


def _with(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value) :]


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (DWR_BYTES[:19], 5015, "too short for a Diameter header"),
        (_with(DWR_BYTES, 0, b"\x02"), 5011, "version 2"),
        (_with(DWR_BYTES, 1, b"\x00\x00\x37"), 5015, "not a multiple of 4"),
        (_with(DWR_BYTES, 1, b"\x00\x00\x10"), 5015, "under 20"),
        (_with(DWR_BYTES, 1, b"\x00\x00\x3c"), 5015, "says 60 octets, 56 were given"),
        (_with(DWR_BYTES, 4, b"\xa0"), 3008, "E on a request"),
        (_with(DWR_BYTES, 4, b"\x81"), 3008, "reserved bits"),
        (_with(DWR_BYTES, 24, b"\x41"), 3009, "reserved flag bits"),
        (_with(DWR_BYTES, 25, b"\x00\x00\x07"), 5014, "shorter than its 8-octet header"),
        (_with(DWR_BYTES, 24, b"\xc0\x00\x00\x0b"), 5014, "shorter than its 12-octet header"),
        (_with(DWR_BYTES, 25, b"\x00\x00\xff"), 5014, "runs past the end"),
        (_with(DWR_BYTES, 1, b"\x00\x00\x1c")[:28], 5014, "runs past the end"),
        (_with(DWR_BYTES, 1, b"\x00\x00\x18")[:24], 5014, "too short for an AVP header"),
    ],
)
def test_malformed_octets_are_a_decode_error_with_the_result_code_to_answer(
    raw: bytes, code: int, words: str
) -> None:
    with pytest.raises(DiameterDecodeError) as info:
        decode_message(raw)
    assert info.value.result_code == code
    assert words in str(info.value)
    if code != 5015 or len(raw) >= 20:  # the header was readable: the answer can name the request
        assert info.value.header is not None and info.value.header.hop_by_hop == 0x11223344


def test_an_unpadded_last_avp_and_bad_typed_data_are_decode_errors() -> None:
    unpadded = bytes.fromhex("0000010840000009") + b"h"
    with pytest.raises(DiameterDecodeError, match="not padded") as info:
        decode_avps(unpadded)
    assert info.value.result_code == 5014
    with pytest.raises(DiameterDecodeError, match="expected 4") as info:
        Avp(d.RESULT_CODE, b"\x00\x01").as_u32()
    assert info.value.result_code == 5014
    with pytest.raises(DiameterDecodeError, match="not UTF-8") as info:
        Avp(d.USER_NAME, b"\xff\xfe").as_str()
    assert info.value.result_code == 5004
    with pytest.raises(DiameterDecodeError, match="Address"):
        Avp(d.HOST_IP_ADDRESS, b"\x00\x01\x7f").as_address()
    with pytest.raises(DiameterDecodeError):
        Avp(d.SIP_AUTH_DATA_ITEM, b"\x00\x00\x02").children()


def test_random_corruption_never_raises_anything_but_a_decode_error() -> None:
    """10,000 mutations (flipped octets, cuts, inserted garbage) of a real MAA-shaped message."""
    base = Message(
        d.MAR, d.CX_APPLICATION,
        (Avp.utf8(d.SESSION_ID, "s;1;2"), experimental_result(2001),
         Avp.group(d.SIP_AUTH_DATA_ITEM, [Avp.octets(d.SIP_AUTHENTICATE, bytes(32), d.VENDOR_3GPP)],
                   d.VENDOR_3GPP)),
    ).encode()  # fmt: skip
    rng = random.Random(6733)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(10_000):
        raw = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            choice = rng.random()
            if choice < 0.6 and raw:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            elif choice < 0.8:
                del raw[rng.randrange(len(raw) + 1) :]
            else:
                at = rng.randrange(len(raw) + 1)
                raw[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        try:
            message = decode_message(bytes(raw))
            for avp in message.avps:  # reading grouped data is part of decoding
                if avp.code == d.SIP_AUTH_DATA_ITEM or avp.code == d.EXPERIMENTAL_RESULT:
                    avp.children()
            outcomes["ok"] += 1
        except DiameterDecodeError:
            outcomes["error"] += 1
    assert outcomes["error"] > 5000 and outcomes["ok"] > 0


def test_the_framer_cuts_a_stream_at_message_boundaries() -> None:
    other = Message(d.DPR, 0, (Avp.u32(d.DISCONNECT_CAUSE, 0),), hop_by_hop=2).encode()
    stream = DWR_BYTES + other + DWR_BYTES
    framer = StreamFramer()
    got: list[bytes] = []
    for octet in range(len(stream)):  # one octet at a time
        got += framer.feed(stream[octet : octet + 1])
    assert got == [DWR_BYTES, other, DWR_BYTES] and framer.pending == 0
    framer = StreamFramer()
    assert framer.feed(stream + DWR_BYTES[:7]) == [DWR_BYTES, other, DWR_BYTES]
    assert framer.pending == 7
    assert framer.feed(DWR_BYTES[7:]) == [DWR_BYTES]


@pytest.mark.parametrize(
    ("head", "words"),
    [
        (b"GET / HTTP/1.1\r\n", "version 71"),
        (b"\x01\x00\x00\x13", "not a multiple of 4"),
        (b"\x01\x00\x00\x0c", "under 20"),
        (b"\x01\xff\xff\xfc", "above 1048576"),
    ],
)
def test_a_stream_that_is_not_diameter_is_a_framing_error(head: bytes, words: str) -> None:
    framer = StreamFramer()
    assert framer.feed(head[:3]) == []
    with pytest.raises(FramingError, match=words):
        framer.feed(head[3:])
