"""Choosing the response a forking proxy sends upstream (RFC 3261 §16.7 steps 5-6), sans-IO."""

from __future__ import annotations

from collections.abc import Sequence

from imscore.sip import Response

__all__ = ["best_response_index", "merge_challenges"]

#: 4xx responses a proxy should prefer among the 4xx it holds (§16.7 step 6): the UAC can act on them.
_ACTIONABLE_4XX = (401, 407, 415, 420, 484)


def _rank(status: int) -> tuple[int, int]:
    """Sort key: lower is better. 6xx first (§16.7: "MUST choose from the 6xx class"), then the
    lowest class, within 4xx the actionable ones, then the lowest code."""
    cls = status // 100
    if cls == 6:
        return (0, status)
    preferred = 0 if status in _ACTIONABLE_4XX else 1
    return (cls, preferred * 1000 + status)


def best_response_index(statuses: Sequence[int]) -> int:
    """The index of the final response to forward, among the final (>= 300) ``statuses``.

    :raises ValueError: when ``statuses`` is empty (the caller then sends 408, §16.7 step 6).
    """
    if not statuses:
        raise ValueError("no final response to choose from")
    return min(range(len(statuses)), key=lambda i: _rank(statuses[i]))


def merge_challenges(chosen: Response, others: Sequence[Response]) -> None:
    """Copy every WWW-Authenticate and Proxy-Authenticate of the other 401/407 responses into
    ``chosen`` when it is itself a 401 or 407 (§16.7 step 7), skipping exact duplicates."""
    if chosen.status not in (401, 407):
        return
    for name in ("WWW-Authenticate", "Proxy-Authenticate"):
        present = set(chosen.headers.get_all(name))
        for other in others:
            if other is chosen or other.status not in (401, 407):
                continue
            for value in other.headers.get_all(name):
                if value not in present:
                    chosen.headers.add(name, value)
                    present.add(value)
