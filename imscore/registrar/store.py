"""Binding stores: where the registrar keeps the bindings of every address-of-record.

A binding store is an async provider (:class:`BindingStore`) so that a networked one (Redis) fits the
same interface. Two come built in:

- :class:`MemoryBindingStore`, for tests and labs (lost on exit);
- :class:`SqliteBindingStore`, the default: an embedded SQLite file that survives a restart with
  every binding's absolute ``expires_at``, so remaining lifetimes carry over.

:func:`open_binding_store` opens one from a store URL (``memory:`` or ``sqlite:PATH``).

The SQLite store runs its (short, local) queries directly on the event loop rather than through
:func:`asyncio.to_thread`: with write-ahead logging and ``synchronous = NORMAL`` a commit does not
wait for the disk, so a ``save`` costs tens of microseconds — less than a thread hand-off — and,
having no ``await`` inside, each operation is atomic with respect to the other coroutines of the
server without a lock.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any, Final, Protocol, runtime_checkable

from imscore.store import StoreError, ensure_schema, open_store, write_transaction

from .model import FlowInfo, StoredBinding, binding_with, new_flow

__all__ = [
    "BindingStore",
    "MemoryBindingStore",
    "SqliteBindingStore",
    "StoreError",
    "open_binding_store",
]


@runtime_checkable
class BindingStore(Protocol):
    """What the registrar asks of a binding store.

    Bindings are filed by address-of-record (:attr:`StoredBinding.aor`). A store does not read the
    clock and does not filter expired bindings on its own: :meth:`load` returns what is stored, and
    :meth:`expire` is called with the registrar's ``now``. Backend failures raise
    :class:`~imscore.store.StoreError`.
    """

    async def load(self, aor: str) -> list[StoredBinding]:
        """The bindings of ``aor``, live and expired alike, oldest registration
        (:attr:`~StoredBinding.registered_at`) first; ties keep the order they were saved in.
        An unknown AOR has none (``[]``)."""
        ...

    async def save(self, aor: str, bindings: Sequence[StoredBinding]) -> None:
        """Replace the whole set of ``aor`` with ``bindings``, atomically; an empty sequence
        deletes the AOR.

        :raises ValueError: a binding is filed under another AOR (``binding.aor != aor``).
        """
        ...

    async def expire(self, now: float) -> list[StoredBinding]:
        """Remove every binding with ``expires_at <= now``, across all AORs, and return them
        (ordered as :meth:`all`), so the registrar can send reg-event notifications."""
        ...

    async def all(self) -> list[StoredBinding]:
        """Every stored binding, by AOR, and within an AOR as :meth:`load` orders them."""
        ...

    async def close(self) -> None:
        """Release the store; closing twice is harmless, any other call afterwards raises
        :class:`~imscore.store.StoreError`."""
        ...


def _check_aor(aor: str, bindings: Sequence[StoredBinding]) -> None:
    for binding in bindings:
        if binding.aor != aor:
            raise ValueError(f"binding {binding.uri!r} is filed under {binding.aor!r}, not {aor!r}")


def _copy(binding: StoredBinding) -> StoredBinding:
    # StoredBinding is frozen, but its ``extra`` dict is not: keep our own.
    # (``replace(binding, extra=dict(binding.extra))``, built without the dataclass __init__)
    b = binding
    return binding_with(b, b.aor, b.registered_at, b.flow, b.user_agent, dict(b.extra))


#: the ``extra`` of every binding the memory store keeps without one: shared, and never handed out
#: (whatever leaves the store is a :func:`_copy` with a dict of its own), so never changed
_NO_EXTRA: dict[str, str] = {}


def _shared_flow(flow: FlowInfo | None) -> FlowInfo | None:
    """``flow`` with its remote host string shared with every other binding from that host."""
    if flow is None:
        return None
    host, port = flow.remote
    shared = sys.intern(host)
    if shared is host:
        return flow
    return new_flow(flow.transport, (shared, port), flow.local, flow.connection)


def _kept(binding: StoredBinding, aor: str) -> StoredBinding:
    """The copy the memory store keeps: its own ``extra``, or the shared empty one (64 octets less
    for each of a million bindings, most of which have none); the AOR string is the dict key's (one
    string per AOR, not one per binding), and the User-Agent and the remote host are interned
    strings (many devices share them). Equal to ``binding`` field by field."""
    agent = binding.user_agent
    return binding_with(
        binding,
        aor,
        binding.registered_at,
        _shared_flow(binding.flow),
        None if agent is None else sys.intern(agent),
        dict(binding.extra) if binding.extra else _NO_EXTRA,
    )


#: what the memory store keeps per AOR: the one binding (most AORs), or a tuple of them
_Kept = StoredBinding | tuple[StoredBinding, ...]


def _as_tuple(kept: _Kept) -> tuple[StoredBinding, ...]:
    return (kept,) if isinstance(kept, StoredBinding) else kept


class _DueIndex:
    """Which AORs have a binding due by a given time, for :meth:`MemoryBindingStore.expire`.

    AORs are filed in buckets by the whole second their binding expires at or before
    (``ceil(expires_at)``): a list slot per binding (the AOR string is the store's key), instead of
    a heap entry of a tuple and its float. A heap of the bucket seconds orders the buckets. An
    entry whose binding was since refreshed or removed stays until its bucket comes up (the store
    checks the bindings themselves).
    """

    __slots__ = ("_buckets", "_seconds")

    def __init__(self) -> None:
        self._buckets: dict[int, list[str]] = {}
        self._seconds: list[int] = []

    def add(self, expires_at: float, aor: str) -> None:
        if not math.isfinite(expires_at):
            if expires_at > 0 or expires_at != expires_at:
                return  # +inf or NaN: never ``<= now``, never due
            expires_at = float(-(2**62))  # -inf: due at once
        second = math.ceil(expires_at)
        bucket = self._buckets.get(second)
        if bucket is None:
            self._buckets[second] = bucket = []
            heapq.heappush(self._seconds, second)
        bucket.append(aor)

    def due(self, now: float) -> set[str]:
        """The AORs that may have a binding with ``expires_at <= now``; buckets wholly due are
        dropped, the bucket of the second under way (which may hold some) is kept."""
        found: set[str] = set()
        seconds, buckets = self._seconds, self._buckets
        while seconds and seconds[0] <= now:
            found.update(buckets.pop(heapq.heappop(seconds)))
        partial = buckets.get(math.ceil(now))
        if partial is not None:
            found.update(partial)
        return found


class MemoryBindingStore:
    """A :class:`BindingStore` in a dict; what it holds is lost when the process ends.

    It keeps copies, so changing a saved binding's ``extra`` afterwards does not change the store
    (the same value semantics as the SQLite store).
    """

    def __init__(self) -> None:
        # each AOR's binding, or its bindings as a tuple when it has several (they are replaced
        # whole; a tuple of one costs 48 octets more per AOR)
        self._aors: dict[str, _Kept] | None = {}
        self._due = _DueIndex()

    def _data(self) -> dict[str, _Kept]:
        if self._aors is None:
            raise StoreError("store 'memory:': closed")
        return self._aors

    async def load(self, aor: str) -> list[StoredBinding]:
        """See :meth:`BindingStore.load`."""
        return self.load_now(aor)

    def load_now(self, aor: str) -> list[StoredBinding]:
        """:meth:`load` without a coroutine (it never waits): for a caller on the loop's thread."""
        kept = self._data().get(aor)
        return [] if kept is None else [_copy(b) for b in _as_tuple(kept)]

    async def save(self, aor: str, bindings: Sequence[StoredBinding]) -> None:
        """See :meth:`BindingStore.save`."""
        self.save_now(aor, bindings)

    def save_now(self, aor: str, bindings: Sequence[StoredBinding]) -> None:
        """:meth:`save` without a coroutine (it never waits)."""
        data = self._data()
        _check_aor(aor, bindings)
        if not bindings:
            data.pop(aor, None)
            return
        # the key already stored (the AOR of its bindings), or this one: the string every binding
        # of the AOR and its entries in the due index share
        stored = data.get(aor)
        key = aor if stored is None else _as_tuple(stored)[0].aor
        if len(bindings) == 1:
            data[key] = _kept(bindings[0], key)
        else:
            data[key] = tuple(sorted((_kept(b, key) for b in bindings), key=lambda b: b.registered_at))
        for binding in bindings:
            self._due.add(binding.expires_at, key)

    async def expire(self, now: float) -> list[StoredBinding]:
        """See :meth:`BindingStore.expire`."""
        data = self._data()
        gone: list[StoredBinding] = []
        for aor in sorted(self._due.due(now)):
            kept = data.get(aor)
            if kept is None:
                continue
            bindings = _as_tuple(kept)
            expired = [b for b in bindings if b.expires_at <= now]
            if not expired:
                continue
            gone.extend(_copy(b) for b in expired)
            live = tuple(b for b in bindings if b.expires_at > now)
            if len(live) > 1:
                data[aor] = live
            elif live:
                data[aor] = live[0]
            else:
                del data[aor]
        return gone

    async def all(self) -> list[StoredBinding]:
        """See :meth:`BindingStore.all`."""
        data = self._data()
        return [_copy(b) for aor in sorted(data) for b in _as_tuple(data[aor])]

    def counts(self, now: float) -> tuple[int, int]:
        """Live bindings and the AORs that have one (for metrics; no copies made)."""
        if self._aors is None:
            return 0, 0
        bindings = aors = 0
        for kept in self._aors.values():
            live = sum(1 for b in _as_tuple(kept) if b.expires_at > now)
            bindings += live
            aors += 1 if live else 0
        return bindings, aors

    async def close(self) -> None:
        """Drop every binding; see :meth:`BindingStore.close`."""
        self._aors = None


_COLUMNS: Final = (
    "aor, pos, impi, contact, uri, expires_at, registered_at, call_id, cseq, instance_id, reg_id, q, "
    "path, flow, user_agent, reachable, extra"
)
_SELECT: Final = f"SELECT {_COLUMNS} FROM bindings"
_INSERT: Final = f"INSERT INTO bindings ({_COLUMNS}) VALUES ({', '.join('?' * 17)})"
_ORDER: Final = "ORDER BY aor, registered_at, pos"


def _flow_to_json(flow: FlowInfo | None) -> str | None:
    if flow is None:
        return None
    return json.dumps(
        {
            "transport": flow.transport,
            "remote": list(flow.remote),
            "local": list(flow.local),
            "connection": flow.connection,
        }
    )


def _flow_from_json(text: str | None) -> FlowInfo | None:
    if text is None:
        return None
    plain = json.loads(text)
    remote_host, remote_port = plain["remote"]
    local_host, local_port = plain["local"]
    connection = plain.get("connection")
    return FlowInfo(
        transport=str(plain["transport"]),
        remote=(str(remote_host), int(remote_port)),
        local=(str(local_host), int(local_port)),
        connection=None if connection is None else int(connection),
    )


def _to_row(pos: int, b: StoredBinding) -> tuple[object, ...]:
    return (
        b.aor,
        pos,
        b.impi,
        b.contact,
        b.uri,
        float(b.expires_at),
        float(b.registered_at),
        b.call_id,
        b.cseq,
        b.instance_id,
        b.reg_id,
        None if b.q is None else float(b.q),
        json.dumps(list(b.path)) if b.path else "[]",  # (most bindings have neither)
        _flow_to_json(b.flow),
        b.user_agent,
        1 if b.reachable else 0,
        json.dumps(b.extra) if b.extra else "{}",
    )


def _from_row(row: tuple[Any, ...]) -> StoredBinding:
    # the order of _COLUMNS
    (aor, _pos, impi, contact, uri, expires_at, registered_at, call_id, cseq) = row[:9]
    (instance_id, reg_id, q, path, flow, user_agent, reachable, extra) = row[9:]
    extra_plain = json.loads(extra)
    if not isinstance(extra_plain, dict):
        raise ValueError(f"extra is not a JSON object: {extra!r}")
    return StoredBinding(
        aor=str(aor),
        impi=str(impi),
        contact=str(contact),
        uri=str(uri),
        expires_at=float(expires_at),
        registered_at=float(registered_at),
        call_id=str(call_id),
        cseq=int(cseq),
        instance_id=None if instance_id is None else str(instance_id),
        reg_id=None if reg_id is None else int(reg_id),
        q=None if q is None else float(q),
        path=tuple(str(p) for p in json.loads(path)),
        flow=_flow_from_json(flow),
        user_agent=None if user_agent is None else str(user_agent),
        reachable=bool(reachable),
        extra={str(k): str(v) for k, v in extra_plain.items()},
    )


class SqliteBindingStore:
    """A :class:`BindingStore` in an SQLite database: one row per binding in the ``bindings`` table
    (schema version 2 of :mod:`imscore.store`), indexed by AOR and by ``expires_at``.

    :param path_or_connection: a file path (opened as ``sqlite:PATH`` by
        :func:`imscore.store.open_store`: created when missing, write-ahead logging) or an open
        :class:`sqlite3.Connection`, whose schema is created or checked here. A connection handed in
        must be in autocommit mode (``isolation_level=None``), as :func:`~imscore.store.open_store`
        makes them, since the store issues its own ``BEGIN IMMEDIATE``/``COMMIT``.
    :param close_connection: whether :meth:`close` closes the connection; by default only one the
        store opened itself.
    :param url: names the store in error messages (default ``sqlite:PATH``, or
        ``sqlite:<connection>`` for a connection).
    :raises StoreError: the file cannot be opened or has an unknown schema version.
    """

    def __init__(
        self,
        path_or_connection: str | os.PathLike[str] | sqlite3.Connection,
        *,
        close_connection: bool | None = None,
        url: str | None = None,
    ) -> None:
        if isinstance(path_or_connection, sqlite3.Connection):
            self.url = url or "sqlite:<connection>"
            db = path_or_connection
            if db.isolation_level is not None:
                raise StoreError(f"store {self.url!r}: the connection must have isolation_level=None")
            try:
                ensure_schema(db, self.url)
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.url!r}: cannot use the connection: {exc}") from None
            owned = False
        else:
            self.url = url or f"sqlite:{os.fspath(path_or_connection)}"
            opened = open_store(f"sqlite:{os.fspath(path_or_connection)}").db
            assert opened is not None
            db = opened
            owned = True
        self._db: sqlite3.Connection | None = db
        self._close_connection = owned if close_connection is None else close_connection

    @property
    def connection(self) -> sqlite3.Connection:
        """The SQLite connection (the AKA SQN store shares it: :mod:`imscore.registrar.sqn`)."""
        return self._conn()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"store {self.url!r}: closed")
        return self._db

    def _error(self, action: str, exc: Exception) -> StoreError:
        return StoreError(f"store {self.url!r}: cannot {action}: {exc}")

    def _rows(self, sql: str, params: tuple[object, ...], action: str) -> list[StoredBinding]:
        db = self._conn()
        try:
            return [_from_row(row) for row in db.execute(sql, params)]
        except sqlite3.Error as exc:
            raise self._error(action, exc) from None
        except (ValueError, TypeError, KeyError) as exc:
            raise self._error(f"{action} (bad row)", exc) from None

    async def load(self, aor: str) -> list[StoredBinding]:
        """See :meth:`BindingStore.load`."""
        return self.load_now(aor)

    def load_now(self, aor: str) -> list[StoredBinding]:
        """:meth:`load` without a coroutine (it never waits): for a caller on the loop's thread."""
        return self._rows(f"{_SELECT} WHERE aor = ? {_ORDER}", (aor,), f"load {aor!r}")

    async def save(self, aor: str, bindings: Sequence[StoredBinding]) -> None:
        """See :meth:`BindingStore.save` (one transaction: delete the AOR's rows, insert the new)."""
        self.save_now(aor, bindings)

    def save_now(self, aor: str, bindings: Sequence[StoredBinding]) -> None:
        """:meth:`save` without a coroutine (it never waits)."""
        db = self._conn()
        _check_aor(aor, bindings)
        rows = [_to_row(pos, b) for pos, b in enumerate(bindings)]
        try:
            with write_transaction(db):
                db.execute("DELETE FROM bindings WHERE aor = ?", (aor,))
                db.executemany(_INSERT, rows)
        except (sqlite3.Error, OverflowError) as exc:  # OverflowError: an int beyond 64 bits
            raise self._error(f"save {aor!r}", exc) from None

    async def expire(self, now: float) -> list[StoredBinding]:
        """See :meth:`BindingStore.expire` (select and delete in one transaction)."""
        db = self._conn()
        try:
            with write_transaction(db):
                gone = self._rows(f"{_SELECT} WHERE expires_at <= ? {_ORDER}", (now,), "expire")
                if gone:
                    db.execute("DELETE FROM bindings WHERE expires_at <= ?", (now,))
        except sqlite3.Error as exc:
            raise self._error("expire", exc) from None
        return gone

    async def all(self) -> list[StoredBinding]:
        """See :meth:`BindingStore.all`."""
        return self._rows(f"{_SELECT} {_ORDER}", (), "list bindings")

    def counts(self, now: float) -> tuple[int, int]:
        """Live bindings and the AORs that have one (for metrics)."""
        try:
            row = self._conn().execute(
                "SELECT COUNT(*), COUNT(DISTINCT aor) FROM bindings WHERE expires_at > ?", (now,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._error("count bindings", exc) from None
        return int(row[0]), int(row[1])

    async def close(self) -> None:
        """See :meth:`BindingStore.close`; closes the connection if the store owns it."""
        if self._db is not None and self._close_connection:
            self._db.close()
        self._db = None


def open_binding_store(url: str) -> BindingStore:
    """Open the binding store of a store URL: ``memory:`` (or ``memory``) or ``sqlite:PATH``.

    :raises StoreError: naming the URL: an unknown kind, or a file that cannot be opened or has an
        unknown schema version.
    """
    store = open_store(url)
    if store.kind == "memory":
        return MemoryBindingStore()
    assert store.db is not None
    try:
        return SqliteBindingStore(store.db, close_connection=True, url=url)
    except BaseException:
        store.close()
        raise
