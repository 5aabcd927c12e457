"""The UDP backlog: datagrams read at once, handled a batch per loop turn, retransmitted copies of
a datagram still waiting dropped on arrival (imscore.transport.backlog)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from test_transport import UdpClient, run, serving, sip_request

from imscore.sip import parse_datagram
from imscore.transport.backlog import DatagramBacklog

A = ("127.0.0.1", 5061)
B = ("127.0.0.1", 5062)


class Recorder:
    def __init__(self) -> None:
        self.handled: list[tuple[str, bytes, Any]] = []

    def __call__(self, endpoint: str, data: bytes, source: Any) -> None:
        self.handled.append((endpoint, data, source))


def test_copies_of_a_waiting_datagram_are_dropped_and_order_is_kept() -> None:
    async def scenario() -> None:
        seen = Recorder()
        backlog: DatagramBacklog[str] = DatagramBacklog(seen)
        backlog.push("udp", b"one", A)
        backlog.push("udp", b"one", A)  # a retransmission while the first waits
        backlog.push("udp", b"two", A)
        backlog.push("udp", b"one", B)  # the same octets from another source: another message
        backlog.push("udp", b"one", A)
        assert (len(backlog), backlog.octets, backlog.duplicates) == (3, 9, 2)
        await asyncio.sleep(0)
        assert seen.handled == [("udp", b"one", A), ("udp", b"two", A), ("udp", b"one", B)]
        assert (len(backlog), backlog.octets) == (0, 0)
        # handled, it is no longer waiting: a later copy is handled (its transaction answers it)
        backlog.push("udp", b"one", A)
        await asyncio.sleep(0)
        assert seen.handled[-1] == ("udp", b"one", A)
        assert backlog.duplicates == 2

    run(scenario())


def test_a_reader_handles_the_first_batch_in_its_own_turn() -> None:
    """Datagrams pushed without scheduling wait for ``handle_now``, which handles one batch at once
    (in the reader's turn of the loop) and leaves the rest to later turns; with a batch scheduled
    already, they wait for it."""

    async def scenario() -> None:
        seen = Recorder()
        backlog: DatagramBacklog[str] = DatagramBacklog(seen, batch=2)
        for n in range(3):
            backlog.push("udp", b"m%d" % n, A, schedule=False)
        await asyncio.sleep(0)
        assert seen.handled == [] and len(backlog) == 3  # nothing scheduled
        backlog.handle_now()
        assert [d for _, d, _ in seen.handled] == [b"m0", b"m1"]
        await asyncio.sleep(0)
        assert [d for _, d, _ in seen.handled] == [b"m0", b"m1", b"m2"]
        backlog.handle_now()  # nothing waits: nothing happens
        backlog.push("udp", b"s", A)  # scheduled for the next turn
        backlog.push("udp", b"t", A, schedule=False)
        backlog.handle_now()
        assert len(seen.handled) == 3  # both wait for the scheduled batch, in their order
        await asyncio.sleep(0)
        assert [d for _, d, _ in seen.handled][3:] == [b"s", b"t"]

    run(scenario())


def test_a_batch_per_loop_turn() -> None:
    async def scenario() -> None:
        seen = Recorder()
        backlog: DatagramBacklog[str] = DatagramBacklog(seen, batch=2)
        for n in range(5):
            backlog.push("udp", b"m%d" % n, A)
        await asyncio.sleep(0)
        assert [d for _, d, _ in seen.handled] == [b"m0", b"m1"]
        assert len(backlog) == 3
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert [d for _, d, _ in seen.handled] == [b"m0", b"m1", b"m2", b"m3", b"m4"]

    run(scenario())


def test_full_backlog_drops_and_a_capture_keeps_copies() -> None:
    async def scenario() -> None:
        seen = Recorder()
        backlog: DatagramBacklog[str] = DatagramBacklog(seen, limit=100)
        backlog.push("udp", b"x" * 60, A)
        backlog.push("udp", b"y" * 60, A)  # 120 octets would wait: dropped
        assert (len(backlog), backlog.dropped, backlog.duplicates) == (1, 1, 0)
        await asyncio.sleep(0)
        backlog.keep_duplicates = True
        backlog.push("udp", b"z", A)
        backlog.push("udp", b"z", A)
        await asyncio.sleep(0)
        assert [d for _, d, _ in seen.handled] == [b"x" * 60, b"z", b"z"]
        assert backlog.duplicates == 0

    run(scenario())


def test_a_handler_error_does_not_stall_the_backlog() -> None:
    async def scenario() -> None:
        handled: list[bytes] = []

        def handle(endpoint: str, data: bytes, source: Any) -> None:
            handled.append(data)
            if data == b"bad":
                raise RuntimeError("handler bug")

        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        backlog: DatagramBacklog[str] = DatagramBacklog(handle)
        for data in (b"bad", b"good", b"also good"):
            backlog.push("udp", data, A)
        for _ in range(3):
            await asyncio.sleep(0)
        assert handled == [b"bad", b"good", b"also good"]
        assert len(errors) == 1 and isinstance(errors[0]["exception"], RuntimeError)

    run(scenario())


def test_udp_retransmissions_waiting_in_the_socket_are_answered_once() -> None:
    """Copies that arrive before the server has read the first are dropped; each distinct
    request is answered; a copy sent after the answer is handled again."""

    async def scenario() -> None:
        async with serving() as server:
            bound = await server.transports.listen("udp", "127.0.0.1", 0)
            client = UdpClient()
            first = sip_request(f"SIP/2.0/UDP 127.0.0.1:{client.port};branch=z9hG4bKr1", cseq=1)
            second = sip_request(f"SIP/2.0/UDP 127.0.0.1:{client.port};branch=z9hG4bKr2", cseq=2)
            # sent while the server's loop cannot run: all of it waits in the socket together
            for data in (first, first, first, second, first, second):
                client.sock.sendto(data, bound)
            answers = [await client.response() for _ in range(2)]
            assert sorted(a.cseq.seq for a in answers) == [1, 2]
            await asyncio.sleep(0.05)
            with_timeout = asyncio.wait_for(client.response(), 0.2)
            try:
                extra = await with_timeout
            except TimeoutError:
                extra = None
            assert extra is None, "a copy was answered twice"
            stats = server.transports.stats
            assert (stats.received, stats.delivered) == (2, 2)
            assert server.transports.backlog.duplicates == 4
            # the server has answered: a later retransmission reaches the handler again
            await client.send(first, bound)
            again = await client.response()
            assert again.cseq.seq == 1 and stats.delivered == 3
            client.close()

    run(scenario())


def test_udp_capture_sees_every_copy() -> None:
    async def scenario() -> None:
        async with serving() as server:
            records: list[Any] = []
            server.transports.tap = records.append
            bound = await server.transports.listen("udp", "127.0.0.1", 0)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                sender.bind(("127.0.0.1", 0))
                port = sender.getsockname()[1]
                data = sip_request(f"SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKcap")
                for _ in range(3):
                    sender.sendto(data, bound)
                for _ in range(50):
                    await asyncio.sleep(0.01)
                    if len(server.received) == 3:
                        break
            assert len(server.received) == 3
            assert server.transports.backlog.duplicates == 0
            assert sum(1 for r in records if r.src == ("127.0.0.1", port)) == 3

    run(scenario())


class _FullOnce:
    """A UDP socket whose send buffer is full for the first ``full`` sends."""

    def __init__(self, sock: socket.socket, full: int) -> None:
        self.sock, self.full = sock, full

    def fileno(self) -> int:
        return self.sock.fileno()

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        return self.sock.recvfrom(size)

    def sendto(self, data: bytes, target: Any) -> int:
        if self.full > 0:
            self.full -= 1
            raise BlockingIOError
        return self.sock.sendto(data, target)

    def close(self) -> None:
        self.sock.close()


def test_answers_wait_for_room_in_a_full_send_buffer_in_order() -> None:
    async def scenario() -> None:
        async with serving() as server:
            bound = await server.transports.listen("udp", "127.0.0.1", 0)
            endpoint: Any = server.transports._endpoints[bound]
            full = endpoint._sock = _FullOnce(endpoint._sock, full=1)
            client = UdpClient()
            via = f"SIP/2.0/UDP 127.0.0.1:{client.port};branch=z9hG4bKfull"
            for cseq in (1, 2, 3):
                await client.send(sip_request(f"{via}{cseq}", cseq=cseq), bound)
            answers = [await client.response() for _ in range(3)]
            # the first answer met a full buffer and waited; the next ones queued behind it
            assert [a.cseq.seq for a in answers] == [1, 2, 3]
            assert full.full == 0 and not endpoint._unsent
            client.close()

    run(scenario())


def test_begin_and_end_are_called_around_each_batch_also_when_a_handler_raises() -> None:
    async def scenario() -> None:
        calls: list[str] = []

        def handle(endpoint: str, data: bytes, source: Any) -> None:
            calls.append(data.decode())
            if data == b"bad":
                raise RuntimeError("handler bug")

        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: None)
        backlog: DatagramBacklog[str] = DatagramBacklog(
            handle, batch=2, begin=lambda: calls.append("begin"), end=lambda: calls.append("end")
        )
        for data in (b"a", b"b", b"bad", b"c"):
            backlog.push("udp", data, A)
        for _ in range(3):
            await asyncio.sleep(0)
        assert calls == ["begin", "a", "b", "end", "begin", "bad", "end", "begin", "c", "end"]

    run(scenario())


class _Recording:
    """A UDP socket that records what is written to it, and when (by a shared counter)."""

    def __init__(self, sock: socket.socket, events: list[str], fail: bytes = b"") -> None:
        self.sock, self.events, self.fail = sock, events, fail

    def fileno(self) -> int:
        return self.sock.fileno()

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        return self.sock.recvfrom(size)

    def sendto(self, data: bytes, target: Any) -> int:
        first = data.split(b"\r\n", 1)[0].decode()
        if self.fail and self.fail in data:
            self.events.append(f"refused {first}")
            raise PermissionError(1, "Operation not permitted")
        self.events.append(f"wrote {first}")
        return self.sock.sendto(data, target)

    def close(self) -> None:
        self.sock.close()

async def recorded_udp(transports: Any, fail: bytes = b"") -> tuple[tuple[str, int], Any, list[str]]:
    """A UDP listener whose socket records what is written to it (see :class:`_Recording`): its
    address, its endpoint and the events."""
    bound = await transports.listen("udp", "127.0.0.1", 0)
    endpoint: Any = transports._endpoints[bound]
    events: list[str] = []
    endpoint._sock = _Recording(endpoint._sock, events, fail)
    return bound, endpoint, events


def test_udp_responses_of_a_batch_are_written_when_it_is_done_in_order() -> None:
    """The answers to a batch of datagrams go out together after the batch, in the order made;
    a request sent meanwhile goes out after the responses held before it; a held response that
    the socket refuses is counted as lost and logged, and the others are written."""

    async def scenario() -> None:
        async with serving() as server:
            transports = server.transports
            bound, _, events = await recorded_udp(transports, fail=b"call-3@test")
            client = UdpClient()
            handle = server.handle

            def recording(message: Any, flow: Any) -> None:
                events.append(f"handled {message.cseq.seq}")
                handle(message, flow)
                if message.cseq.seq == 2:  # a request made by a handler mid-batch
                    ours = f"SIP/2.0/UDP 127.0.0.1:{bound[1]};branch=z9hG4bKn"
                    transports.send(parse_datagram(sip_request(ours, method="NOTIFY", cseq=9)), flow)

            transports._handler = recording
            via = f"SIP/2.0/UDP 127.0.0.1:{client.port};branch=z9hG4bKheld"
            # sent while the server's loop cannot run: one batch reads all four
            for cseq in (1, 2, 3, 4):
                client.sock.sendto(sip_request(f"{via}{cseq}", cseq=cseq), bound)
            got = [await client.recv() for _ in range(4)]
            assert [m.cseq.seq for m, _ in got] == [1, 2, 9, 4]
            assert events == [
                "handled 1",
                "handled 2",
                "wrote SIP/2.0 200 OK",  # 1's and 2's answers, held until the NOTIFY is written
                "wrote SIP/2.0 200 OK",
                "wrote NOTIFY sip:ims.example.test SIP/2.0",
                "handled 3",
                "handled 4",
                "refused SIP/2.0 200 OK",  # 3's, at the end of the batch: the socket's error
                "wrote SIP/2.0 200 OK",  # 4's
            ]
            stats = transports.stats
            assert (stats.sent, stats.responses_lost) == (4, 1)
            client.close()

    run(scenario())


def test_udp_responses_are_not_held_while_a_capture_records() -> None:
    async def scenario() -> None:
        async with serving() as server:
            transports = server.transports
            records: list[Any] = []
            transports.tap = records.append
            bound, _, events = await recorded_udp(transports)
            handle = server.handle

            def recording(message: Any, flow: Any) -> None:
                events.append(f"handled {message.cseq.seq}")
                handle(message, flow)

            transports._handler = recording
            client = UdpClient()
            via = f"SIP/2.0/UDP 127.0.0.1:{client.port};branch=z9hG4bKtap"
            for cseq in (1, 2):
                client.sock.sendto(sip_request(f"{via}{cseq}", cseq=cseq), bound)
            assert [(await client.response()).cseq.seq for _ in range(2)] == [1, 2]
            assert events == ["handled 1", "wrote SIP/2.0 200 OK", "handled 2", "wrote SIP/2.0 200 OK"]
            assert [r.dst for r in records if r.src == bound] == [("127.0.0.1", client.port)] * 2
            client.close()

    run(scenario())


def test_a_batch_begun_inside_another_loses_nothing_held() -> None:
    """Should a batch start while responses are held (a handler handling the backlog itself), the
    responses held before it are written with its own, none is dropped."""

    async def scenario() -> None:
        async with serving() as server:
            transports = server.transports
            _, endpoint, events = await recorded_udp(transports)
            client = UdpClient()
            handle = server.handle

            def nesting(message: Any, flow: Any) -> None:
                handle(message, flow)
                if message.cseq.seq == 1:  # the next datagram, handled in a batch of its own
                    transports.backlog.handle_now()

            transports._handler = nesting
            via = f"SIP/2.0/UDP 127.0.0.1:{client.port};branch=z9hG4bKnest"
            source = ("127.0.0.1", client.port)
            for cseq in (1, 2):
                data = sip_request(f"{via}{cseq}", cseq=cseq)
                transports.backlog.push(endpoint, data, source, schedule=False)
            transports.backlog.batch = 1
            transports.backlog.handle_now()
            got = [(await client.response()).cseq.seq for _ in range(2)]
            assert got == [1, 2] and events == ["wrote SIP/2.0 200 OK"] * 2
            assert transports.stats.sent == 2
            client.close()

    run(scenario())
