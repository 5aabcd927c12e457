"""imscore's Diameter codec and HSS on octets Kamailio's I-CSCF wrote: the CER, UARs, LIR and DWR
that Kamailio 5.6.3's cdp (ims_icscf, tests/kamailio/icscf.cfg) sent to ``imscore hss`` while
tests/test_kamailio_icscf.py ran, recorded from the wire into tests/data/cdp/icscf-*.hex (see the
README there).

Each is decoded, re-encoded to the very same octets (the codec keeps the order, flags and
padding of every AVP), read field by field, and the UAR and LIR are answered by
:class:`~imscore.diameter.hss.CxHss` as ``imscore hss`` answered them in that run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_diameter_cdp_scscf import decoded, number, octets, text

from imscore.diameter import dictionary as d
from imscore.diameter.codec import FLAG_P, FLAG_R, HEADER_LENGTH, Message, decode_avps
from imscore.diameter.hss import CxHss
from imscore.diameter.messages import result_of
from imscore.subscribers import MemorySubscriberStore, load_subscribers

DOMAIN = "ims.example.test"
ICSCF = f"icscf.{DOMAIN}"
SCSCF = "sip:127.0.0.1:5070"
V = d.VENDOR_3GPP
#: UAR-Flags (TS 29.229 §6.3.44): ims_icscf adds it only for an emergency registration
UAR_FLAGS = 637
#: the subscribers of the run the octets were recorded in (tests/test_kamailio_icscf.py's file)
SUBSCRIBERS = f"""subscribers:
  - impi: alice@{DOMAIN}
    password: alice-secret
    implicit_sets:
      - [sip:alice@{DOMAIN}, tel:+15551230001]
  - impi: bob@{DOMAIN}
    password: bob-secret
    implicit_sets:
      - [sip:bob@{DOMAIN}]
"""
NAMES = ["icscf-cer", "icscf-uar", "icscf-uar-unknown-user", "icscf-lir", "icscf-dwr"]


def hss(tmp_path: Path) -> CxHss:
    path = tmp_path / "subscribers.yaml"
    path.write_text(SUBSCRIBERS)
    return CxHss(
        MemorySubscriberStore(load_subscribers(path)), "localhost", DOMAIN, server_name=SCSCF
    )


@pytest.mark.parametrize("name", NAMES)
def test_the_octets_decode_and_re_encode_exactly(name: str) -> None:
    raw = octets(name)
    message = decoded(name)  # asserts message.encode() == raw
    assert int.from_bytes(raw[1:4], "big") == len(raw)
    # every AVP, grouped ones' children too, re-encodes to its own octets
    assert b"".join(avp.encode() for avp in decode_avps(raw[HEADER_LENGTH:])) == raw[HEADER_LENGTH:]
    for avp in message.avps:
        if avp.code == d.VENDOR_SPECIFIC_APPLICATION_ID:
            assert b"".join(child.encode() for child in avp.children()) == avp.data


def test_icscf_cer() -> None:
    cer = decoded("icscf-cer")
    assert (cer.command, cer.application, cer.request, cer.proxiable) == (d.CER, 0, True, False)
    assert octets("icscf-cer")[4] == FLAG_R
    assert text(cer, d.ORIGIN_HOST) == ICSCF
    assert text(cer, d.ORIGIN_REALM) == DOMAIN
    host = cer.find(d.HOST_IP_ADDRESS)
    assert host is not None and host.as_address() == "127.0.0.1"
    assert number(cer, d.VENDOR_ID) == V
    product = cer.find(d.PRODUCT_NAME)
    assert product is not None and product.as_str() == "CDiameterPeer"
    assert not product.mandatory  # RFC 6733 §5.3.1: Product-Name has no M bit
    assert number(cer, d.SUPPORTED_VENDOR_ID) == V
    # Cx offered inside Vendor-Specific-Application-Id only, no Origin-State-Id
    assert cer.find(d.AUTH_APPLICATION_ID) is None
    assert cer.find(d.ORIGIN_STATE_ID) is None
    vsai = cer.find(d.VENDOR_SPECIFIC_APPLICATION_ID)
    assert vsai is not None
    assert (number(vsai, d.VENDOR_ID), number(vsai, d.AUTH_APPLICATION_ID)) == (V, d.CX_APPLICATION)
    assert [avp.code for avp in cer.avps] == [
        d.ORIGIN_HOST, d.ORIGIN_REALM, d.HOST_IP_ADDRESS, d.VENDOR_ID, d.PRODUCT_NAME,
        d.VENDOR_SPECIFIC_APPLICATION_ID, d.SUPPORTED_VENDOR_ID,
    ]  # fmt: skip


def _cx_request(message: Message, command: int) -> None:
    """What every Cx request of ims_icscf carries (TS 29.229 §6.1)."""
    assert (message.command, message.application) == (command, d.CX_APPLICATION)
    assert (message.request, message.proxiable, message.error) == (True, True, False)
    assert message.flags == FLAG_R | FLAG_P
    session = text(message, d.SESSION_ID)
    assert session.startswith(f"{ICSCF};") and len(session.split(";")) == 3
    assert message.avps[0].code == d.SESSION_ID  # RFC 6733 §8.8: first
    assert text(message, d.ORIGIN_HOST) == ICSCF
    assert text(message, d.ORIGIN_REALM) == DOMAIN
    assert text(message, d.DESTINATION_REALM) == DOMAIN  # cxdx_dest_realm
    assert message.find(d.DESTINATION_HOST) is None  # routed by realm (cdp's DefaultRoute)
    assert number(message, d.AUTH_SESSION_STATE) == d.NO_STATE_MAINTAINED
    vsai = message.find(d.VENDOR_SPECIFIC_APPLICATION_ID)
    assert vsai is not None
    assert (number(vsai, d.VENDOR_ID), number(vsai, d.AUTH_APPLICATION_ID)) == (V, d.CX_APPLICATION)
    for avp in message.avps:  # every 3GPP AVP is vendor 10415 with V and M set
        if avp.code in (d.PUBLIC_IDENTITY, d.VISITED_NETWORK_IDENTIFIER):
            assert (avp.vendor, avp.mandatory) == (V, True)


@pytest.mark.parametrize(
    ("name", "user"), [("icscf-uar", "alice"), ("icscf-uar-unknown-user", "nobody")]
)
def test_icscf_uar(name: str, user: str) -> None:
    uar = decoded(name)
    _cx_request(uar, d.UAR)
    assert text(uar, d.USER_NAME) == f"{user}@{DOMAIN}"  # from the To: no Authorization yet
    assert text(uar, d.PUBLIC_IDENTITY, V) == f"sip:{user}@{DOMAIN}"
    # the P-Visited-Network-ID the I-CSCF's config added (no P-CSCF in front)
    assert text(uar, d.VISITED_NETWORK_IDENTIFIER, V) == DOMAIN
    # REGISTRATION is the default: ims_icscf leaves User-Authorization-Type out
    assert uar.find(d.USER_AUTHORIZATION_TYPE, V) is None
    assert uar.find(UAR_FLAGS, V) is None


def test_icscf_lir() -> None:
    lir = decoded("icscf-lir")
    _cx_request(lir, d.LIR)
    assert text(lir, d.PUBLIC_IDENTITY, V) == f"sip:bob@{DOMAIN}"
    assert lir.find(d.USER_NAME) is None  # an LIR names the callee's IMPU only
    assert lir.find(d.ORIGINATING_REQUEST, V) is None


def test_icscf_dwr() -> None:
    dwr = decoded("icscf-dwr")
    assert (dwr.command, dwr.application, dwr.request, dwr.proxiable) == (d.DWR, 0, True, False)
    assert [avp.code for avp in dwr.avps] == [d.ORIGIN_HOST, d.ORIGIN_REALM]
    assert text(dwr, d.ORIGIN_HOST) == ICSCF


def test_the_hss_answers_icscfs_uar_with_the_scscf_name(tmp_path: Path) -> None:
    uar = decoded("icscf-uar")
    uaa = asyncio.run(hss(tmp_path).handle(uar))
    assert (uaa.command, uaa.request, uaa.proxiable) == (d.UAR, False, True)
    assert (uaa.hop_by_hop, uaa.end_to_end) == (uar.hop_by_hop, uar.end_to_end)
    assert text(uaa, d.SESSION_ID) == text(uar, d.SESSION_ID)
    assert result_of(uaa) == (d.FIRST_REGISTRATION, V)
    assert text(uaa, d.SERVER_NAME, V) == SCSCF
    assert number(uaa, d.AUTH_SESSION_STATE) == d.NO_STATE_MAINTAINED


def test_the_hss_answers_icscfs_uar_for_an_unknown_user_5001(tmp_path: Path) -> None:
    uaa = asyncio.run(hss(tmp_path).handle(decoded("icscf-uar-unknown-user")))
    assert result_of(uaa) == (d.ERROR_USER_UNKNOWN, V)
    assert uaa.find(d.SERVER_NAME, V) is None


def test_the_hss_answers_icscfs_lir_for_an_unregistered_user(tmp_path: Path) -> None:
    """bob is not registered in this fresh HSS and has no iFCs: DIAMETER_ERROR_IDENTITY_NOT_
    REGISTERED (in the recorded run he was registered, and the LIA named the S-CSCF)."""
    lia = asyncio.run(hss(tmp_path).handle(decoded("icscf-lir")))
    assert (lia.command, lia.request) == (d.LIR, False)
    assert result_of(lia) == (d.ERROR_IDENTITY_NOT_REGISTERED, V)
