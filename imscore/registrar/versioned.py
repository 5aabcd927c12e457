"""Read, decide, write — atomically per address-of-record, when the store is shared by several nodes.

A store that other processes write at the same time (Redis, for a pool of nodes) offers two more
methods besides :class:`~imscore.registrar.store.BindingStore`'s (:class:`VersionedStore`):
``load_versioned(aor)`` returns the bindings and an opaque version; ``save_versioned(aor, bindings,
version)`` writes only if the AOR still has that version (the check and the write are one step in the
store) and says whether it wrote. The registrar loads, decides (the binding policy, CSeq order,
limits) and saves with the version it loaded; when another node wrote in between, the save refuses
with :class:`BindingConflict` and the registrar decides again on what is stored now. So two nodes
taking REGISTERs for one implicit set at the same moment never lose a binding, and a limit such as
"3 contacts at most" holds across the pool.

A store without these methods (memory, SQLite: one process, or SQLite's own write lock) is read and
written as before: :func:`load_for_update` gives version ``None`` and :func:`save_checked` saves
unconditionally.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Sequence
from typing import Final, Protocol, cast, runtime_checkable

from imscore.store import StoreError

from .model import StoredBinding

__all__ = [
    "CONFLICT_PAUSE",
    "MAX_ATTEMPTS",
    "AorLocks",
    "BindingConflict",
    "VersionedStore",
    "is_versioned",
    "load_for_update",
    "save_checked",
]

#: decisions made at most for one REGISTER before it is answered 503 (the AOR is too contended)
MAX_ATTEMPTS: Final = 16
#: seconds of random pause at most after a conflict, before deciding again
CONFLICT_PAUSE: Final = 0.003


class BindingConflict(StoreError):
    """Another node wrote the AOR's bindings since they were loaded: decide again."""


@runtime_checkable
class VersionedStore(Protocol):
    """A binding store several nodes write: loads carry a version, saves check it."""

    async def load_versioned(self, aor: str) -> tuple[list[StoredBinding], str]:
        """The bindings of ``aor`` (as :meth:`BindingStore.load` orders them) and their version
        (an opaque string; ``""`` for an AOR with none)."""
        ...

    async def save_versioned(self, aor: str, bindings: Sequence[StoredBinding], version: str) -> bool:
        """Replace the set of ``aor`` with ``bindings`` if its version is still ``version``;
        whether it did (``False``: another writer came first, nothing was written)."""
        ...


class AorLocks:
    """One :class:`asyncio.Lock` per AOR being decided in this process, so the REGISTERs of one set
    that a node handles at the same time take turns instead of colliding in the store (collisions
    are then only between nodes). A lock lives while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, aor: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(aor, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[aor] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[aor]
            if users == 1:
                del self._locks[aor]
            else:
                self._locks[aor] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


def is_versioned(store: object) -> bool:
    """Whether ``store`` is a :class:`VersionedStore`, by its ``load_versioned`` method: an
    ``isinstance`` check against a runtime protocol costs about 13 µs, twice per registration."""
    return callable(getattr(store, "load_versioned", None))


async def load_for_update(store: object, aor: str) -> tuple[list[StoredBinding], str | None]:
    """The bindings of ``aor`` and the version to save them with (``None`` for a store that is not
    a :class:`VersionedStore`)."""
    if is_versioned(store):
        return await cast(VersionedStore, store).load_versioned(aor)
    bindings: list[StoredBinding] = await store.load(aor)  # type: ignore[attr-defined]
    return bindings, None


async def save_checked(
    store: object, aor: str, bindings: Sequence[StoredBinding], version: str | None
) -> None:
    """Save ``bindings`` as of ``version`` (from :func:`load_for_update`).

    :raises BindingConflict: another writer changed the AOR since it was loaded.
    """
    if version is None or not is_versioned(store):
        await store.save(aor, bindings)  # type: ignore[attr-defined]
        return
    if not await cast(VersionedStore, store).save_versioned(aor, bindings, version):
        # a moment's random pause, so the writers that collided do not collide again at once
        await asyncio.sleep(random.uniform(0.0, CONFLICT_PAUSE))
        raise BindingConflict(f"the bindings of {aor!r} changed while a REGISTER was decided")
