"""What every part of the store shares: the connection, the error guard, and the settings."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlite_utils import Database

from spyglass.store.records import (
    DEFAULT_RETENTION_DAYS,
    KEPT_NOTHING_CHANGED,
    StoreError,
    error_kind,
)
from spyglass.store.staging import SeriesStage


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


class StoreBase:
    """The database connection and its path; the reading and writing halves build on it."""

    def __init__(self, db: Database, path: Path | None) -> None:
        self.db = db
        self.path = path
        self.schema_version = 0
        self._stage: SeriesStage | None = None  # series handed over before their capture

    def _where(self) -> str:
        return str(self.path) if self.path is not None else ":memory:"

    @contextmanager
    def _guard(self, doing: str, kept: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            kind = error_kind(exc)
            unwritable = self.path is not None and not _writable(self.path)
            if kind == "cannot open the file" and unwritable:
                # WAL needs to create the -shm file next to the database.
                kind = "read-only file or directory"
            raise StoreError(f"store: {kind} {doing} {self._where()}; {kept}") from exc

    @property
    def _conn(self) -> sqlite3.Connection:
        return self.db.conn

    # -- settings ----------------------------------------------------------------------------

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        with self._guard("reading", KEPT_NOTHING_CHANGED):
            row = self._conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else default

    def set_setting(self, key: str, value: str) -> None:
        with self._guard("writing", "the setting was not saved"), self.db.atomic():
            self._conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    @property
    def retention_days(self) -> int:
        value = self.get_setting("retention_days")
        try:
            days = int(value) if value is not None else DEFAULT_RETENTION_DAYS
        except ValueError:
            return DEFAULT_RETENTION_DAYS
        return days if days > 0 else DEFAULT_RETENTION_DAYS

    def set_retention_days(self, days: int) -> None:
        if days <= 0:
            raise ValueError(f"retention must be at least one day, not {days}")
        self.set_setting("retention_days", str(days))

