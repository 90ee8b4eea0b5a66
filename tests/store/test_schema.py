"""The schema comes out of the migrations exactly as sqlite-utils would have made it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlite_utils import Database
from sqlite_utils.db import _iter_complete_sql_statements

from spyglass.store import migrations
from spyglass.store.db import Store


def schema(conn: sqlite3.Connection) -> list[tuple[str, str, str | None]]:
    return conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name != '_sqlite_migrations' "
        "AND name NOT LIKE 'idx__sqlite_migrations%' ORDER BY rowid"
    ).fetchall()


def test_initial_schema_is_what_executescript_made() -> None:
    # m001 once ran db.executescript(_SCHEMA_1) inside its transaction; it now splits the
    # script itself. Same statements, same schema, same initial rows.
    old = Database(sqlite3.connect(":memory:"), execute_plugins=False)
    with old.atomic():
        old.executescript(migrations._SCHEMA_1)
    new = Database(sqlite3.connect(":memory:"), execute_plugins=False)
    with new.atomic():
        migrations.m001_initial(new)
    assert schema(new.conn) == schema(old.conn)
    settings_rows = "SELECT key, value FROM settings"
    assert new.execute(settings_rows).fetchall() == old.execute(settings_rows).fetchall()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="a ;'\"-\n/*", max_size=40))
def test_statements_split_like_sqlite_utils(script: str) -> None:
    assert list(migrations._statements(script)) == list(_iter_complete_sql_statements(script))


def test_memory_and_file_stores_have_one_schema(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as f, Store.memory() as m:
        assert schema(f.db.conn) == schema(m.db.conn)
