"""Schema migrations, applied in order on open; sqlite-utils records which ran.

Add a migration by appending a function decorated with ``@MIGRATIONS()``; never edit one that has
shipped. ``PRAGMA user_version`` mirrors the number applied so other tools (and a newer Spyglass
opened by an older one) can tell the schema version without sqlite-utils.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from sqlite_utils import Database, Migrations

MIGRATIONS = Migrations("spyglass")

# Times are UNIX epoch seconds (REAL), lists are JSON text. Live traffic goes under a captures
# row of kind 'live' (one per interface) so every series/flow row has a capture and upserts
# dedupe; uploads may have capture_id NULL (written by something that has no capture).
# No foreign keys on device_mac: the agent writes live traffic before it has identified a
# device, and devices merge across captures.
_SCHEMA_1 = """
CREATE TABLE captures (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL DEFAULT 'file' CHECK (kind IN ('file', 'live')),
    path TEXT NOT NULL,
    sha256 TEXT UNIQUE,
    size INTEGER,
    packets INTEGER NOT NULL DEFAULT 0,
    first_ts REAL,
    last_ts REAL,
    imported_at REAL NOT NULL,
    problems TEXT NOT NULL DEFAULT '[]'
);
CREATE UNIQUE INDEX captures_live_path ON captures(path) WHERE kind = 'live';

CREATE TABLE devices (
    mac TEXT PRIMARY KEY,
    vendor TEXT,
    kind TEXT,
    model TEXT,
    assistant TEXT,
    names TEXT NOT NULL DEFAULT '[]',
    evidence TEXT NOT NULL DEFAULT '[]',
    first_seen REAL,
    last_seen REAL
);

CREATE TABLE device_ips (
    device_mac TEXT NOT NULL,
    ip TEXT NOT NULL,
    first_seen REAL,
    last_seen REAL,
    PRIMARY KEY (device_mac, ip)
) WITHOUT ROWID;

CREATE TABLE endpoint_names (
    device_mac TEXT NOT NULL,
    ip TEXT NOT NULL,
    name TEXT NOT NULL,
    source TEXT NOT NULL,
    first_seen REAL,
    last_seen REAL,
    PRIMARY KEY (device_mac, ip, name, source)
) WITHOUT ROWID;
CREATE INDEX endpoint_names_ip ON endpoint_names(ip);

CREATE TABLE flows (
    id INTEGER PRIMARY KEY,
    capture_id INTEGER NOT NULL REFERENCES captures(id) ON DELETE CASCADE,
    device_mac TEXT NOT NULL,
    remote_ip TEXT NOT NULL,
    proto TEXT NOT NULL,
    remote_port INTEGER NOT NULL,
    remote_name TEXT,
    packets_up INTEGER NOT NULL DEFAULT 0,
    bytes_up INTEGER NOT NULL DEFAULT 0,
    packets_down INTEGER NOT NULL DEFAULT 0,
    bytes_down INTEGER NOT NULL DEFAULT 0,
    first_seen REAL,
    last_seen REAL,
    UNIQUE (capture_id, device_mac, remote_ip, proto, remote_port)
);
CREATE INDEX flows_device ON flows(device_mac, last_seen);

-- Keyed device-first so per-device time ranges (the timeline, prune, re-import) read a slice of
-- the table itself: a secondary index would double the cost of bulk imports. No foreign key on
-- capture_id either (a lookup per row on the hottest insert); Store deletes series itself.
CREATE TABLE series (
    device_mac TEXT NOT NULL,
    second INTEGER NOT NULL,
    remote_ip TEXT NOT NULL,
    capture_id INTEGER NOT NULL,
    bytes_up INTEGER NOT NULL DEFAULT 0,
    bytes_down INTEGER NOT NULL DEFAULT 0,
    packets_up INTEGER NOT NULL DEFAULT 0,
    packets_down INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device_mac, second, remote_ip, capture_id)
) WITHOUT ROWID;

CREATE TABLE uploads (
    id INTEGER PRIMARY KEY,
    capture_id INTEGER REFERENCES captures(id) ON DELETE CASCADE,
    device_mac TEXT NOT NULL,
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    bytes_up INTEGER NOT NULL,
    peak_bps INTEGER NOT NULL,
    destination TEXT NOT NULL,
    remote_ip TEXT NOT NULL,
    proto TEXT NOT NULL,
    port INTEGER NOT NULL,
    assistant TEXT,
    confidence REAL NOT NULL,
    evidence TEXT NOT NULL DEFAULT '[]',
    verdict TEXT CHECK (verdict IS NULL OR verdict IN ('me', 'nobody')),
    UNIQUE (device_mac, start, remote_ip, proto, port)
);
CREATE INDEX uploads_device_start ON uploads(device_mac, start);
CREATE INDEX uploads_start ON uploads(start);
CREATE INDEX uploads_capture ON uploads(capture_id);

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO settings (key, value) VALUES ('retention_days', '365');
"""


def _statements(script: str) -> Iterator[str]:
    """The script's statements, as sqlite-utils' executescript splits them inside a transaction.

    It joins and tests the text so far at every character (6,600 joins for _SCHEMA_1: 40 % of
    opening a new store, and the in-memory summary store pays it again). A statement can only
    end at a ';', so testing there yields the same statements.
    """
    pending = ""
    *pieces, last = script.split(";")
    for piece in pieces:
        pending += piece + ";"
        statement = pending.strip()
        if statement and sqlite3.complete_statement(statement):
            yield statement
            pending = ""
    tail = (pending + last).strip()
    if tail:
        yield tail


@MIGRATIONS()
def m001_initial(db: Database) -> None:
    # Runs inside the migration's transaction. The statements (and so the schema) are those
    # db.executescript(_SCHEMA_1) ran; only the splitting is cheaper (tests/store check both).
    for statement in _statements(_SCHEMA_1):
        db.execute(statement)


@MIGRATIONS()
def m002_capture_fingerprint(db: Database) -> None:
    # A file's identity became a sampled fingerprint (spyglass.core.fingerprint) instead of a
    # full sha256. Old values stay: they can never equal a new one ("fp1:" prefix), so a file
    # imported before this version and imported again is stored again, once.
    db.execute("ALTER TABLE captures RENAME COLUMN sha256 TO fingerprint")


@MIGRATIONS()
def m003_drop_endpoint_names_ip(db: Database) -> None:
    # No query looks names up by address alone (the primary key serves device + address), and
    # the index cost half the time of storing a DNS-heavy capture's names.
    db.execute("DROP INDEX IF EXISTS endpoint_names_ip")


def known() -> list[str]:
    """Names of every migration this version of Spyglass knows, in order."""
    return [m.name for m in MIGRATIONS._migrations]


def apply(db: Database) -> int:
    """Bring ``db`` up to date; returns the schema version (number of migrations applied).

    Raises ``ValueError`` when the file has migrations this version does not know (written by a
    newer Spyglass): writing to it could corrupt what that version expects.
    """
    names = known()
    applied = [m.name for m in MIGRATIONS.applied(db)]
    unknown = [n for n in applied if n not in names]
    if unknown:
        raise ValueError(f"written by a newer Spyglass (unknown migrations: {', '.join(unknown)})")
    if len(applied) < len(names):
        MIGRATIONS.apply(db)
    version = len(names)
    if db.execute("PRAGMA user_version").fetchone()[0] != version:
        # PRAGMA cannot take a bound parameter; version is our own integer.
        db.execute(f"PRAGMA user_version = {version}")
    return version
