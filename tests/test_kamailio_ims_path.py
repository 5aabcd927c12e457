"""The whole path of issue 17's test 3: UE -> Kamailio P-CSCF -> Kamailio I-CSCF -> imscore S-CSCF,
with ``imscore hss`` as the HSS, every part a real process on free loopback ports.

The I-CSCF, the S-CSCF (``imscore serve --subscribers cx://``) and the HSS are those of
tests/test_kamailio_icscf.py; the P-CSCF is tests/kamailio/pcscf.cfg (tests/test_kamailio_pcscf.py)
with the I-CSCF as its next hop for REGISTERs and reg-event SUBSCRIBEs. The UE is a phone of
tests/sipua.py talking only to the P-CSCF.

* the UE registers: P-CSCF (Path) -> I-CSCF (UAR) -> imscore (MAR: 401; SAR: 200 with the set's
  P-Associated-URI and the Service-Route), and back;
* the P-CSCF subscribes to the user's reg event (through the I-CSCF, LIR) and imscore NOTIFYs it;
* a call to the user, sent to the I-CSCF, reaches the UE: LIR, imscore, the Path, the P-CSCF;
* an RTR from the HSS (``imscore hss rtr``) de-registers the user: imscore's NOTIFY tells the
  P-CSCF, and the call that follows finds nobody.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from kamailio_support import CONFIGS, Kamailio, dbtext_directory, free_udp_port, need_kamailio
from sipua import Caller, Phone
from test_kamailio_icscf import MODULES as ICSCF_MODULES
from test_kamailio_icscf import _running_core
from test_kamailio_pcscf import UdpPhone, _wait, busy_call

from imscore.sip import Response

DOMAIN = "ims.example.test"
ALICE = f"sip:alice@{DOMAIN}"
PCSCF_MODULES = ("path", "pua", "db_text", "ims_usrloc_pcscf", "ims_ipsec_pcscf", "ims_registrar_pcscf")


def _call(icscf: tuple[str, int], phone: Phone | None) -> Response:
    """A call to alice from another network, sent to the I-CSCF; ``phone`` (when given) is busy."""
    caller = Caller(icscf, "carol")
    try:
        return busy_call(caller, phone)[0]
    finally:
        caller.close()


def test_ue_pcscf_icscf_imscore_and_the_hss(tmp_path: Path) -> None:
    need_kamailio(ICSCF_MODULES + PCSCF_MODULES)
    control = tmp_path / "hss.sock"
    (tmp_path / "core").mkdir()
    with _running_core(tmp_path / "core", hss_options=("--control", str(control))) as core:
        icscf_uri = f"sip:{core.icscf[0]}:{core.icscf[1]}"
        pcscf_port = free_udp_port()
        pcscf_uri = f"sip:127.0.0.1:{pcscf_port}"
        (tmp_path / "pcscf").mkdir()
        pcscf = Kamailio(
            CONFIGS / "pcscf.cfg",
            tmp_path / "pcscf",
            {
                "SIP_PORT": pcscf_port,
                "SCSCF": icscf_uri,  # the P-CSCF's next hop for REGISTERs and its SUBSCRIBE: the I-CSCF
                "PCSCF_URI": pcscf_uri,
                "DB_URL": f"text://{dbtext_directory(tmp_path / 'pcscf-db', ['pua'])}",
            },
        )
        phone = UdpPhone(("127.0.0.1", pcscf_port), "alice-app")
        try:
            pcscf.start(r"ims_registrar_pcscf|pua", 20)
            time.sleep(1.0)  # its children bind after the main process logs
            ok = phone.register()
            assert ok.status == 200, f"{ok.status} {ok.reason}\n{core.diagnostics()}"
            associated = " ".join(ok.headers.get_all("P-Associated-URI"))
            assert ALICE in associated and "tel:+15551230001" in associated
            assert ok.headers.get_all("Service-Route")
            pcscf.wait_for(r"pcscf: saved sip:alice@")

            # the P-CSCF's reg-event subscription, through the I-CSCF, answered by imscore's NOTIFY
            pcscf.wait_for(r"pcscf: reginfo NOTIFY handled", 15)

            # a call to alice: I-CSCF (LIR) -> imscore -> Path -> P-CSCF -> her phone
            assert _call(core.icscf, phone).status == 486
            pcscf.wait_for(r"pcscf: terminating INVITE")

            # the HSS de-registers alice (RTR); imscore tells the P-CSCF with a NOTIFY
            before = pcscf.log().count("reginfo NOTIFY handled")
            answer = subprocess.run(
                [sys.executable, "-m", "imscore", "hss", "rtr", "--control", str(control),
                 "--impi", f"alice@{DOMAIN}", "--reason", "permanent"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert answer.returncode == 0, answer.stdout + answer.stderr
            sent = json.loads(answer.stdout)["sent"]
            assert sent and all(entry.get("result") == [2001, 0] for entry in sent), sent
            assert _wait(lambda: pcscf.log().count("reginfo NOTIFY handled") > before, 15)
            last = pcscf.log().rsplit("reginfo NOTIFY handled", 1)[1].splitlines()[0]
            assert "terminated" in last, last  # the subscription ends with the registration
            # and a call now finds nobody registered
            assert _call(core.icscf, None).status >= 400
            assert not pcscf.crashed() and not core.kamailio.crashed()
        finally:
            phone.close()
            pcscf.stop()
