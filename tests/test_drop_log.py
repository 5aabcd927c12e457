"""Logging is not an attack surface: a flood of broken datagrams makes a bounded number of INFO lines.

Each drop or refusal is logged at DEBUG; at INFO the transports write one summary per interval
(counts by kind, one sample each). See imscore.transport.droplog.
"""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from test_transport import GOOD_VIA, UdpClient, run, serving, sip_request

from imscore.transport import TransportStats
from imscore.transport.droplog import MAX_KINDS, DropLog

LOGGER = "imscore.transport"

#: three kinds of broken input: answered with 400, a broken response (dropped), garbage (dropped)
ANSWERED = sip_request(GOOD_VIA, max_forwards="lots")
BROKEN_RESPONSE = (
    b"SIP/2.0 200 OK\r\nVia: " + GOOD_VIA.encode() + b"\r\nTo: <sip:a@b>\r\nFrom: <sip:c@d>;tag=1\r\n"
    b"Call-ID: x\r\nCSeq: lots OPTIONS\r\nContent-Length: 0\r\n\r\n"
)
GARBAGE = b"\x00\x01 this is not SIP at all\r\n\r\n"

_ITEM = re.compile(r"([a-z][^:;]*?): (\d+) \(first: ")


def summaries(records: list[logging.LogRecord]) -> list[dict[str, int]]:
    """The counts of each INFO summary line, by kind."""
    found = []
    for record in records:
        text = record.getMessage()
        if record.name == LOGGER and text.startswith("dropped or refused in the last"):
            found.append({kind: int(count) for kind, count in _ITEM.findall(text.split("; ", 1)[1])})
    return found


def loud(records: list[logging.LogRecord]) -> list[str]:
    """INFO and WARNING lines of the transports other than the start-up ones."""
    return [
        r.getMessage()
        for r in records
        if r.name == LOGGER
        and r.levelno >= logging.INFO
        and not r.getMessage().startswith("listening on")
    ]


async def flood(
    bound: tuple[str, int],
    kinds: list[bytes],
    rounds: int,
    stats: TransportStats,
    pause: float = 0.0,
) -> None:
    """Send ``rounds`` copies of each datagram in ``kinds``, a round at a time, waiting for the
    server to have read each round (so the kernel never drops one and the counts are exact)."""
    client = UdpClient()
    try:
        for i in range(rounds):
            for data in kinds:
                await client.send(data, bound)
            for _ in range(200):
                if stats.received >= (i + 1) * len(kinds):
                    break
                await asyncio.sleep(0.005)
            if pause:
                await asyncio.sleep(pause)
    finally:
        client.close()


def test_a_flood_of_broken_datagrams_is_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    rounds = 400  # 1,200 broken datagrams

    async def scenario() -> None:
        async with serving() as server:
            transports = server.transports
            bound = await transports.listen("udp", "127.0.0.1", 0)
            await flood(bound, [ANSWERED, BROKEN_RESPONSE, GARBAGE], rounds, transports.stats)
            assert transports.stats.received == 3 * rounds
            assert transports.stats.answered_errors == rounds
            assert transports.stats.dropped_unanswerable == 2 * rounds

    with caplog.at_level(logging.INFO, logger=LOGGER):
        asyncio.run(asyncio.wait_for(scenario(), 30))
    lines = loud(caplog.records)
    assert len(lines) <= 2, lines  # one summary for the 10 s interval (two if it ran over one)
    (counts,) = summaries(caplog.records)
    assert counts == {
        "bad request answered 400": rounds,
        "dropped a response in error": rounds,
        "dropped a request without a usable Via": rounds,
    }
    text = " ".join(lines)
    assert "Max-Forwards" in text  # a sample of each kind: what was wrong, and from where
    assert "udp 127.0.0.1:" in text


def test_details_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serving() as server:
            transports = server.transports
            bound = await transports.listen("udp", "127.0.0.1", 0)
            await flood(bound, [ANSWERED, GARBAGE], 5, transports.stats)

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        run(scenario())
    details = [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.DEBUG and "udp 127.0.0.1:" in r.getMessage()
    ]
    assert len([d for d in details if d.startswith("bad request answered 400: ")]) == 5
    assert len([d for d in details if d.startswith("dropped a request without a usable Via: ")]) == 5
    assert summaries(caplog.records) == [
        {"bad request answered 400": 5, "dropped a request without a usable Via": 5}
    ]


def test_one_summary_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """Over a flood longer than the interval: a summary per interval, the counts adding up."""
    interval = 0.2
    rounds = 60

    async def scenario() -> float:
        async with serving(drop_log_interval=interval) as server:
            transports = server.transports
            bound = await transports.listen("udp", "127.0.0.1", 0)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await flood(bound, [ANSWERED, GARBAGE], rounds, transports.stats, pause=0.02)
            elapsed = loop.time() - started
            await asyncio.sleep(interval * 1.5)  # the last interval's timer writes its summary
            assert transports.drops.pending == 0
            return elapsed

    with caplog.at_level(logging.INFO, logger=LOGGER):
        elapsed = asyncio.run(asyncio.wait_for(scenario(), 30))
    found = summaries(caplog.records)
    assert 2 <= len(found) <= elapsed / interval + 2, (len(found), elapsed)
    assert len(loud(caplog.records)) == len(found)
    assert sum(c.get("bad request answered 400", 0) for c in found) == rounds
    assert sum(c.get("dropped a request without a usable Via", 0) for c in found) == rounds


def test_kinds_are_bounded() -> None:
    """Kinds past MAX_KINDS count as 'other': the summary line cannot be made to grow."""
    now = [0.0]
    logger = logging.getLogger("test_drop_log.bounded")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        drops = DropLog(logger, interval=10.0, clock=lambda: now[0])
        for i in range(MAX_KINDS + 10):
            drops.record(f"kind {i}", "x")
        assert drops.pending == MAX_KINDS + 10
        assert not records  # nothing until the interval ends
        now[0] = 10.0
        drops.record("kind 0", "y")  # the first event after the interval writes its summary
        assert len(records) == 1
        text = records[0].getMessage()
        assert "other: 10 (first: x)" in text
        assert text.count("(first: ") == MAX_KINDS + 1
        drops.flush()
        assert len(records) == 2 and "kind 0: 1 (first: y)" in records[1].getMessage()
        drops.flush()
        assert len(records) == 2  # nothing pending, nothing written
        assert drops.totals["kind 0"] == 2
    finally:
        logger.removeHandler(handler)
