"""The device harness of tests/devices.py, proved against `imscore serve` on loopback.

SIPp devices and baresip phones register for alice (their bindings read back with `imscore
bindings` from the server's SQLite store), then each takes a call made DIRECTLY to its contact
address by a SIPp caller (no proxy in the path): answer, busy, no answer, auto-answer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from devices import Baresip, SippCaller, SippDevice, require_binary, stop_all
from test_serve import Served, serve

ALICE = "sip:alice@ims.example.test"


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:{tmp_path / 'bindings.db'}"


@pytest.fixture
def served(store: str) -> Iterator[Served]:
    """`imscore serve` (default profile, demo subscribers) on a free UDP port, SQLite store."""
    running = serve("--listen", "udp:127.0.0.1:0", "--store", store)
    try:
        yield running
    finally:
        assert running.stop() == 0, "\n".join(running.log)


def bindings(store: str, aor: str = ALICE) -> list[dict[str, object]]:
    """The bindings of ``aor``, as `imscore bindings --json` lists them."""
    result = subprocess.run(
        [sys.executable, "-m", "imscore", "bindings", "--store", store, "--aor", aor, "--json"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found: list[dict[str, object]] = []
    for entry in json.loads(result.stdout)["aors"]:
        found.extend(entry["bindings"])
    return found


def test_three_sipp_devices_register_and_take_their_calls(
    served: Served, store: str, tmp_path: Path
) -> None:
    registrar = served.addresses["udp"]
    answer = SippDevice("desk", "answer", registrar, tmp_path, instance=True, reg_id=1, ring_ms=300)
    busy = SippDevice("soft", "busy", registrar, tmp_path, instance=True, reg_id=1)
    noanswer = SippDevice("mobile", "noanswer", registrar, tmp_path)
    devices = [answer, busy, noanswer]
    callers: list[SippCaller] = []
    try:
        for device in devices:
            device.start()
        for device in devices:
            device.wait_registered(5)
        found = bindings(store)
        assert sorted(str(b["uri"]) for b in found) == sorted(d.contact for d in devices)
        instances = {str(b["uri"]): b["instance_id"] for b in found}
        assert instances[answer.contact] == f"<{answer.instance}>"
        assert instances[noanswer.contact] is None

        callers = [
            SippCaller("call-desk", answer.address, answer.contact, tmp_path, to=ALICE, talk_ms=100),
            SippCaller("call-soft", busy.address, busy.contact, tmp_path, to=ALICE, expect=486),
            SippCaller(
                "call-mobile",
                noanswer.address,
                noanswer.contact,
                tmp_path,
                to=ALICE,
                cancel_after_ms=200,
            ),
        ]
        for caller in callers:
            caller.start()
        for party in [*callers, *devices]:
            party.finish(10)
    finally:
        stop_all([*callers, *devices])

    assert answer.received_methods() == ["INVITE", "ACK", "BYE"]
    assert busy.received_methods() == ["INVITE", "ACK"]
    assert noanswer.received_methods() == ["INVITE", "CANCEL", "ACK"]
    assert callers[0].responses()[-2:] == [180, 200]
    assert callers[1].final_status() == 486
    assert callers[2].final_status() == 487
    (invite,) = answer.received("INVITE")
    assert invite.start_line == f"INVITE {answer.contact} SIP/2.0"
    assert invite.parse().method == "INVITE"  # a well-formed request, for imscore's parser too


def test_an_answering_device_takes_a_cancel_while_it_rings(served: Served, tmp_path: Path) -> None:
    device = SippDevice("desk", "answer", served.addresses["udp"], tmp_path, user="bob",
                        password="bob-secret", ring_ms=5000)  # fmt: skip
    caller = SippCaller("caller", device.address, device.contact, tmp_path, cancel_after_ms=100)
    try:
        device.start().wait_registered(5)
        caller.start()
        caller.finish(5)
        device.finish(5)  # well before its 5 s of ringing: the CANCEL path ended it
    finally:
        stop_all([caller, device])
    assert device.received_methods() == ["INVITE", "CANCEL", "ACK"]
    sent = [m.status for m in device.messages() if m.direction == "sent" and m.status]
    assert sent == [100, 180, 200, 487]  # 200 is the CANCEL's


def test_a_caller_fails_on_another_final_status(served: Served, tmp_path: Path) -> None:
    device = SippDevice(
        "soft", "busy", served.addresses["udp"], tmp_path, user="bob", password="bob-secret"
    )
    caller = SippCaller("caller", device.address, device.contact, tmp_path, expect=200, timeout=5)
    try:
        device.start().wait_registered(5)
        caller.start()
        status = caller.wait(5)
        device.finish(5)
    finally:
        stop_all([caller, device])
    assert caller.final_status() == 486
    assert status == 1, caller.diagnostics()  # the call failed: 486 is not the 200 it expected


def test_a_device_with_a_wrong_password_is_refused(served: Served, tmp_path: Path) -> None:
    device = SippDevice("desk", "answer", served.addresses["udp"], tmp_path, password="wrong", timeout=5)
    try:
        device.start()
        with pytest.raises(AssertionError, match="REGISTER ended with 401"):
            device.wait_registered(5)
    finally:
        device.stop()


def test_an_unknown_behaviour_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="behaviour must be one of answer, busy, noanswer, not 'dnd'"):
        SippDevice("desk", "dnd", ("127.0.0.1", 5060), tmp_path)


def test_three_baresip_phones_register_and_auto_answer(
    served: Served, store: str, tmp_path: Path
) -> None:
    registrar = served.addresses["udp"]
    phones = [
        Baresip(f"phone{i}", "alice", "alice-secret", registrar, workdir=tmp_path) for i in range(3)
    ]
    callers: list[SippCaller] = []
    try:
        for phone in phones:
            phone.start()
        for phone in phones:
            phone.wait_registered(5)
        found = bindings(store)
        assert sorted(str(b["uri"]) for b in found) == sorted(p.contact for p in phones)
        assert len({b["instance_id"] for b in found}) == 3  # each phone has its own +sip.instance
        assert all(str(b["instance_id"]).startswith("<urn:uuid:") for b in found)

        callers = [
            SippCaller(f"call-{p.name}", p.address, p.contact, tmp_path, to=ALICE, talk_ms=200)
            for p in phones
        ]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.finish(10)
        for phone in phones:
            call_id = phone.wait_for_call(5, "CALL_CLOSED")
            assert phone.calls_seen()[call_id][-2:] == ["CALL_ESTABLISHED", "CALL_CLOSED"]
            assert phone.received_methods() == ["INVITE", "ACK", "BYE"]
    finally:
        stop_all([*callers, *phones])
    # stopped by SIGTERM, each phone un-registered its contact
    assert bindings(store) == []


def test_a_baresip_phone_in_manual_mode_rings_until_cancelled(served: Served, tmp_path: Path) -> None:
    require_binary("baresip", "baresip-core")
    phone = Baresip("phone", "bob", "bob-secret", served.addresses["udp"], workdir=tmp_path,
                    answermode="manual")  # fmt: skip
    caller = SippCaller("caller", phone.address, "", tmp_path, cancel_after_ms=300)
    try:
        phone.start().wait_registered(5)
        caller.ruri = caller.to = phone.contact
        caller.start()
        try:
            caller.finish(5)
        except AssertionError as failed:  # the INVITE goes to the phone directly: say what it saw
            raise AssertionError(f"{failed}\n--- phone ---\n{phone.diagnostics()}") from None
        call_id = phone.wait_for_call(5, "CALL_CLOSED")
    finally:
        stop_all([caller, phone])
    assert phone.calls_seen()[call_id][0] == "CALL_INCOMING"
    assert "CALL_ESTABLISHED" not in phone.calls_seen()[call_id]
    assert phone.received_methods() == ["INVITE", "CANCEL", "ACK"]
    assert caller.responses()[-2:] == [180, 487]
