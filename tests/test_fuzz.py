"""The fuzz benchmark, short: a few thousand mutated messages over UDP and TCP at a real
``imscore serve`` (``bench/fuzz_bench.py``, which the long runs of docs/benchmarks.rst use too).

Whatever the input, the server logs no ERROR and no traceback, holds no transaction once the
timers ran out, and still answers OPTIONS over both transports. When it fails, the report names
the culprits: each input replayed alone with the error it caused.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import CORPUS

BENCH = Path(__file__).resolve().parent.parent / "bench" / "fuzz_bench.py"
MESSAGES = 3000


def _culprits(report: dict[str, Any]) -> str:
    lines = [f"errors: {report['errors']}", f"exceptions: {report['exceptions']}"]
    for culprit in report["culprits"]:
        lines.append(
            f"#{culprit['seq']} {culprit['transport']} {culprit['base']} {culprit['mutations']}: "
            f"{culprit['exceptions'] or culprit['errors']}\n    {culprit['message'][:300]!r}"
        )
    return "\n".join(lines)


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    if not (CORPUS / "rfc4475").is_dir():
        pytest.skip(f"corpus missing: {CORPUS}")
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--messages",
            str(MESSAGES),
            "--rate",
            "1500",
            "--seed",
            "15",
            "--max-seconds",
            "30",
            "--culprits",
            "300",
            "--corpus",
            str(CORPUS),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_every_message_was_sent_over_both_transports(report: dict[str, Any]) -> None:
    assert report["messages_sent"] == MESSAGES
    by_transport = report["answers_by_transport"]
    assert sum(by_transport["udp"].values()) > MESSAGES // 2
    assert sum(by_transport["tcp"].values()) > MESSAGES // 10
    # the mutated messages were answered with errors, the few unmutated ones with successes
    assert report["answers"].get("4xx", 0) > MESSAGES // 4, report["answers"]


def test_no_error_line_and_no_traceback(report: dict[str, Any]) -> None:
    assert report["error_lines"] == 0 and report["tracebacks"] == 0, _culprits(report)


def test_no_transaction_is_left_once_the_timers_ran(report: dict[str, Any]) -> None:
    held = report["held_at_stop"]
    assert held is not None, "the probe plugin did not report (did the server stop cleanly?)"
    assert report["stuck_transactions"] == 0, held
    assert held["proxy_branches"] == 0, held


def test_the_server_still_serves_and_stops_cleanly(report: dict[str, Any]) -> None:
    assert report["options_after"]["udp_seconds"] is not None
    assert report["options_after"]["tcp_seconds"] is not None
    assert report["server_exit_status"] == 0
    assert report["stopped_line"] is not None
