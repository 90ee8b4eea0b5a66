"""Series staged on disk while a capture is analysed, so that a long capture's memory stays flat.

A capture's per-second series grow with its length (about 10k rows an hour and a half of the
simulated household, a million for a week), and its capture row, which the series rows belong
to, is only written once the analysis is done. So the series are handed over as they settle and
kept until then in a scratch database file next to the store, attached to the store's
connection as ``stage``; ``record_analysis`` moves them into ``series`` in its transaction.

The scratch file is not the store: no journal and no syncing (it is thrown away if anything
goes wrong), and writing it takes no lock on the store, so a running agent is not held up by a
long import. Its table has the series' own key, so it keeps the rows in the order the store
wants them (one sequential pass at the end) and adds up repeats of a key.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from spyglass.core.models import SeriesPoint
from spyglass.store.sql import SERIES, SERIES_SUMS, Upsert, upsert_all

PREFIX = ".spyglass-stage-"
_COLS = "device_mac, second, remote_ip, bytes_up, bytes_down, packets_up, packets_down"
STAGE = Upsert(
    f"INSERT INTO stage.series ({_COLS}) VALUES",
    7,
    "ON CONFLICT (device_mac, second, remote_ip) DO UPDATE SET " + SERIES_SUMS,
)


def _rows(points: Sequence[SeriesPoint]) -> Iterator[tuple[object, ...]]:
    for p in points:
        yield (p.device_mac, p.second, p.remote_ip, p.bytes_up, p.bytes_down, p.packets_up,
               p.packets_down)


class SeriesStage:
    """The scratch file of one store connection (see the module docstring). The connection
    must be in autocommit mode (the store's is): the stage writes commit on their own."""

    def __init__(self, conn: sqlite3.Connection, directory: Path | None) -> None:
        # The process id in the name: a stage left by a process that was killed is removed by
        # the next store opened beside it (remove_stale).
        fd, name = tempfile.mkstemp(prefix=f"{PREFIX}{os.getpid()}-", suffix=".db", dir=directory)
        os.close(fd)
        self.path = Path(name)
        self._conn = conn
        self.rows = 0  # rows handed over (repeats of a key included)
        try:
            conn.execute("ATTACH DATABASE ? AS stage", (name,))
            conn.execute("PRAGMA stage.journal_mode = OFF")
            conn.execute("PRAGMA stage.synchronous = OFF")
            conn.execute(
                f"CREATE TABLE stage.series ({_COLS}, "
                "PRIMARY KEY (device_mac, second, remote_ip)) WITHOUT ROWID"
            )
        except BaseException:
            self.close()
            raise

    def add(self, points: Sequence[SeriesPoint]) -> None:
        """Stage ``points``, in one transaction of the scratch file alone."""
        if not points:
            return
        conn = self._conn
        conn.execute("BEGIN")
        try:
            upsert_all(conn, STAGE, points, _rows)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self.rows += len(points)

    def span(self) -> tuple[int, int] | None:
        """The first and last second staged, or None."""
        row = self._conn.execute("SELECT MIN(second), MAX(second) FROM stage.series").fetchone()
        return None if row is None or row[0] is None else (int(row[0]), int(row[1]))

    def move_into(self, capture_id: int) -> None:
        """Add the staged rows to ``series`` under ``capture_id`` (inside the caller's
        transaction), in key order, and empty the stage."""
        self._conn.execute(
            "INSERT INTO main.series (device_mac, second, remote_ip, capture_id, bytes_up, "
            "bytes_down, packets_up, packets_down) SELECT device_mac, second, remote_ip, ?, "
            "bytes_up, bytes_down, packets_up, packets_down FROM stage.series WHERE true "
            "ORDER BY device_mac, second, remote_ip " + SERIES.tail,
            (capture_id,),
        )
        self.clear()

    def clear(self) -> None:
        self._conn.execute("DELETE FROM stage.series")
        self.rows = 0

    def close(self) -> None:
        """Detach and delete the scratch file (not inside a transaction)."""
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("DETACH DATABASE stage")
        with contextlib.suppress(OSError):
            self.path.unlink()


def remove_stale(directory: Path) -> list[Path]:
    """Delete the stage files in ``directory`` whose process is gone (killed mid-analysis);
    returns them. A file whose process still runs, or whose name says no process, stays."""
    gone = []
    for path in directory.glob(f"{PREFIX}*-*.db"):
        pid_text = path.name[len(PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # still running (or another user's process)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            gone.append(path)
    return gone
