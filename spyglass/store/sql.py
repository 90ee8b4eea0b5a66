"""The upsert statements the store writes with (the schema itself is in migrations.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import batched, chain
from typing import Any

# Rows per multi-row statement. 33,340 names of a DNS-heavy capture: 584M instructions one row
# per step, 439M 100 rows per step; its 10,425 series rows 173M -> 125M (callgrind, the
# tuples made as they are bound; 32 to 300 rows per step do about as well). With the statement
# journals in memory (writes._bulk), record_analysis of that capture: 771M -> 641M.
CHUNK_ROWS = 100


@dataclass(frozen=True)
class Upsert:
    """An ``INSERT ... VALUES ... [ON CONFLICT ...]`` statement for one row or for many.

    A statement of n rows (``rows(n)``) is stepped once for all of them, where executemany of
    the one-row statement (``one``) binds, steps (releasing the GIL and taking SQLite's mutex)
    and resets per row; SQLite still inserts the rows one after another, so a key repeated
    within the statement is updated as it would be by the next statement.
    """

    head: str  # up to and including VALUES
    width: int  # values per row
    tail: str = ""  # ON CONFLICT ..., RETURNING ...
    one: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "one", self.rows(1))

    def rows(self, n: int) -> str:
        row = "(" + ",".join("?" * self.width) + ")"
        return f"{self.head} {','.join([row] * n)} {self.tail}".rstrip()


def upsert_all[T](
    conn: sqlite3.Connection,
    upsert: Upsert,
    items: Sequence[T],
    rows: Callable[[Sequence[T]], Iterable[tuple[Any, ...]]],
) -> None:
    """Upsert ``rows(items)``: CHUNK_ROWS rows per statement, the rest one at a time.

    ``rows`` gives a generator, so each row tuple is gone once bound (no list of them to
    build, or for the garbage collector to walk).
    """
    whole = len(items) - len(items) % CHUNK_ROWS
    if whole:
        values = chain.from_iterable(rows(items[:whole]))
        conn.executemany(upsert.rows(CHUNK_ROWS), batched(values, CHUNK_ROWS * upsert.width))
    if whole < len(items):
        conn.executemany(upsert.one, rows(items[whole:]))


UPLOAD_COLS = (
    'capture_id, device_mac, start, "end", bytes_up, peak_bps, destination, remote_ip, proto, '
    "port, assistant, confidence, evidence"
)
UPLOADS = Upsert(
    f"INSERT INTO uploads ({UPLOAD_COLS}) VALUES",
    13,
    "ON CONFLICT (device_mac, start, remote_ip, proto, port) DO UPDATE SET "
    'capture_id = excluded.capture_id, "end" = excluded."end", bytes_up = excluded.bytes_up, '
    "peak_bps = excluded.peak_bps, destination = excluded.destination, "
    "assistant = excluded.assistant, confidence = excluded.confidence, "
    "evidence = excluded.evidence RETURNING id",
)
# Adds, so a live second drained in two parts (or a file overlapping a live capture) sums.
SERIES_SUMS = (
    "bytes_up = bytes_up + excluded.bytes_up, bytes_down = bytes_down + excluded.bytes_down, "
    "packets_up = packets_up + excluded.packets_up, "
    "packets_down = packets_down + excluded.packets_down"
)
SERIES = Upsert(
    "INSERT INTO series (device_mac, second, remote_ip, capture_id, bytes_up, bytes_down, "
    "packets_up, packets_down) VALUES",
    8,
    "ON CONFLICT (device_mac, second, remote_ip, capture_id) DO UPDATE SET " + SERIES_SUMS,
)
# Flows from the pipeline are running totals: the latest replaces.
FLOWS = Upsert(
    "INSERT INTO flows (capture_id, device_mac, remote_ip, proto, remote_port, remote_name, "
    "packets_up, bytes_up, packets_down, bytes_down, first_seen, last_seen) VALUES",
    12,
    "ON CONFLICT (capture_id, device_mac, remote_ip, proto, remote_port) DO UPDATE SET "
    "remote_name = COALESCE(excluded.remote_name, remote_name), "
    "packets_up = excluded.packets_up, bytes_up = excluded.bytes_up, "
    "packets_down = excluded.packets_down, bytes_down = excluded.bytes_down, "
    "first_seen = MIN(first_seen, excluded.first_seen), "
    "last_seen = MAX(last_seen, excluded.last_seen)",
)
NAMES = Upsert(
    "INSERT INTO endpoint_names (device_mac, ip, name, source, first_seen, last_seen) VALUES",
    6,
    "ON CONFLICT (device_mac, ip, name, source) DO UPDATE SET "
    "first_seen = MIN(first_seen, excluded.first_seen), "
    "last_seen = MAX(last_seen, excluded.last_seen)",
)
IPS = Upsert(
    "INSERT INTO device_ips (device_mac, ip, first_seen, last_seen) VALUES",
    4,
    "ON CONFLICT (device_mac, ip) DO UPDATE SET "
    "first_seen = MIN(first_seen, excluded.first_seen), "
    "last_seen = MAX(last_seen, excluded.last_seen)",
)

