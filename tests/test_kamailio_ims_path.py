"""The whole path of issue 17's test 3: UE -> Kamailio P-CSCF -> Kamailio I-CSCF -> imscore S-CSCF,
with ``imscore hss`` as the HSS, every part a real process on free loopback ports.

The I-CSCF, the S-CSCF (``imscore serve --subscribers cx://``, its Service-Route naming its own
address) and the HSS are those of tests/test_kamailio_icscf.py; the P-CSCF is
tests/kamailio/pcscf.cfg (tests/test_kamailio_pcscf.py) with the I-CSCF as its next hop for
REGISTERs and reg-event SUBSCRIBEs. The UEs talk only to the P-CSCF: a SIPp UE (frank, whose
implicit set has a tel URI too) and two real baresip phones of alice.

* the SIPp UE registers: P-CSCF (Path) -> I-CSCF (UAR) -> imscore (MAR: 401; SAR: 200 with the
  set's P-Associated-URI and the Service-Route), and back; so do both baresip phones;
* the P-CSCF subscribes to the users' reg event (through the I-CSCF, LIR) and imscore NOTIFYs it;
* the SIPp UE calls alice through the P-CSCF: the P-CSCF asserts frank's identity and sends the
  INVITE along his Service-Route to imscore, which forks it to both phones, each through its Path
  (the P-CSCF), not to the I-CSCF the REGISTERs came from; both ring (two 180s, one To tag
  each), the caller's CANCEL ends the call with 487;
* an RTR from the HSS (``imscore hss rtr``) de-registers alice: imscore's NOTIFY tells the
  P-CSCF (``terminated``), and the calls that follow, through the P-CSCF and to the I-CSCF,
  find nobody (480).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from devices import Baresip, SippCaller, TracedMessage
from kamailio_support import (
    CONFIGS,
    Kamailio,
    dbtext_directory,
    free_udp_port,
    header,
    need_kamailio,
    responses,
    run_sipp,
)
from sipua import Caller
from test_kamailio_icscf import MODULES as ICSCF_MODULES
from test_kamailio_icscf import Core, _running_core
from test_kamailio_pcscf import _wait, busy_call

from imscore.sip import Request, Response, parse_datagram

DOMAIN = "ims.example.test"
ALICE = f"sip:alice@{DOMAIN}"
FRANK = f"sip:frank@{DOMAIN}"
FRANK_SET = [FRANK, "tel:+15551230006"]
SIPP = Path(__file__).parent / "sipp"
PCSCF_MODULES = ("path", "pua", "db_text", "ims_usrloc_pcscf", "ims_ipsec_pcscf", "ims_registrar_pcscf")
NOTIFIED = "reginfo NOTIFY handled"


@contextlib.contextmanager
def _pcscf(workdir: Path, core: Core) -> Iterator[tuple[Kamailio, tuple[str, int]]]:
    """Kamailio's P-CSCF (tests/kamailio/pcscf.cfg) with the I-CSCF as its next hop for REGISTERs
    and its reg-event SUBSCRIBEs; yields it and its SIP address."""
    port = free_udp_port()
    workdir.mkdir()
    pcscf = Kamailio(
        CONFIGS / "pcscf.cfg",
        workdir,
        {
            "SIP_PORT": port,
            "SCSCF": f"sip:{core.icscf[0]}:{core.icscf[1]}",
            "PCSCF_URI": f"sip:127.0.0.1:{port}",
            "DB_URL": f"text://{dbtext_directory(workdir / 'db', ['pua'])}",
        },
    )
    try:
        pcscf.start(r"ims_registrar_pcscf|pua", 20)
        time.sleep(1.0)  # its children bind after the main process logs
        yield pcscf, ("127.0.0.1", port)
    finally:
        pcscf.stop()


def _response(traced: str) -> Response:
    """A response without a body from SIPp's trace (LF line ends, the blank line cut), parsed."""
    parsed = parse_datagram(traced.strip().replace("\n", "\r\n").encode() + b"\r\n\r\n")
    assert isinstance(parsed, Response), traced
    return parsed


def _to_tag(traced: str) -> str | None:
    """The To tag of a traced response."""
    found = re.search(r";\s*tag=([^;>\s]+)", header(traced, "To") or "")
    return found.group(1) if found else None


def _last_notify(pcscf: Kamailio) -> str:
    """What the P-CSCF logged of the last reg-event NOTIFY it handled (its Subscription-State)."""
    return pcscf.log().rsplit(NOTIFIED, 1)[1].splitlines()[0]


def _received(phone: Baresip, method: str) -> list[TracedMessage]:
    """The requests of ``method`` the baresip phone received."""
    return [
        m
        for m in phone.sip_messages()
        if m.direction == "received" and m.is_request and m.method == method
    ]


def test_sipp_and_baresip_ues_through_pcscf_icscf_imscore_and_the_hss(tmp_path: Path) -> None:
    need_kamailio(ICSCF_MODULES + PCSCF_MODULES)
    control = tmp_path / "hss.sock"
    (tmp_path / "core").mkdir()
    with (
        _running_core(
            tmp_path / "core", hss_options=("--control", str(control)), reachable_service_route=True
        ) as core,
        _pcscf(tmp_path / "pcscf", core) as (pcscf, address),
    ):
        phones = [
            Baresip(name, "alice", "alice-secret", address, workdir=tmp_path, answermode="manual")
            for name in ("alice-desk", "alice-soft")
        ]
        ue_port = free_udp_port()  # the SIPp UE's: each of its runs below sends from it
        try:
            # the SIPp UE registers through P-CSCF, I-CSCF and imscore: 401, then 200
            frank = f"frank;{DOMAIN};[authentication username=frank@{DOMAIN} password=frank-secret]"
            trace = run_sipp(
                address, SIPP / "register-pcscf.xml", [frank], tmp_path / "frank", DOMAIN, ue_port
            )
            assert len(responses(trace, 401)) == 1, trace
            (ok,) = [_response(text) for text in responses(trace, 200)]
            assert [str(a.uri) for a in ok.p_associated_uri] == FRANK_SET, ok
            scscf_port = int(core.scscf_uri.rsplit(":", 1)[1])
            service_route = f"sip:orig@127.0.0.1:{scscf_port};lr"  # imscore's own address
            assert [str(a.uri) for a in ok.service_route] == [service_route], ok
            pcscf.wait_for(r"pcscf: saved sip:frank@")
            # the P-CSCF's reg-event subscription, through the I-CSCF, answered by imscore's NOTIFY
            pcscf.wait_for(NOTIFIED, 15)
            assert "active" in _last_notify(pcscf)

            # two baresip phones of alice register the same way; the P-CSCF watches her too
            before = pcscf.log().count(NOTIFIED)
            for phone in phones:
                phone.start()
            for phone in phones:
                phone.wait_registered(timeout=15)
            saved = _wait(lambda: pcscf.log().count("pcscf: saved sip:alice@") >= 2, 10)
            assert saved, pcscf.log()[-4000:]
            assert _wait(lambda: pcscf.log().count(NOTIFIED) > before, 15), pcscf.log()[-4000:]

            # frank calls alice through the P-CSCF: his Service-Route to imscore, which forks
            # to both phones through their Path (the P-CSCF); both ring, frank gives up
            call = run_sipp(
                address, SIPP / "caller-forked-cancel.xml", [f"frank;{DOMAIN};;{ALICE}"],
                tmp_path / "frank-call", DOMAIN, ue_port,
            )  # fmt: skip
            ringing = responses(call, 180)
            assert len({_to_tag(text) for text in ringing}) == 2, ringing
            assert len(responses(call, 487)) >= 1, call
            pcscf.wait_for(r"pcscf: originating INVITE from registered sip:frank@")
            assert pcscf.log().count("pcscf: terminating INVITE") >= 2
            for phone in phones:
                invites = _received(phone, "INVITE")
                assert len(invites) == 1, phone.diagnostics()
                invite = invites[0].parse()
                assert isinstance(invite, Request)
                # its Vias, top down: the P-CSCF (the phone's Path, not the I-CSCF its REGISTER
                # came through), imscore, the P-CSCF (frank's side), frank
                hops = [address[1], scscf_port, address[1], ue_port]
                assert [via.port for via in invite.via] == hops, invites[0].text
                # the P-CSCF asserted frank; imscore believed it and passed it on
                assert [str(a.uri) for a in invite.p_asserted_identity] == [FRANK]
                # the call ended cleanly at the phone: its CANCEL answered, its INVITE 487
                assert _received(phone, "CANCEL"), phone.diagnostics()
                sent = [
                    m.status for m in phone.sip_messages() if m.direction == "sent" and not m.is_request
                ]
                assert 487 in sent, phone.diagnostics()

            # the HSS de-registers alice (RTR); imscore tells the P-CSCF with a NOTIFY
            before = pcscf.log().count(NOTIFIED)
            answer = subprocess.run(
                [sys.executable, "-m", "imscore", "hss", "rtr", "--control", str(control),
                 "--impi", f"alice@{DOMAIN}", "--reason", "permanent"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert answer.returncode == 0, answer.stdout + answer.stderr
            sent = json.loads(answer.stdout)["sent"]
            assert sent and all(entry.get("result") == [2001, 0] for entry in sent), sent
            assert _wait(lambda: pcscf.log().count(NOTIFIED) > before, 15)
            last = _last_notify(pcscf)
            assert "terminated" in last, last  # the subscription ends with the registration

            # and a call now finds nobody registered: through the P-CSCF (frank again) ...
            nobody = SippCaller(
                "frank-again", address, ALICE, tmp_path / "frank-again", expect=480,
                caller=FRANK, port=ue_port, timeout=15,
            ).start()  # fmt: skip
            nobody.finish(20)
            # ... and from another network, to the I-CSCF
            carol = Caller(core.icscf, "carol")
            try:
                assert busy_call(carol, None)[0].status == 480
            finally:
                carol.close()
            for phone in phones:  # neither phone rang again
                assert len(_received(phone, "INVITE")) == 1, phone.diagnostics()
            assert not pcscf.crashed() and not core.kamailio.crashed()
        finally:
            for phone in phones:
                phone.stop()
