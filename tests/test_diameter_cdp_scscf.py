"""imscore's Diameter codec and HSS on octets another implementation wrote: the CER, MARs and SARs
that Kamailio 5.6.3's cdp sent for its S-CSCF (ims_auth, ims_registrar_scscf) while registering
alice (Digest) and carol (AKAv1-MD5) through tests/kamailio/scscf.cfg, recorded from the wire
into tests/data/cdp/scscf-*.hex.

Each is decoded, re-encoded to the same octets, read field by field, and the MAR and SAR are
answered by :class:`~imscore.diameter.hss.CxHss` as ``imscore hss`` would.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path

import pytest

from imscore.auth.aka import UeSim
from imscore.auth.milenage import Milenage
from imscore.diameter import dictionary as d
from imscore.diameter.codec import Avp, Message, decode_message
from imscore.diameter.hss import CxHss
from imscore.diameter.messages import result_of
from imscore.diameter.userdata import parse_user_data
from imscore.subscribers import MemorySubscriberStore, load_subscribers

DATA = Path(__file__).parent / "data" / "cdp"
DOMAIN = "ims.example.test"
SCSCF = "sip:scscf.ims.example.test:50600"
V = d.VENDOR_3GPP
#: the subscribers of the run the octets were recorded in (tests/test_kamailio_scscf.py's file)
SUBSCRIBERS = f"""subscribers:
  - impi: alice@{DOMAIN}
    password: alice-secret
    implicit_sets:
      - [sip:alice@{DOMAIN}, tel:+15551230001]
  - impi: carol@{DOMAIN}
    aka:
      k: fec86ba6eb707ed08905757b1bb44b8f
      op: dbc59adcb6f9a0ef735477b7fadf8374
      amf: 725c
      sqn: "000000000020"
    implicit_sets:
      - [sip:carol@{DOMAIN}, tel:+15551230003]
  - impi: erin@{DOMAIN}
    aka:
      k: fec86ba6eb707ed08905757b1bb44b8f
      op: dbc59adcb6f9a0ef735477b7fadf8374
      amf: 725c
      sqn: "000000000020"
    implicit_sets:
      - [sip:erin@{DOMAIN}]
"""


def octets(name: str) -> bytes:
    """A fixture's octets: its hex lines, '#' comment lines left out."""
    lines = (DATA / f"{name}.hex").read_text().splitlines()
    return bytes.fromhex("".join(line for line in lines if not line.startswith("#")))


def decoded(name: str) -> Message:
    raw = octets(name)
    message = decode_message(raw)
    assert message.encode() == raw, f"{name} does not re-encode to the octets cdp sent"
    return message


def text(message: Message | Avp, code: int, vendor: int = 0) -> str:
    found = message.find(code, vendor)
    assert found is not None, f"AVP {code} (vendor {vendor}) missing"
    return found.as_str()


def number(message: Message | Avp, code: int, vendor: int = 0) -> int:
    found = message.find(code, vendor)
    assert found is not None, f"AVP {code} (vendor {vendor}) missing"
    return found.as_u32()


def hss(tmp_path: Path) -> CxHss:
    path = tmp_path / "subscribers.yaml"
    path.write_text(SUBSCRIBERS)
    return CxHss(MemorySubscriberStore(load_subscribers(path)), "localhost", DOMAIN)


def test_cdp_cer() -> None:
    cer = decoded("scscf-cer")
    assert (cer.command, cer.application, cer.request) == (d.CER, 0, True)
    assert text(cer, d.ORIGIN_HOST) == "scscf.ims.example.test"
    assert text(cer, d.ORIGIN_REALM) == DOMAIN
    host = cer.find(d.HOST_IP_ADDRESS)
    assert host is not None and host.as_address() == "127.0.0.1"
    assert number(cer, d.VENDOR_ID) == V
    assert text(cer, d.PRODUCT_NAME) == "CDiameterPeer"
    assert number(cer, d.SUPPORTED_VENDOR_ID) == V
    # cdp offers Cx only inside Vendor-Specific-Application-Id (no top-level Auth-Application-Id)
    assert cer.find(d.AUTH_APPLICATION_ID) is None
    vsai = cer.find(d.VENDOR_SPECIFIC_APPLICATION_ID)
    assert vsai is not None
    assert (number(vsai, d.VENDOR_ID), number(vsai, d.AUTH_APPLICATION_ID)) == (V, d.CX_APPLICATION)


@pytest.mark.parametrize(
    ("name", "impi", "impu", "scheme"),
    [
        ("scscf-mar-md5", f"alice@{DOMAIN}", f"sip:alice@{DOMAIN}", "Digest-MD5"),
        ("scscf-mar-aka", f"carol@{DOMAIN}", f"sip:carol@{DOMAIN}", "Digest-AKAv1-MD5"),
    ],
)
def test_cdp_mar(name: str, impi: str, impu: str, scheme: str) -> None:
    mar = decoded(name)
    assert (mar.command, mar.application, mar.request, mar.proxiable) == (
        d.MAR,
        d.CX_APPLICATION,
        True,
        True,
    )
    assert text(mar, d.SESSION_ID).startswith("scscf.ims.example.test;")
    assert text(mar, d.DESTINATION_REALM) == DOMAIN
    assert mar.find(d.DESTINATION_HOST) is None  # cdp routes by realm (its DefaultRoute)
    assert number(mar, d.AUTH_SESSION_STATE) == d.NO_STATE_MAINTAINED
    assert text(mar, d.USER_NAME) == impi
    assert text(mar, d.PUBLIC_IDENTITY, V) == impu
    assert text(mar, d.SERVER_NAME, V) == SCSCF
    assert number(mar, d.SIP_NUMBER_AUTH_ITEMS, V) == 1
    item = mar.find(d.SIP_AUTH_DATA_ITEM, V)
    assert item is not None
    assert text(item, d.SIP_AUTHENTICATION_SCHEME, V) == scheme
    assert item.find(d.SIP_AUTHORIZATION, V) is None  # no AUTS: not a re-synchronisation


def test_cdp_sar_carries_a_call_id_avp_of_another_vendor() -> None:
    """ims_registrar_scscf adds AVP 494 with vendor 50 (the REGISTER's Call-ID), not M-flagged;
    the codec keeps it and the HSS has no need of it."""
    sar = decoded("scscf-sar-md5")
    extra = sar.find(494, 50)
    assert extra is not None and not extra.mandatory
    assert extra.data.decode().endswith("@127.0.0.1")


@pytest.mark.parametrize(
    ("name", "impi", "impu"),
    [
        ("scscf-sar-md5", f"alice@{DOMAIN}", f"sip:alice@{DOMAIN}"),
        ("scscf-sar-aka", f"carol@{DOMAIN}", f"sip:carol@{DOMAIN}"),
    ],
)
def test_cdp_sar(name: str, impi: str, impu: str) -> None:
    sar = decoded(name)
    assert (sar.command, sar.application, sar.request) == (d.SAR, d.CX_APPLICATION, True)
    assert text(sar, d.USER_NAME) == impi
    assert text(sar, d.PUBLIC_IDENTITY, V) == impu
    assert text(sar, d.SERVER_NAME, V) == SCSCF
    assert number(sar, d.SERVER_ASSIGNMENT_TYPE, V) == d.REGISTRATION
    assert number(sar, d.USER_DATA_ALREADY_AVAILABLE, V) == 0


def test_the_hss_answers_cdps_digest_mar_with_the_ha1(tmp_path: Path) -> None:
    maa = asyncio.run(hss(tmp_path).handle(decoded("scscf-mar-md5")))
    assert (maa.command, maa.request) == (d.MAR, False)
    assert result_of(maa) == (d.SUCCESS, 0)
    mar = decoded("scscf-mar-md5")
    assert text(maa, d.SESSION_ID) == text(mar, d.SESSION_ID)
    assert (maa.hop_by_hop, maa.end_to_end) == (mar.hop_by_hop, mar.end_to_end)
    assert text(maa, d.PUBLIC_IDENTITY, V) == f"sip:alice@{DOMAIN}"
    item = maa.find(d.SIP_AUTH_DATA_ITEM, V)
    assert item is not None
    digest = item.find(d.SIP_DIGEST_AUTHENTICATE, V)
    assert digest is not None
    expected = hashlib.md5(f"alice@{DOMAIN}:{DOMAIN}:alice-secret".encode()).hexdigest()
    assert text(digest, d.DIGEST_HA1) == expected
    assert text(digest, d.DIGEST_REALM) == DOMAIN


def test_the_hss_answers_cdps_aka_mar_with_a_vector(tmp_path: Path) -> None:
    maa = asyncio.run(hss(tmp_path).handle(decoded("scscf-mar-aka")))
    assert result_of(maa) == (d.SUCCESS, 0)
    item = maa.find(d.SIP_AUTH_DATA_ITEM, V)
    assert item is not None
    assert text(item, d.SIP_AUTHENTICATION_SCHEME, V) == "Digest-AKAv1-MD5"
    authenticate = item.find(d.SIP_AUTHENTICATE, V)
    ck, ik = item.find(d.CONFIDENTIALITY_KEY, V), item.find(d.INTEGRITY_KEY, V)
    assert authenticate is not None and len(authenticate.data) == 32  # RAND || AUTN
    assert ck is not None and len(ck.data) == 16 and ik is not None and len(ik.data) == 16


def test_the_hss_answers_cdps_sar_with_annex_e_user_data(tmp_path: Path) -> None:
    server = hss(tmp_path)
    saa = asyncio.run(server.handle(decoded("scscf-sar-aka")))
    assert (saa.command, saa.request) == (d.SAR, False)
    assert result_of(saa) == (d.SUCCESS, 0)
    assert text(saa, d.USER_NAME) == f"carol@{DOMAIN}"
    user_data = saa.find(d.USER_DATA, V)
    assert user_data is not None
    impi, identities = parse_user_data(user_data.data)
    assert impi == f"carol@{DOMAIN}"
    assert identities == [(f"sip:carol@{DOMAIN}", False), ("tel:+15551230003", False)]


def test_cdps_resync_mar_says_unknown_in_lower_case() -> None:
    mar = decoded("scscf-mar-aka-resync")
    assert text(mar, d.USER_NAME) == f"erin@{DOMAIN}"
    item = mar.find(d.SIP_AUTH_DATA_ITEM, V)
    assert item is not None
    assert text(item, d.SIP_AUTHENTICATION_SCHEME, V) == "unknown"
    authorization = item.find(d.SIP_AUTHORIZATION, V)
    assert authorization is not None and len(authorization.data) == 30  # RAND || AUTS


def test_the_hss_resynchronises_on_cdps_lower_case_unknown_scheme(tmp_path: Path) -> None:
    """Found against Kamailio's S-CSCF: the HSS took only "Unknown" for "let the HSS pick" and
    answered this MAR 5006 DIAMETER_ERROR_AUTH_SCHEME_NOT_SUPPORTED, and ims_auth then refused
    the UE (403). Now the AUTS re-synchronises and the new vector is fresh for the USIM."""
    maa = asyncio.run(hss(tmp_path).handle(decoded("scscf-mar-aka-resync")))
    assert result_of(maa) == (d.SUCCESS, 0)
    item = maa.find(d.SIP_AUTH_DATA_ITEM, V)
    assert item is not None
    assert text(item, d.SIP_AUTHENTICATION_SCHEME, V) == "Digest-AKAv1-MD5"
    authenticate = item.find(d.SIP_AUTHENTICATE, V)
    assert authenticate is not None
    milenage = Milenage(
        bytes.fromhex("fec86ba6eb707ed08905757b1bb44b8f"),
        op=bytes.fromhex("dbc59adcb6f9a0ef735477b7fadf8374"),
    )
    # the USIM that sent the AUTS (SQN_MS 0x100000) accepts the new vector: no second AUTS
    answer = UeSim(milenage, sqn_ms=0x100000).respond(base64.b64encode(authenticate.data))
    assert answer.auts is None
