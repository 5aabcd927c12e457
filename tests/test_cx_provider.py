"""The S-CSCF side of Cx over real loopback TCP: ``imscore serve --subscribers cx://HOST:PORT``
against ``imscore hss``, both subprocesses.

A REGISTER is challenged with what the HSS gives by MAR (SIP Digest H(A1), Digest-AKAv1 vectors
checked by a simulated USIM, the AUTS re-synchronisation sent back to the HSS), its 200 OK lists
the implicit set the SAA's User-Data names, and the HSS learns of the registration and the
de-registration by SAR (checked here with our own Cx client asking the HSS by UAR). An HSS that
is stopped makes a REGISTER ``503`` with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from diameter_relay import DiameterRelay
from sipua import Agent, Caller, Phone
from test_hss import CAROL, OP, HssProcess, K
from test_hss import SUBSCRIBERS as HSS_SUBSCRIBERS
from test_registrar import Ue, _aka_credentials, _empty_auth
from test_serve import Served, serve

from imscore.auth.aka import UeSim
from imscore.auth.milenage import Milenage
from imscore.diameter import dictionary as d
from imscore.diameter.client import CxClient
from imscore.diameter.messages import result_of
from imscore.sip import Request, Response

V = d.VENDOR_3GPP
ALICE_SET = ["sip:alice@ims.example.test", "tel:+15551230001"]

#: the HSS file of test_hss, and dave, whose IMPI's realm is not the served domain
SUBSCRIBERS = (
    HSS_SUBSCRIBERS.rstrip("\n")
    + """
  - impi: dave@corp.example.test
    password: dave-secret
    implicit_sets:
      - [sip:dave@ims.example.test]
"""
)


class Hss(HssProcess):
    """``imscore hss`` on a free loopback port, asked by our own Cx client."""

    def uar(self, impu: str, impi: str, kind: int = d.UAT_REGISTRATION) -> tuple[object, str | None]:
        """Ask the HSS (our own Cx client, a second peer) what it knows of ``impu``: the result
        and the Server-Name."""

        async def main() -> tuple[object, str | None]:
            client = await CxClient.connect(
                "127.0.0.1",
                self.port,
                origin_host="icscf.ims.example.test",
                origin_realm="ims.example.test",
                destination_realm="ims.example.test",
            )
            try:
                answer = await client.uar(impu, impi, kind=kind)
            finally:
                await client.close()
            name = answer.find(d.SERVER_NAME, V)
            return result_of(answer), None if name is None else name.as_str()

        return asyncio.run(asyncio.wait_for(main(), 10))


@pytest.fixture
def hss(tmp_path: Path) -> Iterator[Hss]:
    path = tmp_path / "subscribers.yaml"
    path.write_text(SUBSCRIBERS)
    running = Hss(path)
    try:
        yield running
    finally:
        running.stop()


def scscf(hss: Hss, *extra: str) -> Served:
    return serve(
        "--listen", "udp:127.0.0.1:0", "--subscribers", f"cx://127.0.0.1:{hss.port}", *extra
    )  # fmt: skip


def stopped(served: Served) -> None:
    assert served.stop() == 0, "\n".join(served.log)


def eventually(check: object, expected: object, seconds: float = 5.0) -> object:
    """``check()`` until it returns ``expected`` (bounded in time); the last value."""
    assert callable(check)
    deadline = time.monotonic() + seconds
    value = check()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        value = check()
    return value


def test_digest_registration_takes_ha1_by_mar_and_the_set_by_sar(hss: Hss) -> None:
    served = scscf(hss)
    try:
        # before: the HSS has no S-CSCF for alice (first registration, no Server-Name)
        assert hss.uar(ALICE_SET[0], "alice@ims.example.test") == ((d.FIRST_REGISTRATION, V), None)
        phone = Phone(served.addresses["udp"], "alice1")
        try:
            ok = phone.register()  # 401 with the HSS's H(A1) behind it, then 200
            assert ok.status == 200, ok.status
            # the implicit set from the SAA's User-Data, the barred alice.old left out
            assert [str(a.uri) for a in ok.p_associated_uri] == ALICE_SET
            # the HSS was told by SAR REGISTRATION: this S-CSCF serves the set now
            result, name = hss.uar("tel:+15551230001", "alice@ims.example.test")
            assert result == (d.SUBSEQUENT_REGISTRATION, V)
            assert name == "sip:scscf.ims.example.test"
            again = phone.register()  # a re-registration (SAR RE_REGISTRATION)
            assert again.status == 200
            assert [str(a.uri) for a in again.p_associated_uri] == ALICE_SET
            gone = phone.register(expires=0)
            assert gone.status == 200
            # SAR USER_DEREGISTRATION (sent in the background): the set has no S-CSCF any more
            deregistered = (d.ERROR_IDENTITY_NOT_REGISTERED, V)
            check = lambda: hss.uar(ALICE_SET[0], "alice@ims.example.test", d.UAT_DE_REGISTRATION)[0]  # noqa: E731
            assert eventually(check, deregistered) == deregistered
        finally:
            phone.close()
        wrong = Phone(served.addresses["udp"], "alice2", password="not-her-secret")
        try:
            assert wrong.register().status == 401  # challenged again, never 200
        finally:
            wrong.close()
    finally:
        stopped(served)


def test_unknown_user_and_foreign_identity(hss: Hss) -> None:
    served = scscf(hss)
    try:
        nobody = Phone(
            served.addresses["udp"],
            "nobody",
            "nobody@ims.example.test",
            "x",
            "sip:nobody@ims.example.test",
        )
        try:
            assert nobody.register().status == 404
        finally:
            nobody.close()
        # alice's IMPI for carol's IMPU: the HSS says the identities do not match
        thief = Ue(_At(served.addresses["udp"]), "alice@ims.example.test", None, "tel:+15551230003")  # type: ignore[arg-type]
        try:
            refused = thief.send(thief.request(extra=[("Authorization", _empty_auth(thief.impi))]))
            assert refused.status == 403
        finally:
            thief.sock.close()
    finally:
        stopped(served)


class _At:
    def __init__(self, address: tuple[str, int]) -> None:
        self._address = address

    def address(self, transport: str) -> tuple[str, int]:
        return self._address


def test_aka_registration_with_vectors_and_resync_from_the_hss(hss: Hss) -> None:
    served = scscf(hss, "--profile", "ims")
    ue = Ue(_At(served.addresses["udp"]), CAROL, None, "tel:+15551230003")  # type: ignore[arg-type]
    sim = UeSim(Milenage(K, op=OP), sqn_ms=0)  # far behind the HSS: the first challenge resyncs
    try:
        challenge = ue.send(ue.request(extra=[("Authorization", _empty_auth(CAROL))]))
        assert challenge.status == 401
        (offered,) = challenge.www_authenticate
        assert offered.get("algorithm") == "AKAv1-MD5"
        answer = sim.respond(offered.get("nonce") or "")
        assert answer.auts is not None, "the SIM's SQN is stale: it must ask for re-synchronisation"
        resync = _aka_credentials(offered, answer.password(1), auts=answer.auts_param)
        second = ue.send(ue.request(authorization=resync))
        assert second.status == 401  # the HSS re-synchronised (MAR with RAND || AUTS): a new vector
        (offered,) = second.www_authenticate
        answer = sim.respond(offered.get("nonce") or "")
        assert answer.auts is None, "the new vector's SQN must be fresh for the SIM"
        ok = ue.send(ue.request(authorization=_aka_credentials(offered, answer.password(1))))
        assert ok.status == 200
        assert [str(a.uri) for a in ok.p_associated_uri] == [
            "sip:+15551230003@ims.example.test;user=phone",
            "tel:+15551230003",
        ]
        result, name = hss.uar("tel:+15551230003", CAROL)
        assert (result, name) == ((d.SUBSEQUENT_REGISTRATION, V), "sip:scscf.ims.example.test")
    finally:
        ue.sock.close()
        stopped(served)


def test_an_unreachable_hss_is_503_with_retry_after(hss: Hss) -> None:
    served = scscf(hss)
    try:
        phone = Phone(served.addresses["udp"], "alice1")
        try:
            assert phone.register().status == 200
            hss.stop()
            refused = phone.register()
            assert refused.status == 503
            assert refused.headers.get("Retry-After") == "30"
        finally:
            phone.close()
        # a terminating request for an IMPU not registered here needs its profile (SAR
        # NO_ASSIGNMENT): the HSS is down, so 503 with Retry-After too, not a 500
        caller = Caller(served.addresses["udp"])
        try:
            caller.invite("sip:alice.work@ims.example.test")
            answer = caller.expect("final")
            assert isinstance(answer, Response)
            assert answer.status == 503, answer.status
            assert answer.headers.get("Retry-After")
        finally:
            caller.close()
    finally:
        stopped(served)


def _connections_to(port: int) -> int:
    """Established TCP connections whose remote end is loopback ``port`` (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            count += 1
    return count


def test_the_scscf_connects_to_its_hss_as_it_starts(hss: Hss) -> None:
    """CER/CEA at start-up, like any Diameter node: the first REGISTER does not wait for it."""
    assert _connections_to(hss.port) == 0
    served = scscf(hss)
    try:
        # no SIP request yet: the Cx connection is up
        assert eventually(lambda: _connections_to(hss.port), 1) == 1
        phone = Phone(served.addresses["udp"], "alice1")
        try:
            assert phone.register().status == 200
        finally:
            phone.close()
        assert _connections_to(hss.port) == 1  # the same connection served MAR and SAR
    finally:
        stopped(served)
    assert any("Cx: connected to 127.0.0.1" in line for line in served.log), served.log


def test_an_hss_down_at_start_up_does_not_stop_the_scscf(hss: Hss) -> None:
    port = hss.port
    hss.stop()
    served = serve("--listen", "udp:127.0.0.1:0", "--subscribers", f"cx://127.0.0.1:{port}")
    try:
        phone = Phone(served.addresses["udp"], "alice1")
        try:
            refused = phone.register()  # it serves, and says the HSS is not there
            assert refused.status == 503, refused.status
            assert refused.headers.get("Retry-After") == "30"
        finally:
            phone.close()
    finally:
        stopped(served)
    assert any(f"HSS 127.0.0.1:{port}:" in line for line in served.log), served.log


def test_the_watchdog_keeps_the_connection_and_replaces_a_silent_one(hss: Hss) -> None:
    silent = threading.Event()  # while set, the HSS's messages are dropped (it stopped answering)
    relay = DiameterRelay(
        ("127.0.0.1", hss.port), drop=lambda r: silent.is_set() and r.direction == "down"
    ).start()

    def sent(command: int) -> int:
        return sum(m.command == command for m in relay.messages("up"))

    served = serve(
        "--listen", "udp:127.0.0.1:0",
        "--subscribers", f"cx://127.0.0.1:{relay.port}?watchdog=0.5&timeout=1",
    )  # fmt: skip
    try:
        # CER at start, then DWRs while nothing else is said (RFC 3539's Tw, here 0.5 s), answered
        assert eventually(lambda: sent(d.DWR) >= 2, True) is True, relay.messages()
        assert relay.messages("up")[0].command == d.CER and sent(d.CER) == 1
        assert any(m.command == d.DWR and not m.request for m in relay.messages("down"))  # DWAs
        # the HSS stops answering: no DWA within the timeout closes the connection, and the
        # S-CSCF opens a new one (whose CER gets no CEA either, while the HSS stays silent)
        silent.set()
        assert eventually(lambda: sent(d.CER) >= 2, True) is True
        silent.clear()
        # it answers again: a connection is up before any REGISTER, and serves it
        assert eventually(lambda: _connections_to(relay.port), 1) == 1
        phone = Phone(served.addresses["udp"], "alice1")
        try:
            assert phone.register().status == 200
        finally:
            phone.close()
    finally:
        stopped(served)
        relay.close()
    assert any("no DWA" in line and "closing the connection" in line for line in served.log), served.log
    # stopping, it said DPR and waited for the HSS's DPA (RFC 6733 §5.4) before closing
    last = relay.messages()[-2:]
    assert [(m.command, m.request) for m in last] == [(d.DPR, True), (d.DPR, False)], last


def test_an_expiry_is_told_to_the_hss_by_sar(hss: Hss, tmp_path: Path) -> None:
    default = Path(__file__).parent.parent / "imscore" / "profiles" / "default.yaml"
    text = default.read_text()
    assert "min_expires: 60" in text
    profile = tmp_path / "short.yaml"
    profile.write_text(text.replace("min_expires: 60", "min_expires: 1"))
    served = scscf(hss, "--profile", str(profile))
    try:
        phone = Phone(served.addresses["udp"], "alice1")
        try:
            assert phone.register(expires=2).status == 200
            impi = "alice@ims.example.test"
            assert hss.uar(ALICE_SET[0], impi)[0] == (d.SUBSEQUENT_REGISTRATION, V)
            # the binding expires; the S-CSCF sends SAR TIMEOUT_DEREGISTRATION
            deregistered = (d.ERROR_IDENTITY_NOT_REGISTERED, V)
            check = lambda: hss.uar(ALICE_SET[0], impi, d.UAT_DE_REGISTRATION)[0]  # noqa: E731
            assert eventually(check, deregistered, seconds=10) == deregistered
        finally:
            phone.close()
    finally:
        stopped(served)


def test_unknown_user_status_401_hides_who_the_hss_does_not_know(hss: Hss, tmp_path: Path) -> None:
    """With ``registrar.unknown_user_status: 401`` an unknown user is challenged like a known one,
    with or without an IMPI in Authorization: never a 404 that tells who does not exist."""
    default = Path(__file__).parent.parent / "imscore" / "profiles" / "default.yaml"
    text = default.read_text()
    assert "unknown_user_status: 404" in text
    profile = tmp_path / "hidden.yaml"
    profile.write_text(text.replace("unknown_user_status: 404", "unknown_user_status: 401"))
    served = scscf(hss, "--profile", str(profile))
    try:
        nobody = Phone(
            served.addresses["udp"],
            "nobody",
            "nobody@ims.example.test",
            "x",
            "sip:nobody@ims.example.test",
        )
        try:
            assert nobody.register().status == 401  # the answer (IMPI in Authorization) too
        finally:
            nobody.close()
        ue = Ue(
            _At(served.addresses["udp"]), "nobody@ims.example.test", None, "sip:nobody@ims.example.test"
        )  # type: ignore[arg-type]
        try:
            first = ue.send(ue.request(extra=[("Authorization", _empty_auth(ue.impi))]))
            assert first.status == 401
        finally:
            ue.sock.close()
    finally:
        stopped(served)


IFC_SUBSCRIBERS = """\
subscribers:
  - impi: alice@ims.example.test
    password: x
    implicit_sets: [[sip:alice@ims.example.test]]
    service_profile:
      ifcs:
        - priority: 10
          trigger:
            condition: dnf
            spts:
              - {method: REGISTER, registration_type: [initial, de-registration]}
              - {header: Subject, content: '^x', negated: true, group: [0, 1]}
              - {request_uri: '^sip:.*@ims', group: 2}
              - {session_case: terminating_unregistered, group: 2}
              - {session_description: m, content: audio, group: 3}
          application_server:
            uri: sip:127.0.0.1:5070
            default_handling: session-terminated
            service_info: <x/>
            include_register_request: true
            include_register_response: true
        - priority: 2
          profile_part: unregistered
          application_server: {uri: 'sip:vm@127.0.0.1:5071'}
        - priority: 3
          profile_part: registered
          trigger:
            spts: [{method: INVITE}]
          application_server: {uri: 'sip:mmtel@127.0.0.1:5072'}
"""


def test_the_ifcs_of_user_data_read_back_as_written() -> None:
    import yaml

    from imscore.diameter.provider import subscriber_from_user_data
    from imscore.diameter.userdata import parse_ifcs, user_data_xml
    from imscore.subscribers import subscribers_from_data

    (alice,) = subscribers_from_data(yaml.safe_load(IFC_SUBSCRIBERS), source="t")
    raw = user_data_xml(alice, alice.implicit_sets[0])
    profile = parse_ifcs(raw)
    assert len(profile.ifcs) == 3
    assert profile == alice.service_profile
    # the S-CSCF's record from an SAA carries them (third-party registration, AS routing)
    assert subscriber_from_user_data(raw).service_profile == alice.service_profile
    # an iFC that cannot be read is left out, the others kept
    broken = raw.replace(b"<Priority>3</Priority>", b"<Priority>three</Priority>")
    assert [ifc.priority for ifc in parse_ifcs(broken).ifcs] == [2, 10]
    # two iFCs with one priority make no profile: the record has the set and no services
    twice = raw.replace(b"<Priority>3</Priority>", b"<Priority>2</Priority>")
    record = subscriber_from_user_data(twice)
    assert record.service_profile.ifcs == ()
    assert [str(u) for u in record.implicit_sets[0]] == ["sip:alice@ims.example.test"]


def test_the_ifcs_of_the_saa_send_a_third_party_register(tmp_path: Path) -> None:
    """The iFCs come with the profile from the HSS: alice's registration through cx:// makes a
    third-party REGISTER to the AS her iFC in the HSS's file names (TS 24.229 §5.4.1.7)."""
    app = Agent(("127.0.0.1", 9), "as")  # the AS: a UDP socket on loopback
    try:
        path = tmp_path / "subscribers.yaml"
        path.write_text(
            SUBSCRIBERS.replace(
                "    barred: [sip:alice.old@ims.example.test]\n",
                "    barred: [sip:alice.old@ims.example.test]\n"
                "    service_profile:\n"
                "      ifcs:\n"
                "        - priority: 0\n"
                "          trigger: {spts: [{method: REGISTER}]}\n"
                f"          application_server: {{uri: 'sip:as@127.0.0.1:{app.port}'}}\n",
            )
        )
        hss = Hss(path)
        try:
            served = scscf(hss)
            try:
                phone = Phone(served.addresses["udp"], "alice1")
                try:
                    assert phone.register().status == 200
                    third = app.expect("REGISTER", timeout=10)
                    assert isinstance(third, Request)
                    assert str(third.uri) == f"sip:as@127.0.0.1:{app.port}"
                    assert "sip:alice@ims.example.test" in (third.headers.get("To") or "")
                    app.send(third.make_response(200, None, [], to_tag="as"), served.addresses["udp"])
                finally:
                    phone.close()
            finally:
                stopped(served)
        finally:
            hss.stop()
    finally:
        app.close()


def test_the_digest_realm_is_the_one_the_hss_made_the_ha1_with(hss: Hss) -> None:
    """``imscore hss`` makes H(A1) with the IMPI's realm (corp.example.test), not the S-CSCF's
    domain: the challenge names the realm of the SIP-Digest-Authenticate, so the answer checks."""
    served = scscf(hss)
    try:
        phone = Phone(
            served.addresses["udp"],
            "dave",
            "dave@corp.example.test",
            "dave-secret",
            "sip:dave@ims.example.test",
        )
        try:
            phone.send(phone._register_request(None, 600, None, None))
            first = phone.expect("final")
            assert isinstance(first, Response) and first.status == 401
            (offered,) = first.www_authenticate
            assert offered.get("realm") == "corp.example.test"
            assert phone.register().status == 200
        finally:
            phone.close()
    finally:
        stopped(served)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("cx://127.0.0.1", "expected cx://HOST:PORT"),
        ("cx://127.0.0.1:3868?bogus=1", "unknown key 'bogus'"),
        ("cx://127.0.0.1:3868?timeout=soon", "timeout must be a number"),
        ("cx://127.0.0.1:3868?watchdog=often", "watchdog must be a number"),
    ],
)
def test_a_bad_cx_url_stops_start_up_with_one_line(url: str, said: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "imscore", "serve", "--store", "memory:",
         "--listen", "udp:127.0.0.1:0", "--subscribers", url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], done.stderr


def test_akav2_vectors_through_cx(hss: Hss, tmp_path: Path) -> None:
    """With the profile's ``aka_algorithm: AKAv2-MD5`` the challenge made from the HSS's vector
    is AKAv2-MD5 and the UE's AKAv2 answer (RFC 4169: the password from RES, IK and CK)
    registers it."""
    from imscore.auth.digest import credentials

    ims = Path(__file__).parent.parent / "imscore" / "profiles" / "ims.yaml"
    text = ims.read_text()
    assert "  auth:\n    plugin: aka\n" in text
    profile = tmp_path / "akav2.yaml"
    profile.write_text(
        text.replace(
            "  auth:\n    plugin: aka\n",
            "  auth:\n    plugin: aka\n    options: {aka_algorithm: AKAv2-MD5}\n",
        )
    )
    served = scscf(hss, "--profile", str(profile))
    ue = Ue(_At(served.addresses["udp"]), CAROL, None, "tel:+15551230003")  # type: ignore[arg-type]
    sim = UeSim(Milenage(K, op=OP), sqn_ms=0xFF9BB4D0B607 + 1000)  # the HSS's SQN is behind it
    try:
        for _ in range(3):  # a re-synchronisation, when the HSS's SQN is judged stale, then OK
            challenge = ue.send(ue.request(extra=[("Authorization", _empty_auth(CAROL))]))
            assert challenge.status == 401
            (offered,) = challenge.www_authenticate
            assert offered.get("algorithm") == "AKAv2-MD5"
            answer = sim.respond(offered.get("nonce") or "")
            value = credentials(
                offered,
                username=CAROL,
                password=answer.password(2),
                method="REGISTER",
                uri="sip:ims.example.test",
                algorithm_aliases={"AKAv2-MD5": "MD5"},
            )
            if answer.auts is not None:
                value += f', auts="{answer.auts_param}"'
            final = ue.send(ue.request(authorization=value))
            if answer.auts is None:
                assert final.status == 200
                break
            assert final.status == 401  # re-synchronised by the HSS: challenged again
        else:
            raise AssertionError("no 200 after re-synchronisation")
    finally:
        ue.sock.close()
        stopped(served)
