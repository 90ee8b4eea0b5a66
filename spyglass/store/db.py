"""The Spyglass store: one SQLite file (WAL, foreign keys on) written through sqlite-utils.

Captures are identified by the SHA-256 of their content, so importing a file twice replaces its
rows instead of doubling them; the whole import is one transaction, so a failure (disk full, a
locked file) leaves the earlier data exactly as it was. Live traffic goes under a "live" capture
row per interface and is merged with upserts as the agent drains the pipeline.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from sqlite_utils import Database

from spyglass.core.models import Device, EndpointName, Flow, SeriesPoint, Upload
from spyglass.store import migrations, paths

DEFAULT_RETENTION_DAYS = 365
VERDICTS = ("me", "nobody")

KEPT_CAPTURE = "the capture's rows were not written, earlier data is intact"
KEPT_BATCH = "this batch was not written, earlier data is intact"
KEPT_NOTHING_CHANGED = "nothing was changed"


class StoreError(Exception):
    """A storage failure, with a one-line message saying what happened and what was kept."""


# What the store reads from an analysis: structural types, so the store does not depend on the
# pipeline module (it only needs these attributes).
class ProblemLike(Protocol):
    @property
    def offset(self) -> int: ...
    @property
    def message(self) -> str: ...


class ReadReportLike(Protocol):
    @property
    def problems(self) -> Sequence[ProblemLike]: ...


class StatsLike(Protocol):
    @property
    def packets(self) -> int: ...
    @property
    def problems(self) -> Sequence[str]: ...


class AnalysisLike(Protocol):
    @property
    def devices(self) -> Sequence[Device]: ...
    @property
    def endpoint_names(self) -> Sequence[EndpointName]: ...
    @property
    def flows(self) -> Sequence[Flow]: ...
    @property
    def series(self) -> Sequence[SeriesPoint]: ...
    @property
    def uploads(self) -> Sequence[Upload]: ...
    @property
    def stats(self) -> StatsLike: ...
    @property
    def read_report(self) -> ReadReportLike | None: ...


@dataclass(slots=True, frozen=True)
class CaptureSource:
    """Where an analysis came from: a file (identified by content hash) or a live interface."""

    path: str
    sha256: str | None = None
    size: int | None = None
    kind: str = "file"  # "file" or "live"

    @classmethod
    def from_file(cls, path: str | Path) -> CaptureSource:
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        return cls(path=str(Path(path).resolve()), sha256=digest.hexdigest(), size=size)

    @classmethod
    def live(cls, name: str) -> CaptureSource:
        return cls(path=name, kind="live")


@dataclass(slots=True)
class StoredUpload(Upload):
    """An upload as stored: with its row id (for verdicts), the verdict and its capture."""

    id: int = 0
    verdict: str | None = None
    capture_id: int | None = None


@dataclass(slots=True)
class StoredCapture:
    id: int
    kind: str
    path: str
    sha256: str | None
    size: int | None
    packets: int
    first_ts: float | None
    last_ts: float | None
    imported_at: float
    problems: list[str]


def _error_kind(exc: sqlite3.Error) -> str:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary == sqlite3.SQLITE_FULL or "database or disk is full" in text:
        return "disk full"
    if primary == sqlite3.SQLITE_READONLY or "readonly" in text:
        return "read-only file"
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in text:
        return "database locked by another process"
    if primary in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        return f"not a Spyglass database or damaged ({text})"
    if primary == sqlite3.SQLITE_CANTOPEN:
        return "cannot open the file"
    if primary == sqlite3.SQLITE_IOERR:
        return f"I/O error ({text})"
    return text


def _span(
    flows: Sequence[Flow], series: Sequence[SeriesPoint]
) -> tuple[float | None, float | None]:
    starts = [f.first_seen for f in flows if f.first_seen]
    ends = [f.last_seen for f in flows if f.last_seen]
    if series:
        seconds = [p.second for p in series]
        starts.append(float(min(seconds)))
        ends.append(float(max(seconds) + 1))
    return (min(starts) if starts else None), (max(ends) if ends else None)


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def _json_list(text: str | None) -> list[str]:
    if not text:
        return []
    value = json.loads(text)
    return [str(v) for v in value] if isinstance(value, list) else []


def _union(old: Iterable[str], new: Iterable[str]) -> list[str]:
    out = list(dict.fromkeys(old))
    out.extend(v for v in dict.fromkeys(new) if v not in out)
    return out


def _min(a: float | None, b: float | None) -> float | None:
    # 0.0 means "unknown" in the dataclasses.
    vals = [v for v in (a, b) if v]
    return min(vals) if vals else None


def _max(a: float | None, b: float | None) -> float | None:
    vals = [v for v in (a, b) if v]
    return max(vals) if vals else None


_UPLOAD_COLS = (
    'capture_id, device_mac, start, "end", bytes_up, peak_bps, destination, remote_ip, proto, '
    "port, assistant, confidence, evidence"
)
_UPLOAD_UPSERT = (
    f"INSERT INTO uploads ({_UPLOAD_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (device_mac, start, remote_ip, proto, port) DO UPDATE SET "
    'capture_id = excluded.capture_id, "end" = excluded."end", bytes_up = excluded.bytes_up, '
    "peak_bps = excluded.peak_bps, destination = excluded.destination, "
    "assistant = excluded.assistant, confidence = excluded.confidence, "
    "evidence = excluded.evidence RETURNING id"
)
# Adds, so a live second drained in two parts (or a file overlapping a live capture) sums.
_SERIES_UPSERT = (
    "INSERT INTO series (device_mac, second, remote_ip, capture_id, bytes_up, bytes_down, "
    "packets_up, packets_down) VALUES (?,?,?,?,?,?,?,?) "
    "ON CONFLICT (device_mac, second, remote_ip, capture_id) DO UPDATE SET "
    "bytes_up = bytes_up + excluded.bytes_up, bytes_down = bytes_down + excluded.bytes_down, "
    "packets_up = packets_up + excluded.packets_up, "
    "packets_down = packets_down + excluded.packets_down"
)
# Flows from the pipeline are running totals: the latest replaces.
_FLOW_UPSERT = (
    "INSERT INTO flows (capture_id, device_mac, remote_ip, proto, remote_port, remote_name, "
    "packets_up, bytes_up, packets_down, bytes_down, first_seen, last_seen) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (capture_id, device_mac, remote_ip, proto, remote_port) DO UPDATE SET "
    "remote_name = COALESCE(excluded.remote_name, remote_name), "
    "packets_up = excluded.packets_up, bytes_up = excluded.bytes_up, "
    "packets_down = excluded.packets_down, bytes_down = excluded.bytes_down, "
    "first_seen = MIN(first_seen, excluded.first_seen), "
    "last_seen = MAX(last_seen, excluded.last_seen)"
)
_NAME_UPSERT = (
    "INSERT INTO endpoint_names (device_mac, ip, name, source, first_seen, last_seen) "
    "VALUES (?,?,?,?,?,?) ON CONFLICT (device_mac, ip, name, source) DO UPDATE SET "
    "first_seen = MIN(first_seen, excluded.first_seen), "
    "last_seen = MAX(last_seen, excluded.last_seen)"
)
_IP_UPSERT = (
    "INSERT INTO device_ips (device_mac, ip, first_seen, last_seen) VALUES (?,?,?,?) "
    "ON CONFLICT (device_mac, ip) DO UPDATE SET "
    "first_seen = MIN(first_seen, excluded.first_seen), "
    "last_seen = MAX(last_seen, excluded.last_seen)"
)


class Store:
    """The database. Open with :meth:`open`; one writer at a time (the agent, or the CLI)."""

    def __init__(self, db: Database, path: Path | None) -> None:
        self.db = db
        self.path = path
        self.schema_version = 0

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
        try:
            conn = sqlite3.connect(where, timeout=timeout, check_same_thread=not any_thread)
        except sqlite3.Error as exc:
            msg = f"store: {_error_kind(exc)} opening {where}; nothing was changed"
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

    def _where(self) -> str:
        return str(self.path) if self.path is not None else ":memory:"

    @contextmanager
    def _guard(self, doing: str, kept: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            kind = _error_kind(exc)
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

    # -- writing -----------------------------------------------------------------------------

    def record_analysis(self, source: CaptureSource, result: AnalysisLike) -> int:
        """Store one analysed capture, replacing what an earlier import of it stored.

        Uploads keep their id and verdict when a re-import finds them again. Returns the
        capture id.
        """
        problems = list(result.stats.problems)
        if result.read_report is not None:
            problems.extend(f"byte {p.offset}: {p.message}" for p in result.read_report.problems)
        first_ts, last_ts = _span(result.flows, result.series)
        with self._guard("writing", KEPT_CAPTURE), self.db.atomic():
            cid, old_span = self._capture_row(
                source, result.stats.packets, first_ts, last_ts, problems
            )
            if source.kind == "file":
                self._forget_rows(cid, old_span)
            self._write(
                cid,
                devices=result.devices,
                names=result.endpoint_names,
                flows=result.flows,
                series=result.series,
                uploads=result.uploads,
            )
            self._replace_uploads(cid, result.uploads)
        return cid

    def live_capture(self, name: str = "live") -> int:
        """The capture row that live traffic from ``name`` (an interface) is stored under."""
        with self._guard("writing", KEPT_NOTHING_CHANGED), self.db.atomic():
            return self._capture_row(CaptureSource.live(name), 0, None, None, [])[0]

    def write_live(
        self,
        capture_id: int,
        *,
        devices: Sequence[Device] = (),
        names: Sequence[EndpointName] = (),
        flows: Sequence[Flow] = (),
        series: Sequence[SeriesPoint] = (),
        uploads: Sequence[Upload] = (),
    ) -> list[int]:
        """Merge what the pipeline produced since the last call; returns the new upload ids."""
        with self._guard("writing", KEPT_BATCH), self.db.atomic():
            self._write(
                capture_id, devices=devices, names=names, flows=flows, series=series,
                uploads=uploads,
            )
            ids = [self._upsert_upload(capture_id, u) for u in uploads]
            if series:
                self._conn.execute(
                    "UPDATE captures SET first_ts = MIN(COALESCE(first_ts, :a), :a), "
                    "last_ts = MAX(COALESCE(last_ts, :b), :b) WHERE id = :id",
                    {
                        "a": min(p.second for p in series),
                        "b": max(p.second for p in series) + 1,
                        "id": capture_id,
                    },
                )
        return ids

    def forget_capture(self, capture_id: int) -> None:
        """Delete a capture and everything recorded from it."""
        with self._guard("deleting from", KEPT_NOTHING_CHANGED), self.db.atomic():
            row = self._conn.execute(
                "SELECT first_ts, last_ts FROM captures WHERE id = ?", (capture_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"no capture with id {capture_id}")
            self._forget_rows(capture_id, (row[0], row[1]))
            self._conn.execute("DELETE FROM captures WHERE id = ?", (capture_id,))

    def set_verdict(self, upload_id: int, verdict: str | None) -> None:
        """Mark an upload "me" (that was me), "nobody" (nobody spoke) or None (undecided)."""
        if verdict is not None and verdict not in VERDICTS:
            choices = ", ".join(VERDICTS)
            raise ValueError(f"verdict must be one of {choices} or None, not {verdict!r}")
        with self._guard("writing", "the verdict was not saved"), self.db.atomic():
            cur = self._conn.execute(
                "UPDATE uploads SET verdict = ? WHERE id = ?", (verdict, upload_id)
            )
        if cur.rowcount == 0:
            raise KeyError(f"no upload with id {upload_id}")

    def prune(self, now: float | None = None) -> dict[str, int]:
        """Forget what is older than the retention; returns the rows deleted per table.

        Live data ages by its own timestamps: series, flows and uploads older than the cutoff
        go (uploads are small, so they stay as long as the series). An imported file ages by
        its import time, not by when it was recorded (a researcher's 2019 capture imported
        today stays): a file imported before the cutoff is forgotten whole.
        """
        now = time.time() if now is None else now
        cutoff = now - self.retention_days * 86400
        counts = {"series": 0, "flows": 0, "uploads": 0, "captures": 0}
        with self._guard("pruning", "nothing was deleted"), self.db.atomic():
            conn = self._conn
            for cid, first, last in conn.execute(
                "SELECT id, first_ts, last_ts FROM captures WHERE kind = 'file' "
                "AND imported_at < ?",
                (cutoff,),
            ).fetchall():
                counts["flows"] += conn.execute(
                    "SELECT COUNT(*) FROM flows WHERE capture_id = ?", (cid,)
                ).fetchone()[0]
                counts["series"] += self._forget_rows(cid, (first, last))
                counts["uploads"] += conn.execute(
                    "DELETE FROM uploads WHERE capture_id = ?", (cid,)
                ).rowcount
                conn.execute("DELETE FROM captures WHERE id = ?", (cid,))
                counts["captures"] += 1
            live = [r[0] for r in conn.execute("SELECT id FROM captures WHERE kind = 'live'")]
            marks = ",".join("?" * len(live))
            if live:
                # Per device, so the primary key (device_mac, second, ...) serves the delete;
                # every series row has a devices row (_write makes sure).
                for (mac,) in conn.execute("SELECT mac FROM devices").fetchall():
                    counts["series"] += conn.execute(
                        "DELETE FROM series WHERE device_mac = ? AND second < ? "
                        f"AND capture_id IN ({marks})",
                        (mac, int(cutoff), *live),
                    ).rowcount
                counts["flows"] += conn.execute(
                    f"DELETE FROM flows WHERE last_seen < ? AND capture_id IN ({marks})",
                    (cutoff, *live),
                ).rowcount
            # Uploads of live capture (or of none): by their own time.
            counts["uploads"] += conn.execute(
                'DELETE FROM uploads WHERE "end" < ? AND (capture_id IS NULL OR capture_id IN '
                "(SELECT id FROM captures WHERE kind = 'live'))",
                (cutoff,),
            ).rowcount
        return counts

    def _capture_row(
        self,
        source: CaptureSource,
        packets: int,
        first_ts: float | None,
        last_ts: float | None,
        problems: list[str],
    ) -> tuple[int, tuple[float | None, float | None]]:
        """Insert or update the captures row; returns its id and the span it had before."""
        conn = self._conn
        if source.kind == "live":
            row = conn.execute(
                "SELECT id, first_ts, last_ts FROM captures WHERE kind = 'live' AND path = ?",
                (source.path,),
            ).fetchone()
        elif source.sha256 is not None:
            row = conn.execute(
                "SELECT id, first_ts, last_ts FROM captures WHERE sha256 = ?", (source.sha256,)
            ).fetchone()
        else:
            row = None
        values = {
            "kind": source.kind,
            "path": source.path,
            "sha256": source.sha256,
            "size": source.size,
            "packets": packets,
            "first_ts": first_ts,
            "last_ts": last_ts,
            "imported_at": time.time(),
            "problems": json.dumps(problems),
        }
        if row is None:
            cur = conn.execute(
                "INSERT INTO captures (kind, path, sha256, size, packets, first_ts, last_ts, "
                "imported_at, problems) VALUES (:kind, :path, :sha256, :size, :packets, "
                ":first_ts, :last_ts, :imported_at, :problems)",
                values,
            )
            return int(cur.lastrowid or 0), (None, None)
        if source.kind == "file":
            conn.execute(
                "UPDATE captures SET path = :path, size = :size, packets = :packets, "
                "first_ts = :first_ts, last_ts = :last_ts, imported_at = :imported_at, "
                "problems = :problems WHERE id = :id",
                {**values, "id": row[0]},
            )
        return int(row[0]), (row[1], row[2])

    def _forget_rows(self, cid: int, span: tuple[float | None, float | None]) -> int:
        """Delete a capture's series and flows; returns how many series rows went."""
        conn = self._conn
        first, last = span
        deleted = 0
        if first is None or last is None:
            deleted = conn.execute("DELETE FROM series WHERE capture_id = ?", (cid,)).rowcount
        else:
            # Per device over the capture's span: a slice of the primary key, not a full scan.
            bounds = (math.floor(first) - 1, math.ceil(last) + 1, cid)
            for (mac,) in conn.execute(
                "SELECT DISTINCT device_mac FROM flows WHERE capture_id = ? "
                "UNION SELECT mac FROM devices",
                (cid,),
            ).fetchall():
                deleted += conn.execute(
                    "DELETE FROM series WHERE device_mac = ? AND second BETWEEN ? AND ? "
                    "AND capture_id = ?",
                    (mac, *bounds),
                ).rowcount
        conn.execute("DELETE FROM flows WHERE capture_id = ?", (cid,))
        return deleted

    def _write(
        self,
        cid: int,
        *,
        devices: Sequence[Device],
        names: Sequence[EndpointName],
        flows: Sequence[Flow],
        series: Sequence[SeriesPoint],
        uploads: Sequence[Upload],
    ) -> None:
        conn = self._conn
        self._merge_devices(devices)
        # Every MAC with traffic gets a devices row, even before it is identified.
        seen = {d.mac for d in devices}
        stubs = {f.device_mac for f in flows} | {p.device_mac for p in series}
        stubs |= {u.device_mac for u in uploads}
        stubs -= seen
        conn.executemany("INSERT OR IGNORE INTO devices (mac) VALUES (?)", [(m,) for m in stubs])
        conn.executemany(
            _NAME_UPSERT,
            [(n.device_mac, n.ip, n.name, n.source, n.first_seen, n.last_seen) for n in names],
        )
        conn.executemany(
            _FLOW_UPSERT,
            [
                (
                    cid, f.device_mac, f.remote_ip, f.proto, f.remote_port, f.remote_name,
                    f.packets_up, f.bytes_up, f.packets_down, f.bytes_down,
                    f.first_seen, f.last_seen,
                )
                for f in flows
            ],
        )
        conn.executemany(
            _SERIES_UPSERT,
            [
                (
                    p.device_mac, p.second, p.remote_ip, cid,
                    p.bytes_up, p.bytes_down, p.packets_up, p.packets_down,
                )
                for p in series
            ],
        )

    def _merge_devices(self, devices: Sequence[Device]) -> None:
        if not devices:
            return
        conn = self._conn
        old: dict[str, sqlite3.Row | tuple[Any, ...]] = {}
        macs = [d.mac for d in devices]
        for i in range(0, len(macs), 500):
            chunk = macs[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                "SELECT mac, vendor, kind, model, assistant, names, evidence, first_seen, "
                f"last_seen FROM devices WHERE mac IN ({marks})",
                chunk,
            ):
                old[row[0]] = row
        rows = []
        for d in devices:
            prev = old.get(d.mac)
            if prev is None:
                prev = (d.mac, None, None, None, None, "[]", "[]", None, None)
            rows.append(
                (
                    d.mac,
                    d.vendor or prev[1],
                    d.kind or prev[2],
                    d.model or prev[3],
                    d.assistant or prev[4],
                    json.dumps(_union(_json_list(prev[5]), d.names)),
                    json.dumps(_union(_json_list(prev[6]), d.evidence)),
                    _min(prev[7], d.first_seen),
                    _max(prev[8], d.last_seen),
                )
            )
        conn.executemany(
            "INSERT OR REPLACE INTO devices (mac, vendor, kind, model, assistant, names, "
            "evidence, first_seen, last_seen) VALUES (?,?,?,?,?,?,?,?,?)",
            rows,
        )
        conn.executemany(
            _IP_UPSERT,
            [
                (d.mac, ip, d.first_seen or None, d.last_seen or None)
                for d in devices
                for ip in d.ips
            ],
        )

    def _upsert_upload(self, cid: int | None, u: Upload) -> int:
        row = self._conn.execute(
            _UPLOAD_UPSERT,
            (
                cid, u.device_mac, u.start, u.end, u.bytes_up, u.peak_bps, u.destination,
                u.remote_ip, u.proto, u.port, u.assistant, u.confidence, json.dumps(u.evidence),
            ),
        ).fetchone()
        return int(row[0])

    def _replace_uploads(self, cid: int, uploads: Sequence[Upload]) -> None:
        keep = [self._upsert_upload(cid, u) for u in uploads]
        marks = ",".join("?" * len(keep))
        # Uploads this capture no longer yields (e.g. a better detector) go; the rest keep
        # their id and verdict.
        sql = "DELETE FROM uploads WHERE capture_id = ?"
        if keep:
            sql += f" AND id NOT IN ({marks})"
        self._conn.execute(sql, [cid, *keep])

    # -- reading -----------------------------------------------------------------------------

    def captures(self) -> list[StoredCapture]:
        with self._guard("reading", KEPT_NOTHING_CHANGED):
            rows = self._conn.execute(
                "SELECT id, kind, path, sha256, size, packets, first_ts, last_ts, imported_at, "
                "problems FROM captures ORDER BY id"
            ).fetchall()
        return [
            StoredCapture(
                id=r[0], kind=r[1], path=r[2], sha256=r[3], size=r[4], packets=r[5],
                first_ts=r[6], last_ts=r[7], imported_at=r[8], problems=_json_list(r[9]),
            )
            for r in rows
        ]

    def devices(self) -> list[Device]:
        with self._guard("reading", KEPT_NOTHING_CHANGED):
            conn = self._conn
            ips: dict[str, list[str]] = {}
            for mac, ip in conn.execute(
                "SELECT device_mac, ip FROM device_ips ORDER BY device_mac, last_seen DESC, ip"
            ):
                ips.setdefault(mac, []).append(ip)
            rows = conn.execute(
                "SELECT mac, vendor, kind, model, assistant, names, evidence, first_seen, "
                "last_seen FROM devices ORDER BY mac"
            ).fetchall()
        return [
            Device(
                mac=r[0],
                vendor=r[1],
                kind=r[2],
                model=r[3],
                assistant=r[4],
                names=_json_list(r[5]),
                ips=ips.get(r[0], []),
                evidence=_json_list(r[6]),
                first_seen=r[7] or 0.0,
                last_seen=r[8] or 0.0,
            )
            for r in rows
        ]

    def uploads(
        self,
        device: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[StoredUpload]:
        """Uploads that start in [since, until), oldest first; ``device`` is a MAC."""
        where, args = self._window("start", device, since, until)
        return self._select_uploads(where, args)

    def upload(self, upload_id: int) -> StoredUpload | None:
        found = self._select_uploads("WHERE id = ?", [upload_id])
        return found[0] if found else None

    def _select_uploads(self, where: str, args: list[Any]) -> list[StoredUpload]:
        with self._guard("reading", KEPT_NOTHING_CHANGED):
            rows = self._conn.execute(
                f'SELECT id, capture_id, device_mac, start, "end", bytes_up, peak_bps, '
                f"destination, remote_ip, proto, port, assistant, confidence, evidence, verdict "
                f"FROM uploads {where} ORDER BY start, id",
                args,
            ).fetchall()
        return [
            StoredUpload(
                device_mac=r[2],
                start=r[3],
                end=r[4],
                bytes_up=r[5],
                peak_bps=r[6],
                destination=r[7],
                remote_ip=r[8],
                proto=r[9],
                port=r[10],
                assistant=r[11],
                confidence=r[12],
                evidence=_json_list(r[13]),
                id=r[0],
                verdict=r[14],
                capture_id=r[1],
            )
            for r in rows
        ]

    def endpoint_names(self, device: str | None = None) -> list[EndpointName]:
        where, args = self._window("last_seen", device, None, None)
        with self._guard("reading", KEPT_NOTHING_CHANGED):
            rows = self._conn.execute(
                "SELECT device_mac, ip, name, source, first_seen, last_seen FROM endpoint_names "
                f"{where} ORDER BY device_mac, ip, name",
                args,
            ).fetchall()
        return [EndpointName(*r) for r in rows]

    def flows(
        self,
        device: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[Flow]:
        """Flows summed over captures, most upstream bytes first; names from DNS/SNI if missing."""
        clauses: list[str] = []
        args: list[Any] = []
        if device is not None:
            clauses.append("f.device_mac = ?")
            args.append(device)
        if since is not None:
            clauses.append("f.last_seen >= ?")
            args.append(since)
        if until is not None:
            clauses.append("f.first_seen < ?")
            args.append(until)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        sql = (
            "SELECT f.device_mac, f.remote_ip, f.proto, f.remote_port, "
            "SUM(f.packets_up), SUM(f.bytes_up), SUM(f.packets_down), SUM(f.bytes_down), "
            "MIN(f.first_seen), MAX(f.last_seen), COALESCE(MAX(f.remote_name), "
            "(SELECT e.name FROM endpoint_names e WHERE e.device_mac = f.device_mac "
            "AND e.ip = f.remote_ip ORDER BY e.source = 'sni' DESC, e.last_seen DESC LIMIT 1)) "
            f"FROM flows f {where} GROUP BY f.device_mac, f.remote_ip, f.proto, f.remote_port "
            "ORDER BY SUM(f.bytes_up) DESC, f.device_mac, f.remote_ip"
        )
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._guard("reading", KEPT_NOTHING_CHANGED):
            rows = self._conn.execute(sql, args).fetchall()
        return [
            Flow(
                device_mac=r[0], remote_ip=r[1], proto=r[2], remote_port=r[3],
                packets_up=r[4], bytes_up=r[5], packets_down=r[6], bytes_down=r[7],
                first_seen=r[8] or 0.0, last_seen=r[9] or 0.0, remote_name=r[10],
            )
            for r in rows
        ]

    def series(
        self,
        device: str | None,
        since: float | None = None,
        until: float | None = None,
        resolution_s: int = 1,
        remote_ip: str | None = None,
    ) -> list[SeriesPoint]:
        """Per-bucket sums of ``resolution_s`` seconds, oldest first.

        ``device`` None sums all devices and ``remote_ip`` None sums all remotes; the summed
        field then reads "*". Buckets start at multiples of ``resolution_s``.
        """
        if resolution_s < 1:
            raise ValueError(f"resolution must be at least 1 s, not {resolution_s}")
        where, args = self._window("second", device, since, until)
        if remote_ip is not None:
            where += (" AND " if where else "WHERE ") + "remote_ip = ?"
            args.append(remote_ip)
        res = int(resolution_s)
        with self._guard("reading", KEPT_NOTHING_CHANGED):
            rows = self._conn.execute(
                f"SELECT (second / {res}) * {res} AS t, SUM(bytes_up), SUM(bytes_down), "
                f"SUM(packets_up), SUM(packets_down) FROM series {where} GROUP BY t ORDER BY t",
                args,
            ).fetchall()
        mac = device if device is not None else "*"
        ip = remote_ip if remote_ip is not None else "*"
        return [SeriesPoint(mac, ip, r[0], r[1], r[2], r[3], r[4]) for r in rows]

    @staticmethod
    def _window(
        column: str, device: str | None, since: float | None, until: float | None
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if device is not None:
            clauses.append("device_mac = ?")
            args.append(device)
        if since is not None:
            clauses.append(f'"{column}" >= ?')
            args.append(since)
        if until is not None:
            clauses.append(f'"{column}" < ?')
            args.append(until)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", args
