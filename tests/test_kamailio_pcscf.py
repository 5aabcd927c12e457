"""imscore as the S-CSCF behind Kamailio's P-CSCF (issue 17): Debian's ims_registrar_pcscf and
ims_usrloc_pcscf (tests/kamailio/pcscf.cfg), a P-CSCF nobody here wrote, in front of a real
imscore server on loopback UDP. UEs are the phones of tests/sipua.py, which talk only to the
P-CSCF.

What is proven: a UE registers through the P-CSCF (401, then 200 with P-Associated-URI and our
Service-Route, relayed back by Kamailio; imscore stores the P-CSCF's Path); Kamailio's P-CSCF
subscribes to the user's reg event as itself and imscore accepts it as the watcher of TS 24.229
§5.4.2.1.2 and NOTIFYs it, which Kamailio's reginfo_handle_notify takes; a call to the
UE from another network reaches it through the Path imscore stored (the P-CSCF takes it on its
own Route entry); a de-registration is NOTIFYed to the P-CSCF, which takes that NOTIFY too.

A second UE calls the first through the P-CSCF: Kamailio finds the caller registered, asserts
its identity (P-Asserted-Identity) and sends the INVITE along its Service-Route; imscore takes
that identity as the caller (the P-CSCF is where the caller's REGISTER came from) and sends the
call to the callee through its Path. Two real baresip phones of one user behind the P-CSCF
both ring for a call to that user.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from devices import Baresip
from kamailio_support import CONFIGS, Kamailio, dbtext_directory, free_udp_port, need_kamailio
from sipua import Agent, Caller, Phone

from imscore.profile import load_profile
from imscore.sip import Request, Response
from imscore.sip.transaction import build_ack
from imscore.testing import RunningServer, start_server

DOMAIN = "ims.example.test"
ALICE = f"sip:alice@{DOMAIN}"
BOB = f"sip:bob@{DOMAIN}"
MODULES = ("tm", "path", "pua", "db_text", "ims_usrloc_pcscf", "ims_ipsec_pcscf", "ims_registrar_pcscf")


@pytest.fixture
def core(tmp_path: Path) -> Iterator[tuple[RunningServer, Kamailio, str]]:
    """imscore (S-CSCF) and Kamailio (P-CSCF) in front of it; yields both and the P-CSCF's URI."""
    need_kamailio(MODULES)
    port = free_udp_port()
    profile = load_profile("multi-device")
    # a Service-Route the P-CSCF can reach (the default names the domain, which nothing resolves here)
    route = f"sip:orig@127.0.0.1:{port};lr"
    profile = replace(profile, registrar=replace(profile.registrar, service_route=route))
    server = start_server(profile, transports=("udp",), port=port)
    host = "127.0.0.1"
    pcscf_port = free_udp_port()
    pcscf_uri = f"sip:127.0.0.1:{pcscf_port}"
    kamailio = Kamailio(
        CONFIGS / "pcscf.cfg",
        tmp_path,
        {
            "SIP_PORT": pcscf_port,
            "SCSCF": f"sip:{host}:{port}",
            "PCSCF_URI": pcscf_uri,
            "DB_URL": f"text://{dbtext_directory(tmp_path / 'db', ['pua'])}",
        },
    )
    try:
        kamailio.start(r"INFO: <core> \[main\.c:\d+\]: main\(\): processes|pua|ims_registrar_pcscf", 20)
        time.sleep(1.0)  # its children bind their sockets after the main process logs
        yield server, kamailio, pcscf_uri
    finally:
        kamailio.stop()
        server.stop()


class UdpPhone(Phone):
    """A phone whose Contact names its transport (ims_usrloc_pcscf finds a contact by host, port
    and transport: without ``;transport=udp`` it does not find the one it saved)."""

    @property
    def contact_uri(self) -> str:
        return f"sip:{self.name}@{self.host}:{self.port};transport=udp"


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def busy_call(caller: Agent, phone: Phone | None, to: str = ALICE) -> tuple[Response, Request | None]:
    """``caller`` sends an INVITE to ``to``; ``phone``, when given, must receive it and answers
    486 (busy). Returns the INVITE's final response (ACKed) and the INVITE the phone received."""
    rang: list[Request] = []

    def ring() -> None:
        assert phone is not None
        invite = phone.expect("INVITE", 10)
        assert isinstance(invite, Request)
        rang.append(invite)
        phone.reply(invite, 486)

    ringer = threading.Thread(target=ring) if phone is not None else None
    if ringer is not None:
        ringer.start()
    invite = caller.request("INVITE", to)
    caller.send(invite)
    final = caller.expect("final", 15)
    assert isinstance(final, Response)
    caller.send(build_ack(invite, final))
    if ringer is None:
        return final, None
    ringer.join(15)
    assert len(rang) == 1, "the phone did not ring"
    return final, rang[0]


def test_ues_register_call_and_deregister_through_kamailios_pcscf(
    core: tuple[RunningServer, Kamailio, str],
) -> None:
    server, kamailio, pcscf_uri = core
    pcscf = ("127.0.0.1", int(pcscf_uri.rsplit(":", 1)[1]))
    alice = UdpPhone(pcscf, "alice-app")
    bob = UdpPhone(pcscf, "bob-desk", impi=f"bob@{DOMAIN}", password="bob-secret", impu=BOB)
    registrar = server.server.registrar
    assert registrar is not None
    try:
        ok = alice.register()
        assert ok.status == 200, ok.reason
        associated = ok.headers.get_all("P-Associated-URI")
        assert any(ALICE in value for value in associated)
        assert any("tel:+15551230001" in value for value in associated)
        service_route = ok.headers.get_all("Service-Route")
        assert service_route == [f"<sip:orig@127.0.0.1:{server.address('udp')[1]};lr>"]
        # imscore stored the P-CSCF's Path with alice's binding
        (stored,) = [b for b in registrar_bindings(server, ALICE)]
        assert stored.path and f"term@127.0.0.1:{pcscf[1]}" in stored.path[0]

        # Kamailio's P-CSCF subscribes to alice's reg event as itself; imscore accepts and NOTIFYs
        assert _wait(
            lambda: any(s.remote_uri == pcscf_uri for s in registrar.regevent.subscriptions.values())
        )
        kamailio.wait_for(r"reginfo NOTIFY handled")

        assert bob.register().status == 200

        # a call to alice from another network, arriving at imscore: it goes to her through the
        # P-CSCF's Path entry, and the P-CSCF hands it to her phone (she is busy)
        caller = Caller(server.address("udp"), "carol")
        try:
            final, received = busy_call(caller, alice)
        finally:
            caller.close()
        assert final.status == 486, final.reason
        # imscore's Via and the P-CSCF's above the caller's
        assert len(received.via) == 3
        kamailio.wait_for(r"pcscf: terminating INVITE")

        # bob calls alice through the P-CSCF: it finds bob registered, asserts his identity and
        # sends the INVITE along his Service-Route; imscore believes that assertion (the P-CSCF
        # is where bob's REGISTER came from) and sends the call to alice through her Path
        final, received = busy_call(bob, alice)
        assert final.status == 486, final.reason
        assert [str(a.uri) for a in received.p_asserted_identity] == [BOB]
        kamailio.wait_for(r"pcscf: originating INVITE from registered sip:bob@")

        # alice de-registers: the P-CSCF hears it
        before = kamailio.log().count("reginfo NOTIFY handled")
        assert alice.register(expires=0).status == 200
        assert _wait(lambda: kamailio.log().count("reginfo NOTIFY handled") > before)
        last = kamailio.log().rsplit("reginfo NOTIFY handled", 1)[1].splitlines()[0]
        assert "terminated" in last, last
        # the set has no binding left: imscore ended the P-CSCF's subscription with that NOTIFY
        assert not any(
            s.remote_uri == pcscf_uri and ALICE in s.impus
            for s in registrar.regevent.subscriptions.values()
        )
        assert not kamailio.crashed()
    finally:
        alice.close()
        bob.close()


def registrar_bindings(server: RunningServer, aor: str) -> list:  # type: ignore[type-arg]
    """The live bindings imscore holds for ``aor``, read from its store on the server's loop."""
    registrar = server.server.registrar
    assert registrar is not None
    return server.call(registrar.bindings.load(aor))


def test_every_baresip_phone_behind_the_pcscf_rings(
    core: tuple[RunningServer, Kamailio, str], tmp_path: Path
) -> None:
    """Two real baresip phones of alice register through Kamailio's P-CSCF; a call to alice rings
    both (imscore forks to each binding, each through the P-CSCF's Path), then the caller gives up
    (CANCEL, 487)."""
    server, kamailio, pcscf_uri = core
    pcscf = ("127.0.0.1", int(pcscf_uri.rsplit(":", 1)[1]))
    phones = [
        Baresip(name, "alice", "alice-secret", pcscf, workdir=tmp_path, answermode="manual")
        for name in ("alice-desk", "alice-soft")
    ]
    caller = Caller(server.address("udp"), "carol")
    try:
        for phone in phones:
            phone.start()
        for phone in phones:
            phone.wait_registered(timeout=15)
        invite = caller.request("INVITE", ALICE)
        caller.send(invite)
        assert _wait(lambda: all("INVITE" in p.received_methods() for p in phones), 15), [
            p.diagnostics() for p in phones
        ]
        assert kamailio.log().count("pcscf: terminating INVITE") >= 2
        caller.cancel(invite)
        final = caller.expect("final", 15)
        while isinstance(final, Response) and final.cseq.method == "CANCEL":  # the CANCEL's 200
            final = caller.expect("final", 15)
        assert isinstance(final, Response) and final.status == 487, final
        caller.send(build_ack(invite, final))
    finally:
        caller.close()
        for phone in phones:
            phone.stop()
