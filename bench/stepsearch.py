"""The step search of RFC 7502 §4.10, shared by register_bench, proxy_bench and pool_bench.

RFC 7502 finds a rate (the Registration Rate of RFC 7501 §3.4.2, the Session Establishment Rate of
§3.4.3) by offering load at a rate for a while and moving the rate up after a trial without error
and down after one with an error, with a shrinking step, until the step is below the granularity
wanted. This module does that with a bounded number of trials:

1. ramp: start at ``start`` and double the rate after every trial that passes (never above
   ``max_rate``) until one fails or ``max_rate`` has passed;
2. bisect: then try the middle of the gap between the highest rate that passed and the lowest
   that failed, until the gap is at most ``resolution`` of the failed rate;
3. stop in any case after ``max_steps`` trials. The answer is the highest rate that passed.

When even ``start`` fails the search goes down (halving) instead, to ``min_rate`` at most.

A trial is a callable that offers one rate and says whether it passed, and why not
(:class:`Trial`). :func:`sipp_verdict` is the pass/fail rule the benchmarks apply to a SIPp run:
every scenario succeeded, SIPp kept its schedule, no retransmission timeout, no unexpected
message, and (almost) no retransmission.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Trial:
    """One rate offered for one probe period, and the outcome."""

    rate: int
    passed: bool
    #: why it failed ("" when it passed)
    reason: str = ""
    #: whatever the benchmark measured (a register_bench Load as a dict, ...)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Search:
    """The outcome of :func:`step_search`."""

    #: the highest rate that passed (0 when none did)
    rate: int
    #: the lowest rate that failed (None when none did)
    failed_at: int | None
    #: why the search stopped
    stopped: str
    trials: list[Trial]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def round_rate(rate: float) -> int:
    """A rate rounded to a figure worth printing: 2 significant digits below 1,000, else to 50."""
    if rate < 10:
        return max(1, round(rate))
    if rate < 100:
        return round(rate)
    if rate < 1000:
        return int(round(rate / 10.0) * 10)
    return int(round(rate / 50.0) * 50)


def step_search(
    trial: Callable[[int], Trial],
    *,
    start: int,
    max_rate: int,
    max_steps: int = 8,
    resolution: float = 0.1,
    min_rate: int = 1,
    log: Callable[[str], None] | None = None,
) -> Search:
    """Find the highest rate at which ``trial`` passes (see the module docstring)."""
    if log is None:
        log = _stderr
    trials: list[Trial] = []
    best, worst = 0, None  # highest passed, lowest failed
    rate = max(min_rate, min(start, max_rate))
    stopped = f"step limit ({max_steps} trials)"
    for _ in range(max_steps):
        outcome = trial(rate)
        trials.append(outcome)
        log(f"  {rate:>7} /s  {'pass' if outcome.passed else 'FAIL: ' + outcome.reason}")
        if outcome.passed:
            best = max(best, rate)
        else:
            worst = rate if worst is None else min(worst, rate)
        if worst is None:  # still ramping up
            if rate >= max_rate:
                stopped = f"the highest rate tried ({max_rate}/s) passed"
                break
            rate = min(rate * 2, max_rate)
            continue
        if best == 0:  # nothing passed yet: go down
            if worst <= min_rate:
                stopped = f"even {min_rate}/s failed"
                break
            rate = max(min_rate, round_rate(worst / 2))
            if rate >= worst:
                rate = worst - 1
            continue
        if worst - best <= max(1, resolution * worst):
            stopped = f"gap {best}..{worst}/s within {resolution:.0%}"
            break
        middle = round_rate((best + worst) / 2)
        if middle <= best or middle >= worst:
            middle = (best + worst) // 2
        if middle <= best:
            stopped = f"gap {best}..{worst}/s cannot be split"
            break
        rate = middle
    return Search(best, worst, stopped, trials)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Criteria:
    """What a SIPp run must show to pass."""

    #: SIPp's achieved call rate (calls created over its run) at least this share of the offered
    schedule: float = 0.95
    #: retransmissions at most this share of the messages SIPp sent (0: none at all)
    retransmissions: float = 0.001


def sipp_verdict(
    *,
    offered: float,
    achieved: float | None,
    calls: int,
    ok: int,
    failed: int,
    retransmissions: int,
    timeouts: int,
    unexpected: int,
    sent: int,
    criteria: Criteria,
) -> str:
    """Why a SIPp run at ``offered`` calls/s does not pass, or "" when it does."""
    reasons = []
    if failed or ok < calls:
        reasons.append(f"{max(failed, calls - ok)} of {calls} failed")
    if timeouts:
        reasons.append(f"{timeouts} timeouts")
    if unexpected:
        reasons.append(f"{unexpected} unexpected messages")
    if sent and retransmissions > criteria.retransmissions * sent:
        reasons.append(f"{retransmissions} retransmissions ({100.0 * retransmissions / sent:.2f} %)")
    if achieved is not None and achieved < criteria.schedule * offered:
        reasons.append(f"SIPp reached {achieved:.0f}/s of {offered:.0f}/s offered")
    return "; ".join(reasons)
