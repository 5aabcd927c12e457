"""reg-event amplification (issue 15, item 11): subscriptions per user and per watcher are bounded,
one change gives one NOTIFY per subscription, and a subscription whose NOTIFYs go unanswered ends.
Over real loopback UDP with phones of tests/sipua.py."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace

from sipua import Phone

from imscore.profile import load_profile
from imscore.profile.model import RegEventSettings, Timers
from imscore.sip import Request, Response
from imscore.testing import RunningServer, start_server

ALICE = "sip:alice@ims.example.test"


def _subscribe(phone: Phone, answer_notify: bool = True) -> int:
    phone.send(
        phone.request(
            "SUBSCRIBE",
            ALICE,
            headers=[("Event", "reg"), ("Accept", "application/reginfo+xml"), ("Expires", 600)],
        )
    )
    final = phone.expect("final")
    assert isinstance(final, Response)
    if final.status == 200:
        notify = phone.expect("NOTIFY")
        assert isinstance(notify, Request)
        if answer_notify:
            phone.reply(notify, 200)
    return final.status


def _notifies(phone: Phone, wait: float) -> list[Request]:
    got: list[Request] = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = phone.expect("NOTIFY", left)
        except AssertionError:
            break
        assert isinstance(message, Request)
        got.append(message)
        phone.reply(message, 200)
    return got


@contextlib.contextmanager
def _two_phones(limits: RegEventSettings) -> Iterator[tuple[RunningServer, Phone, Phone]]:
    """A server with these limits and two of alice's phones registered."""
    profile = replace(load_profile("multi-device"), reg_event=limits)
    server = start_server(profile, transports=("udp",))
    app, desk = Phone(server.address("udp"), "app"), Phone(server.address("udp"), "desk")
    try:
        assert app.register().status == 200
        assert desk.register().status == 200
        yield server, app, desk
    finally:
        app.close()
        desk.close()
        server.stop()


def test_subscriptions_are_bounded_and_one_change_gives_one_notify_each() -> None:
    with _two_phones(RegEventSettings(max_per_set=5, max_per_watcher=3)) as (server, app, desk):
        statuses = [_subscribe(app) for _ in range(20)]
        assert statuses == [200] * 3 + [403] * 17  # per watcher (one source address)
        # the desk phone shares the loopback address: per watcher is per address, so it is full too
        assert _subscribe(desk) == 403
        registrar = server.server.registrar
        assert registrar is not None and registrar.regevent.refused == 18
        assert len(registrar.regevent.subscriptions) == 3
        # one re-REGISTER: exactly one NOTIFY per subscription (each answered: no retransmission)
        assert app.register().status == 200
        notes = _notifies(app, 1.5)
        assert len(notes) == 3
        assert len({(n.call_id, n.cseq.seq) for n in notes}) == 3


def test_the_per_set_limit_counts_every_watcher() -> None:
    with _two_phones(RegEventSettings(max_per_set=2, max_per_watcher=8)) as (_, app, desk):
        assert [_subscribe(app), _subscribe(desk), _subscribe(desk)] == [200, 200, 403]


def test_a_subscription_whose_notify_goes_unanswered_ends() -> None:
    profile = load_profile("multi-device")
    # short timers: Timer F (64 * T1) of an unanswered NOTIFY fires after 0.64 s
    profile = replace(profile, timers=Timers(t1=0.01, t2=0.04, t4=0.05))
    server = start_server(profile, transports=("udp",))
    app = Phone(server.address("udp"), "app")
    try:
        assert app.register().status == 200
        assert _subscribe(app, answer_notify=False) == 200
        registrar = server.server.registrar
        assert registrar is not None
        deadline = time.monotonic() + 5
        while registrar.regevent.subscriptions and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not registrar.regevent.subscriptions
        assert registrar.regevent.dropped == 1
        # a change now notifies nobody (what still arrives are retransmissions of the first NOTIFY)
        assert app.register().status == 200
        assert [n.cseq.seq for n in _notifies(app, 0.5) if n.cseq.seq != 1] == []
    finally:
        app.close()
        server.stop()
