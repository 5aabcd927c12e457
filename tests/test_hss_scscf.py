"""imscore as an S-CSCF on Cx: ``--subscribers cx://HOST:PORT`` against our HSS, over real loopback.

The HSS (:class:`~imscore.diameter.server.HssServer` with its control socket) runs in a thread of
the test on a loopback TCP port; the S-CSCF is ``imscore.testing.start_server`` with the ``cx://``
store; the UEs are tests/sipua.py phones (Digest) and SIPp (AKAv1-MD5). The HSS's RTR is sent with
the ``imscore hss rtr`` command through the control socket.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sipua import Agent, Phone
from test_sipp_register import run_sipp, sipp_binary

from imscore.auth.digest import credentials
from imscore.auth.milenage import Milenage
from imscore.diameter.control import ControlServer
from imscore.diameter.hss import NOT_REGISTERED, REGISTERED, CxHss
from imscore.diameter.provider import CxSubscriberStore
from imscore.diameter.server import HssServer
from imscore.sip import Request, Response
from imscore.subscribers import MemorySubscriberStore, load_subscribers
from imscore.testing import RunningServer, start_server

DOMAIN = "ims.example.test"
ALICE = f"sip:alice@{DOMAIN}"
# TS 35.208 test set 3 (no 0x5b octet: SIPp's keyword parser cannot take one)
K = "fec86ba6eb707ed08905757b1bb44b8f"
OP = "dbc59adcb6f9a0ef735477b7fadf8374"
AMF = "725c"
AKA_IMPI = "001010000000003@ims.mnc001.mcc001.3gppnetwork.org"
SUBSCRIBERS = f"""
subscribers:
  - impi: alice@{DOMAIN}
    password: alice-secret
    implicit_sets:
      - [{ALICE}, tel:+15551230001, sip:alice.old@{DOMAIN}]
    barred: [sip:alice.old@{DOMAIN}]
  - impi: {AKA_IMPI}
    aka: {{k: {K}, op: {OP}, amf: {AMF}, sqn: '000000000020'}}
    implicit_sets: [[sip:+15551230009@{DOMAIN}]]
"""


def rand_without_zero_in_res(milenage: Milenage) -> Callable[[int], bytes]:
    """SIPp cuts RES at a 0x00 octet: the HSS draws RANDs whose RES has none."""

    def draw(size: int) -> bytes:
        while True:
            rand = secrets.token_bytes(size)
            if 0 not in milenage.f2345(rand)[0]:
                return rand

    return draw


class HssThread:
    """Our HSS on a free loopback port, with a control socket, in a thread of its own."""

    def __init__(self, path: Path, control: Path) -> None:
        self.path, self.control = path, str(control)
        milenage = Milenage(bytes.fromhex(K), op=bytes.fromhex(OP))
        store = MemorySubscriberStore(load_subscribers(path))
        self.hss = CxHss(store, f"hss.{DOMAIN}", DOMAIN, random_bytes=rand_without_zero_in_res(milenage))
        self.server = HssServer(self.hss)
        self.controls = ControlServer(self.server, lambda: load_subscribers(path))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start() -> None:
            await self.server.start("127.0.0.1", 0)
            await self.controls.start(self.control)

        self.call(start())
        self.address = self.server.addresses[0]

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=20)

    def state(self, impi: str, impu: str) -> str:
        async def read() -> str:
            subscriber = await self.hss.store.get_by_impu(impu)
            assert subscriber is not None and subscriber.impi == impi
            implicit_set = subscriber.implicit_set_of(impu)
            assert implicit_set is not None
            return self.hss.assignment(subscriber, implicit_set).state

        result: str = self.call(read())
        return result

    def stop(self) -> None:
        async def close() -> None:
            await self.controls.close()
            await self.server.close()

        self.call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def hss(tmp_path: Path) -> Iterator[HssThread]:
    path = tmp_path / "subscribers.yaml"
    path.write_text(SUBSCRIBERS)
    running = HssThread(path, tmp_path / "hss.sock")
    try:
        yield running
    finally:
        running.stop()


def scscf(address: tuple[str, int], **query: str) -> RunningServer:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    url = f"cx://{address[0]}:{address[1]}?server_name=sip:scscf.{DOMAIN}{extra}"
    return start_server("multi-device", transports=("udp",), subscriber_source=url)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def hss_command(control: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "imscore", "hss", *args, "--control", control],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


def subscribe(phone: Phone) -> None:
    phone.send(
        phone.request(
            "SUBSCRIBE",
            ALICE,
            headers=[("Event", "reg"), ("Accept", "application/reginfo+xml"), ("Expires", 600)],
        )
    )
    final = phone.expect("final")
    assert isinstance(final, Response) and final.status == 200, final
    notify = phone.expect("NOTIFY")
    assert isinstance(notify, Request)
    phone.reply(notify, 200)


def test_digest_registration_gets_the_profile_by_sar_and_an_rtr_ends_it(hss: HssThread) -> None:
    running = scscf(hss.address)
    phone = Phone(running.address("udp"), "app")
    try:
        ok = phone.register()
        assert ok.status == 200, ok
        # the implicit set and its barring came from the SAA's User-Data
        associated = ok.headers.get("P-Associated-URI") or ""
        assert f"<{ALICE}>" in associated and "<tel:+15551230001>" in associated
        assert "alice.old" not in associated
        assert hss.state("alice@ims.example.test", ALICE) == REGISTERED
        assert hss.hss.assignment(*_set(hss, ALICE)).server_name == f"sip:scscf.{DOMAIN}"
        subscribe(phone)
        # the HSS de-registers alice: RTR through the control socket, the CLI's way
        reply = hss_command(hss.control, "rtr", "--impi", "alice@ims.example.test")
        assert reply == {
            "ok": True,
            "sent": [{"set": ALICE, "peer": f"scscf.{DOMAIN}", "result": [2001, 0]}],
        }
        notify = phone.expect("NOTIFY")
        assert isinstance(notify, Request)
        phone.reply(notify, 200)
        assert notify.headers.get("Subscription-State") == "terminated;reason=rejected"
        body = notify.body.decode()
        assert 'state="terminated" event="rejected"' in body, body
        assert 'registration aor="sip:alice@ims.example.test" id="r0" state="terminated"' in body
        store = running.server.store
        assert store is not None
        assert running.call(store.load(ALICE)) == []
        assert hss.state("alice@ims.example.test", ALICE) == NOT_REGISTERED
        # she registers again, then de-registers: SAR USER_DEREGISTRATION
        assert phone.register().status == 200
        assert hss.state("alice@ims.example.test", ALICE) == REGISTERED
        assert phone.register(expires=0).status == 200
        wait_for(lambda: hss.state("alice@ims.example.test", ALICE) == NOT_REGISTERED, "no SAR dereg")
    finally:
        phone.close()
        running.stop()


def _set(hss: HssThread, impu: str) -> tuple[Any, Any]:
    async def read() -> tuple[Any, Any]:
        subscriber = await hss.hss.store.get_by_impu(impu)
        assert subscriber is not None
        return subscriber, subscriber.implicit_set_of(impu)

    result: tuple[Any, Any] = hss.call(read())
    return result


def test_ppr_pushes_a_changed_profile_to_the_scscf(hss: HssThread) -> None:
    running = scscf(hss.address)
    phone = Phone(running.address("udp"), "app")
    try:
        assert phone.register().status == 200
        store = running.server.subscribers
        assert isinstance(store, CxSubscriberStore)
        before = running.call(store.get_by_impu("tel:+15551230001"))
        assert before is not None and before.is_barred(f"sip:alice.old@{DOMAIN}")
        # the operator lifts the barring in the file, then pushes the profile
        hss.path.write_text(SUBSCRIBERS.replace(f"    barred: [sip:alice.old@{DOMAIN}]\n", ""))
        reply = hss_command(hss.control, "ppr", "--impi", "alice@ims.example.test")
        assert reply["sent"] == [{"set": ALICE, "peer": f"scscf.{DOMAIN}", "result": [2001, 0]}]
        after = running.call(store.get_by_impu("tel:+15551230001"))
        assert after is not None and not after.is_barred(f"sip:alice.old@{DOMAIN}")
        assert [str(u) for u in after.unbarred(after.implicit_sets[0])] == [
            ALICE,
            "tel:+15551230001",
            f"sip:alice.old@{DOMAIN}",
        ]
    finally:
        phone.close()
        running.stop()


def test_unknown_users_and_wrong_passwords(hss: HssThread) -> None:
    running = scscf(hss.address)
    try:
        nobody = Phone(
            running.address("udp"), "x", "nobody@ims.example.test", "x", f"sip:nobody@{DOMAIN}"
        )
        try:
            assert nobody.register().status == 404  # SAR NO_ASSIGNMENT: 5001 user unknown
        finally:
            nobody.close()
        wrong = Phone(running.address("udp"), "w", password="not-her-password")
        try:
            assert wrong.register().status == 401  # the HSS's H(A1) does not match: challenged again
        finally:
            wrong.close()
        assert hss.state("alice@ims.example.test", ALICE) == NOT_REGISTERED
    finally:
        running.stop()


def test_an_unreachable_hss_is_503_with_retry_after() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        running = scscf(probe.getsockname(), retry_after="17")
        phone = Phone(running.address("udp"), "app")
        try:
            answer = phone.register()
            assert answer.status == 503
            assert answer.headers.get("Retry-After") == "17"
        finally:
            phone.close()
            running.stop()


def test_sipp_registers_with_aka_v1_through_cx(hss: HssThread, tmp_path: Path) -> None:
    sipp_binary()
    running = scscf(hss.address)
    csv = tmp_path / "aka.csv"
    csv.write_text(
        "SEQUENTIAL\n"
        f"+15551230009;{DOMAIN};{AKA_IMPI};"
        f"[authentication username={AKA_IMPI} aka_K=0x{K} aka_OP=0x{OP} aka_AMF=0x{AMF}]\n"
    )
    try:
        run_sipp("register-aka.xml", running.address("udp"), csv, 3, tmp_path)
        store = running.server.store
        assert store is not None
        bindings = running.call(store.load(f"sip:+15551230009@{DOMAIN}"))
        assert [b.impi for b in bindings] == [AKA_IMPI]
        assert hss.state(AKA_IMPI, f"sip:+15551230009@{DOMAIN}") == REGISTERED
    finally:
        running.stop()


def test_the_proxy_challenges_an_originating_request_with_the_hsss_digest_credentials(
    hss: HssThread,
) -> None:
    """A request from alice that comes neither from a trusted peer nor on a flow her devices
    registered on is challenged (407) with the realm the HSS gives by MAR, and checked against the
    HSS's H(A1): the proxy's Digest needs no password at the S-CSCF either."""
    served = scscf(hss.address)
    phone = Phone(served.address("udp"), "alice-app")
    elsewhere = Agent(served.address("udp"), "elsewhere")
    try:
        assert phone.register().status == 200
        elsewhere.from_uri = ALICE  # type: ignore[attr-defined]
        elsewhere.tag = "out"  # type: ignore[attr-defined]
        first = elsewhere.request("MESSAGE", ALICE, cseq=1, headers=[("Content-Type", "text/plain")])
        elsewhere.send(first)
        challenge = elsewhere.expect("final")
        assert isinstance(challenge, Response) and challenge.status == 407, challenge
        (offered,) = challenge.proxy_authenticate
        assert offered.get("realm") == DOMAIN
        # a wrong password is challenged again, never routed
        wrong = credentials(
            offered, username=f"alice@{DOMAIN}", password="nope", method="MESSAGE", uri=ALICE
        )
        elsewhere.send(
            elsewhere.request(
                "MESSAGE", ALICE, cseq=2, call_id=first.call_id, headers=[("Proxy-Authorization", wrong)]
            )
        )
        again = elsewhere.expect("final")
        assert isinstance(again, Response) and again.status in (403, 407), again
        right = credentials(
            offered, username=f"alice@{DOMAIN}", password="alice-secret", method="MESSAGE", uri=ALICE
        )
        elsewhere.send(
            elsewhere.request(
                "MESSAGE", ALICE, cseq=3, call_id=first.call_id, headers=[("Proxy-Authorization", right)]
            )
        )
        delivered = phone.expect("MESSAGE")
        assert isinstance(delivered, Request)
        phone.reply(delivered, 200)
        final = elsewhere.expect("final")
        assert isinstance(final, Response) and final.status == 200, final
    finally:
        phone.close()
        elsewhere.close()
        served.stop()
