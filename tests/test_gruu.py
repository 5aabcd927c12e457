"""GRUU (RFC 5627, RFC 5628): pub-gruu and temp-gruu in the 200 OK of a REGISTER with
``Supported: gruu``, requests to a GRUU reaching only its instance, 480 and 404 for GRUUs that reach
nobody, temporary GRUUs ending with their binding, surviving a restart on the same store file, and
reg-event NOTIFYs carrying them. Over real loopback UDP."""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from devices import Baresip, require_binary, stop_all
from sipua import Caller, Phone, new_branch

from imscore.registrar.gruu import Gruus
from imscore.registrar.model import StoredBinding
from imscore.sip import Contact, Request, Response, SipUri, parse_uri
from imscore.sip.transaction import build_ack
from imscore.testing import RunningServer, start_server

ALICE = "sip:alice@ims.example.test"
GR = "{urn:ietf:params:xml:ns:gruuinfo}"
RI = "{urn:ietf:params:xml:ns:reginfo}"


class GruuPhone(Phone):
    """A Phone whose REGISTER says ``Supported: gruu`` (when ``gruu`` is set)."""

    gruu = True

    def _register_request(
        self, authorization: str | None, expires: int, q: float | None, contact: str | None
    ) -> Request:
        request = super()._register_request(authorization, expires, q, contact)
        if self.gruu:
            request.headers.add("Supported", "gruu")
        return request


@pytest.fixture
def server() -> Iterator[RunningServer]:
    running = start_server("multi-device", transports=("udp",))
    try:
        yield running
    finally:
        running.stop()


def _mine(ok: Response, phone: Phone) -> Contact:
    """The Contact of ``phone`` in a 200 OK to a REGISTER."""
    (contact,) = [c for c in ok.contacts if str(c.uri) == phone.contact_uri]
    return contact


def _gruus(ok: Response, phone: Phone) -> tuple[str, str]:
    contact = _mine(ok, phone)
    pub, temp = contact.params.unquoted("pub-gruu"), contact.params.unquoted("temp-gruu")
    assert pub is not None and temp is not None, contact
    return pub, temp


def _call(caller: Caller, uri: str) -> tuple[Request, Response]:
    """An INVITE to ``uri`` and its final response (skipping retransmissions of earlier ones); a
    non-2xx is ACKed."""
    invite = caller.invite(uri, call_id=f"{secrets.token_hex(8)}@caller")
    while True:
        answer = caller.expect("final")
        assert isinstance(answer, Response)
        if answer.call_id == invite.call_id:
            break
    if answer.status >= 300:
        caller.send(build_ack(invite, answer))
    return invite, answer


def _rings(caller: Caller, uri: str, phone: Phone, others: list[Phone]) -> None:
    """A call to ``uri`` rings ``phone`` (which answers 486) and none of ``others``."""
    invite = caller.invite(uri, call_id=f"{secrets.token_hex(8)}@caller")
    got = phone.expect("INVITE")
    assert isinstance(got, Request)
    assert got.uri == parse_uri(phone.contact_uri)  # retargeted to the instance's contact
    phone.reply(got, 486)
    while True:
        answer = caller.expect("final")
        assert isinstance(answer, Response)
        if answer.call_id == invite.call_id:
            break
    assert answer.status == 486
    caller.send(build_ack(invite, answer))
    for other in others:
        assert other.quiet("INVITE", 0.3), f"{other.name} rang for a GRUU of {phone.name}"


def test_register_with_gruu_gets_pub_and_temp_gruu(server: RunningServer) -> None:
    desk, mobile, plain = (GruuPhone(server.address(), n) for n in ("desk", "mobile", "plain"))
    plain.gruu = False
    try:
        first = desk.register()
        assert first.status == 200
        pub, temp = _gruus(first, desk)
        bare = desk.instance.strip("<>")
        assert pub == f"{ALICE};gr={bare}"
        temp_uri = parse_uri(temp)
        assert isinstance(temp_uri, SipUri)
        assert temp_uri.host == "ims.example.test" and "gr" in temp_uri.params
        assert temp_uri.params.get("gr") is None and (temp_uri.user or "").startswith("tgruu.")
        assert "alice" not in temp and bare not in temp  # the temporary GRUU hides who it is
        assert "gruu" in [t.strip() for t in (first.headers.get("Supported") or "").split(",")]

        again = desk.register()  # a refresh: the same public GRUU, a new temporary one
        pub2, temp2 = _gruus(again, desk)
        assert pub2 == pub and temp2 != temp

        both = mobile.register()  # every Contact with an instance carries its GRUUs
        assert _gruus(both, desk)[0] == pub
        assert _gruus(both, mobile)[0] == f"{ALICE};gr={mobile.instance.strip('<>')}"

        without = plain.register()  # no Supported: gruu: no GRUUs for anyone
        assert without.status == 200
        assert all(c.params.get("pub-gruu") is None for c in without.contacts)
        assert all(c.params.get("temp-gruu") is None for c in without.contacts)
    finally:
        for phone in (desk, mobile, plain):
            phone.close()


def test_a_gruu_reaches_only_its_instance(server: RunningServer) -> None:
    desk, mobile = GruuPhone(server.address(), "desk"), GruuPhone(server.address(), "mobile")
    caller = Caller(server.address())
    try:
        _, old_temp = _gruus(desk.register(), desk)
        pub, temp = _gruus(desk.register(), desk)
        assert mobile.register().status == 200
        _rings(caller, pub, desk, [mobile])
        _rings(caller, temp, desk, [mobile])
        _rings(caller, old_temp, desk, [mobile])  # every temporary GRUU of the binding stays valid
        # the AOR itself still forks to both
        caller.invite(ALICE, call_id=f"{secrets.token_hex(8)}@caller")
        for phone in (desk, mobile):
            got = phone.expect("INVITE")
            assert isinstance(got, Request)
            phone.reply(got, 486)
    finally:
        for agent in (desk, mobile, caller):
            agent.close()


def test_gruus_that_reach_nobody(server: RunningServer) -> None:
    desk = GruuPhone(server.address(), "desk")
    caller = Caller(server.address())
    try:
        pub, temp = _gruus(desk.register(), desk)
        token = (parse_uri(temp).user or "")[len("tgruu.") :]  # type: ignore[union-attr]
        flipped = token[:20] + ("b" if token[20] != "b" else "c") + token[21:]
        forged = temp.replace(token, flipped)
        assert _call(caller, forged)[1].status == 404
        other_key = Gruus(b"k" * 32).temporary(
            StoredBinding(
                aor=ALICE,
                impi="alice@ims.example.test",
                contact=f"<{desk.contact_uri}>",
                uri=desk.contact_uri,
                expires_at=2e9,
                registered_at=0,
                call_id=desk.call_id,
                cseq=desk.cseq,
                instance_id=desk.instance,
            )
        )
        assert other_key is not None
        assert _call(caller, other_key)[1].status == 404  # made under another key
        assert _call(caller, "sip:tgruu.abc@ims.example.test;gr")[1].status == 404
        assert _call(caller, "sip:alice@ims.example.test;gr")[1].status == 404
        unknown = f"{ALICE};gr=urn:uuid:00000000-0000-4000-8000-000000000000"
        assert _call(caller, unknown)[1].status == 480  # a valid public GRUU, nobody registered
        stranger = "sip:nobody@ims.example.test;gr=urn:uuid:00000000-0000-4000-8000-000000000000"
        assert _call(caller, stranger)[1].status == 404

        # de-registered: its public GRUU is 480, its temporary GRUU 404 (§5.3: it ended)
        assert desk.register(expires=0).status == 200
        assert _call(caller, pub)[1].status == 480
        assert _call(caller, temp)[1].status == 404
        # registered again with the same Call-ID: the old temporary GRUU does not come back
        _, new_temp = _gruus(desk.register(), desk)
        assert _call(caller, temp)[1].status == 404
        _rings(caller, new_temp, desk, [])
        # a new Call-ID (a rebooted device) ends the temporary GRUUs issued before
        desk.call_id = f"{secrets.token_hex(6)}@rebooted"
        _, newest = _gruus(desk.register(), desk)
        assert _call(caller, new_temp)[1].status == 404
        _rings(caller, newest, desk, [])
        _rings(caller, pub, desk, [])
    finally:
        desk.close()
        caller.close()


def test_temporary_gruu_survives_a_restart_on_the_same_store(tmp_path: Path) -> None:
    url = f"sqlite:{tmp_path / 'bindings.db'}"
    first = start_server("multi-device", transports=("udp",), store_url=url)
    desk = GruuPhone(first.address(), "desk")
    try:
        pub, temp = _gruus(desk.register(), desk)
    finally:
        first.stop()
    # imscore bindings shows both (the temporary one with the key the server kept in the file)
    listed = subprocess.run(
        [sys.executable, "-m", "imscore", "bindings", "--store", url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (shown,) = json.loads(listed.stdout)["aors"][0]["bindings"]
    assert (shown["pub_gruu"], shown["temp_gruu"]) == (pub, temp)
    second = start_server("multi-device", transports=("udp",), store_url=url)
    caller = Caller(second.address())
    try:
        _rings(caller, temp, desk, [])
    finally:
        second.stop()
        desk.close()
        caller.close()


def _subscribe(phone: Phone) -> Request:
    return Request(
        "SUBSCRIBE",
        ALICE,
        [
            ("Via", f"{phone.via_sent_by()};branch={new_branch()};rport"),
            ("Max-Forwards", 70),
            ("From", f"<{ALICE}>;tag={secrets.token_hex(4)}"),
            ("To", f"<{ALICE}>"),
            ("Call-ID", f"{secrets.token_hex(8)}@watcher"),
            ("CSeq", "1 SUBSCRIBE"),
            ("Contact", f"<{phone.contact_uri}>"),
            ("Event", "reg"),
            ("Accept", "application/reginfo+xml"),
            ("Expires", 600),
        ],
    )


def test_reg_event_notify_carries_the_gruus(server: RunningServer) -> None:
    desk, plain = GruuPhone(server.address(), "desk"), GruuPhone(server.address(), "plain")
    caller = Caller(server.address())
    try:
        ok = desk.register()
        pub, _ = _gruus(ok, desk)
        plain.gruu = False
        plain_ok = plain.register()
        assert plain_ok.status == 200
        desk.send(_subscribe(desk))
        answer = desk.expect("final")
        assert isinstance(answer, Response) and answer.status == 200
        notify = desk.expect("NOTIFY")
        assert isinstance(notify, Request)
        root = ET.fromstring(notify.body)
        registration = next(r for r in root.iter(f"{RI}registration") if r.get("aor") == ALICE)
        contacts = {c.findtext(f"{RI}uri"): c for c in registration.iter(f"{RI}contact")}
        mine = contacts[desk.contact_uri]
        pub_el = mine.find(f"{GR}pub-gruu")
        temp_el = mine.find(f"{GR}temp-gruu")
        assert pub_el is not None and pub_el.get("uri") == pub
        assert temp_el is not None and temp_el.get("first-cseq") == "2"  # 1 was challenged
        temp = temp_el.get("uri")
        assert temp is not None
        _rings(caller, temp, desk, [plain])  # the reg-event's temporary GRUU is a valid one
        # tel: IMPUs of the set get no public GRUU (a GRUU is a SIP URI)
        for other in root.iter(f"{RI}registration"):
            if (other.get("aor") or "").startswith("tel:"):
                for contact in other.iter(f"{RI}contact"):
                    assert contact.find(f"{GR}pub-gruu") is None
    finally:
        for agent in (desk, plain, caller):
            agent.close()


def test_gruus_are_stateless_under_one_key() -> None:
    binding = StoredBinding(
        aor=ALICE,
        impi="alice@ims.example.test",
        contact="<sip:desk@192.0.2.1>",
        uri="sip:desk@192.0.2.1",
        expires_at=100.0,
        registered_at=0.0,
        call_id="abc@desk",
        cseq=7,
        instance_id="<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>",
        extra={"first-cseq": "5"},
    )
    one, two = Gruus(b"s" * 32), Gruus(lambda: b"s" * 32)  # two nodes, one key
    temp = one.temporary(binding)
    assert temp is not None and temp == one.temporary(binding)  # a retransmission: the same
    target = two.target(parse_uri(temp))
    assert target is not None and target.temporary
    assert (target.aor, target.instance, target.cseq) == (ALICE, binding.instance_id, 7)
    assert target.bindings([binding]) == [binding]
    other_flow = dataclasses.replace(binding, call_id="other@desk", reg_id=2)
    assert target.bindings([binding, other_flow]) == [binding, other_flow]  # all the instance's
    assert target.bindings([other_flow]) == []  # its own binding is gone
    later = dataclasses.replace(binding, cseq=9, extra={"first-cseq": "8"})
    assert target.bindings([later]) == []  # issued before this Call-ID's first REGISTER
    assert one.temporary(dataclasses.replace(binding, cseq=8)) != temp
    with pytest.raises(LookupError):
        Gruus(b"t" * 32).target(parse_uri(temp))
    assert one.target(parse_uri(ALICE)) is None  # no gr: not a GRUU


class GruuOutboundPhone(GruuPhone):
    """A GruuPhone registering one outbound flow (``reg-id``, ``Supported: outbound``)."""

    def __init__(self, *args: object, reg_id: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.reg_id = reg_id

    def _register_request(
        self, authorization: str | None, expires: int, q: float | None, contact: str | None
    ) -> Request:
        request = super()._register_request(authorization, expires, q, contact)
        value = request.headers.get("Contact")
        assert value is not None
        request.headers.set("Contact", f"{value};reg-id={self.reg_id}")
        request.headers.add("Supported", "outbound")
        return request


def test_a_temporary_gruu_reaches_its_instance_over_another_flow() -> None:
    """One instance with two outbound flows (reg-id 1 over TCP, 2 over UDP, each its own Call-ID).
    The temporary GRUU the TCP flow's REGISTER got names the instance: with the TCP connection
    gone, a call to it goes down the UDP flow (RFC 5626 §5.3) instead of failing with 430."""
    running = start_server("multi-device", transports=("udp", "tcp"))
    tcp = GruuOutboundPhone(running.address("tcp"), "desk", reg_id=1, transport="tcp")
    udp = GruuOutboundPhone(running.address("udp"), "desk", reg_id=2)
    udp.instance = tcp.instance
    caller = Caller(running.address("udp"))
    contact = f"sip:desk@127.0.0.1:{udp.port}"
    try:
        first = tcp.register(contact=contact)
        (temp,) = [c.params.unquoted("temp-gruu") for c in first.contacts]
        assert temp is not None
        assert udp.register(contact=contact).status == 200
        tcp.close()  # the flow the temporary GRUU was issued on is gone; its binding stays
        transports = running.server.transports
        assert transports is not None
        deadline = time.monotonic() + 5
        while transports.open_connections and time.monotonic() < deadline:
            time.sleep(0.02)
        assert transports.open_connections == 0
        invite = caller.invite(temp, call_id=f"{secrets.token_hex(8)}@caller")
        got = udp.expect("INVITE")
        assert isinstance(got, Request) and got.call_id == invite.call_id
        udp.reply(got, 486)
        answer = caller.expect("final")
        assert isinstance(answer, Response) and answer.status == 486
        caller.send(build_ack(invite, answer))
        # de-registering the TCP flow's binding ends that temporary GRUU, the UDP flow or not
        tcp_again = GruuOutboundPhone(running.address("udp"), "desk", reg_id=1)
        tcp_again.instance, tcp_again.call_id, tcp_again.cseq = tcp.instance, tcp.call_id, tcp.cseq
        assert tcp_again.register(expires=0, contact=contact).status == 200
        try:
            assert _call(caller, temp)[1].status == 404
            pub = f"{ALICE};gr={udp.instance.strip('<>')}"
            _rings(caller, pub, udp, [])  # the UDP flow is still registered
        finally:
            tcp_again.close()
    finally:
        udp.close()
        caller.close()
        running.stop()


# --- a real client: baresip with outbound (sipnat=outbound: reg-id, Supported: gruu, outbound) ---
SDP = (
    b"v=0\r\no=carol 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def _outbound_baresip(name: str, server: RunningServer, workdir: Path) -> Baresip:
    """A baresip phone for alice whose account says ``sipnat=outbound``: its REGISTER then carries
    ``+sip.instance``, ``reg-id`` and ``Supported: gruu, outbound, path``."""

    class OutboundBaresip(Baresip):
        def write_config(self) -> None:
            super().write_config()
            accounts = self.dir / "accounts"
            accounts.write_text(accounts.read_text().rstrip("\n") + ";sipnat=outbound\n")

    return OutboundBaresip(name, "alice", "alice-secret", server.address("udp"), workdir=workdir)


def test_calling_a_baresip_phones_pub_gruu_rings_that_phone_only(
    server: RunningServer, tmp_path: Path
) -> None:
    require_binary("baresip", "baresip-core")
    phones = [_outbound_baresip(f"phone{i}", server, tmp_path) for i in range(2)]
    desk = GruuPhone(server.address(), "desk")  # and one more device of alice's
    caller = Caller(server.address(), "carol")
    try:
        for phone in phones:
            phone.start()
        for phone in phones:
            phone.wait_registered(5)
        assert desk.register().status == 200
        target = phones[0]
        (sent,) = [m for m in target.sip_messages() if m.is_request and m.method == "REGISTER"][-1:]
        assert "gruu" in (sent.parse().headers.get("Supported") or "")  # baresip asked for GRUUs
        ok = next(
            m.parse()
            for m in reversed(target.sip_messages())
            if m.direction == "received" and m.status == 200 and m.method == "REGISTER"
        )
        assert isinstance(ok, Response)
        (contact,) = [c for c in ok.contacts if str(c.uri) == target.contact]
        pub = contact.params.unquoted("pub-gruu")
        assert pub is not None and pub.startswith(f"{ALICE};gr=urn:")

        invite = caller.request(
            "INVITE", pub, headers=[("Content-Type", "application/sdp"), ("Content-Length", len(SDP))]
        )
        invite.body = SDP
        caller.send(invite)
        answer = caller.expect("2xx", 10)
        assert isinstance(answer, Response) and answer.call_id == invite.call_id
        received = [m for m in target.sip_messages() if m.direction == "received"]
        assert [m.header("Call-ID") for m in received if m.is_request and m.method == "INVITE"] == [
            invite.call_id
        ]
        other = [m for m in phones[1].sip_messages() if m.is_request and m.method == "INVITE"]
        assert other == [], "the other baresip phone rang for phone0's GRUU"
        assert desk.quiet("INVITE", 0.5), "alice's desk phone rang for phone0's GRUU"
        # ACK and BYE to the phone's Contact (its GRUU, if it gave one), through imscore
        remote = str(answer.contacts[0].uri)
        ack = caller.request("ACK", remote, call_id=invite.call_id, to_tag=answer.to.tag)
        caller.send(ack)
        target.wait_for_call(5)  # the ACK reached it: the call is up
        bye = caller.request("BYE", remote, call_id=invite.call_id, cseq=2, to_tag=answer.to.tag)
        caller.send(bye)
        while True:
            final = caller.expect("final", 5)
            assert isinstance(final, Response)
            if final.cseq.method == "BYE":
                break
        assert final.status == 200, final
    finally:
        stop_all(phones)
        desk.close()
        caller.close()


def test_a_temporary_gruu_issued_by_one_pool_node_is_resolved_by_another(tmp_path: Path) -> None:
    """Two ``imscore serve`` nodes on one Redis: the key is the pool's, so node B resolves the
    temporary GRUU node A issued (and refuses a forged one)."""
    from redis_support import nodes, redis_server

    with redis_server(tmp_path / "redis") as redis, nodes(redis.url, tmp_path, ["a", "b"]) as (a, b):
        desk = GruuPhone(a.udp, "desk")
        caller = Caller(b.udp)
        try:
            _, temp = _gruus(desk.register(), desk)
            _rings(caller, temp, desk, [])
            assert _call(caller, temp.replace("tgruu.a", "tgruu.q"))[1].status == 404
        finally:
            desk.close()
            caller.close()
