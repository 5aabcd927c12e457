"""Failed authentications: a limit per IMPI and source, and a log that a flood cannot fill.

Both take ``now`` (the registrar's clock) and keep bounded state; neither reads a clock.

* :class:`FailureLimiter` counts failed authentications (a wrong Digest or AKA response, an AUTS
  that does not verify) in fixed windows, per (IMPI, source address), per source address and per
  IMPI, and says when one of them has reached its limit: the server then answers ``403`` to
  credentials from there, without checking them, until the window that counted them has passed.
* :class:`FailureLog` writes one INFO line per failure, at most one per (IMPI, source, reason) and
  ``burst`` in all per ``interval``; what it leaves out is counted and summed up in one line when the
  next interval begins. It never writes a password, a response, a nonce or any other credential
  parameter: only the IMPI (as ``repr``, so control characters cannot forge lines), the source
  address and the reason.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from imscore.subscribers.model import impi_key

__all__ = ["FailureLimiter", "FailureLimits", "FailureLog"]

log = logging.getLogger("imscore.auth")

#: entries each table of :class:`FailureLimiter` keeps at most
MAX_ENTRIES: Final = 50_000


@dataclass(frozen=True)
class FailureLimits:
    """How many failed authentications are allowed per ``window`` seconds (0: no limit).

    :param window: the length of a counting window, seconds.
    :param per_impi_source: failures of one IMPI from one source address.
    :param per_source: failures from one source address, whatever the IMPIs.
    :param per_impi: failures of one IMPI from all sources; reaching it refuses that IMPI's own
        devices too, wherever they are, until the window passes.
    :param exempt: source addresses the per-source limit does not apply to (trusted peers such as
        a P-CSCF, which send the REGISTERs of many users).
    :param max_entries: keys each table keeps at most (oldest window dropped first).
    """

    window: float = 60.0
    per_impi_source: int = 10
    per_source: int = 100
    per_impi: int = 0
    exempt: frozenset[str] = field(default_factory=frozenset)
    max_entries: int = MAX_ENTRIES


_COUNT_BITS: Final = 24
_COUNT_MASK: Final = (1 << _COUNT_BITS) - 1


class _Windows:
    """Failure counts in fixed windows for one kind of key, oldest window first, bounded.

    Each value is one int: the window's start in milliseconds, shifted, and the count.
    """

    __slots__ = ("_counts", "limit", "max_entries", "window")

    def __init__(self, limit: int, window: float, max_entries: int) -> None:
        self.limit, self.window, self.max_entries = limit, window, max_entries
        #: key -> window start (ms) << 24 | failures, in the order the windows began
        self._counts: OrderedDict[object, int] = OrderedDict()

    def _open(self, value: int, now: float) -> bool:
        return now - (value >> _COUNT_BITS) / 1000.0 <= self.window

    def active(self) -> bool:
        """Whether :meth:`reached` can be true for any key: there is a limit and a count."""
        return self.limit > 0 and bool(self._counts)

    def reached(self, key: object, now: float) -> bool:
        if self.limit <= 0:
            return False
        value = self._counts.get(key)
        return value is not None and self._open(value, now) and value & _COUNT_MASK >= self.limit

    def add(self, key: object, now: float) -> None:
        if self.limit <= 0:
            return
        counts = self._counts
        value = counts.get(key)
        if value is not None and self._open(value, now):
            if value & _COUNT_MASK < _COUNT_MASK:
                counts[key] = value + 1
            return
        counts.pop(key, None)
        while counts:  # windows that have passed, then (when still full) the oldest
            if self._open(next(iter(counts.values())), now) and len(counts) < self.max_entries:
                break
            counts.popitem(last=False)
        counts[key] = (int(now * 1000.0) << _COUNT_BITS) | 1

    def __len__(self) -> int:
        return len(self._counts)


def _key(*parts: str) -> int:
    """A 64-bit digest of the parts: a compact key (two keys colliding would only share a count)."""
    data = "\x00".join(parts).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class FailureLimiter:
    """Counts failed authentications and says which credentials to refuse (see the module)."""

    def __init__(self, limits: FailureLimits | None = None) -> None:
        self.limits = limits or FailureLimits()
        lim = self.limits
        self._pair = _Windows(lim.per_impi_source, lim.window, lim.max_entries)
        self._source = _Windows(lim.per_source, lim.window, lim.max_entries)
        self._impi = _Windows(lim.per_impi, lim.window, lim.max_entries)

    def holds_failures(self) -> bool:
        """Whether a table with a limit holds a count: else :meth:`blocked` refuses nothing."""
        pair, by_source, by_impi = self._pair, self._source, self._impi
        return (
            (pair.limit > 0 and bool(pair._counts))
            or (by_source.limit > 0 and bool(by_source._counts))
            or (by_impi.limit > 0 and bool(by_impi._counts))
        )

    def blocked(self, impi: str, source: str, now: float) -> str | None:
        """Why credentials of ``impi`` from ``source`` are refused at ``now``, or ``None``. (A
        table that counts nothing, or holds no failure, refuses nothing: its key is not made.)"""
        pair, by_source, by_impi = self._pair, self._source, self._impi
        # (each "limit > 0 and _counts" is the table's active(), read without its call)
        if pair.limit > 0 and pair._counts and pair.reached(_key(impi_key(impi), source), now):
            return "too many failures of this IMPI from this source"
        if (
            by_source.limit > 0
            and by_source._counts  # (an empty table reaches nothing)
            and source not in self.limits.exempt
            and by_source.reached(source, now)
        ):
            return "too many failures from this source"
        if by_impi.limit > 0 and by_impi._counts and by_impi.reached(_key(impi_key(impi)), now):
            return "too many failures of this IMPI"
        return None

    def failed(self, impi: str, source: str, now: float) -> None:
        """Count one failed authentication of ``impi`` from ``source``."""
        key = _key(impi_key(impi))
        self._pair.add(_key(impi_key(impi), source), now)
        if source not in self.limits.exempt:
            self._source.add(source, now)
        self._impi.add(key, now)

    def sizes(self) -> tuple[int, int, int]:
        """Entries kept: (IMPI and source, source, IMPI)."""
        return len(self._pair), len(self._source), len(self._impi)


class FailureLog:
    """INFO lines about failed authentications, rate-limited (see the module).

    :param interval: seconds of one logging interval.
    :param burst: lines written per interval at most (the summary line not counted).
    :param logger: where the lines go (``imscore.auth``).
    """

    def __init__(self, interval: float = 10.0, burst: int = 20, logger: logging.Logger = log) -> None:
        self.interval, self.burst, self.logger = interval, burst, logger
        self._start: float | None = None
        self._logged: set[tuple[str, str, str]] = set()
        self._suppressed = 0
        self._sample: tuple[str, str, str] | None = None

    def note(self, now: float, impi: str, source: str, reason: str) -> bool:
        """Log (or count) one failure; ``True`` when a line was written for it."""
        if self._start is None or now - self._start >= self.interval or now < self._start:
            self._summary(now)
            self._start = now
        key = (impi[:80], source[:80], reason)
        if key in self._logged or len(self._logged) >= self.burst:
            self._suppressed += 1
            self._sample = key
            return False
        self._logged.add(key)
        self.logger.info("authentication failed: %s, IMPI %r from %s", reason, key[0], key[1])
        return True

    def _summary(self, now: float) -> None:
        if self._suppressed and self._sample is not None and self._start is not None:
            impi, source, reason = self._sample
            self.logger.info(
                "authentication failed %d more times in %.0f s, not logged one by one "
                "(the last: %s, IMPI %r from %s)",
                self._suppressed,
                max(now - self._start, self.interval),
                reason,
                impi,
                source,
            )
        self._logged.clear()
        self._suppressed = 0
        self._sample = None

    @property
    def suppressed(self) -> int:
        """Failures of this interval not logged one by one (summed up when the next begins)."""
        return self._suppressed
