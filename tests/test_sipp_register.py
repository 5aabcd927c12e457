"""SIPp (sip-tester) registers: MD5 Digest via `imscore serve`, AKAv1-MD5 via an in-process server."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from test_registrar import Ue
from test_serve import serve

from imscore.auth.milenage import Milenage
from imscore.registrar.authenticator import Authenticator
from imscore.subscribers import MemorySubscriberStore, load_subscribers
from imscore.testing import start_server

SCENARIOS = Path(__file__).parent / "sipp"
DOMAIN = "ims.example.test"
USERS = 10
CALLS = 40


def sipp_binary() -> str:
    path = shutil.which("sipp")
    if path is None:
        pytest.skip("binary missing: sipp (Debian package sip-tester)")
    return path


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


#: what SIPp 3.6.1 prints, now and then, when it cannot expand the [authentication ...] keyword it
#: takes from the CSV file for the second REGISTER of tests/sipp/register-aka.xml, which it then
#: never sends (about 1 run in 25 of 10 AKA registrations here, at 513cf14 as at later commits;
#: not a RES or a RAND with a 0x00 octet, both tried; the cause is not found): a failure on SIPp's
#: side, which test_sipp_registers_with_aka_v1 meets by running SIPp again from the same port
SIPP_KEYWORD_GLITCH = "Syntax error or invalid [keyword] in scenario while parsing ''"


def run_sipp(
    scenario: str,
    target: tuple[str, int],
    csv: Path,
    calls: int,
    workdir: Path,
    port: int | None = None,
) -> str:
    result = subprocess.run(
        [
            sipp_binary(), f"{target[0]}:{target[1]}", "-sf", str(SCENARIOS / scenario),
            "-inf", str(csv),
            "-i", "127.0.0.1", "-p", str(port or free_udp_port()), "-auth_uri", DOMAIN, "-m", str(calls),
            "-r", "50", "-timeout", "60", "-timeout_error", "-nostdin", "-trace_err",
            "-error_file", str(workdir / "errors.log"),
        ],
        capture_output=True, text=True, timeout=120, cwd=workdir, check=False,
    )  # fmt: skip
    errors = (workdir / "errors.log").read_text() if (workdir / "errors.log").exists() else ""
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-2000:], errors[-3000:])
    return result.stdout


def test_sipp_registers_with_md5_digest(tmp_path: Path) -> None:
    sipp_binary()
    subscribers = tmp_path / "subscribers.yaml"
    subscribers.write_text(
        "subscribers:\n"
        + "".join(
            f"  - impi: user{i:05d}@{DOMAIN}\n    password: secret\n"
            f"    implicit_sets: [[sip:user{i:05d}@{DOMAIN}]]\n"
            for i in range(USERS)
        )
    )
    csv = tmp_path / "users.csv"
    csv.write_text(
        "SEQUENTIAL\n"
        + "".join(
            f"user{i:05d};{DOMAIN};[authentication username=user{i:05d}@{DOMAIN} password=secret]\n"
            for i in range(USERS)
        )
    )
    running = serve("--listen", "udp:127.0.0.1:0", "--subscribers", str(subscribers))
    try:
        run_sipp("register-digest.xml", running.addresses["udp"], csv, CALLS, tmp_path)
    finally:
        assert running.stop() == 0, "\n".join(running.log)


# TS 35.208 test set 3: its K and OP hold no 0x5b octet, which SIPp's keyword parser cannot take
K = "fec86ba6eb707ed08905757b1bb44b8f"
OP = "dbc59adcb6f9a0ef735477b7fadf8374"
AMF = "725c"
IMPI = "001010000000003@ims.mnc001.mcc001.3gppnetwork.org"


def rands_without_zero_in_res(milenage: Milenage) -> Callable[[int], bytes]:
    """SIPp cuts RES at a 0x00 octet (about 3 % of RANDs): draw RANDs whose RES has none."""

    def draw(size: int) -> bytes:
        while True:
            rand = secrets.token_bytes(size)
            if 0 not in milenage.f2345(rand)[0]:
                return rand

    return draw


def test_sipp_registers_with_aka_v1(tmp_path: Path) -> None:
    sipp_binary()
    file = tmp_path / "aka.yaml"
    file.write_text(
        "subscribers:\n"
        f"  - impi: {IMPI}\n"
        f"    aka: {{k: {K}, op: {OP}, amf: {AMF}, sqn: '000000000020'}}\n"
        f"    implicit_sets: [[sip:+15551230009@{DOMAIN}]]\n"
    )
    milenage = Milenage(bytes.fromhex(K), op=bytes.fromhex(OP))
    authenticator = Authenticator(DOMAIN, ("aka",), random_bytes=rands_without_zero_in_res(milenage))
    running = start_server(
        "ims",
        transports=("udp",),
        subscribers=MemorySubscriberStore(load_subscribers(file)),
        authenticator=authenticator,
    )
    csv = tmp_path / "aka.csv"
    csv.write_text(
        "SEQUENTIAL\n"
        f"+15551230009;{DOMAIN};{IMPI};"
        f"[authentication username={IMPI} aka_K=0x{K} aka_OP=0x{OP} aka_AMF=0x{AMF}]\n"
    )
    port = free_udp_port()
    try:
        for attempt in range(3):
            try:
                run_sipp("register-aka.xml", running.address("udp"), csv, 10, tmp_path, port)
                break
            except AssertionError as failed:
                if attempt == 2 or SIPP_KEYWORD_GLITCH not in str(failed):
                    raise
                (tmp_path / "errors.log").unlink(missing_ok=True)
        store = running.server.store
        assert store is not None
        bindings = running.call(store.load(f"sip:+15551230009@{DOMAIN}"))
        assert [b.uri for b in bindings] == [f"sip:+15551230009@127.0.0.1:{bindings[0].flow.remote[1]}"]
        assert bindings[0].impi == IMPI
        ue = Ue(running, IMPI, None, f"sip:+15551230009@{DOMAIN}")
        try:  # a query without credentials is challenged with AKA, as every REGISTER is
            challenge = ue.send(ue.request(contact=None))
            assert challenge.status == 401
            assert challenge.www_authenticate[0].get("algorithm") == "AKAv1-MD5"
        finally:
            ue.close()
    finally:
        running.stop()
