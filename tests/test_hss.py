"""``imscore hss`` over real TCP on loopback: the Cx answers of our HSS to our Cx client.

The HSS runs as a subprocess (``python -m imscore hss --listen tcp:127.0.0.1:0``); the client is
:class:`imscore.diameter.client.CxClient`. AKA vectors are checked with the UE side of
:mod:`imscore.auth.aka` (a simulated USIM with the same K and OP).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from devices import stop_process

from imscore.auth.aka import UeSim, make_auts, make_nonce
from imscore.auth.milenage import Milenage
from imscore.diameter import dictionary as d
from imscore.diameter.client import CxClient, DiameterPeerError
from imscore.diameter.codec import Avp, Message, decode_message
from imscore.diameter.framer import StreamFramer
from imscore.diameter.messages import result_of
from imscore.diameter.userdata import parse_user_data

V = d.VENDOR_3GPP
K = bytes.fromhex("465b5ce8b199b49faa5f0a2ee238a6bc")
OP = bytes.fromhex("cdc202d5123e20f62b6d676ac72cb318")
SCSCF = "sip:scscf.ims.example.test:5060"
CAROL = "001010123456789@ims.mnc001.mcc001.3gppnetwork.org"

SUBSCRIBERS = f"""
subscribers:
  - impi: alice@ims.example.test
    password: alice-secret
    implicit_sets:
      - [sip:alice@ims.example.test, tel:+15551230001, sip:alice.old@ims.example.test]
      - [sip:alice.work@ims.example.test]
    barred: [sip:alice.old@ims.example.test]
  - impi: {CAROL}
    aka:
      k: {K.hex()}
      op: {OP.hex()}
      amf: b9b9
      sqn: ff9bb4d0b607
    implicit_sets:
      - [sip:+15551230003@ims.example.test;user=phone, tel:+15551230003]
"""


class HssProcess:
    """``imscore hss`` on a free loopback port with the subscriber file ``path``; :attr:`port` is
    the one its start-up line names (its Origin-Host must be the default one)."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imscore", "hss", "--listen", "tcp:127.0.0.1:0",
             "--subscribers", str(path), "--origin-realm", "ims.example.test"],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.process.stderr is not None
        line = self.process.stderr.readline()
        match = re.search(r"Cx on tcp:127\.0\.0\.1:(\d+) as hss\.ims\.example\.test", line)
        if match is None:
            stop_process(self.process)
        assert match, line
        self.port = int(match.group(1))

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture(scope="module")
def hss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    path: Path = tmp_path_factory.mktemp("hss") / "subscribers.yaml"
    path.write_text(SUBSCRIBERS)
    running = HssProcess(path)
    try:
        yield "127.0.0.1", running.port
    finally:
        running.stop()


def run(hss: tuple[str, int], body: Callable[[CxClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        client = await CxClient.connect(
            *hss,
            origin_host="scscf.ims.example.test",
            origin_realm="ims.example.test",
            destination_realm="ims.example.test",
        )
        try:
            return await body(client)
        finally:
            await client.close()

    return asyncio.run(asyncio.wait_for(main(), 20))


def test_cer_cea_and_dwr(hss: tuple[str, int]) -> None:
    async def body(client: CxClient) -> None:
        cea = client.cea
        assert cea is not None and not cea.request and cea.command == d.CER
        assert result_of(cea) == (d.SUCCESS, 0)
        assert cea.find(d.ORIGIN_HOST).as_str() == "hss.ims.example.test"  # type: ignore[union-attr]
        vsai = cea.find(d.VENDOR_SPECIFIC_APPLICATION_ID)
        assert vsai is not None
        assert vsai.find(d.VENDOR_ID).as_u32() == 10415  # type: ignore[union-attr]
        assert vsai.find(d.AUTH_APPLICATION_ID).as_u32() == 16777216  # type: ignore[union-attr]
        assert cea.find(d.HOST_IP_ADDRESS).as_address() == "127.0.0.1"  # type: ignore[union-attr]
        dwa = await client.watchdog()
        assert dwa.command == d.DWR and not dwa.request and result_of(dwa) == (d.SUCCESS, 0)

    run(hss, body)


def test_uar_sar_lir_and_user_data_follow_the_registration_state(hss: tuple[str, int]) -> None:
    async def body(client: CxClient) -> None:
        uaa = await client.uar("sip:alice@ims.example.test", "alice@ims.example.test")
        assert uaa.application == d.CX_APPLICATION and uaa.command == d.UAR
        assert result_of(uaa) == (d.FIRST_REGISTRATION, V)
        assert uaa.find(d.SERVER_CAPABILITIES, V) is not None
        lia = await client.lir("tel:+15551230001")
        assert result_of(lia) == (d.ERROR_IDENTITY_NOT_REGISTERED, V)

        saa = await client.sar(
            "sip:alice@ims.example.test", SCSCF, d.REGISTRATION, impi="alice@ims.example.test"
        )
        assert result_of(saa) == (d.SUCCESS, 0)
        assert saa.find(d.USER_NAME).as_str() == "alice@ims.example.test"  # type: ignore[union-attr]
        user_data = saa.find(d.USER_DATA, V)
        assert user_data is not None
        private, identities = parse_user_data(user_data.data)
        assert private == "alice@ims.example.test"
        # the implicit set of the IMPU, default first, the barred one marked; not the work set
        assert identities == [
            ("sip:alice@ims.example.test", False),
            ("tel:+15551230001", False),
            ("sip:alice.old@ims.example.test", True),
        ]

        uaa = await client.uar("tel:+15551230001", "alice@ims.example.test")
        assert result_of(uaa) == (d.SUBSEQUENT_REGISTRATION, V)
        assert uaa.find(d.SERVER_NAME, V).as_str() == SCSCF  # type: ignore[union-attr]
        lia = await client.lir("tel:+15551230001")
        assert result_of(lia) == (d.SUCCESS, 0)
        assert lia.find(d.SERVER_NAME, V).as_str() == SCSCF  # type: ignore[union-attr]
        # the other implicit set is not registered
        lia = await client.lir("sip:alice.work@ims.example.test")
        assert result_of(lia) == (d.ERROR_IDENTITY_NOT_REGISTERED, V)

        saa = await client.sar("sip:alice@ims.example.test", SCSCF, d.USER_DEREGISTRATION)
        assert result_of(saa) == (d.SUCCESS, 0) and saa.find(d.USER_DATA, V) is None
        lia = await client.lir("sip:alice@ims.example.test")
        assert result_of(lia) == (d.ERROR_IDENTITY_NOT_REGISTERED, V)
        uaa = await client.uar(
            "sip:alice@ims.example.test", "alice@ims.example.test", kind=d.UAT_DE_REGISTRATION
        )
        assert result_of(uaa) == (d.ERROR_IDENTITY_NOT_REGISTERED, V)

    run(hss, body)


def test_unknown_users_mismatched_and_barred_identities(hss: tuple[str, int]) -> None:
    async def body(client: CxClient) -> None:
        for answer in (
            await client.uar("sip:nobody@ims.example.test", "nobody@ims.example.test"),
            await client.lir("sip:nobody@ims.example.test"),
            await client.sar("sip:nobody@ims.example.test", SCSCF, d.REGISTRATION),
            await client.mar("sip:nobody@ims.example.test", "nobody@ims.example.test", SCSCF),
            await client.uar("sip:alice@ims.example.test", "nobody@ims.example.test"),
        ):
            assert result_of(answer) == (d.ERROR_USER_UNKNOWN, V)
            assert not answer.error  # an Experimental-Result, not a protocol error
        uaa = await client.uar("sip:alice@ims.example.test", CAROL)
        assert result_of(uaa) == (d.ERROR_IDENTITIES_DONT_MATCH, V)
        uaa = await client.uar("sip:alice.old@ims.example.test", "alice@ims.example.test")
        assert result_of(uaa) == (d.AUTHORIZATION_REJECTED, 0)
        maa = await client.mar(
            "sip:alice@ims.example.test", "alice@ims.example.test", SCSCF, scheme=d.SCHEME_AKAV1
        )
        assert result_of(maa) == (d.ERROR_AUTH_SCHEME_NOT_SUPPORTED, V)

    run(hss, body)


def test_mar_gives_aka_vectors_a_usim_accepts_and_resynchronises(hss: tuple[str, int]) -> None:
    impu = "sip:+15551230003@ims.example.test;user=phone"

    async def body(client: CxClient) -> None:
        maa = await client.mar(impu, CAROL, SCSCF, scheme=d.SCHEME_AKAV1, count=2)
        assert result_of(maa) == (d.SUCCESS, 0)
        # the MAA names the public identity it answers for (TS 29.229 §6.1.8; Kamailio's ims_auth
        # refuses an answer without it: "No public identity specified")
        assert maa.find(d.PUBLIC_IDENTITY, V).as_str() == impu  # type: ignore[union-attr]
        assert maa.find(d.SIP_NUMBER_AUTH_ITEMS, V).as_u32() == 2  # type: ignore[union-attr]
        items = list(maa.find_all(d.SIP_AUTH_DATA_ITEM, V))
        assert len(items) == 2
        ue = UeSim(Milenage(K, op=OP), sqn_ms=0xFF9BB4D0B607)
        for number, item in enumerate(items, 1):
            assert item.find(d.SIP_ITEM_NUMBER, V).as_u32() == number  # type: ignore[union-attr]
            assert item.find(d.SIP_AUTHENTICATION_SCHEME, V).as_str() == d.SCHEME_AKAV1  # type: ignore[union-attr]
            challenge = item.find(d.SIP_AUTHENTICATE, V).data  # type: ignore[union-attr]
            assert len(challenge) == 32
            response = ue.respond(make_nonce(challenge[:16], challenge[16:]))
            assert response.res == item.find(d.SIP_AUTHORIZATION, V).data  # type: ignore[union-attr]
            assert response.ck == item.find(d.CONFIDENTIALITY_KEY, V).data  # type: ignore[union-attr]
            assert response.ik == item.find(d.INTEGRITY_KEY, V).data  # type: ignore[union-attr]

        # a USIM far ahead answers with AUTS; a MAR with RAND || AUTS resynchronises the SQN
        ahead = UeSim(Milenage(K, op=OP), sqn_ms=0xFF9BB4D0B607 + (1 << 34))
        maa = await client.mar(impu, CAROL, SCSCF, scheme=d.SCHEME_AKAV1)
        challenge = maa.find(d.SIP_AUTH_DATA_ITEM, V).find(d.SIP_AUTHENTICATE, V).data  # type: ignore[union-attr]
        stale = ahead.respond(make_nonce(challenge[:16], challenge[16:]))
        assert stale.auts is not None
        maa = await client.mar(
            impu, CAROL, SCSCF, scheme=d.SCHEME_AKAV1, resync=challenge[:16] + stale.auts
        )
        assert result_of(maa) == (d.SUCCESS, 0)
        item = maa.find(d.SIP_AUTH_DATA_ITEM, V)
        challenge = item.find(d.SIP_AUTHENTICATE, V).data  # type: ignore[union-attr]
        fresh = ahead.respond(make_nonce(challenge[:16], challenge[16:]))
        assert fresh.res == item.find(d.SIP_AUTHORIZATION, V).data  # type: ignore[union-attr]
        # a forged AUTS is refused
        forged = make_auts(Milenage(bytes(16), op=OP), challenge[:16], 5)
        maa = await client.mar(impu, CAROL, SCSCF, scheme=d.SCHEME_AKAV1, resync=challenge[:16] + forged)
        assert result_of(maa) == (d.AUTHORIZATION_REJECTED, 0)

    run(hss, body)


def test_mar_sip_digest_gives_ha1(hss: tuple[str, int]) -> None:
    async def body(client: CxClient) -> None:
        maa = await client.mar("sip:alice@ims.example.test", "alice@ims.example.test", SCSCF)
        assert result_of(maa) == (d.SUCCESS, 0)
        assert maa.find(d.PUBLIC_IDENTITY, V).as_str() == "sip:alice@ims.example.test"  # type: ignore[union-attr]
        item = maa.find(d.SIP_AUTH_DATA_ITEM, V)
        assert item is not None
        assert item.find(d.SIP_AUTHENTICATION_SCHEME, V).as_str() == "SIP Digest"  # type: ignore[union-attr]
        digest = item.find(d.SIP_DIGEST_AUTHENTICATE, V)
        assert digest is not None
        assert digest.find(d.DIGEST_REALM).as_str() == "ims.example.test"  # type: ignore[union-attr]
        assert digest.find(d.DIGEST_QOP).as_str() == "auth"  # type: ignore[union-attr]
        ha1 = hashlib.md5(b"alice@ims.example.test:ims.example.test:alice-secret").hexdigest()
        assert digest.find(d.DIGEST_HA1).as_str() == ha1  # type: ignore[union-attr]

    run(hss, body)


def test_mar_for_the_older_digest_md5_scheme_is_answered_as_sip_digest(hss: tuple[str, int]) -> None:
    """Kamailio's S-CSCF asks for "Digest-MD5"; an H(A1) is a "SIP Digest" item, named so."""

    async def body(client: CxClient) -> None:
        maa = await client.mar(
            "sip:alice@ims.example.test", "alice@ims.example.test", SCSCF, scheme="Digest-MD5"
        )
        assert result_of(maa) == (d.SUCCESS, 0)
        item = maa.find(d.SIP_AUTH_DATA_ITEM, V)
        assert item is not None
        assert item.find(d.SIP_AUTHENTICATION_SCHEME, V).as_str() == d.SCHEME_SIP_DIGEST  # type: ignore[union-attr]
        assert item.find(d.SIP_DIGEST_AUTHENTICATE, V) is not None

    run(hss, body)


def _raw_exchange(hss: tuple[str, int], payloads: list[bytes], answers: int) -> list[Message]:
    """Send raw octets on a fresh connection; read up to ``answers`` answers (or until closed)."""
    got: list[Message] = []
    with socket.create_connection(hss, timeout=5) as sock:
        for payload in payloads:
            sock.sendall(payload)
        framer = StreamFramer()
        while len(got) < answers:
            data = sock.recv(65536)
            if not data:
                break
            got += [decode_message(frame) for frame in framer.feed(data)]
    return got


def _cer(apps: list[Avp], hbh: int = 1) -> bytes:
    return Message(
        d.CER, 0,
        (Avp.utf8(d.ORIGIN_HOST, "raw.ims.example.test"), Avp.utf8(d.ORIGIN_REALM, "ims.example.test"),
         Avp.address(d.HOST_IP_ADDRESS, "127.0.0.1"), Avp.u32(d.VENDOR_ID, 0),
         Avp.utf8(d.PRODUCT_NAME, "raw"), *apps),
        hop_by_hop=hbh, end_to_end=hbh,
    ).encode()  # fmt: skip


def test_bad_peers_get_clear_answers_and_the_hss_keeps_serving(hss: tuple[str, int]) -> None:
    cx = Avp.u32(d.AUTH_APPLICATION_ID, d.CX_APPLICATION)
    # no Cx in the CER: 5010, then closed
    (cea,) = _raw_exchange(hss, [_cer([Avp.u32(d.AUTH_APPLICATION_ID, 4)])], 2)
    assert result_of(cea) == (d.NO_COMMON_APPLICATION, 0)
    # a Cx request before the CER: 3010 with E, then closed
    uar = Message(d.UAR, d.CX_APPLICATION, (Avp.utf8(d.SESSION_ID, "x;1"),), hop_by_hop=9)
    (answer,) = _raw_exchange(hss, [uar.encode()], 2)
    assert answer.error and result_of(answer) == (3010, 0) and answer.hop_by_hop == 9
    # after a CER: an AVP with a broken length is answered 5014 with E; an unknown command 3001;
    # a UAR with no Public-Identity nor User-Name 5005; a DPR gets its DPA
    broken = bytearray(
        Message(d.UAR, d.CX_APPLICATION, (Avp.utf8(d.SESSION_ID, "x;2"),), hop_by_hop=10).encode()
    )
    broken[25:28] = b"\x00\x00\x03"
    unknown = Message(999, d.CX_APPLICATION, (), hop_by_hop=11).encode()
    missing = Message(d.UAR, d.CX_APPLICATION, (), hop_by_hop=12).encode()
    dpr = Message(d.DPR, 0, (Avp.u32(d.DISCONNECT_CAUSE, 0),), hop_by_hop=13).encode()
    answers = _raw_exchange(hss, [_cer([cx]), bytes(broken), unknown, missing, dpr], 5)
    by_hbh = {a.hop_by_hop: a for a in answers}
    assert result_of(by_hbh[1]) == (d.SUCCESS, 0)
    assert by_hbh[10].error and result_of(by_hbh[10]) == (5014, 0)
    assert by_hbh[11].error and result_of(by_hbh[11]) == (d.COMMAND_UNSUPPORTED, 0)
    assert by_hbh[12].error and result_of(by_hbh[12]) == (d.MISSING_AVP, 0)
    assert by_hbh[13].command == d.DPR and result_of(by_hbh[13]) == (d.SUCCESS, 0)
    # a stream that is not Diameter is closed without an answer
    assert _raw_exchange(hss, [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], 1) == []

    # and the HSS still answers
    async def body(client: CxClient) -> None:
        assert result_of(await client.watchdog()) == (d.SUCCESS, 0)

    run(hss, body)


def test_an_unreachable_hss_is_a_peer_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused

        async def main() -> None:
            await CxClient.connect(
                "127.0.0.1", port, origin_host="s", origin_realm="r", destination_realm="r", timeout=2
            )

        with pytest.raises(DiameterPeerError, match="unreachable"):
            asyncio.run(main())


def test_hss_start_up_errors_are_one_line(tmp_path: Path) -> None:
    for args, words in (
        (["--listen", "udp:127.0.0.1:3868"], "--listen: expected tcp:HOST:PORT"),
        (["--subscribers", str(tmp_path / "none.yaml")], "none.yaml"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "imscore", "hss", *args], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 2
        assert words in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
