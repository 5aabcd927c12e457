"""A bounded DNS cache: least recently used out first, entries live their TTL on an injected clock."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CacheEntry", "DnsCache"]


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One cached answer: the record set (empty for a negative answer), how it ended, when it expires.

    :param kind: ``"ok"``, ``"NXDOMAIN"`` or ``"NODATA"``.
    :param records: the rdata as text-free tuples the resolver built (empty when negative).
    :param expires: the clock value after which the entry is gone.
    """

    kind: str
    records: tuple[object, ...]
    expires: float


class DnsCache:
    """Answers per ``(name, type)`` until their TTL runs out; at most ``max_entries`` kept.

    :param max_entries: the bound; ``0`` disables caching.
    :param clock: seconds, monotonic (``time.monotonic`` or a test's fake clock).
    """

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        if max_entries < 0:
            raise ValueError(f"cache size {max_entries} out of range; expected an integer >= 0")
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], CacheEntry] = OrderedDict()

    def get(self, name: str, rdtype: str) -> CacheEntry | None:
        """The live entry for ``(name, rdtype)`` or ``None``; an expired one is dropped."""
        key = (name, rdtype)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.clock() >= entry.expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, name: str, rdtype: str, kind: str, records: tuple[object, ...], ttl: float) -> None:
        """Keep an answer for ``ttl`` seconds (nothing kept when ``ttl <= 0`` or caching is off)."""
        if ttl <= 0 or self.max_entries == 0:
            return
        key = (name, rdtype)
        self._entries[key] = CacheEntry(kind, records, self.clock() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
