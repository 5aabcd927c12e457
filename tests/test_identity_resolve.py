"""``ims_identity_resolve`` is asked wherever a public identity is resolved: a REGISTER's To, a
SUBSCRIBE's target and a call's Request-URI (imscore.registrar.identity), over real loopback UDP."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Sequence

import pytest
from sipua import Caller, Phone

from imscore.plugin import create_plugin_manager, hookimpl
from imscore.plugin.types import ResolvedIdentity, Subscriber
from imscore.sip import Request, Response, parse_datagram
from imscore.testing import RunningServer, start_server

ALICE_IMPI = "alice@ims.example.test"
ALIAS = "sip:alice.desk@ims.example.test"  # in no subscriber record: only the plugin knows it
GHOST = "sip:ghost@ims.example.test"  # the plugin names an IMPI nobody has


class AliasPlugin:
    """A vendor's directory: ALIAS is alice's first implicit set; GHOST an IMPI that is unknown."""

    @hookimpl
    def ims_identity_resolve(
        self, impu: str, subscribers: Sequence[Subscriber]
    ) -> ResolvedIdentity | None:
        if impu == ALIAS:
            alice = Subscriber(impi=ALICE_IMPI, implicit_sets=(("sip:alice@ims.example.test",),))
            return ResolvedIdentity(subscriber=alice, implicit_set=alice.implicit_sets[0])
        if impu == GHOST:
            ghost = Subscriber(impi="ghost@ims.example.test", implicit_sets=((GHOST,),))
            return ResolvedIdentity(subscriber=ghost, implicit_set=(GHOST,))
        return None


def test_the_builtin_answer_compares_addresses_of_record() -> None:
    pm = create_plugin_manager(autoload=False)
    alice = Subscriber(
        impi=ALICE_IMPI, implicit_sets=(("sip:alice@ims.example.test", "tel:+15551230001"),)
    )
    for spelling in ("sip:alice@IMS.Example.Test;transport=udp", "tel:+1-555-123-0001"):
        resolved = pm.hook.ims_identity_resolve(impu=spelling, subscribers=[alice])
        assert resolved == ResolvedIdentity(alice, alice.implicit_sets[0]), spelling
    for other in ("tel:+15551230002", "sip:bob@ims.example.test", "not a uri"):
        assert pm.hook.ims_identity_resolve(impu=other, subscribers=[alice]) is None


@pytest.fixture
def server() -> Iterator[RunningServer]:
    running = start_server("multi-device", plugins=[AliasPlugin()], transports=("udp",))
    try:
        yield running
    finally:
        running.stop()


def test_register_and_call_an_identity_only_a_plugin_resolves(server: RunningServer) -> None:
    desk = Phone(server.address("udp"), "desk", impu=ALIAS)
    caller = Caller(server.address("udp"))
    try:
        ok = desk.register()
        assert ok.status == 200
        # registered under alice's set: the 200 lists that set's identities
        assert [str(a.uri) for a in ok.p_associated_uri] == [
            "sip:alice@ims.example.test",
            "tel:+15551230001",
        ]
        # a call to the alias, and one to alice's own IMPU, ring the device
        for target in (ALIAS, "sip:alice@ims.example.test"):
            caller.invite(target)
            invite = desk.expect("INVITE")
            assert str(invite.uri) == desk.contact_uri
            desk.reply(invite, 486)  # type: ignore[arg-type]
            assert caller.expect("final").status == 486  # type: ignore[union-attr]
    finally:
        desk.close()
        caller.close()


def test_an_answer_naming_an_unknown_impi_is_ignored(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caller = Caller(server.address("udp"))
    try:
        with caplog.at_level(logging.WARNING, logger="imscore.registrar"):
            caller.invite(GHOST)
            assert caller.expect("final").status == 404  # type: ignore[union-attr]
        assert any("unknown IMPI 'ghost@ims.example.test'" in r.getMessage() for r in caplog.records)
    finally:
        caller.close()


def test_register_for_an_identity_of_another_subscriber_is_403(server: RunningServer) -> None:
    """bob authenticates, but the alias resolves to alice: bob does not own it."""
    bob = Phone(
        server.address("udp"),
        "bobphone",
        impi="bob@ims.example.test",
        password="bob-secret",
        impu=ALIAS,
    )
    try:
        refused = bob.register()
        assert (refused.status, refused.reason) == (403, "The IMPI does not own this IMPU")
    finally:
        bob.close()


def test_a_device_registered_under_an_alias_calls_out_from_it(server: RunningServer) -> None:
    """From the alias, over the flow it registered on, the caller is alice: the call goes out.
    Unresolved, the From would be nobody we serve and the call 403 Relaying denied."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as far_end:
        far_end.bind(("127.0.0.1", 0))
        far_end.settimeout(5)
        target = f"sip:someone@127.0.0.1:{far_end.getsockname()[1]}"
        desk = Phone(server.address("udp"), "desk", impu=ALIAS)
        try:
            assert desk.register().status == 200
            desk.invite(target)
            data, _ = far_end.recvfrom(65535)
            relayed = parse_datagram(data)
            assert isinstance(relayed, Request) and relayed.method == "INVITE"
            assert str(relayed.uri) == target and str(relayed.from_.uri) == ALIAS
        finally:
            desk.close()


def test_a_device_registered_under_an_alias_watches_its_registrations(
    server: RunningServer,
) -> None:
    """SUBSCRIBE to the reg event of the alias, From the alias: the target and the watcher both
    resolve to alice, so the subscription is accepted and the NOTIFY lists her set."""
    desk = Phone(server.address("udp"), "desk", impu=ALIAS)
    try:
        assert desk.register().status == 200
        subscribe = desk.request(
            "SUBSCRIBE",
            ALIAS,
            headers=[("Event", "reg"), ("Accept", "application/reginfo+xml"), ("Expires", 600)],
        )
        desk.send(subscribe)
        notify = desk.expect("NOTIFY")
        assert isinstance(notify, Request)
        desk.reply(notify, 200)
        answer = desk.expect("final")
        assert isinstance(answer, Response) and answer.status == 200
        body = notify.body.decode()
        assert "sip:alice@ims.example.test" in body and desk.contact_uri in body
    finally:
        desk.close()
