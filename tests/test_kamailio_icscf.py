"""Kamailio's I-CSCF (ims_icscf, cdp; Debian kamailio-ims-modules 5.6) in front of imscore, over
real loopback sockets: issue 17, test 1 (the I-CSCF half).

One core per module, every part a real process on free loopback ports: ``imscore hss`` (origin
host ``localhost``, the name cdp connects to), ``imscore serve --subscribers cx://...`` as the
S-CSCF, and Kamailio with tests/kamailio/icscf.cfg as the I-CSCF, whose Diameter goes through a
recording relay (tests/diameter_relay.py) so that the tests can decode what cdp sent and what
the HSS answered. SIPp (and a sipua phone) play the UEs, the registered device and the callers.

* a UE REGISTERs to the I-CSCF: UAR to the HSS, UAA with the S-CSCF's name, the REGISTER
  forwarded to imscore, which challenges (401) and then registers it (200 with the implicit
  set's P-Associated-URI and a Service-Route); re- and de-registration the same way;
* an unknown user: the HSS's UAA says 5001 DIAMETER_ERROR_USER_UNKNOWN, ims_icscf answers 403;
* a terminating INVITE to the I-CSCF: LIR to the HSS, LIA with the S-CSCF's name, the INVITE
  forwarded to imscore, which forks it to the registered SIPp device (200, ACK, BYE); an
  unknown callee is 604;
* a caller of the served domain through the I-CSCF: refused unless the I-CSCF is a trusted
  peer (a user registered through it is no exception: its flow is the I-CSCF's);
* the HSS stopped: 480 from the I-CSCF at once;
* every Diameter message on the wire re-encodes to its octets.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from devices import SippCaller, SippDevice, free_tcp_port, free_udp_port, require_binary, stop_process
from diameter_relay import DiameterRelay, Recorded
from kamailio_support import Kamailio, need_kamailio
from sipua import Phone
from test_serve import Served, serve

from imscore.diameter import dictionary as d
from imscore.diameter.client import CxClient
from imscore.diameter.codec import Message
from imscore.diameter.messages import result_of
from imscore.sip import Response, parse_datagram

CONFIG = Path(__file__).parent / "kamailio" / "icscf.cfg"
CDP_TEMPLATE = Path(__file__).parent / "kamailio" / "icscf.xml"
SIPP = Path(__file__).parent / "sipp"
DOMAIN = "ims.example.test"
V = d.VENDOR_3GPP
ALICE_SET = [f"sip:alice@{DOMAIN}", "tel:+15551230001"]
SUBSCRIBERS = f"""subscribers:
  - impi: alice@{DOMAIN}
    password: alice-secret
    implicit_sets:
      - [sip:alice@{DOMAIN}, tel:+15551230001]
  - impi: bob@{DOMAIN}
    password: bob-secret
    implicit_sets:
      - [sip:bob@{DOMAIN}]
  - impi: dave@{DOMAIN}
    password: dave-secret
    implicit_sets:
      - [sip:dave@{DOMAIN}]
  - impi: erin@{DOMAIN}
    password: erin-secret
    implicit_sets:
      - [sip:erin@{DOMAIN}]
  - impi: frank@{DOMAIN}
    password: frank-secret
    implicit_sets:
      - [sip:frank@{DOMAIN}, tel:+15551230006]
"""


@dataclass
class Core:
    """The running core: where each part listens, and the Diameter relay's record."""

    icscf: tuple[str, int]
    scscf_uri: str
    relay: DiameterRelay
    kamailio: Kamailio
    scscf: Served
    hss: subprocess.Popen[str]
    hss_port: int
    workdir: Path

    def diagnostics(self) -> str:
        """The end of Kamailio's log, for failure messages."""
        return self.kamailio.log()[-6000:]


#: the modules tests/kamailio/icscf.cfg loads beyond the core ones
MODULES = ("tm", "tmx", "sl", "textopsx", "db_sqlite", "cdp", "cdp_avp", "ims_icscf")


def sip_ping(address: tuple[str, int], timeout: float = 0.3) -> int | None:
    """One OPTIONS over UDP to ``address``; the status of the answer (None: none came)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        tag = uuid.uuid4().hex[:10]
        sock.sendto(
            (
                f"OPTIONS sip:{address[0]}:{address[1]} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{tag};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"To: <sip:{address[0]}:{address[1]}>\r\n"
                f"From: <sip:probe@127.0.0.1>;tag={tag}\r\n"
                f"Call-ID: {tag}@127.0.0.1\r\n"
                "CSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            address,
        )
        sock.settimeout(timeout)
        try:
            reply = parse_datagram(sock.recv(65535))
        except TimeoutError:
            return None
    return reply.status if isinstance(reply, Response) else None


def _icscf_database(path: Path, scscf_uri: str) -> None:
    """The tables ims_icscf reads at start: trusted domains, the S-CSCF list, capabilities."""
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE nds_trusted_domains (id INTEGER PRIMARY KEY, trusted_domain TEXT NOT NULL);
            CREATE TABLE s_cscf (id INTEGER PRIMARY KEY, name TEXT NOT NULL, s_cscf_uri TEXT NOT NULL);
            CREATE TABLE s_cscf_capabilities (
                id INTEGER PRIMARY KEY, id_s_cscf INTEGER NOT NULL, capability INTEGER NOT NULL);
            """
        )
        db.execute("INSERT INTO nds_trusted_domains (trusted_domain) VALUES (?)", (DOMAIN,))
        db.execute("INSERT INTO s_cscf (id, name, s_cscf_uri) VALUES (1, 'imscore', ?)", (scscf_uri,))
    db.close()


def _start_hss(
    subscribers: Path, port: int, scscf_uri: str, extra: tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "imscore", "hss", "--listen", f"tcp:127.0.0.1:{port}",
         "--subscribers", str(subscribers), "--origin-realm", DOMAIN, "--origin-host", "localhost",
         "--scscf", scscf_uri, *extra],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    line = process.stderr.readline()
    if f"Cx on tcp:127.0.0.1:{port} as localhost" not in line:
        stop_process(process)
        raise AssertionError(f"imscore hss did not start: {line}")
    return process


def _record_routing(directory: Path, trusted: bool = False, service_route: str | None = None) -> Path:
    """The default profile with ``proxy.record_route`` on: the S-CSCF stays on the dialog's path,
    so that the caller's ACK and BYE (which SIPp sends to the I-CSCF) reach the device from the
    address its INVITE came from (SIPp answers a call's requests there). ``trusted``: the I-CSCF's
    address (127.0.0.1) in ``proxy.trusted_peers`` too; ``service_route``: the
    ``registrar.service_route`` (default: the profile's, which names the home domain)."""
    shown = subprocess.run(
        [sys.executable, "-m", "imscore", "profile", "show", "default"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "record_route: false" in shown
    shown = shown.replace("record_route: false", "record_route: true")
    if service_route is not None:
        assert "service_route: null" in shown
        shown = shown.replace("service_route: null", f"service_route: '{service_route}'")
    if trusted:
        assert "trusted_peers: []" in shown
        shown = shown.replace("trusted_peers: []", "trusted_peers: ['127.0.0.1']")
    profile = directory / "record-route.yaml"
    profile.write_text(shown)
    return profile


def _peer_open(messages: list[Message]) -> bool:
    """True once the relay saw cdp's CER answered by a CEA with 2001."""
    return any(
        m.command == d.CER and not m.request and result_of(m) == (d.SUCCESS, 0) for m in messages
    )


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Core]:
    with _running_core(tmp_path_factory.mktemp("icscf")) as running:
        yield running


@contextlib.contextmanager
def _running_core(
    workdir: Path,
    *,
    trusted: bool = False,
    hss_options: tuple[str, ...] = (),
    drop: Callable[[Recorded], bool] | None = None,
    reachable_service_route: bool = False,
) -> Iterator[Core]:
    """HSS (with ``hss_options`` added to its command line), S-CSCF (``trusted``: with the I-CSCF
    among its trusted peers; ``reachable_service_route``: its Service-Route names its own address,
    not the home domain), relay (``drop``: the messages it keeps from their peer) and I-CSCF."""
    need_kamailio(MODULES)
    require_binary("sipp", "sip-tester")
    subscribers = workdir / "subscribers.yaml"
    subscribers.write_text(SUBSCRIBERS)
    scscf_port = free_udp_port()
    scscf_uri = f"sip:127.0.0.1:{scscf_port}"
    service_route = f"sip:orig@127.0.0.1:{scscf_port};lr" if reachable_service_route else None
    hss_port = free_tcp_port()
    hss = _start_hss(subscribers, hss_port, scscf_uri, hss_options)
    relay = DiameterRelay(("127.0.0.1", hss_port), drop).start()
    scscf: Served | None = None
    kamailio: Kamailio | None = None
    try:
        scscf = serve(
            "--listen", f"udp:127.0.0.1:{scscf_port}",
            "--profile", str(_record_routing(workdir, trusted, service_route)),
            "--subscribers", f"cx://127.0.0.1:{hss_port}?server_name={scscf_uri}",
        )  # fmt: skip
        database = workdir / "icscf.sqlite"
        _icscf_database(database, scscf_uri)
        cdp = workdir / "icscf.xml"
        cdp.write_text(
            CDP_TEMPLATE.read_text().format(
                fqdn=f"icscf.{DOMAIN}", realm=DOMAIN, hss_port=relay.port, acceptor_port=free_tcp_port()
            )
        )
        icscf = ("127.0.0.1", free_udp_port())
        kamailio = Kamailio(
            CONFIG,
            workdir / "kamailio",
            {"SIP_PORT": icscf[1], "CDP_CONFIG": str(cdp), "DB_URL": f"sqlite:///{database}"},
        )
        (workdir / "kamailio").mkdir()
        kamailio.start(r"CDiameterPeer child started")
        # ready: cdp's connection to the HSS is open (CER/CEA), and it answers SIP
        assert relay.wait_for(_peer_open, 10), f"no CER/CEA through the relay\n{kamailio.log()[-4000:]}"
        deadline = time.monotonic() + 10
        while sip_ping(icscf) != 200:
            assert time.monotonic() < deadline, f"no answer to OPTIONS\n{kamailio.log()[-4000:]}"
        yield Core(icscf, scscf_uri, relay, kamailio, scscf, hss, hss_port, workdir)
    finally:
        if kamailio is not None:
            kamailio.stop()
        if scscf is not None:
            scscf.stop()
        relay.close()
        stop_process(hss)


def _requests(core: Core, command: int, since: int) -> list[Message]:
    return [m for m in core.relay.messages("up")[since:] if m.command == command and m.request]


def _answer_to(core: Core, request: Message) -> Message:
    """The HSS's answer (matched by hop-by-hop identifier) to a request cdp sent."""
    for message in core.relay.messages("down"):
        if message.command == request.command and not message.request and (
            message.hop_by_hop == request.hop_by_hop
        ):
            return message
    raise AssertionError(f"no answer to command {request.command} hop-by-hop {request.hop_by_hop}")


def _text(message: Message, code: int, vendor: int = 0) -> str | None:
    found = message.find(code, vendor)
    return None if found is None else found.as_str()


def test_register_through_the_icscf(core: Core) -> None:
    """A UE registers through Kamailio's I-CSCF: UAR/UAA with imscore hss, then 401 and 200 from
    imscore's S-CSCF, which Kamailio relays back."""
    since = len(core.relay.messages("up"))
    workdir = core.workdir / "ue"
    workdir.mkdir()
    users = workdir / "users.csv"
    users.write_text(
        f"SEQUENTIAL\nalice;{DOMAIN};[authentication username=alice@{DOMAIN} password=alice-secret]\n"
    )
    trace = workdir / "messages.log"
    result = subprocess.run(
        [require_binary("sipp", "sip-tester"), f"{core.icscf[0]}:{core.icscf[1]}",
         "-sf", str(SIPP / "register-digest.xml"), "-inf", str(users), "-auth_uri", DOMAIN,
         "-i", "127.0.0.1", "-p", str(free_udp_port()), "-m", "1", "-nostdin",
         "-trace_msg", "-message_file", str(trace), "-timeout", "15s", "-timeout_error"],
        capture_output=True, text=True, timeout=30, cwd=workdir,
    )  # fmt: skip
    text = trace.read_text(errors="replace") if trace.exists() else ""
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{text[-4000:]}\n{core.diagnostics()}"
    responses = [_response(block) for block in text.split("UDP message received")[1:]]
    assert [r.status for r in responses] == [401, 200], text
    challenge, ok = responses
    assert challenge.www_authenticate and challenge.www_authenticate[0].get("realm") == DOMAIN
    assert [str(a.uri) for a in ok.p_associated_uri] == ALICE_SET
    assert [str(a.uri) for a in ok.service_route] == [f"sip:orig@{DOMAIN};lr"]
    # what the HSS was asked and said: one UAR per REGISTER, from Kamailio's cdp
    uars = _requests(core, d.UAR, since)
    assert len(uars) == 2, uars
    for uar in uars:
        assert uar.application == d.CX_APPLICATION
        assert _text(uar, d.USER_NAME) == f"alice@{DOMAIN}"
        assert _text(uar, d.PUBLIC_IDENTITY, V) == f"sip:alice@{DOMAIN}"
        assert _text(uar, d.VISITED_NETWORK_IDENTIFIER, V) == DOMAIN
        assert _text(uar, d.ORIGIN_HOST) == f"icscf.{DOMAIN}"
        assert uar.find(d.USER_AUTHORIZATION_TYPE, V) is None  # REGISTRATION, the default
    first, second = (_answer_to(core, uar) for uar in uars)
    # no S-CSCF yet: the HSS names --scscf; after the MAR it names the S-CSCF that asked
    assert result_of(first) == (d.FIRST_REGISTRATION, V)
    assert _text(first, d.SERVER_NAME, V) == core.scscf_uri
    assert result_of(second) == (d.SUBSEQUENT_REGISTRATION, V)
    assert _text(second, d.SERVER_NAME, V) == core.scscf_uri


def test_re_and_de_registration_through_the_icscf(core: Core) -> None:
    """frank's phone registers, re-registers and de-registers through the I-CSCF: each REGISTER
    is a UAR (the de-registration's with User-Authorization-Type DE_REGISTRATION), answered with
    the S-CSCF's name, and the HSS forgets the S-CSCF once imscore's SAR told it."""
    frank = f"sip:frank@{DOMAIN}"
    phone = Phone(core.icscf, "frank-phone", f"frank@{DOMAIN}", "frank-secret", frank)
    try:
        assert _ask_hss(core, frank) == (d.ERROR_IDENTITY_NOT_REGISTERED, V)
        since = len(core.relay.messages("up"))
        assert phone.register().status == 200
        assert _ask_hss(core, frank) == (d.SUCCESS, 0)  # imscore's SAR REGISTRATION reached it
        again = phone.register()
        assert again.status == 200
        assert [str(a.uri) for a in again.p_associated_uri] == [frank, "tel:+15551230006"]
        gone = phone.register(expires=0)
        assert gone.status == 200, (gone.status, gone.reason)
    finally:
        phone.close()
    uars = _requests(core, d.UAR, since)
    kinds = [uar.find(d.USER_AUTHORIZATION_TYPE, V) for uar in uars]
    assert [k.as_u32() if k is not None else d.UAT_REGISTRATION for k in kinds] == [
        d.UAT_REGISTRATION, d.UAT_REGISTRATION, d.UAT_REGISTRATION, d.UAT_REGISTRATION,
        d.UAT_DE_REGISTRATION, d.UAT_DE_REGISTRATION,
    ], kinds  # fmt: skip
    answers = [_answer_to(core, uar) for uar in uars]
    assert result_of(answers[-1]) == (d.SUCCESS, 0)  # DE_REGISTRATION: 2001 with the name
    assert all(_text(a, d.SERVER_NAME, V) == core.scscf_uri for a in answers)
    # imscore's SAR USER_DEREGISTRATION (sent after the 200) leaves the set without an S-CSCF
    deadline = time.monotonic() + 5
    while (result := _ask_hss(core, frank)) != (d.ERROR_IDENTITY_NOT_REGISTERED, V):
        assert time.monotonic() < deadline, result
        time.sleep(0.1)


def _ask_hss(core: Core, impu: str, impi: str = f"frank@{DOMAIN}") -> object:
    """A UAR DE_REGISTRATION from our own Cx client (a second peer of the HSS): its result."""

    async def main() -> object:
        client = await CxClient.connect(
            "127.0.0.1", core.hss_port, origin_host="probe.ims.example.test",
            origin_realm=DOMAIN, destination_realm=DOMAIN,
        )  # fmt: skip
        try:
            answer = await client.uar(impu, impi, kind=d.UAT_DE_REGISTRATION)
        finally:
            await client.close()
        return result_of(answer)

    return asyncio.run(asyncio.wait_for(main(), 10))


def _response(block: str) -> Response:
    """The SIP response of one ``received`` block of a SIPp message trace."""
    body = block.split("\n", 1)[1].split("\n-----------------------------------------------")[0]
    text = body.replace("\r\n", "\n").strip("\n").replace("\n", "\r\n") + "\r\n\r\n"
    message = parse_datagram(text.encode())
    assert isinstance(message, Response), text
    return message


def _register(core: Core, user: str, timeout: float = 10.0) -> Response:
    """One REGISTER without credentials for ``user`` to the I-CSCF; its final response (an
    AssertionError when none comes within ``timeout`` seconds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        tag = uuid.uuid4().hex[:10]
        request = (
            f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{tag};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:{user}@{DOMAIN}>;tag={tag}\r\n"
            f"To: <sip:{user}@{DOMAIN}>\r\n"
            f"Call-ID: {tag}@127.0.0.1\r\n"
            "CSeq: 1 REGISTER\r\n"
            f"Contact: <sip:{user}@127.0.0.1:{port}>\r\n"
            "Expires: 600\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        deadline = time.monotonic() + timeout
        sock.settimeout(0.5)
        sock.sendto(request, core.icscf)
        while time.monotonic() < deadline:
            try:
                message = parse_datagram(sock.recv(65535))
            except TimeoutError:
                sock.sendto(request, core.icscf)  # UDP: retransmit (Timer E, bounded)
                continue
            if isinstance(message, Response) and message.status >= 200:
                return message
    raise AssertionError(f"no final response to {user}'s REGISTER\n{core.diagnostics()}")


def test_unknown_user_is_refused_by_the_icscf(core: Core) -> None:
    """The HSS's UAA says DIAMETER_ERROR_USER_UNKNOWN (experimental 5001); ims_icscf answers it
    itself with 403 (the REGISTER never reaches the S-CSCF)."""
    since = len(core.relay.messages("up"))
    refused = _register(core, "nobody")
    assert (refused.status, refused.reason) == (403, "Forbidden - HSS User Unknown")
    (uar,) = _requests(core, d.UAR, since)
    assert _text(uar, d.PUBLIC_IDENTITY, V) == f"sip:nobody@{DOMAIN}"
    assert result_of(_answer_to(core, uar)) == (d.ERROR_USER_UNKNOWN, V)


def test_terminating_invite_through_the_icscf(core: Core) -> None:
    """bob's SIPp device registers through the I-CSCF; a call to bob sent to the I-CSCF is asked
    of the HSS by LIR, routed to imscore's S-CSCF and forked to the device, which answers."""
    workdir = core.workdir / "call"
    device = SippDevice("bob1", "answer", core.icscf, workdir, user="bob", password="bob-secret")
    caller = SippCaller(
        "caller", core.icscf, f"sip:bob@{DOMAIN}", workdir, caller="sip:zoe@visitor.example.org"
    )
    try:
        device.start()
        device.wait_registered(timeout=10)
        since = len(core.relay.messages("up"))
        caller.start()
        caller.finish(timeout=20)
        assert caller.final_status() == 200
        device.finish(timeout=10)
        assert device.received_methods() == ["INVITE", "ACK", "BYE"]
        (invite,) = device.received("INVITE")
        # it came through the I-CSCF (its Via) and imscore's S-CSCF (the top Via)
        assert invite.text.lower().count("\r\nvia:") == 3, invite.text
        # the ACK and BYE, sent by the caller to the I-CSCF, came along imscore's Record-Route
        for request in (*device.received("ACK"), *device.received("BYE")):
            assert request.text.lower().count("\r\nvia:") == 3, request.text
    finally:
        caller.stop()
        device.stop()
    (lir,) = _requests(core, d.LIR, since)
    assert _text(lir, d.PUBLIC_IDENTITY, V) == f"sip:bob@{DOMAIN}"
    lia = _answer_to(core, lir)
    assert result_of(lia) == (d.SUCCESS, 0)
    assert _text(lia, d.SERVER_NAME, V) == core.scscf_uri


def _home_caller(core: Core, name: str) -> tuple[SippDevice, SippCaller]:
    """bob's device registered through the I-CSCF, and dave (a user of the served domain, not
    registered) calling him through the I-CSCF."""
    workdir = core.workdir / name
    device = SippDevice(f"{name}-bob", "answer", core.icscf, workdir, user="bob", password="bob-secret")
    caller = SippCaller(
        f"{name}-dave", core.icscf, f"sip:bob@{DOMAIN}", workdir, caller=f"sip:dave@{DOMAIN}"
    )
    return device, caller


def test_a_caller_of_the_served_domain_needs_the_icscf_trusted(core: Core) -> None:
    """dave of the served domain calls bob through the I-CSCF: imscore takes the INVITE for
    dave's originating request and does not route it unauthenticated: 403 (no Digest challenge
    with cx://), or a 407 challenge where imscore fetches the H(A1) by MAR for it; bob's device
    gets nothing either way (see the next tests)."""
    device, caller = _home_caller(core, "untrusted")
    try:
        device.start()
        device.wait_registered(timeout=10)
        caller.start()
        caller.wait(timeout=20)
        assert caller.final_status() in (403, 407), caller.diagnostics()
        assert device.received_methods() == []
    finally:
        caller.stop()
        device.stop()


def test_a_user_registered_through_the_icscf_has_the_icscfs_address_as_flow(core: Core) -> None:
    """erin registered through the I-CSCF (no Path), so her flow is the I-CSCF's address. That
    flow proves nothing about a later request: the I-CSCF relays anyone's. So the call refused for
    dave (previous test) is refused "from" erin too (``registered-flow`` counts only a device's
    own request, one Via, or a flow registered with a Path), and bob's device never rings."""
    workdir = core.workdir / "flow"
    erin = SippDevice("erin", "answer", core.icscf, workdir, user="erin", password="erin-secret")
    bob, _ = _home_caller(core, "flow")
    caller = SippCaller(
        "flow-erin", core.icscf, f"sip:bob@{DOMAIN}", workdir, caller=f"sip:erin@{DOMAIN}"
    )
    try:
        erin.start()
        erin.wait_registered(timeout=10)
        bob.start()
        bob.wait_registered(timeout=10)
        caller.start()
        caller.wait(timeout=20)
        assert caller.final_status() in (403, 407), caller.diagnostics()
        assert bob.received_methods() == []
    finally:
        caller.stop()
        bob.stop()
        erin.stop()


def test_a_caller_of_the_served_domain_through_a_trusted_icscf(tmp_path: Path) -> None:
    """With the I-CSCF's address in ``proxy.trusted_peers``, dave's call to bob through the I-CSCF
    rings bob's device and is answered."""
    with _running_core(tmp_path, trusted=True) as trusted:
        device, caller = _home_caller(trusted, "trusted")
        try:
            device.start()
            device.wait_registered(timeout=10)
            caller.start()
            caller.finish(timeout=20)
            assert caller.final_status() == 200
            device.finish(timeout=10)
            assert device.received_methods() == ["INVITE", "ACK", "BYE"]
        finally:
            caller.stop()
            device.stop()


def test_unknown_callee_is_refused_by_the_icscf(core: Core) -> None:
    """A call to a user the HSS does not know: LIA experimental 5001, which ims_icscf answers
    with 604 (SIPp's caller scenario has no branch for 604, so its exit
    status is not asked; the status it received is)."""
    since = len(core.relay.messages("up"))
    caller = SippCaller(
        "nobody-caller", core.icscf, f"sip:nobody@{DOMAIN}", core.workdir / "nobody", expect=604,
        caller="sip:zoe@visitor.example.org",
    )
    try:
        caller.start()
        status = caller.wait(timeout=20)
        final = caller.final_status()
        lines = [m.start_line for m in caller.messages() if m.direction == "received"]
    finally:
        caller.stop()
    (lir,) = _requests(core, d.LIR, since)
    assert result_of(_answer_to(core, lir)) == (d.ERROR_USER_UNKNOWN, V)
    assert final == 604, (status, final, caller.diagnostics())
    assert "SIP/2.0 604 Does not exist anywhere - HSS User Unknown" in lines, lines


def test_an_unreachable_hss_is_480_from_the_icscf(tmp_path: Path) -> None:
    """The HSS stops and cdp's connection closes. ims_icscf would not notice that cdp cannot send
    the UAR (it leaves the REGISTER unanswered; retransmissions then pile branches on the
    suspended transaction until tm refuses); the configuration checks the peer first
    (``cdp_check_peer``) and answers ``480 HSS unavailable`` at once."""
    with _running_core(tmp_path) as core:
        stop_process(core.hss)
        # cdp notices the closed connection by itself; a REGISTER sent in the moment before it
        # has (its UAR lost, the request left unanswered) is the race the config cannot close:
        # try with fresh REGISTERs, each given 2 s, until the HSS is known to be gone
        deadline = time.monotonic() + 15
        refused: Response | None = None
        while refused is None:
            assert time.monotonic() < deadline, core.diagnostics()
            try:
                refused = _register(core, "alice", timeout=2.0)
            except AssertionError:
                continue
        # the reason phrase of the cdp_check_peer branch (a UAR that timed out would be "HSS did
        # not answer")
        assert (refused.status, refused.reason) == (480, "HSS unavailable"), core.diagnostics()


def _is_uar(record: Recorded) -> bool:
    """True for a UAR (the relay's ``drop`` of the next test)."""
    return bool(record.decode().command == d.UAR)


def test_an_hss_that_does_not_answer_is_480_from_the_icscf(tmp_path: Path) -> None:
    """The HSS is connected but the UAR never reaches it (the relay keeps it): cdp's transaction
    times out (TransactionTimeout 5 s in tests/kamailio/icscf.xml), ims_icscf resumes the REGISTER
    with uaa_return_code -2, and the configuration answers ``480 HSS did not answer``."""
    with _running_core(tmp_path, drop=_is_uar) as core:
        started = time.monotonic()
        refused = _register(core, "alice", timeout=15.0)
        assert (refused.status, refused.reason) == (480, "HSS did not answer"), core.diagnostics()
        assert 4 < time.monotonic() - started < 12  # cdp's timeout, not an immediate refusal
        (uar,) = _requests(core, d.UAR, 0)  # retransmissions were absorbed: one UAR
        assert _text(uar, d.PUBLIC_IDENTITY, V) == f"sip:alice@{DOMAIN}"
        assert not [m for m in core.relay.messages("down") if m.command == d.UAR]


def test_every_message_on_the_wire_decodes_and_re_encodes(core: Core) -> None:
    """Whatever crossed the relay in this module's run, cdp's requests and the HSS's answers,
    decodes and re-encodes to the octets that were sent."""
    _register(core, "nobody")  # at least one UAR/UAA of its own, whichever tests ran before
    recorded = core.relay.recorded
    assert {r.direction for r in recorded} == {"up", "down"}
    commands = {r.decode().command for r in recorded}
    assert {d.CER, d.UAR} <= commands, commands
    for r in recorded:
        assert r.decode().encode() == r.octets, r
