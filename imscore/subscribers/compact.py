"""A subscriber directory that keeps each subscriber as the line it was read from.

A million :class:`~imscore.subscribers.model.Subscriber` objects cost about 2.3 KB each (parsed
URIs, dataclasses, per-object dicts). :class:`CompactDirectory` keeps instead, per subscriber, the
bytes of its line of a bulk file and one entry in each of two dicts (IMPI key and address-of-record
key to the line's position); a look-up builds the :class:`Subscriber` from its line with the same
validator that checked it at load time, and keeps the most recently used ones. The answers are those
of a :class:`~imscore.subscribers.directory.SubscriberDirectory` holding the same subscribers.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator

from imscore.sip import Uri

from . import model
from .directory import SubscriberDirectory
from .model import Subscriber, impi_key, impu_key

#: builds the subscriber at a position of a compact directory from its line
Builder = Callable[[int, bytes], model.Subscriber]

__all__ = ["DEFAULT_CACHE", "Builder", "CompactDirectory"]

#: How many built subscribers a :class:`CompactDirectory` keeps by default.
DEFAULT_CACHE = 65536


class CompactDirectory(SubscriberDirectory):
    """Subscribers kept as their source lines, found by IMPI or public identity.

    :param lines: the subscribers' lines (their file order).
    :param numbers: the file line number of each of ``lines``, for messages.
    :param impis: IMPI key (:func:`~imscore.subscribers.model.impi_key`) -> position in ``lines``.
    :param impus: address-of-record key of every public identity, barred ones included -> position.
    :param build: builds the subscriber at a position from its line; it must not fail for a line
        the loader accepted.
    :param source: the file, for messages.
    :param cache: how many built subscribers to keep (the least recently used goes first).
    """

    __slots__ = ("_build", "_cache", "_cache_size", "_impis", "_impus", "_lines", "numbers")

    def __init__(
        self,
        lines: list[bytes],
        numbers: array[int],
        impis: dict[str, int],
        impus: dict[str, int],
        build: Builder,
        *,
        source: str | None = None,
        cache: int = DEFAULT_CACHE,
    ) -> None:
        super().__init__((), source=source)
        self._lines = lines
        #: the file line number of each subscriber
        self.numbers = numbers
        self._impis = impis
        self._impus = impus
        self._build = build
        self._cache: dict[int, Subscriber] = {}
        self._cache_size = max(0, cache)

    def at(self, position: int) -> Subscriber:
        """The subscriber at ``position`` (file order), built from its line or from the cache."""
        cache = self._cache
        subscriber = cache.pop(position, None)
        if subscriber is None:
            subscriber = self._build(position, self._lines[position])
            if len(cache) >= self._cache_size:
                if not self._cache_size:
                    return subscriber
                del cache[next(iter(cache))]
        cache[position] = subscriber  # last in the dict's order: the most recently used
        return subscriber

    def by_impi(self, impi: str) -> Subscriber | None:
        position = self._impis.get(impi_key(impi))
        return None if position is None else self.at(position)

    def by_impu(self, uri: Uri | str) -> Subscriber | None:
        key = impu_key(uri)
        position = None if key is None else self._impus.get(key)
        return None if position is None else self.at(position)

    def __iter__(self) -> Iterator[Subscriber]:
        # built one at a time and not cached: walking all of them must not hold all of them
        build, lines = self._build, self._lines
        return (build(position, line) for position, line in enumerate(lines))

    def __len__(self) -> int:
        return len(self._lines)
