"""An error nobody planned for still prints one line (`dripmail.cli._unexpected`): a real
database error from SQLAlchemy without the SQL and the batch's parameters it appends, and a
database another process kept locked in plain words."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, OperationalError

from dripmail.cli import _unexpected


def test_a_database_locked_by_another_process_reads_as_one_plain_line(tmp_path: Path) -> None:
    path = tmp_path / "dripmail.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.05})
    with pytest.raises(OperationalError) as caught, engine.begin() as conn:
        conn.execute(text("INSERT INTO t (id) VALUES (:i)"), [{"i": i} for i in range(1000)])
    holder.execute("ROLLBACK")
    holder.close()

    line = _unexpected(caught.value)
    assert "\n" not in line and len(line) < 300
    assert line.startswith("the database stayed locked by another process")
    assert "run the same command again" in line


def test_any_other_database_error_is_its_own_first_line_without_the_sql(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
    with pytest.raises(IntegrityError) as caught, engine.begin() as conn:
        conn.execute(text("INSERT INTO t (id) VALUES (:i)"), [{"i": 1}, {"i": 1}])

    line = _unexpected(caught.value)
    assert line == (
        "unexpected IntegrityError: UNIQUE constraint failed: t.id (re-run with --debug)"
    )
    assert "[SQL:" not in str(line) and "parameters" not in line
