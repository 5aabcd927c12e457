"""Cx with ``imscore serve --workers 2``: each worker is a Diameter peer of its own, and the
registration state the Cx side acts on is the shared SQLite store's, so every worker gets it right.

Real processes and sockets on loopback: ``imscore serve --workers 2 --subscribers cx://…``, our HSS
(:class:`test_hss_scscf.HssThread`) behind a recording Diameter relay, ``imscore hss rtr`` for the
network-initiated de-registration, UDP devices that pick their worker by Call-ID
(:func:`test_workers.call_id_for`). What it shows:

- each worker opens its own connection with its own Origin-Host (``w0.scscf…``, ``w1.scscf…``) and
  one Server-Name for both;
- a registration through worker 0 is SAR REGISTRATION, its refresh through worker 1 SAR
  RE_REGISTRATION, and the HSS then knows worker 1 as the set's Diameter peer;
- ``imscore hss rtr`` reaches that worker, which removes the bindings from the shared store; the
  reg-event subscriptions held by both workers get the same terminating NOTIFY, the RTR's reason
  (``rejected``) in its contacts and its Subscription-State whichever worker took the RTR;
- a de-registration and an expiry likewise give the subscriptions of both workers one NOTIFY each,
  the same in both (``unregistered``, ``expired``; ``terminated;reason=deactivated``);
- after the RTR, and after a de-registration through worker 1, a registration through worker 0 is
  SAR REGISTRATION again (it does not trust its own memory of the set), and the HSS's UAR answers
  say what happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cx_support import (
    ALICE,
    ALICE_IMPI,
    DOMAIN,
    RE_REGISTRATION,
    REGISTRATION,
    USER_DEREGISTRATION,
    V,
    assert_ended,
    assignment,
    cer_hosts,
    contact_states,
    eventually,
    rtas,
    rtr,
    sars,
    uar,
    wait_sars,
)
from diameter_relay import DiameterRelay
from redis_support import short_expiry_profile
from sipua import Phone
from test_hss_scscf import SUBSCRIBERS, HssThread
from test_serve import serve
from test_workers import READY, Device, call_id_for, credentials, nonce_of

from imscore.diameter import dictionary as d
from imscore.diameter.hss import NOT_REGISTERED, REGISTERED
from imscore.sip import Request, Response

W0, W1 = f"w0.scscf.{DOMAIN}", f"w1.scscf.{DOMAIN}"
SERVER_NAME = f"sip:scscf.{DOMAIN}"


class WorkerServer:
    """``imscore serve --workers 2`` with the SQLite store and a ``cx://`` subscriber store; its log
    in a file (a pipe nobody reads would fill and stall the workers)."""

    def __init__(self, directory: Path, cx_port: int, *extra: str) -> None:
        self.store = f"sqlite:{directory / 'bindings.db'}"
        self.log_path = directory / "serve.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "imscore", "serve", "--workers", "2",
                 "--listen", "udp:127.0.0.1:0", "--store", self.store,
                 "--subscribers", f"cx://127.0.0.1:{cx_port}", *extra],
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = READY.search(self.log())
            if found:
                self.address = (found.group(1), int(found.group(2)))
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError("imscore serve --workers 2 did not get ready:\n" + self.log())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM to its PID; its exit status."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        return self.process.returncode

    def bindings(self) -> list[str]:
        """The contacts the shared store holds for alice."""
        return stored_contacts(self.store)


def stored_contacts(store: str) -> list[str]:
    """The contacts ``store`` holds for alice (read by ``imscore bindings``)."""
    done = subprocess.run(
        [sys.executable, "-m", "imscore", "bindings", "--store", store, "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    aors = json.loads(done.stdout)["aors"]
    return [b["uri"] for aor in aors if aor["aor"] == ALICE for b in aor["bindings"]]


@contextlib.contextmanager
def hss_and_relay(directory: Path) -> Iterator[tuple[HssThread, DiameterRelay]]:
    """Our HSS with a control socket, and the recording relay in front of it."""
    path = directory / "subscribers.yaml"
    path.write_text(SUBSCRIBERS)
    hss = HssThread(path, directory / "hss.sock")
    relay = DiameterRelay(hss.address).start()
    try:
        yield hss, relay
    finally:
        relay.close()
        hss.stop()


@contextlib.contextmanager
def running_core(
    directory: Path, *extra: str
) -> Iterator[tuple[HssThread, DiameterRelay, WorkerServer]]:
    with hss_and_relay(directory) as (hss, relay):
        server = WorkerServer(directory, relay.port, *extra)
        try:
            yield hss, relay, server
        finally:
            assert server.stop() == 0, server.log()


@pytest.fixture
def core(tmp_path: Path) -> Iterator[tuple[HssThread, DiameterRelay, WorkerServer]]:
    with running_core(tmp_path) as running:
        yield running


class Watcher(Device):
    """A :class:`test_workers.Device` that answers every NOTIFY it receives with 200 and keeps it,
    so none is lost while a REGISTER's answer is awaited."""

    def __init__(self, server: tuple[str, int]) -> None:
        super().__init__(server)
        self.notifies: list[Request] = []

    def receive(self) -> Request | Response:
        message = super().receive()
        if isinstance(message, Request) and message.method == "NOTIFY":
            self.send(message.make_response(200).to_bytes())
            self.notifies.append(message)
        return message

    def finals(self, count: int, seconds: float = 15.0) -> dict[str, Request]:
        """The NOTIFYs ending a subscription, by Call-ID, once there are ``count`` (bounded in time;
        fewer when they did not come)."""
        deadline = time.monotonic() + seconds
        while True:
            found = {
                n.call_id: n
                for n in self.notifies
                if (n.headers.get("Subscription-State") or "").startswith("terminated")
            }
            if len(found) >= count or time.monotonic() > deadline:
                return found
            with contextlib.suppress(TimeoutError):
                self.receive()


def told(notify: Request) -> tuple[str, list[tuple[str, str]]]:
    """What a NOTIFY tells its watcher: its Subscription-State and each contact's (state, event)."""
    return notify.headers.get("Subscription-State") or "", contact_states(notify)


def register(device: Device, call_id: str, expires: int = 600) -> Response:
    """alice's REGISTER (401, then Digest) on ``call_id``; the final response."""
    first = device.register("alice", call_id).replace(b"Expires: 600", f"Expires: {expires}".encode())
    device.send(first)
    challenge = device.response()
    assert challenge.status == 401, challenge.status
    auth = credentials("alice", "alice-secret", nonce_of(challenge))
    device.send(
        device.register("alice", call_id, auth).replace(b"Expires: 600", f"Expires: {expires}".encode())
    )
    return device.response()


def subscribe(device: Device, call_id: str) -> None:
    """The device subscribes to alice's reg event on ``call_id``: 200 and the first NOTIFY."""
    branch = f"z9hG4bK-sub-{secrets.token_hex(6)}"
    device.send(
        (
            f"SUBSCRIBE {ALICE} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{device.port};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <{ALICE}>;tag=sub\r\nTo: <{ALICE}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 SUBSCRIBE\r\nEvent: reg\r\nExpires: 600\r\n"
            f"Contact: <sip:alice@127.0.0.1:{device.port}>\r\nAccept: application/reginfo+xml\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )
    answered, notified = None, None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (answered is None or notified is None):
        message = device.receive()
        if isinstance(message, Response):
            answered = message
        else:
            notified = message
            if not isinstance(device, Watcher):  # (a Watcher answered it already)
                device.send(message.make_response(200).to_bytes())
    assert answered is not None and answered.status == 200, answered
    assert notified is not None and notified.method == "NOTIFY"


def test_each_worker_is_a_diameter_peer_and_the_registration_state_is_shared(
    core: tuple[HssThread, DiameterRelay, WorkerServer],
) -> None:
    hss, relay, server = core
    # CER/CEA from each worker at start-up, each with its own Origin-Host
    assert eventually(lambda: sorted(cer_hosts(relay)), [W0, W1]) == [W0, W1], cer_hosts(relay)
    device = Watcher(server.address)
    try:
        on_0, on_1 = call_id_for(0, tag="r"), call_id_for(1, tag="r")
        assert register(device, on_0).status == 200
        assert wait_sars(relay, 1) == [(REGISTRATION, W0)]
        assert assignment(hss) == (REGISTERED, SERVER_NAME, W0)
        # the refresh lands in worker 1: RE_REGISTRATION, and the HSS's peer for the set moves
        assert register(device, on_1).status == 200
        assert wait_sars(relay, 2)[1] == (RE_REGISTRATION, W1)
        assert assignment(hss) == (REGISTERED, SERVER_NAME, W1)
        subsequent = ((d.SUBSEQUENT_REGISTRATION, V), SERVER_NAME)
        assert uar(hss.address, "tel:+15551230001", ALICE_IMPI) == subsequent
        # a reg-event subscription held by each worker
        on_w0, on_w1 = call_id_for(0, tag="s"), call_id_for(1, tag="s")
        subscribe(device, on_w0)
        subscribe(device, on_w1)
        # the HSS de-registers alice: its RTR goes to worker 1 (Destination-Host), which acts on
        # the shared store although worker 0 made the subscription and the first registration
        reply = rtr(hss)
        assert reply == {"ok": True, "sent": [{"set": ALICE, "peer": W1, "result": [2001, 0]}]}
        assert rtas(relay) == [(W1, (d.SUCCESS, 0))]
        assert server.bindings() == []
        # worker 1's own subscription and worker 0's (through the news) hear the RTR's reason,
        # the permanent termination's "rejected" (RFC 3680 §5.1), not "deactivated"
        finals = device.finals(2)
        assert sorted(finals) == sorted([on_w0, on_w1]), finals
        for notify in finals.values():
            assert_ended(notify, "rejected")
            assert f'aor="{ALICE}"' in notify.body.decode()
        assert told(finals[on_w0]) == told(finals[on_w1])
        assert assignment(hss)[0] == NOT_REGISTERED
        deregistered = (d.ERROR_IDENTITY_NOT_REGISTERED, V)
        assert uar(hss.address, ALICE, ALICE_IMPI, d.UAT_DE_REGISTRATION)[0] == deregistered
        # worker 0 registered the set first and never heard of the RTR: still REGISTRATION
        assert register(device, call_id_for(0, tag="again")).status == 200
        assert wait_sars(relay, 3)[2] == (REGISTRATION, W0)
        # a de-registration through worker 1, then a registration through worker 0
        assert register(device, call_id_for(1, tag="again"), expires=0).status == 200
        assert wait_sars(relay, 4)[3] == (USER_DEREGISTRATION, W1)
        assert eventually(lambda: assignment(hss)[0], NOT_REGISTERED) == NOT_REGISTERED
        assert register(device, call_id_for(0, tag="third")).status == 200
        assert wait_sars(relay, 5)[4] == (REGISTRATION, W0)
        assert uar(hss.address, ALICE, ALICE_IMPI)[0] == (d.SUBSEQUENT_REGISTRATION, V)
    finally:
        device.close()
    assert len(sars(relay)) == 5, sars(relay)


def test_a_call_through_the_other_worker_finds_the_registered_user(
    core: tuple[HssThread, DiameterRelay, WorkerServer],
) -> None:
    """A terminating INVITE in worker 1 for alice, registered through worker 0: worker 1 reads her
    profile with SAR NO_ASSIGNMENT under the shared Server-Name (the HSS answers 2001, not 5012)
    and rings her device."""
    _, relay, server = core
    callee, caller = Device(server.address), Device(server.address)
    try:
        assert register(callee, call_id_for(0, tag="callee")).status == 200
        call_id = call_id_for(1, tag="call")
        caller.send(
            (
                f"INVITE tel:+15551230001 SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{caller.port};branch=z9hG4bK-inv1;rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:carol@example.org>;tag=caller\r\n"
                f"To: <tel:+15551230001>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
                f"Contact: <sip:carol@127.0.0.1:{caller.port}>\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )
        ringing = callee.receive()
        assert isinstance(ringing, Request) and ringing.method == "INVITE", ringing
        assert ringing.call_id == call_id
        callee.send(ringing.make_response(486, to_tag="busy").to_bytes())
        final = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and final is None:
            message = caller.receive()
            if isinstance(message, Response) and message.status >= 200:
                final = message
        assert final is not None and final.status == 486
    finally:
        callee.close()
        caller.close()
    lookups = [
        m
        for m in relay.messages("up")
        if m.request
        and m.command == d.SAR
        and m.find(d.SERVER_ASSIGNMENT_TYPE, V).as_u32() == d.NO_ASSIGNMENT  # type: ignore[union-attr]
        and m.find(d.ORIGIN_HOST).as_str() == W1  # type: ignore[union-attr]
    ]
    assert lookups, "worker 1 did not look the callee up"
    assert all(m.find(d.SERVER_NAME, V).as_str() == SERVER_NAME for m in lookups)  # type: ignore[union-attr]


def test_an_expiry_is_one_sar_from_one_worker(tmp_path: Path) -> None:
    """Both workers sweep the shared store each second; one of them takes the expired binding (one
    SQLite transaction) and sends the one SAR TIMEOUT_DEREGISTRATION."""
    profile = short_expiry_profile(tmp_path)
    with running_core(tmp_path, "--profile", str(profile)) as (hss, relay, server):
        device = Device(server.address)
        try:
            assert register(device, call_id_for(1, tag="short"), expires=2).status == 200
            assert wait_sars(relay, 1) == [(REGISTRATION, W1)]
            assert wait_sars(relay, 2, timeout=15)[1][0] == d.TIMEOUT_DEREGISTRATION
            time.sleep(2)  # both workers swept again meanwhile
            assert [kind for kind, _ in sars(relay)] == [REGISTRATION, d.TIMEOUT_DEREGISTRATION]
            assert assignment(hss)[0] == NOT_REGISTERED
            assert server.bindings() == []
        finally:
            device.close()


def test_a_deregistration_and_an_expiry_notify_alike_in_both_workers(tmp_path: Path) -> None:
    """A subscription in each worker; a de-registration through worker 1, then an expiry (taken by
    whichever worker sweeps first): the subscription of the worker that made the change (its own
    NOTIFY) and the other's (through the parent's news) hear the same, ``unregistered`` and then
    ``expired``, each ending with ``terminated;reason=deactivated``."""
    profile = short_expiry_profile(tmp_path)
    with running_core(tmp_path, "--profile", str(profile)) as (_, relay, server):
        device = Watcher(server.address)
        try:
            assert register(device, call_id_for(0, tag="long")).status == 200
            watching = sorted(call_id_for(i, tag="d") for i in (0, 1))
            for call_id in watching:
                subscribe(device, call_id)
            assert register(device, call_id_for(1, tag="off"), expires=0).status == 200
            finals = device.finals(2)
            assert sorted(finals) == watching, finals
            assert told(finals[watching[0]]) == told(finals[watching[1]])
            for notify in finals.values():
                assert_ended(notify, "deactivated", contacts="unregistered")
            # a short registration through worker 1 that expires, watched from both workers
            device.notifies.clear()
            assert register(device, call_id_for(1, tag="short"), expires=3).status == 200
            watching = sorted(call_id_for(i, tag="e") for i in (0, 1))
            for call_id in watching:
                subscribe(device, call_id)
            finals = device.finals(2)
            assert sorted(finals) == watching, finals
            assert told(finals[watching[0]]) == told(finals[watching[1]])
            for notify in finals.values():
                assert_ended(notify, "deactivated", contacts="expired")
        finally:
            device.close()
        kinds = [kind for kind, _ in wait_sars(relay, 4)]
        assert kinds == [REGISTRATION, USER_DEREGISTRATION, REGISTRATION, d.TIMEOUT_DEREGISTRATION]


def test_a_restarted_scscf_acts_on_the_registrations_its_store_kept(tmp_path: Path) -> None:
    """One process on the SQLite store, stopped and started again: the new process did not make
    the registration, yet the HSS's RTR (to the same Origin-Host) removes its bindings, and a
    refresh of a binding the file kept is SAR RE_REGISTRATION."""
    store = f"sqlite:{tmp_path / 'bindings.db'}"
    with hss_and_relay(tmp_path) as (hss, relay):
        args = (
            "--listen",
            "udp:127.0.0.1:0",
            "--store",
            store,
            "--subscribers",
            f"cx://127.0.0.1:{relay.port}",
        )
        first = serve(*args)
        phone = Phone(first.addresses["udp"], "desk")
        try:
            assert phone.register().status == 200
            assert first.stop() == 0, first.log
            second = serve(*args)
            try:
                assert eventually(lambda: len(cer_hosts(relay)), 2) == 2
                reply = rtr(hss)
                scscf = f"scscf.{DOMAIN}"
                assert reply == {
                    "ok": True,
                    "sent": [{"set": ALICE, "peer": scscf, "result": [2001, 0]}],
                }
                assert stored_contacts(store) == []
                phone.server = second.addresses["udp"]
                assert phone.register().status == 200
                assert stored_contacts(store) == [phone.contact_uri]
            finally:
                assert second.stop() == 0, second.log
            third = serve(*args)
            try:
                phone.server = third.addresses["udp"]
                assert phone.register().status == 200
            finally:
                assert third.stop() == 0, third.log
        finally:
            phone.close()
        kinds = [kind for kind, _ in sars(relay)]
        assert kinds == [REGISTRATION, REGISTRATION, RE_REGISTRATION], sars(relay)
