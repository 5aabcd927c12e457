"""Third-party registration (TS 24.229 §5.4.1.7) against SIPp application servers on loopback:
one that answers REGISTER, one that never answers (with each default handling)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sipua import Phone
from test_sipp_register import SCENARIOS, free_udp_port, sipp_binary

from imscore.profile import load_profile
from imscore.profile.model import Timers
from imscore.registrar.model import StoredBinding
from imscore.sip import Request, SipError, parse_datagram
from imscore.subscribers import MemorySubscriberStore, load_subscribers
from imscore.testing import RunningServer, start_server

DOMAIN = "ims.example.test"
ALICE = f"sip:alice@{DOMAIN}"


class SippAs:
    """A SIPp application server (UAS) on a loopback port, its messages traced to a file."""

    def __init__(
        self, scenario: str, workdir: Path, calls: int = 100, extra: tuple[str, ...] = ()
    ) -> None:
        self.port = free_udp_port()
        self.log = workdir / f"{scenario}-{self.port}.log"
        self.process = subprocess.Popen(
            [
                sipp_binary(), "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1",
                "-p", str(self.port), "-m", str(calls), "-nostdin", "-trace_msg",
                "-message_file", str(self.log), "-timeout", "60", *extra,
            ],
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    @property
    def uri(self) -> str:
        return f"sip:127.0.0.1:{self.port}"

    def received(self, method: str) -> list[Request]:
        """The requests of that method SIPp logged as received (retransmissions once)."""
        if not self.log.exists():
            return []
        text = self.log.read_text(errors="replace")
        found: dict[tuple[str, int], Request] = {}
        for chunk in text.split("UDP message received")[1:]:
            data = chunk.split("\n", 1)[1].split("\n-----------------------------------------------")[0]
            data = data.lstrip("\n").replace("\r\n", "\n")
            head, _, body = data.partition("\n\n")
            lines = [line for line in head.split("\n") if not line.lower().startswith("content-length")]
            try:  # the body as logged (its line ends may differ from the wire's)
                message = parse_datagram(("\r\n".join(lines) + "\r\n\r\n").encode())
            except SipError:
                continue
            message.body = body.replace("\n", "\r\n").encode()
            if isinstance(message, Request) and message.method == method:
                found.setdefault((message.call_id, message.cseq.seq), message)
        return list(found.values())

    def wait_for(self, method: str, count: int, timeout: float = 10.0) -> list[Request]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received(method)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(
            f"{count} {method} expected at {self.uri}, got {len(self.received(method))}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def subscribers_with(tmp_path: Path, ifcs: str) -> MemorySubscriberStore:
    path = tmp_path / "subscribers.yaml"
    path.write_text(
        "subscribers:\n"
        f"  - impi: alice@{DOMAIN}\n    password: alice-secret\n"
        f"    implicit_sets: [[{ALICE}, tel:+15551230001]]\n"
        "    service_profile:\n      ifcs:\n" + ifcs
        + f"  - impi: bob@{DOMAIN}\n    password: bob-secret\n    implicit_sets: [[sip:bob@{DOMAIN}]]\n"
    )  # fmt: skip
    return MemorySubscriberStore(load_subscribers(path))


def register_ifc(priority: int, uri: str, handling: str, extra: str = "") -> str:
    return (
        f"        - priority: {priority}\n"
        "          trigger: {spts: [{method: REGISTER}]}\n"
        f"          application_server: {{uri: '{uri}', default_handling: {handling}{extra}}}\n"
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    sipp_binary()
    yield tmp_path


def server_for(subscribers: MemorySubscriberStore) -> RunningServer:
    # T1 = 50 ms: a silent AS times out (Timer F, 64*T1) in 3.2 s
    profile = replace(load_profile("multi-device"), timers=Timers(t1=0.05, t2=0.4, t4=0.5))
    return start_server(profile, transports=("udp",), subscribers=subscribers)


def test_register_and_deregister_reach_the_as_with_service_info_and_the_register(workdir: Path) -> None:
    answering = SippAs("as-register.xml", workdir)
    silent = SippAs("as-silent.xml", workdir)
    info = ", service_info: '<user-data>gold</user-data>', include_register_request: true"
    subscribers = subscribers_with(
        workdir,
        register_ifc(0, answering.uri, "session-continued", info)
        + register_ifc(1, silent.uri, "session-continued")
        + "        - priority: 2\n          trigger: {spts: [{method: INVITE}]}\n"
        "          application_server: {uri: 'sip:127.0.0.1:9'}\n",
    )
    running = server_for(subscribers)
    phone = Phone(running.address("udp"), "desk")
    try:
        ok = phone.register(expires=300)
        assert ok.status == 200
        (third,) = answering.wait_for("REGISTER", 1)
        assert str(third.uri) == answering.uri
        assert str(third.from_.uri) == f"sip:scscf@{DOMAIN}" and str(third.to.uri) == ALICE
        host, port = running.address("udp")
        assert str(third.contacts[0].uri) == f"sip:scscf@{host}:{port};transport=udp"
        assert third.expires == 300
        media = third.content_type
        assert media is not None and media.mime == "multipart/mixed"
        body = third.body.decode()
        assert "Content-Type: application/3gpp-ims+xml" in body
        assert '<ims-3gpp version="1"><service-info><user-data>gold</user-data></service-info>' in body
        assert "Content-Type: message/sip" in body and f"REGISTER sip:{DOMAIN} SIP/2.0" in body
        assert silent.wait_for("REGISTER", 1)
        # the silent AS times out; session-continued: alice stays registered
        thirdparty = running.server.thirdparty
        deadline = time.monotonic() + 10
        while thirdparty.stats["failed"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert thirdparty.stats == {"sent": 2, "answered": 1, "failed": 1, "deregistered": 0}
        assert running.call(running.server.store.load(ALICE)), "alice is still registered"
        # de-registration: Expires 0 to the AS
        assert phone.register(expires=0).status == 200
        _, second = answering.wait_for("REGISTER", 2)
        assert second.expires == 0 and str(second.to.uri) == ALICE
    finally:
        phone.close()
        running.stop()
        answering.stop()
        silent.stop()


def test_a_silent_as_with_session_terminated_deregisters_the_user(workdir: Path) -> None:
    answering = SippAs("as-register.xml", workdir)
    silent = SippAs("as-silent.xml", workdir)
    subscribers = subscribers_with(
        workdir,
        register_ifc(0, silent.uri, "session-terminated")
        + register_ifc(5, answering.uri, "session-continued"),
    )
    running = server_for(subscribers)
    phone = Phone(running.address("udp"), "desk")
    try:
        assert phone.register(expires=300).status == 200
        (registered,) = answering.wait_for("REGISTER", 1)
        assert registered.expires == 300
        # Timer F (3.2 s) later: network-initiated de-registration, told to the ASs
        _, deregistered = answering.wait_for("REGISTER", 2, timeout=15)
        assert deregistered.expires == 0 and str(deregistered.to.uri) == ALICE
        assert running.call(running.server.store.load("sip:alice@ims.example.test")) == []
        assert running.server.thirdparty.stats["deregistered"] == 1
    finally:
        phone.close()
        running.stop()
        answering.stop()
        silent.stop()


def test_an_expired_registration_is_told_to_the_as_with_expires_0(workdir: Path) -> None:
    answering = SippAs("as-register.xml", workdir)
    ifc = (
        "        - priority: 0\n"
        "          trigger:\n"
        "            spts: [{method: REGISTER, registration_type: [initial, de-registration]}]\n"
        f"          application_server: {{uri: '{answering.uri}'}}\n"
    )
    running = server_for(subscribers_with(workdir, ifc))
    phone = Phone(running.address("udp"), "desk")
    try:
        assert phone.register(expires=300).status == 200
        assert phone.register(expires=300).status == 200  # a re-registration: not asked for
        answering.wait_for("REGISTER", 1)
        # the sweep finds the binding expired (the registrar's clock 10 minutes on)
        running.call(running.server.registrar.expire(time.time() + 600))
        first, expired = answering.wait_for("REGISTER", 2)
        assert (first.expires, expired.expires, str(expired.to.uri)) == (300, 0, ALICE)
        assert len(answering.received("REGISTER")) == 2
    finally:
        phone.close()
        running.stop()
        answering.stop()


class RacingStore:
    """A shared (versioned) store in front of the server's memory store: once, between the
    de-registration's read and its write, "another node" registers a second device."""

    def __init__(self, inner: Any, extra: StoredBinding) -> None:
        self.inner = inner
        self.extra = extra
        self.versions: dict[str, int] = {}
        self.raced = False
        self.saves: list[tuple[str, bool]] = []  # (how, written)

    async def load(self, aor: str) -> list[StoredBinding]:
        return list(await self.inner.load(aor))

    async def load_versioned(self, aor: str) -> tuple[list[StoredBinding], str]:
        bindings = list(await self.inner.load(aor))
        version = str(self.versions.get(aor, 0))
        if not self.raced:  # the other node writes after this read
            self.raced = True
            await self.inner.save(aor, [*bindings, self.extra])
            self.versions[aor] = self.versions.get(aor, 0) + 1
        return bindings, version

    async def save_versioned(self, aor: str, bindings: Sequence[StoredBinding], version: str) -> bool:
        if str(self.versions.get(aor, 0)) != version:
            self.saves.append(("versioned", False))
            return False
        await self.inner.save(aor, bindings)
        self.versions[aor] = self.versions.get(aor, 0) + 1
        self.saves.append(("versioned", True))
        return True

    async def save(self, aor: str, bindings: Sequence[StoredBinding]) -> None:
        self.saves.append(("plain", True))
        await self.inner.save(aor, bindings)


def test_network_deregistration_uses_versioned_saves_on_a_shared_store(workdir: Path) -> None:
    running = server_for(
        subscribers_with(workdir, register_ifc(0, "sip:127.0.0.1:9", "session-continued"))
    )
    phone = Phone(running.address("udp"), "desk")
    server = running.server
    try:
        assert phone.register(expires=300).status == 200
        (desk,) = running.call(server.store.load(ALICE))
        other = replace(desk, uri="sip:other@127.0.0.1:5999", instance_id=None, call_id="other-node")
        racing = RacingStore(server.store, other)
        subscriber = running.call(server.subscribers.get_by_impi(f"alice@{DOMAIN}"))
        original, server.store = server.store, racing  # type: ignore[assignment]
        try:
            running.call(server.thirdparty._deregister(subscriber, subscriber.implicit_sets[0]))
        finally:
            server.store = original
        # the first write found the set changed, so it was read again: both devices are gone
        assert racing.saves == [("versioned", False), ("versioned", True)]
        assert running.call(original.load(ALICE)) == []
        assert server.thirdparty.stats["deregistered"] == 1
    finally:
        phone.close()
        running.stop()
