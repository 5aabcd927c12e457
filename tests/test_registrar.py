"""The registrar over real loopback UDP: Digest and AKA registration, identities, expiry and contacts."""

from __future__ import annotations

import itertools
import secrets
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from imscore.auth.aka import UeSim
from imscore.auth.digest import credentials
from imscore.auth.milenage import Milenage
from imscore.sip import Request, Response, parse_datagram
from imscore.testing import RunningServer, start_server

DOMAIN = "ims.example.test"
ALICE = ("alice@ims.example.test", "alice-secret", "sip:alice@ims.example.test")
BOB = ("bob@ims.example.test", "bob-secret", "sip:bob@ims.example.test")
AKA_IMPI = "001010123456789@ims.mnc001.mcc001.3gppnetwork.org"
AKA_IMPU = "tel:+15551230003"
K = bytes.fromhex("465b5ce8b199b49faa5f0a2ee238a6bc")
OP = bytes.fromhex("cdc202d5123e20f62b6d676ac72cb318")
SQN = 0xFF9BB4D0B607


class Ue:
    """A UDP user agent that registers one IMPU (a phone of the README story)."""

    _cseq = itertools.count(1)

    def __init__(self, server: RunningServer, impi: str, password: str | None, impu: str) -> None:
        self.server_address = server.address("udp")
        self.impi, self.password, self.impu = impi, password, impu
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.host, self.port = self.sock.getsockname()
        self.call_id = f"{secrets.token_hex(6)}@test"
        self.tag = secrets.token_hex(4)

    def request(
        self,
        *,
        contact: str | None = "default",
        expires: int | None = None,
        authorization: str | None = None,
        extra: Sequence[tuple[str, object]] = (),
        to: str | None = None,
    ) -> Request:
        headers: list[tuple[str, object]] = [
            ("Via", f"SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{secrets.token_hex(8)};rport"),
            ("Max-Forwards", 70),
            ("From", f"<{to or self.impu}>;tag={self.tag}"),
            ("To", f"<{to or self.impu}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{next(self._cseq)} REGISTER"),
        ]
        if contact == "default":
            contact = f"<sip:ue@{self.host}:{self.port}>"
        if contact is not None:
            headers.append(("Contact", contact))
        if expires is not None:
            headers.append(("Expires", expires))
        if authorization is not None:
            headers.append(("Authorization", authorization))
        headers.extend(extra)
        return Request("REGISTER", f"sip:{DOMAIN}", headers)

    def send(self, request: Request) -> Response:
        self.sock.sendto(request.to_bytes(), self.server_address)
        while True:
            data, _ = self.sock.recvfrom(65535)
            message = parse_datagram(data)
            assert isinstance(message, Response)
            message.validate()
            if message.status >= 200:
                return message

    def register(self, **kwargs: object) -> Response:
        """REGISTER, answer the Digest challenge, return the final response."""
        first = self.send(self.request(**kwargs))  # type: ignore[arg-type]
        if first.status != 401:
            return first
        (offered,) = first.www_authenticate
        assert self.password is not None
        answer = credentials(
            offered, username=self.impi, password=self.password, method="REGISTER", uri=f"sip:{DOMAIN}"
        )
        return self.send(self.request(authorization=answer, **kwargs))  # type: ignore[arg-type]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[RunningServer]:
    running = start_server("default", transports=("udp",))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def alice(server: RunningServer) -> Iterator[Ue]:
    ue = Ue(server, *ALICE)
    try:
        yield ue
    finally:
        ue.close()


def contacts_of(response: Response) -> list[str]:
    return [str(c.uri) for c in response.contacts]


def test_digest_challenge_then_200_with_the_ims_headers(alice: Ue) -> None:
    challenge = alice.send(alice.request())
    assert challenge.status == 401
    (offered,) = challenge.www_authenticate
    assert offered.get("realm") == DOMAIN and offered.get("qop") == "auth" and offered.get("nonce")
    ok = alice.register(expires=600)
    assert ok.status == 200
    (contact,) = ok.contacts
    assert str(contact.uri) == f"sip:ue@{alice.host}:{alice.port}" and contact.expires == 600
    assert [str(a.uri) for a in ok.p_associated_uri] == [
        "sip:alice@ims.example.test",
        "tel:+15551230001",
    ]
    assert [str(a.uri) for a in ok.service_route] == [f"sip:orig@{DOMAIN};lr"]
    assert ok.headers.get("Date", "").endswith("GMT")
    assert ok.to.tag


def test_registering_one_impu_registers_its_implicit_set(server: RunningServer, alice: Ue) -> None:
    assert alice.register().status == 200
    by_tel = Ue(server, ALICE[0], ALICE[1], "tel:+15551230001")
    try:
        query = by_tel.register(contact=None)  # a REGISTER without Contact is a query
        assert query.status == 200
        assert contacts_of(query) == [f"sip:ue@{alice.host}:{alice.port}"]
    finally:
        by_tel.close()
    work = Ue(server, ALICE[0], ALICE[1], "sip:alice.work@ims.example.test")
    try:  # the second implicit set is registered on its own
        assert contacts_of(work.register(contact=None)) == []
    finally:
        work.close()


def test_bad_credentials_and_identities(server: RunningServer, alice: Ue) -> None:
    wrong = Ue(server, ALICE[0], "not-her-password", ALICE[2])
    try:
        assert wrong.register().status == 401  # challenged again
    finally:
        wrong.close()
    first = alice.send(alice.request())
    (offered,) = first.www_authenticate
    mismatched = credentials(
        offered, username=ALICE[0], password=ALICE[1], method="REGISTER", uri="sip:other.example.test"
    )
    bad = alice.send(alice.request(authorization=mismatched))
    assert bad.status == 400 and "uri" in bad.reason
    stranger = Ue(server, "mallory@ims.example.test", "x", "sip:mallory@ims.example.test")
    try:
        assert stranger.register().status == 404
    finally:
        stranger.close()
    not_hers = Ue(server, ALICE[0], ALICE[1], BOB[2])
    try:  # alice authenticates, but the IMPU in To is bob's
        response = not_hers.register()
        assert response.status == 403 and "does not own" in response.reason
    finally:
        not_hers.close()
    barred = Ue(server, ALICE[0], ALICE[1], "sip:alice.old@ims.example.test")
    try:
        response = barred.register()
        assert response.status == 403 and "Barred" in response.reason
    finally:
        barred.close()


def test_expiry_rules_and_contact_star(alice: Ue) -> None:
    too_short = alice.register(expires=10)
    assert too_short.status == 423 and too_short.headers.get("Min-Expires") == "60"
    clamped = alice.register(expires=999999)
    assert clamped.status == 200 and clamped.contacts[0].expires == 7200
    param = alice.register(contact=f"<sip:ue@{alice.host}:{alice.port}>;expires=120", expires=3000)
    assert param.contacts[0].expires == 120  # the contact parameter wins over the header
    assert alice.register(contact="*", expires=3600).status == 400
    removed = alice.register(contact="*", expires=0)
    assert removed.status == 200 and removed.contacts == []
    assert alice.register(contact=None).contacts == []


def test_same_instance_from_a_new_port_is_the_same_device(server: RunningServer, alice: Ue) -> None:
    instance = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1'
    first = alice.register(contact=f"<sip:ue@{alice.host}:{alice.port}>;{instance}")
    assert first.status == 200 and len(first.contacts) == 1
    moved = Ue(server, *ALICE)
    moved.call_id = alice.call_id  # the same phone after a NAT rebinding
    try:
        again = moved.register(contact=f"<sip:ue@{moved.host}:{moved.port}>;{instance}")
        assert again.status == 200
        assert contacts_of(again) == [f"sip:ue@{moved.host}:{moved.port}"]
        assert again.contacts[0].instance == "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"
    finally:
        moved.close()


def test_three_devices_on_one_address(server: RunningServer) -> None:
    phones = [Ue(server, *ALICE) for _ in range(4)]
    try:
        for phone in phones[:3]:
            assert phone.register().status == 200
        listing = phones[0].register(contact=None)
        assert len(listing.contacts) == 3
        # alice's subscriber entry allows 3 devices: a fourth is refused or displaces one,
        # as the profile's binding policy says, never a silent fourth binding
        fourth = phones[3].register()
        after = phones[0].register(contact=None)
        assert len(after.contacts) == 3
        if fourth.status == 200:
            assert f"sip:ue@{phones[3].host}:{phones[3].port}" in contacts_of(after)
        else:
            assert fourth.status >= 400
    finally:
        for phone in phones:
            phone.close()


def test_aka_registration_with_resync(server: RunningServer) -> None:
    ue = Ue(server, AKA_IMPI, None, AKA_IMPU)
    sim = UeSim(Milenage(K, op=OP), sqn_ms=0)  # far behind the network: the first challenge resyncs
    try:
        challenge = ue.send(ue.request(extra=[("Authorization", _empty_auth(AKA_IMPI))]))
        assert challenge.status == 401
        (offered,) = challenge.www_authenticate
        assert offered.get("algorithm") == "AKAv1-MD5"
        answer = sim.respond(offered.get("nonce") or "")
        assert answer.auts is not None, "the SIM's SQN is stale: it must ask for re-synchronisation"
        resync = _aka_credentials(offered, answer.password(1), auts=answer.auts_param)
        second = ue.send(ue.request(authorization=resync))
        assert second.status == 401  # re-synchronised, challenged again
        (offered,) = second.www_authenticate
        answer = sim.respond(offered.get("nonce") or "")
        assert answer.auts is None
        ok = ue.send(ue.request(authorization=_aka_credentials(offered, answer.password(1))))
        assert ok.status == 200
        assert [str(a.uri) for a in ok.p_associated_uri] == [
            "sip:+15551230003@ims.example.test;user=phone",
            "tel:+15551230003",
        ]
    finally:
        ue.close()


def _empty_auth(impi: str) -> str:
    return f'Digest username="{impi}", realm="{DOMAIN}", nonce="", uri="sip:{DOMAIN}", response=""'


def _aka_credentials(offered: object, password: bytes, auts: str | None = None) -> str:
    from imscore.sip import AuthHeader

    assert isinstance(offered, AuthHeader)
    value = credentials(
        offered,
        username=AKA_IMPI,
        password=password,
        method="REGISTER",
        uri=f"sip:{DOMAIN}",
        algorithm_aliases={"AKAv1-MD5": "MD5"},
    )
    return value if auts is None else f'{value}, auts="{auts}"'


def test_sqn_constant_matches_the_demo_file() -> None:
    from imscore.subscribers import demo_subscribers_path, load_subscribers

    subscriber = load_subscribers(demo_subscribers_path()).by_impi(AKA_IMPI)
    assert subscriber is not None and subscriber.aka is not None
    assert (subscriber.aka.k, subscriber.aka.op, subscriber.aka.sqn) == (K, OP, SQN)


def test_sha256_digest_and_akav2_as_the_profile_says() -> None:
    import dataclasses

    from imscore.profile import PolicyChoice, load_profile

    base = load_profile("default")
    policies = dict(base.policies)
    policies["auth"] = PolicyChoice(
        "digest-or-aka", {"digest_algorithm": "SHA-256", "aka_algorithm": "AKAv2-MD5"}
    )
    running = start_server(dataclasses.replace(base, policies=policies), transports=("udp",))
    try:
        bob = Ue(running, *BOB)
        try:
            challenge = bob.send(bob.request())
            assert challenge.www_authenticate[0].get("algorithm") == "SHA-256"
            assert bob.register().status == 200
        finally:
            bob.close()
        ue = Ue(running, AKA_IMPI, None, AKA_IMPU)
        sim = UeSim(Milenage(K, op=OP), sqn_ms=SQN - 32)
        try:
            challenge = ue.send(ue.request(extra=[("Authorization", _empty_auth(AKA_IMPI))]))
            (offered,) = challenge.www_authenticate
            assert offered.get("algorithm") == "AKAv2-MD5"
            answer = sim.respond(offered.get("nonce") or "")
            assert answer.auts is None
            value = credentials(
                offered,
                username=AKA_IMPI,
                password=answer.password(2),
                method="REGISTER",
                uri=f"sip:{DOMAIN}",
                algorithm_aliases={"AKAv2-MD5": "MD5"},
            )
            assert ue.send(ue.request(authorization=value)).status == 200
        finally:
            ue.close()
    finally:
        running.stop()


def test_bindings_expire_on_time() -> None:
    import time

    now = [time.time()]
    running = start_server("default", transports=("udp",), clock=lambda: now[0])
    running.server.expiry_interval = 0.05
    alice = Ue(running, *ALICE)
    try:
        assert alice.register(expires=60).status == 200
        store = running.server.store
        assert store is not None
        aor = "sip:alice@ims.example.test"
        assert len(running.call(store.load(aor))) == 1
        now[0] += 61  # a minute later on the registrar's clock
        deadline = time.monotonic() + 5
        while running.call(store.load(aor)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running.call(store.load(aor)) == []
    finally:
        alice.close()
        running.stop()


def test_bad_auth_options_stop_start_up() -> None:
    import dataclasses

    from imscore.profile import PolicyChoice, load_profile
    from imscore.server.runtime import ServerError

    base = load_profile("default")
    policies = dict(base.policies)
    policies["auth"] = PolicyChoice("digest", {"digest_algorithm": "SHA-1"})
    with pytest.raises(ServerError) as info:
        start_server(dataclasses.replace(base, policies=policies), transports=("udp",))
    assert "policies.auth.options" in str(info.value) and "digest_algorithm" in str(info.value)


def _subscribe(ue: Ue, expires: int = 600, call_id: str | None = None) -> Request:
    return Request(
        "SUBSCRIBE",
        ue.impu,
        [
            ("Via", f"SIP/2.0/UDP {ue.host}:{ue.port};branch=z9hG4bK{secrets.token_hex(8)};rport"),
            ("Max-Forwards", 70),
            ("From", f"<{ue.impu}>;tag=sub-{ue.tag}"),
            ("To", f"<{ue.impu}>"),
            ("Call-ID", call_id or f"sub-{ue.call_id}"),
            ("CSeq", f"{next(Ue._cseq)} SUBSCRIBE"),
            ("Contact", f"<sip:ue@{ue.host}:{ue.port}>"),
            ("Event", "reg"),
            ("Accept", "application/reginfo+xml"),
            ("Expires", expires),
        ],
    )


def _next_notify(ue: Ue) -> Request:
    """The next NOTIFY the UE receives (answered 200 as a UE does); responses met on the way are
    skipped."""
    while True:
        data, source = ue.sock.recvfrom(65535)
        message = parse_datagram(data)
        if isinstance(message, Request) and message.method == "NOTIFY":
            message.validate()
            ue.sock.sendto(message.make_response(200).to_bytes(), source)
            return message


def test_reg_event_subscription_follows_the_implicit_set(server: RunningServer, alice: Ue) -> None:
    import xml.etree.ElementTree as ET

    ns = {"r": "urn:ietf:params:xml:ns:reginfo"}
    assert alice.register().status == 200
    stranger = Ue(server, *BOB)
    try:  # not a registered device of alice: refused
        assert stranger.send(_subscribe(_as(stranger, ALICE[2]))).status == 403
    finally:
        stranger.close()
    ok = alice.send(_subscribe(alice))
    assert ok.status == 200 and ok.headers.get("Expires") == "600" and ok.to.tag
    first = _next_notify(alice)
    assert first.headers.get("Event") == "reg"
    assert (first.headers.get("Subscription-State") or "").startswith("active;expires=")
    doc = ET.fromstring(first.body)
    assert doc.get("version") == "0" and doc.get("state") == "full"
    aors = [r.get("aor") for r in doc.findall("r:registration", ns)]
    assert aors == ["sip:alice@ims.example.test", "tel:+15551230001"]  # the whole implicit set
    (contact,) = doc.findall("r:registration/r:contact", ns)[:1]
    assert contact.get("state") == "active" and contact.get("event") == "registered"

    phone = Ue(server, *ALICE)  # a second device registers: a NOTIFY with both
    try:
        assert phone.register().status == 200
        second = ET.fromstring(_next_notify(alice).body)
        assert second.get("version") == "1"
        first_registration = second.findall("r:registration", ns)[0]
        uris = sorted(c.findtext("r:uri", namespaces=ns) for c in first_registration)
        assert uris == sorted([f"sip:ue@{alice.host}:{alice.port}", f"sip:ue@{phone.host}:{phone.port}"])
    finally:
        phone.close()
    # the network de-registers the set: the subscription ends
    assert alice.register(contact="*", expires=0).status == 200
    last = _next_notify(alice)
    assert (last.headers.get("Subscription-State") or "").startswith("terminated")
    final = ET.fromstring(last.body)
    states = {c.get("state") for c in final.findall("r:registration/r:contact", ns)}
    assert states == {"terminated"}


def _as(ue: Ue, impu: str) -> Ue:
    """The same socket, claiming another user's IMPU."""
    ue.impu = impu
    return ue


def test_reg_event_refuses_other_packages(alice: Ue) -> None:
    assert alice.register().status == 200
    request = _subscribe(alice)
    request.headers.set("Event", "presence")
    response = alice.send(request)
    assert response.status == 489 and response.headers.get("Allow-Events") == "reg"


def test_cseq_ordering_require_and_path(alice: Ue) -> None:
    assert alice.register().status == 200
    # RFC 3261 §10.3 step 7: same Call-ID, CSeq not higher than the binding's -> the update fails
    stale = alice.request()
    stale.headers.set("CSeq", "1 REGISTER")
    first = alice.send(stale)
    (offered,) = first.www_authenticate
    answer = credentials(
        offered, username=ALICE[0], password=ALICE[1], method="REGISTER", uri=f"sip:{DOMAIN}"
    )
    retry = alice.request(authorization=answer)
    retry.headers.set("CSeq", "1 REGISTER")
    out_of_order = alice.send(retry)
    assert out_of_order.status == 500 and "CSeq" in out_of_order.reason
    # an option tag the registrar does not support -> 420 naming it
    unsupported = alice.send(alice.request(extra=[("Require", "sec-agree, gruu, foo")]))
    assert unsupported.status == 420
    assert unsupported.headers.get("Unsupported") == "sec-agree, foo"  # gruu is ours (RFC 5627)
    # Path is stored and echoed when the UE supports it (RFC 3327)
    path = [("Path", "<sip:term@pcscf.visited.test;lr>"), ("Supported", "path")]
    echoed = alice.register(extra=path)
    assert echoed.status == 200
    assert [str(a.uri) for a in echoed.path] == ["sip:term@pcscf.visited.test;lr"]
    silent = alice.register(extra=[("Path", "<sip:term@pcscf.visited.test;lr>")])
    assert silent.status == 200 and silent.path == []


def test_secrets_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    from imscore.plugin import create_plugin_manager

    traced = create_plugin_manager(autoload=False, trace=True)
    running = start_server("default", transports=("udp",))
    running.server.plugins = traced  # every hook call of the registrar is traced at DEBUG
    assert running.server.registrar is not None
    running.server.registrar.plugins = traced
    alice = Ue(running, *ALICE)
    wrong = Ue(running, ALICE[0], "wrong-secret", ALICE[2])
    aka = Ue(running, AKA_IMPI, None, AKA_IMPU)
    try:
        assert alice.register().status == 200
        assert wrong.register().status == 401
        aka.send(aka.request(extra=[("Authorization", _empty_auth(AKA_IMPI))]))
    finally:
        for ue in (alice, wrong, aka):
            ue.close()
        running.stop()
    text = caplog.text
    assert "ims_binding_policy_apply" in text  # the trace did run
    for secret in ("alice-secret", "wrong-secret", K.hex(), OP.hex(), "bob-secret"):
        assert secret not in text


def test_a_plugin_picks_the_challenge_scheme_within_what_the_profile_allows() -> None:
    from imscore.plugin import hookimpl
    from imscore.subscribers import MemorySubscriberStore

    both = (
        Path(__file__).resolve().parent.parent
        / "imscore"
        / "scenarios"
        / "three-devices.subscribers.yaml"
    )

    class PreferDigest:
        def __init__(self) -> None:
            self.seen: list[str] = []

        @hookimpl
        def ims_auth_select_scheme(self, subscriber: object, request: Request) -> str | None:
            self.seen.append(request.method)
            return "digest"

    plugin = PreferDigest()
    for profile, expected in (("default", "MD5"), ("ims", "AKAv1-MD5")):
        running = start_server(
            profile,
            plugins=[plugin],
            transports=("udp",),
            subscribers=MemorySubscriberStore.from_file(both),
        )
        ue = Ue(running, *ALICE)
        try:
            challenge = ue.send(ue.request())
            (offered,) = challenge.www_authenticate
            # default (digest-or-aka) would challenge alice, who has AKA credentials, with AKA; the
            # plugin's digest is allowed there, but not under ims (aka only): the profile wins
            assert (offered.get("algorithm") or "MD5") == expected, profile
        finally:
            ue.close()
            running.stop()
    assert plugin.seen == ["REGISTER", "REGISTER"]
