"""Series staged on disk during an analysis (store.staging) are stored as if handed over whole."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from spyglass.store.db import CaptureSource, Store
from spyglass.store.records import StoreError
from tests.store.helpers import Result, result
from tests.store.test_bulk import make_flows, make_series, rows_of

SRC = CaptureSource(path="/tmp/s.pcap", fingerprint="s" * 64, size=1)


def no_series() -> Result:
    r = result()
    r.series = []
    return r


def test_staged_series_are_stored_as_whole_ones(tmp_path: Path) -> None:
    rnd = random.Random(3)
    points, flows = make_series(rnd, 700), make_flows(rnd, 10)
    whole = result()
    whole.series, whole.flows = points, flows
    staged = no_series()
    staged.flows = flows
    with Store.open(tmp_path / "whole.db") as a, Store.open(tmp_path / "staged.db") as b:
        a.record_analysis(SRC, whole)
        for k in range(0, 700, 130):  # in parts, keys repeating across them
            b.stage_series(points[k : k + 130])
        assert [p.name for p in tmp_path.glob(".spyglass-stage-*.db")]  # beside the store
        b.record_analysis(SRC, staged)
        for table in ("series", "captures", "flows"):
            assert rows_of(table, b._conn) == rows_of(table, a._conn), table
        # Moved, not copied: the next capture starts with an empty stage.
        b.record_analysis(CaptureSource(path="/o", fingerprint="o" * 64), no_series())
        assert rows_of("series", b._conn) == rows_of("series", a._conn)
    assert not list(tmp_path.glob(".spyglass-stage-*"))  # deleted on close


def test_dropped_stage_is_not_stored(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as s:
        s.stage_series(make_series(random.Random(4), 50))
        s.drop_staged()
        s.record_analysis(SRC, no_series())
        assert rows_of("series", s._conn) == []


def test_a_full_disk_while_staging_is_one_clear_error(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as s:
        s.stage_series(make_series(random.Random(5), 10))
        assert s._stage is not None
        s._conn.execute("PRAGMA stage.max_page_count = 1")  # the stage's file can grow no more
        with pytest.raises(StoreError, match=r"full .*staging series for .*s\.db"):
            s.stage_series(make_series(random.Random(6), 2000))
        s.drop_staged()
        s.record_analysis(SRC, no_series())
        assert s._conn.execute("SELECT COUNT(*) FROM series").fetchone() == (0,)


def test_the_stage_takes_no_lock_on_the_store(tmp_path: Path) -> None:
    """Staging a long capture must not hold up another writer (a running agent)."""
    with Store.open(tmp_path / "s.db") as s:
        s.stage_series(make_series(random.Random(7), 300))
        other = sqlite3.connect(tmp_path / "s.db", timeout=0)
        other.execute("INSERT INTO settings (key, value) VALUES ('x', '1')")
        other.commit()
        other.close()


def test_a_killed_analysis_leaves_no_stage_behind(tmp_path: Path) -> None:
    """A stage file whose process is gone (killed mid-analysis) is removed by the next store
    opened beside it; a running process's stays."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".spyglass-stage-{dead.pid}-abc.db"
    live = tmp_path / f".spyglass-stage-{os.getpid()}-def.db"
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    with Store.open(tmp_path / "s.db"):
        pass
    assert not stale.exists() and live.exists()
