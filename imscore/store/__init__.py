"""The embedded store: where registrations will live (``memory:`` or an SQLite file).

The registrar's binding store builds on this; today the server opens it at start-up so that a bad
``--store`` fails early with a clear message, and an SQLite file carries a schema version.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

__all__ = ["SCHEMA_VERSION", "Store", "StoreError", "open_store"]

SCHEMA_VERSION: Final = 1


class StoreError(Exception):
    """The store cannot be opened; the message names the URL and the cause."""


class Store:
    """An open store: ``kind`` is ``memory`` or ``sqlite``; ``db`` the SQLite connection if any."""

    def __init__(self, url: str, kind: str, db: sqlite3.Connection | None) -> None:
        self.url = url
        self.kind = kind
        self.db = db

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def open_store(url: str) -> Store:
    """Open ``memory:`` or ``sqlite:PATH`` (the file and its tables are created when missing)."""
    if url in ("memory", "memory:"):
        return Store(url, "memory", None)
    if not url.startswith("sqlite:") or not url[len("sqlite:") :]:
        raise StoreError(f"store {url!r}: expected 'memory:' or 'sqlite:PATH'")
    path = Path(url[len("sqlite:") :])
    try:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("CREATE TABLE IF NOT EXISTS imscore_meta (key TEXT PRIMARY KEY, value TEXT)")
        row = db.execute("SELECT value FROM imscore_meta WHERE key = 'schema'").fetchone()
        if row is None:
            db.execute("INSERT INTO imscore_meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif row[0] != str(SCHEMA_VERSION):
            db.close()
            raise StoreError(
                f"store {url!r}: schema version {row[0]}, this imscore needs {SCHEMA_VERSION}"
            )
    except sqlite3.Error as exc:
        raise StoreError(f"store {url!r}: cannot open {path}: {exc}") from None
    return Store(url, "sqlite", db)
