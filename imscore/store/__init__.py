"""The embedded store: where registrations live (``memory:`` or an SQLite file).

The server opens it at start-up so that a bad ``--store`` fails early with a clear message; the
registrar's binding store (:mod:`imscore.registrar.store`) keeps its bindings in the same SQLite file,
and the authenticator the last AKA sequence number issued to each subscriber
(:mod:`imscore.registrar.sqn`).
An SQLite file carries a schema version in its ``imscore_meta`` table; :func:`ensure_schema` creates
the tables of a new file and upgrades an older one.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Final

__all__ = [
    "SCHEMA_VERSION",
    "Store",
    "StoreError",
    "ensure_schema",
    "open_store",
    "stored_secret",
    "write_transaction",
]

#: 1: the meta table only. 2: adds the ``bindings`` table (one row per registered contact).
#: 3: adds the ``aka_sqn`` table (the last AKA sequence number issued per IMPI, and the subscriber
#: file's SQN it counts from).
SCHEMA_VERSION: Final = 3
#: older versions that :func:`ensure_schema` upgrades
_UPGRADABLE: Final = ("1", "2")

_TABLES_DDL: Final = (
    """CREATE TABLE IF NOT EXISTS bindings (
        id INTEGER PRIMARY KEY,
        aor TEXT NOT NULL,
        pos INTEGER NOT NULL,
        impi TEXT NOT NULL,
        contact TEXT NOT NULL,
        uri TEXT NOT NULL,
        expires_at REAL NOT NULL,
        registered_at REAL NOT NULL,
        call_id TEXT NOT NULL,
        cseq INTEGER NOT NULL,
        instance_id TEXT,
        reg_id INTEGER,
        q REAL,
        path TEXT NOT NULL,
        flow TEXT,
        user_agent TEXT,
        reachable INTEGER NOT NULL,
        extra TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS bindings_by_aor ON bindings (aor, registered_at, pos)",
    "CREATE INDEX IF NOT EXISTS bindings_by_expiry ON bindings (expires_at)",
    """CREATE TABLE IF NOT EXISTS aka_sqn (
        impi TEXT PRIMARY KEY,
        sqn INTEGER NOT NULL,
        file_sqn INTEGER NOT NULL
    )""",
)


class StoreError(Exception):
    """The store cannot be opened or used; the message names the URL and the cause."""


class Store:
    """An open store: ``kind`` is ``memory`` or ``sqlite``; ``db`` the SQLite connection if any."""

    def __init__(self, url: str, kind: str, db: sqlite3.Connection | None) -> None:
        self.url = url
        self.kind = kind
        self.db = db

    def close(self) -> None:
        """Close the SQLite connection, if any (closing twice is harmless)."""
        if self.db is not None:
            self.db.close()
            self.db = None


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None


def _schema_version(db: sqlite3.Connection) -> str | None:
    if not _has_table(db, "imscore_meta"):
        return None
    row = db.execute("SELECT value FROM imscore_meta WHERE key = 'schema'").fetchone()
    return None if row is None else str(row[0])


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` around the block (the write lock taken at once, so two
    processes on one file never interleave); rolled back when the block raises. The connection
    must be in autocommit mode (``isolation_level=None``) and not inside a transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:  # some errors roll back on their own
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def ensure_schema(db: sqlite3.Connection, url: str) -> None:
    """Create the tables of a new database, upgrade an older one (version 1 or 2), and check the
    version.

    A file already at :data:`SCHEMA_VERSION` is only read (so a read-only file opens); otherwise the
    work happens in one ``BEGIN IMMEDIATE`` transaction. The connection must not be inside a
    transaction.

    :param db: the connection.
    :param url: the store URL, for error messages.
    :raises StoreError: the file has a schema version this imscore does not know.
    :raises sqlite3.Error: the file cannot be read or written (the caller names the cause).
    """
    version = _schema_version(db)
    if version == str(SCHEMA_VERSION) and _has_table(db, "bindings") and _has_table(db, "aka_sqn"):
        return
    if version not in (None, *_UPGRADABLE, str(SCHEMA_VERSION)):
        raise StoreError(f"store {url!r}: schema version {version}, this imscore needs {SCHEMA_VERSION}")
    with write_transaction(db):
        db.execute("CREATE TABLE IF NOT EXISTS imscore_meta (key TEXT PRIMARY KEY, value TEXT)")
        row = db.execute("SELECT value FROM imscore_meta WHERE key = 'schema'").fetchone()
        if row is not None and row[0] not in (*_UPGRADABLE, str(SCHEMA_VERSION)):  # changed meanwhile
            raise StoreError(
                f"store {url!r}: schema version {row[0]}, this imscore needs {SCHEMA_VERSION}"
            )
        for statement in _TABLES_DDL:
            db.execute(statement)
        db.execute(
            "INSERT OR REPLACE INTO imscore_meta (key, value) VALUES ('schema', ?)",
            (str(SCHEMA_VERSION),),
        )


def stored_secret(db: sqlite3.Connection, name: str) -> bytes:
    """A random 32-byte secret kept in the file's ``imscore_meta`` table under ``secret:NAME``:
    made by whoever asks first, the same for every process on the file and after a restart (the
    proxy's dialog stamps use it, so calls set up before a restart can still be ended)."""
    key = f"secret:{name}"
    with write_transaction(db):
        db.execute(
            "INSERT OR IGNORE INTO imscore_meta (key, value) VALUES (?, ?)",
            (key, secrets.token_hex(32)),
        )
        row = db.execute("SELECT value FROM imscore_meta WHERE key = ?", (key,)).fetchone()
    return bytes.fromhex(str(row[0]))


def open_store(url: str) -> Store:
    """Open ``memory:`` or ``sqlite:PATH`` (the file and its tables are created when missing).

    An SQLite file is opened in autocommit mode (``isolation_level=None``: whoever writes issues its
    own ``BEGIN``/``COMMIT``) with write-ahead logging and ``synchronous = NORMAL``, so readers
    (``imscore bindings``) do not block the server and a commit does not wait for the disk (a power
    cut may lose the last registrations, never corrupt the file; devices register again).

    :raises StoreError: naming the URL and the cause.
    """
    if url in ("memory", "memory:"):
        return Store(url, "memory", None)
    if not url.startswith("sqlite:") or not url[len("sqlite:") :]:
        raise StoreError(f"store {url!r}: expected 'memory:' or 'sqlite:PATH'")
    path = Path(url[len("sqlite:") :])
    db: sqlite3.Connection | None = None
    try:
        db = sqlite3.connect(path, isolation_level=None)
        ensure_schema(db, url)
        with contextlib.suppress(sqlite3.OperationalError):  # a read-only file keeps its journal mode
            db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
    except StoreError:
        if db is not None:
            db.close()
        raise
    except sqlite3.Error as exc:
        if db is not None:
            db.close()
        raise StoreError(f"store {url!r}: cannot open {path}: {exc}") from None
    return Store(url, "sqlite", db)
