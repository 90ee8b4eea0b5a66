"""Where the agent's API gets its data: the :class:`Backend` protocol and :class:`StoreBackend`,
which serves it from the agent's SQLite store through read-only connections of its own.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from sqlite_utils import Database

from spyglass.core.models import Device, Upload
from spyglass.store.db import Store, StoreError


class Backend(Protocol):
    """Where the API's data comes from. Called from worker threads, never the capture thread."""

    def status(self) -> dict[str, Any]: ...

    def devices(self) -> Sequence[Device]: ...

    def uploads(
        self, device: str | None, since: float | None, until: float | None
    ) -> Sequence[Upload]: ...

    def series(
        self, device: str | None, since: float, until: float, resolution_s: int
    ) -> list[dict[str, Any]]:
        """Points ``{"t": bucket start, "up": bytes, "down": bytes}``, oldest first."""
        ...


# Below this resolution a bucket holds few rows and Store.series' single GROUP BY is cheaper.
_BUCKET_SCAN_MIN_RES = 60
_BUCKETS = """
b(t) AS (SELECT :first UNION ALL SELECT t + :res FROM b WHERE t + :res < :until)
SELECT t, (
    SELECT json_array(SUM(bytes_up), SUM(bytes_down)) FROM series
    WHERE device_mac {devices} AND second >= max(t, :since) AND second < min(t + :res, :until)
) FROM b ORDER BY t
"""
_BUCKETS_SQL = "WITH RECURSIVE " + _BUCKETS.format(devices="= :mac")
# Every device in the series table, one primary-key seek each (a loose index scan).
_BUCKETS_ALL_SQL = (
    "WITH RECURSIVE d(m) AS (SELECT MIN(device_mac) FROM series UNION ALL "
    "SELECT (SELECT MIN(device_mac) FROM series WHERE device_mac > m) FROM d "
    "WHERE m IS NOT NULL), "
    + _BUCKETS.format(devices="IN (SELECT m FROM d WHERE m IS NOT NULL)")
)


class StoreBackend:
    """Serves the API from the agent's SQLite store, plus the agent's live status.

    Reads go through a few read-only connections of its own, never the agent's writer: a
    reader never waits for the agent's writes (WAL), and the API cannot change the store.
    Opening one per request would cost milliseconds, so they are kept; :meth:`close` ends them.
    """

    def __init__(
        self,
        store: Store | str | Path,
        status_fn: Callable[[], dict[str, Any]],
        *,
        timeout: float = 5.0,
    ) -> None:
        path = store.path if isinstance(store, Store) else Path(store)
        if path is None:
            raise ValueError(
                "StoreBackend needs a store on disk: an in-memory store cannot be read from "
                "the API's worker threads"
            )
        self.path = Path(path).resolve()
        self.timeout = timeout
        self._status_fn = status_fn
        self._idle: list[Store] = []
        self._lock = threading.Lock()
        self._closed = False

    def status(self) -> dict[str, Any]:
        return dict(self._status_fn())

    def devices(self) -> list[Device]:
        with self._reader() as store:
            return store.devices()

    def uploads(
        self, device: str | None, since: float | None, until: float | None
    ) -> list[Upload]:
        with self._reader() as store:
            return list(store.uploads(device, since, until))

    def series(
        self, device: str | None, since: float, until: float, resolution_s: int
    ) -> list[dict[str, Any]]:
        with self._reader() as store:
            if device is not None and resolution_s < _BUCKET_SCAN_MIN_RES:
                points = store.series(device, since, until, resolution_s)
                return [
                    {"t": pt.second, "up": pt.bytes_up, "down": pt.bytes_down} for pt in points
                ]
            return self._bucket_sums(store, device, since, until, resolution_s)

    def _bucket_sums(
        self, store: Store, device: str | None, since: float, until: float, res: int
    ) -> list[dict[str, Any]]:
        # Store.series groups with a temporary B-tree over every row in the range (4 s for a
        # month of seconds here), and for all devices scans the whole table. Summing each
        # bucket as its own primary-key range reads rows in key order with no sort: several
        # times faster for long ranges. Same answer (tests compare the two).
        sql = _BUCKETS_ALL_SQL if device is None else _BUCKETS_SQL
        args = {
            "first": math.floor(since / res) * res,
            "res": res,
            "since": since,
            "until": until,
            "mac": device,
        }
        try:
            rows = store.db.conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"store: {exc} reading {self.path}; nothing was changed") from exc
        points = []
        for t, sums in rows:
            up, down = json.loads(sums)
            if up is not None:
                points.append({"t": t, "up": up, "down": down})
        return points

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for store in idle:
            store.close()

    def __enter__(self) -> StoreBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _reader(self) -> Iterator[Store]:
        with self._lock:
            if self._closed:
                raise StoreError(f"store: {self.path} is closed for the API; nothing was read")
            store = self._idle.pop() if self._idle else None
        if store is None:
            store = self._open()
        try:
            yield store
        except BaseException:
            store.close()  # may be broken; the next call opens a fresh one
            raise
        with self._lock:
            if self._closed:
                store.close()
            else:
                self._idle.append(store)

    def _open(self) -> Store:
        uri = f"file:{urllib.parse.quote(str(self.path))}?mode=ro"
        try:
            # Used by one worker thread at a time, but not always the same one.
            conn = sqlite3.connect(uri, uri=True, timeout=self.timeout, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(
                f"store: cannot open {self.path} for reading ({exc}); nothing was read"
            ) from exc
        conn.isolation_level = None
        return Store(Database(conn, execute_plugins=False), self.path)

