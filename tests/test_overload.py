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


def test_the_kernel_queue_asked_of_a_socket_is_the_one_proc_shows() -> None:
    """What waits in a UDP socket's receive queue, asked of the socket (``SO_MEMINFO``), is what
    ``/proc/net/udp`` shows for its port: nothing at first, and the same octets once datagrams
    wait; and a server's monitor finds its listeners' sockets."""
    import socket
    import time

    from imscore.server.overload import socket_receive_queue, udp_receive_queue
    from imscore.testing import start_server

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink, socket.socket(
        socket.AF_INET, socket.SOCK_DGRAM
    ) as source:
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
        assert socket_receive_queue([sink]) == 0 == udp_receive_queue({port})
        for _ in range(5):
            source.sendto(b"x" * 500, ("127.0.0.1", port))
        deadline = time.monotonic() + 2
        while socket_receive_queue([sink]) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        queued = socket_receive_queue([sink])
        assert queued is not None and queued >= 5 * 500
        assert udp_receive_queue({port}) == queued
    server = start_server()
    try:
        sockets = server.server.transports.udp_sockets()
        assert sockets is not None and len(sockets) >= 1
        assert {s.getsockname()[1] for s in sockets} == {
            port for transport, _, port in server.server.addresses if transport == "udp"
        }
    finally:
        server.stop()
