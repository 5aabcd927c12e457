"""Overload control: a loop that falls behind turns new work away with 503, and comes back."""

from __future__ import annotations

import asyncio
import time

from sipua import Caller, Phone

from imscore.profile import load_profile
from imscore.server.overload import LoadMonitor
from imscore.sip import Response
from imscore.testing import start_server


def test_the_monitor_notices_a_late_loop_and_recovers() -> None:
    changes: list[bool] = []

    async def scenario() -> LoadMonitor:
        monitor = LoadMonitor(0.05, interval=0.01, on_change=changes.append)
        monitor.start()
        await asyncio.sleep(0.1)
        assert not monitor.overloaded
        for _ in range(6):  # a backlog: every callback runs 0.1 s late
            time.sleep(0.1)
            await asyncio.sleep(0)
        assert monitor.overloaded
        await asyncio.sleep(0.3)  # idle again: the smoothed lag falls back
        monitor.stop()
        return monitor

    monitor = asyncio.run(scenario())
    assert changes == [True, False] and monitor.episodes == 1 and not monitor.overloaded


def test_overloaded_server_refuses_new_calls_with_503_and_keeps_dialogs_going() -> None:
    running = start_server("multi-device", transports=("udp",))
    phone = Phone(running.address("udp"), "device")
    caller = Caller(running.address("udp"))
    try:
        assert phone.register().status == 200
        running.server.core.overloaded = True  # what the load monitor sets when the loop lags
        caller.invite("sip:alice@ims.example.test")
        busy = caller.expect("final")
        assert isinstance(busy, Response) and busy.status == 503
        assert busy.headers.get("Retry-After") == "5"
        assert phone.quiet("INVITE", 0.3)  # nothing was forked
        # registrations are still served (a burst of them after an outage drains)
        assert phone.register().status == 200
        # an in-dialog request (of a dialog we record-routed: its stamp) still goes through (it
        # finishes work in progress)
        bye = caller.request("BYE", phone.contact_uri, to_tag="device-tag")
        host, port = running.address("udp")
        assert running.server.proxying is not None
        stamp = running.server.proxying.stamp.make(bye.call_id, bye.from_.tag)
        bye.headers.add("Route", f"<sip:{host}:{port};lr;dlg={stamp}>")
        caller.send(bye)
        assert phone.expect("BYE").method == "BYE"  # type: ignore[union-attr]
        assert running.server.core.counters.shed == 1
        running.server.core.overloaded = False
        caller.invite("sip:alice@ims.example.test", cseq=9)
        assert phone.expect("INVITE").method == "INVITE"  # type: ignore[union-attr]
    finally:
        phone.close()
        caller.close()
        running.stop()


def test_overload_settings_in_profiles() -> None:
    profile = load_profile("default")
    assert (profile.overload.max_lag, profile.overload.retry_after) == (0.25, 5)
