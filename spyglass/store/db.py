"""The Spyglass store: one SQLite file (WAL, foreign keys on) written through sqlite-utils.

Captures are identified by a fingerprint of their content (spyglass.core.fingerprint), so
importing a file twice replaces its rows instead of doubling them; the whole import is one
transaction, so a failure (disk full, a locked file) leaves the earlier data exactly as it was.
Live traffic goes under a "live" capture row per interface and is merged with upserts as the
agent drains the pipeline.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from types import TracebackType

from sqlite_utils import Database

from spyglass.store import migrations, paths, staging
from spyglass.store.reads import StoreReads
from spyglass.store.records import (
    DEFAULT_RETENTION_DAYS,
    KEPT_NOTHING_CHANGED,
    VERDICTS,
    AnalysisLike,
    CaptureSource,
    ProblemLike,
    ReadReportLike,
    StatsLike,
    StoredCapture,
    StoredUpload,
    StoreError,
    error_kind,
)
from spyglass.store.writes import StoreWrites

# Importable from here as before the store was split into modules.
__all__ = [
    "DEFAULT_RETENTION_DAYS",
    "VERDICTS",
    "AnalysisLike",
    "CaptureSource",
    "ProblemLike",
    "ReadReportLike",
    "StatsLike",
    "Store",
    "StoreError",
    "StoredCapture",
    "StoredUpload",
]


class Store(StoreWrites, StoreReads):
    """The database. Open with :meth:`open`; one writer at a time (the agent, or the CLI)."""

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | Path | None = None, *, timeout: float = 5.0, any_thread: bool = False
    ) -> Store:
        """Open (creating if needed, mode 0600 in a 0700 directory) and migrate the database.

        ``timeout``: seconds to wait for another writer. ``any_thread``: allow use from threads
        other than the opening one (the caller then makes sure calls do not overlap).
        """
        db_path = Path(path) if path is not None else paths.default_db_path()
        where = str(db_path)
        try:
            paths.ensure_private_dir(db_path.parent)
            paths.ensure_private_file(db_path)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            msg = f"store: cannot create {where}: {reason}; nothing was written"
            raise StoreError(msg) from exc
        with contextlib.suppress(OSError):
            staging.remove_stale(db_path.parent)
        try:
            conn = sqlite3.connect(where, timeout=timeout, check_same_thread=not any_thread)
        except sqlite3.Error as exc:
            msg = f"store: {error_kind(exc)} opening {where}; nothing was changed"
            raise StoreError(msg) from exc
        store = cls(cls._database(conn), db_path)
        try:
            store._setup()
        except BaseException:
            conn.close()
            raise
        return store

    @classmethod
    def memory(cls) -> Store:
        """A throwaway in-memory store (tests, ``--no-store`` summaries)."""
        store = cls(cls._database(sqlite3.connect(":memory:")), None)
        store._setup()
        return store

    @staticmethod
    def _database(conn: sqlite3.Connection) -> Database:
        # Autocommit at the driver level: every transaction is an explicit db.atomic(), so no
        # implicit transaction is ever left open by a stray statement.
        conn.isolation_level = None
        return Database(conn, execute_plugins=False)

    def _setup(self) -> None:
        with self._guard("opening", KEPT_NOTHING_CHANGED):
            conn = self.db.conn
            conn.execute("PRAGMA foreign_keys = ON")
            if self.path is not None:
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            try:
                self.schema_version = migrations.apply(self.db)
            except ValueError as exc:
                raise StoreError(f"store: {self._where()} was {exc}; nothing was changed") from exc

    def close(self) -> None:
        if self._stage is not None:
            self._stage.close()
            self._stage = None
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
