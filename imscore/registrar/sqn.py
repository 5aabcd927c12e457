"""Where the home network keeps each AKA subscriber's sequence number (SQN).

The SQN of the next authentication vector must be fresh for the subscriber's USIM (TS 33.102 §6.3,
Annex C): higher than what it has accepted. The subscriber file gives a starting SQN; what was
issued since lives here:

- :class:`MemorySqnStore` keeps it in the process (``--store memory:``, the lab, a plugin's binding
  store): a restart starts again from the file's SQN, and the first challenge after it may be
  answered with AUTS (a re-synchronisation, one more round trip).
- :class:`SqliteSqnStore` keeps it in the ``aka_sqn`` table of the SQLite store file (schema
  version 3 of :mod:`imscore.store`), so it survives a restart and the worker processes of
  ``imscore serve --workers N`` share one counter per subscriber: each vector's SQN is read,
  advanced and written back in one ``BEGIN IMMEDIATE`` transaction, so no two processes issue the
  same SQN and a USIM never sees one go backwards.

Both apply :class:`~imscore.auth.aka.SqnState` (SEQ and IND, and the re-synchronisation rule) to the
last SQN issued. Each record also keeps the subscriber file's SQN it started from: when the file's
SQN changes (an operator set a new one, for a new SIM say), the counter starts again from the file's.
Otherwise the stored SQN wins, even when it is lower than the file's: a re-synchronisation may have
set it back to what the USIM holds.
"""

from __future__ import annotations

import sqlite3
from typing import Protocol

from imscore.auth.aka import SqnState
from imscore.store import StoreError, write_transaction

__all__ = ["MemorySqnStore", "SqliteSqnStore", "SqnStore"]


class SqnStore(Protocol):
    """The last SQN issued per private identity."""

    def issue(self, impi: str, initial: int, sqn_ms: int | None = None) -> int:
        """The SQN of the next vector for ``impi``, recorded as issued.

        :param initial: the subscriber file's SQN (the last issued when nothing is stored, or when
            it is higher than what is stored).
        :param sqn_ms: the USIM's SQN from a verified AUTS: re-synchronise first
            (:meth:`SqnState.next <imscore.auth.aka.SqnState.next>`).
        :raises imscore.auth.aka.AkaError: the SQN space is exhausted.
        :raises StoreError: the store cannot be read or written.
        """
        ...

    def last(self, impi: str) -> int | None:
        """The last SQN recorded for ``impi``, or ``None`` when none is."""
        ...


def _next(stored: tuple[int, int] | None, initial: int, sqn_ms: int | None) -> int:
    """The next SQN after ``stored`` = (last SQN issued, the file's SQN it started from)."""
    start = initial if stored is None or stored[1] != initial else stored[0]
    return SqnState(start).next(sqn_ms)


class MemorySqnStore:
    """An :class:`SqnStore` in a dict: per process, lost on exit."""

    def __init__(self) -> None:
        self._issued: dict[str, tuple[int, int]] = {}

    def issue(self, impi: str, initial: int, sqn_ms: int | None = None) -> int:
        """See :meth:`SqnStore.issue`."""
        sqn = _next(self._issued.get(impi), initial, sqn_ms)
        self._issued[impi] = (sqn, initial)
        return sqn

    def last(self, impi: str) -> int | None:
        """See :meth:`SqnStore.last`."""
        found = self._issued.get(impi)
        return None if found is None else found[0]


class SqliteSqnStore:
    """An :class:`SqnStore` in the ``aka_sqn`` table of an SQLite store (see the module's text).

    :param db: a connection in autocommit mode (``isolation_level=None``) to a file whose schema
        :func:`imscore.store.ensure_schema` has made (version 3 or later); shared with the binding
        store, not closed here.
    :param url: names the store in error messages.
    """

    def __init__(self, db: sqlite3.Connection, url: str) -> None:
        self._db = db
        self.url = url

    def issue(self, impi: str, initial: int, sqn_ms: int | None = None) -> int:
        """See :meth:`SqnStore.issue` (one ``BEGIN IMMEDIATE`` transaction)."""
        db = self._db
        try:
            with write_transaction(db):
                row = db.execute("SELECT sqn, file_sqn FROM aka_sqn WHERE impi = ?", (impi,)).fetchone()
                sqn = _next(None if row is None else (int(row[0]), int(row[1])), initial, sqn_ms)
                db.execute(
                    "INSERT OR REPLACE INTO aka_sqn (impi, sqn, file_sqn) VALUES (?, ?, ?)",
                    (impi, sqn, initial),
                )
        except sqlite3.Error as exc:
            raise StoreError(
                f"store {self.url!r}: cannot record the AKA SQN of {impi!r}: {exc}"
            ) from None
        return sqn

    def last(self, impi: str) -> int | None:
        """See :meth:`SqnStore.last`."""
        try:
            row = self._db.execute("SELECT sqn FROM aka_sqn WHERE impi = ?", (impi,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.url!r}: cannot read the AKA SQN of {impi!r}: {exc}") from None
        return None if row is None else int(row[0])
