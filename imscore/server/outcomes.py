"""One record per finished transaction: the INFO line an operator reads and what the metrics count.

Every request the server answers or proxies ends in one :class:`Outcome` (method, the address of
record and private identity concerned, the source flow, the final status and why, how long it
took). :class:`OutcomeLog` writes it as one line on the ``imscore.requests`` logger::

    REGISTER sip:alice@ims.example.test impi=alice@ims.example.test from udp:127.0.0.1:5070
        -> 200 OK (registration, 3 bindings) 0.4 ms

(one line in the log)

and hands it to the metrics, when they are on. Lines for requests nobody authenticated (challenges,
refusals, unknown users) are rate-limited: at most ``burst`` of them per ``interval`` seconds, then
one summary line with the count and a sample, so a flood cannot fill the disk; a successful
registration or call is always logged. Secrets never appear: no header values are logged but the
addresses shown. Nothing is built when neither INFO logging nor metrics are on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from imscore.sip import Request, Response, SipError, SipUri

__all__ = ["Outcome", "OutcomeLog", "proxy_outcome", "registrar_outcome", "source_of"]

log = logging.getLogger("imscore.requests")

#: statuses that prove nothing about who sent the request: their lines are rate-limited
UNPROVEN: Final = frozenset({400, 401, 403, 404, 407, 420, 481, 482, 483, 489})


@dataclass(frozen=True, slots=True)
class Outcome:
    """A finished transaction.

    :param method: the request's method.
    :param target: the address of record concerned (a REGISTER's To, a call's Request-URI).
    :param impi: the private identity that authenticated (or was claimed), if any.
    :param source: the flow the request came on, ``transport:host:port``.
    :param status: the final status sent.
    :param reason: its reason phrase (which says why).
    :param duration: seconds from the request's arrival to the final response.
    :param kind: what it was: ``registration``, ``de-registration``, ``challenge``, ``fork``,
        ``in-dialog``, ``refused`` …
    :param detail: a few words more (``3 bindings``, ``3 branches``), or ``""``.
    """

    method: str
    target: str
    impi: str | None
    source: str
    status: int
    reason: str
    duration: float
    kind: str = ""
    detail: str = ""

    def line(self) -> str:
        impi = f" impi={self.impi}" if self.impi else ""
        why = ", ".join(part for part in (self.kind, self.detail) if part)
        return (
            f"{self.method} {self.target}{impi} from {self.source} -> {self.status} {self.reason}"
            f"{f' ({why})' if why else ''} {self.duration * 1000:.1f} ms"
        )

    def fields(self) -> dict[str, object]:
        """The outcome as JSON-ready fields (``--log-format json``)."""
        return {
            "method": self.method,
            "target": self.target,
            "impi": self.impi,
            "source": self.source,
            "status": self.status,
            "reason": self.reason,
            "duration_ms": round(self.duration * 1000, 3),
            "kind": self.kind,
            "detail": self.detail,
        }


class OutcomeLog:
    """Logs outcomes (rate-limited for unproven requests) and passes them to the metrics.

    :param observe: called with every outcome (the metrics), or ``None``.
    :param interval: seconds of one rate-limiting interval.
    :param burst: lines of unproven requests per interval at most.
    """

    def __init__(
        self,
        observe: Callable[[Outcome], None] | None = None,
        *,
        interval: float = 10.0,
        burst: int = 50,
        logger: logging.Logger = log,
    ) -> None:
        self.observe = observe
        self.interval, self.burst, self.logger = interval, burst, logger
        self._start: float | None = None
        self._written = 0
        self._suppressed = 0
        self._sample: Outcome | None = None

    @property
    def active(self) -> bool:
        """Whether an outcome is wanted at all (callers skip building one otherwise)."""
        return self.observe is not None or self.logger.isEnabledFor(logging.INFO)

    def finished(self, outcome: Outcome, now: float) -> None:
        """One finished transaction, at ``now`` (the event loop's clock)."""
        if self.observe is not None:
            self.observe(outcome)
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self.flush(now)
        if outcome.status in UNPROVEN:
            if self._written >= self.burst:
                self._suppressed += 1
                self._sample = outcome
                return
            self._written += 1
        self.logger.info("%s", outcome.line(), extra={"sip": outcome.fields()})

    def flush(self, now: float) -> None:
        """Start a new interval when the current one is over, summing up what it suppressed
        (also called by the server's periodic sweep, so a flood that stops is summed up too)."""
        if self._start is not None and 0 <= now - self._start < self.interval:
            return
        if self._suppressed and self._sample is not None:
            self.logger.info(
                "%d more answers to unauthenticated requests in %.0f s not logged one by one "
                "(the last: %s)",
                self._suppressed,
                self.interval if self._start is None else max(now - self._start, self.interval),
                self._sample.line(),
                extra={"sip": {"suppressed": self._suppressed, "sample": self._sample.fields()}},
            )
        self._start = now
        self._written = 0
        self._suppressed = 0
        self._sample = None


def source_of(transport: str, remote: tuple[str, int]) -> str:
    """``udp:127.0.0.1:5070`` (``[…]`` around an IPv6 host)."""
    host, port = remote[0], remote[1]
    return f"{transport}:[{host}]:{port}" if ":" in host else f"{transport}:{host}:{port}"


def registrar_outcome(
    request: Request, response: Response, source: str, duration: float
) -> Outcome:
    """The outcome of a REGISTER or SUBSCRIBE the registrar answered."""
    target, impi = _aor_and_impi(request)
    status = response.status
    kind, detail = "", ""
    if request.method == "REGISTER":
        if status == 401:  # a new challenge; to credentials: they were wrong, stale or refused
            kind = "challenge" if impi is None else "rechallenge"
        elif 200 <= status < 300:
            count = len(response.headers.values("Contact"))
            kind = "registration" if count else "de-registration"
            detail = f"{count} binding{'s' if count != 1 else ''}"
        elif status >= 300:
            kind = "refused"
    else:
        kind = "subscription" if 200 <= status < 300 else ("refused" if status >= 300 else "")
    return Outcome(
        request.method, target, impi, source, status, response.reason, duration, kind, detail
    )


def proxy_outcome(
    request: Request,
    status: int,
    reason: str,
    source: str,
    duration: float,
    kind: str,
    detail: str = "",
) -> Outcome:
    """The outcome of a request the proxy answered or forked."""
    target, impi = _aor_and_impi(request, uri=True)
    return Outcome(request.method, target, impi, source, status, reason, duration, kind, detail)


def _aor_and_impi(request: Request, uri: bool = False) -> tuple[str, str | None]:
    """The address concerned (To's AOR for the registrar, the Request-URI for the proxy) and the
    Digest username, if any; broken headers give ``?`` rather than an error."""
    try:
        found = request.uri if uri else request.to.uri
        target = found.aor if isinstance(found, SipUri) and not uri else str(found)
    except SipError:
        target = "?"
    impi: str | None = None
    try:
        for credentials in (*request.authorization, *request.proxy_authorization):
            impi = credentials.get("username") or impi
    except SipError:
        impi = None
    return target[:200], None if impi is None else impi[:200]
