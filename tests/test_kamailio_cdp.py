"""imscore's S-CSCF Cx client against Kamailio's Diameter stack: Kamailio's cdp with
ims_diameter_server (tests/kamailio/cdp_hss.cfg) is the HSS of ``imscore serve --subscribers
cx://…``, its answers scripted in the config as JSON.

SIPp registers alice with Digest through imscore: our CER, MAR and SAR are decoded by cdp (the
config logs each request as ims_diameter_server's JSON, which the test reads back), and cdp's CEA,
MAA (a SIP-Auth-Data-Item with a nested SIP-Digest-Authenticate) and SAA (Annex E User-Data) are
decoded by us: the 401 is made with their H(A1) and realm, the 200's P-Associated-URI comes from
their User-Data. Their DIAMETER_ERROR_USER_UNKNOWN is our 404; their AKA item without a vector
(ims_diameter_server cannot send OctetStrings from a script, see the config) a clear 403.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from diameter_relay import DiameterRelay
from kamailio_support import (
    CONFIGS,
    Kamailio,
    free_tcp_port,
    free_udp_port,
    header,
    need_kamailio,
    responses,
    run_sipp,
    sipp_binary,
)
from test_registrar import Ue
from test_serve import Served, serve

from imscore.diameter import dictionary as d
from imscore.diameter.messages import result_of

DOMAIN = "ims.example.test"
SCSCF_HOST = f"scscf.{DOMAIN}"
IMPI = f"alice@{DOMAIN}"
IMPU = f"sip:alice@{DOMAIN}"
PASSWORD = "alice-secret"
AKA_IMPI = f"carol@{DOMAIN}"
AKA_IMPU = f"sip:carol@{DOMAIN}"
MODULES = ("pv", "sl", "xlog", "cdp", "cdp_avp", "ims_diameter_server")
V = d.VENDOR_3GPP
REQUEST = re.compile(r"imscore-test: request (\d+) ")


@dataclass
class Setup:
    kamailio: Kamailio
    imscore: Served
    workdir: Path
    #: cdp's Diameter port
    hss_port: int


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    need_kamailio(MODULES)
    sipp_binary()
    workdir = tmp_path_factory.mktemp("kamailio-cdp")
    port = free_tcp_port()
    cdp = workdir / "cdp_hss.xml"
    cdp.write_text(
        (CONFIGS / "cdp_hss.xml")
        .read_text()
        .format(fqdn=f"hss.{DOMAIN}", realm=DOMAIN, port=port, scscf_port=free_tcp_port())
    )
    ha1 = hashlib.md5(f"{IMPI}:{DOMAIN}:{PASSWORD}".encode()).hexdigest()
    kamailio = Kamailio(
        CONFIGS / "cdp_hss.cfg",
        workdir,
        {
            "SIP_PORT": free_udp_port(),
            "CDP_CONFIG": str(cdp),
            "IMPI": IMPI,
            "IMPU": IMPU,
            "REALM": DOMAIN,
            "HA1": ha1,
            "AKA_IMPI": AKA_IMPI,
            "AKA_IMPU": AKA_IMPU,
        },
    )
    kamailio.start(r"Acceptor opened sockets", timeout=20)
    try:
        url = f"cx://127.0.0.1:{port}?origin_host={SCSCF_HOST}&server_name=sip:{SCSCF_HOST}"
        imscore = serve("--listen", "udp:127.0.0.1:0", "--subscribers", url)
        try:
            yield Setup(kamailio, imscore, workdir, port)
        finally:
            assert imscore.stop() == 0, "\n".join(imscore.log)
    finally:
        kamailio.stop()
        assert not kamailio.crashed(), kamailio.log()[-4000:]


def logged_requests(kamailio: Kamailio) -> list[tuple[int, list[dict[str, Any]]]]:
    """Every request the config logged: its command code and ims_diameter_server's JSON of it."""
    log = kamailio.log()
    found = []
    decoder = json.JSONDecoder()
    for match in REQUEST.finditer(log):
        avps, _ = decoder.raw_decode(log, match.end())
        found.append((int(match.group(1)), avps))
    return found


def avp(avps: list[dict[str, Any]], code: int, vendor: int = 0) -> dict[str, Any]:
    matching = [a for a in avps if a["avpCode"] == code and a["vendorId"] == vendor]
    assert matching, f"AVP {code} (vendor {vendor}) missing from {avps}"
    return matching[0]


def test_digest_registration_with_kamailio_cdp_as_the_hss(setup: Setup) -> None:
    row = f"alice;{DOMAIN};[authentication username={IMPI} password={PASSWORD}]"
    messages = run_sipp(
        setup.imscore.addresses["udp"], Path(__file__).parent / "sipp" / "register-digest.xml", [row],
        setup.workdir / "register", DOMAIN,
    )  # fmt: skip
    (challenge,) = responses(messages, 401)
    www = header(challenge, "WWW-Authenticate")
    assert www is not None and f'realm="{DOMAIN}"' in www, www
    (ok,) = responses(messages, 200)
    # only their SAA's User-Data names tel:+15551230001 (imscore has no subscriber file here)
    assert header(ok, "P-Associated-URI") == f"<{IMPU}>, <tel:+15551230001>"

    requests = logged_requests(setup.kamailio)
    mars = [avps for command, avps in requests if command == d.MAR]
    sars = [avps for command, avps in requests if command == d.SAR]
    assert len(mars) == 1, requests
    mar = mars[0]
    # cdp decoded our MAR: each AVP with its code, vendor, M/V flags and value
    assert avp(mar, d.USER_NAME)["string"] == IMPI
    assert avp(mar, d.ORIGIN_HOST)["string"] == SCSCF_HOST
    assert avp(mar, d.DESTINATION_REALM)["string"] == DOMAIN
    public = avp(mar, d.PUBLIC_IDENTITY, V)
    assert (public["Flags"], public["string"]) == (192, IMPU)  # V and M set
    assert avp(mar, d.SERVER_NAME, V)["string"] == f"sip:{SCSCF_HOST}"
    assert avp(mar, d.SIP_NUMBER_AUTH_ITEMS, V)["int32"] == 1
    item = avp(mar, d.SIP_AUTH_DATA_ITEM, V)["list"]
    # the default profile allows Digest and AKA: the HSS is to pick (its "SIP Digest" answer did)
    assert avp(item, d.SIP_AUTHENTICATION_SCHEME, V)["string"] == "Unknown"
    vsai = avp(mar, d.VENDOR_SPECIFIC_APPLICATION_ID)["list"]
    assert (avp(vsai, d.VENDOR_ID)["int32"], avp(vsai, d.AUTH_APPLICATION_ID)["int32"]) == (
        V,
        d.CX_APPLICATION,
    )
    # and our SARs: the registration's, with the Server-Assignment-Type REGISTRATION
    types = [avp(sar, d.SERVER_ASSIGNMENT_TYPE, V)["int32"] for sar in sars]
    assert d.REGISTRATION in types, types
    registration = sars[types.index(d.REGISTRATION)]
    assert avp(registration, d.USER_NAME)["string"] == IMPI
    assert avp(registration, d.PUBLIC_IDENTITY, V)["string"] == IMPU


class _At:
    """What :class:`test_registrar.Ue` needs of a server: its UDP address."""

    def __init__(self, address: tuple[str, int]) -> None:
        self._address = address

    def address(self, transport: str) -> tuple[str, int]:
        return self._address


def test_an_aka_item_without_a_vector_is_a_clear_refusal(setup: Setup) -> None:
    """Their MAA for the AKA user names Digest-AKAv1-MD5 but carries no vector (the config cannot
    script one, see tests/kamailio/cdp_hss.cfg): our client decodes it and the registrar refuses
    with a status and a reason, not a challenge it could not check."""
    ue = Ue(_At(setup.imscore.addresses["udp"]), AKA_IMPI, None, AKA_IMPU)  # type: ignore[arg-type]
    empty = f'Digest username="{AKA_IMPI}", realm="{DOMAIN}", nonce="", uri="sip:{DOMAIN}", response=""'
    try:
        answer = ue.send(ue.request(authorization=empty))
    finally:
        ue.sock.close()
    assert (answer.status, answer.reason) == (
        403,
        "No authentication scheme the HSS and this S-CSCF share",
    )
    mars = [avps for command, avps in logged_requests(setup.kamailio) if command == d.MAR]
    assert any(avp(mar, d.USER_NAME)["string"] == AKA_IMPI for mar in mars)


def test_a_user_unknown_to_cdp_is_refused(setup: Setup) -> None:
    """DIAMETER_ERROR_USER_UNKNOWN (an Experimental-Result) from their HSS: the registrar's
    unknown-user answer, 404 by default (docs/ims-core.rst, the S-CSCF side)."""
    impi = f"mallory@{DOMAIN}"
    ue = Ue(_At(setup.imscore.addresses["udp"]), impi, "guess", f"sip:mallory@{DOMAIN}")  # type: ignore[arg-type]
    empty = f'Digest username="{impi}", realm="{DOMAIN}", nonce="", uri="sip:{DOMAIN}", response=""'
    try:
        answer = ue.send(ue.request(authorization=empty))
    finally:
        ue.sock.close()
    assert answer.status == 404, answer
    assert "Unknown user" in answer.reason, answer.reason
    assert any(impi in json.dumps(avps) for _, avps in logged_requests(setup.kamailio))


def test_cdp_answers_our_watchdog_and_takes_our_disconnect(setup: Setup) -> None:
    """Our DWRs (RFC 3539's watchdog, Tw 0.5 s here) answered by cdp with 2001, and the DPR we
    send as we stop: cdp drops the peer and closes the connection without a DPA (against imscore
    hss the same DPR gets its DPA, tests/test_cx_provider.py), and we stop cleanly either way. A
    second S-CSCF (its own Origin-Host) behind a recording relay."""
    with DiameterRelay(("127.0.0.1", setup.hss_port)) as relay:
        url = f"cx://127.0.0.1:{relay.port}?origin_host=wd.{DOMAIN}&watchdog=0.5"
        served = serve("--listen", "udp:127.0.0.1:0", "--subscribers", url)
        try:
            assert relay.wait_for(
                lambda ms: sum(m.command == d.DWR and not m.request for m in ms) >= 2
            ), relay.messages()
        finally:
            assert served.stop() == 0, "\n".join(served.log)
        messages = relay.messages()
    up = [m.command for m in messages if m.request]
    assert up[0] == d.CER and up.count(d.DWR) >= 2 and up[-1] == d.DPR, up
    dwas = [m for m in messages if m.command == d.DWR and not m.request]
    assert {result_of(m) for m in dwas} == {(d.SUCCESS, 0)}
    dropped = f"[wd.{DOMAIN}] Disconnecting from peer"
    assert dropped in setup.kamailio.log(), setup.kamailio.log()[-2000:]
    assert not any("Traceback" in line for line in served.log), served.log
