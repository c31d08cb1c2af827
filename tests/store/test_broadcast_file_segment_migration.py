"""Migration 0012 on a database created before it: broadcasts gain `file_segment` (the
newsletter file's own segment when scheduled), and the schema matches `schema.py`."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from dripmail.store.db import open_store
from dripmail.store.schema import metadata


def _columns(engine) -> set[str]:
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        return {c["name"] for c in inspect(conn).get_columns("broadcasts")}


def test_0012_adds_the_file_segment_to_an_older_database(tmp_path: Path) -> None:
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    assert "file_segment" in _columns(engine)  # a new database has it
    engine.dispose()
    # Make it look like a database last upgraded to 0011, without the column.
    con = sqlite3.connect(tmp_path / "dripmail.db")
    con.execute("ALTER TABLE broadcasts DROP COLUMN file_segment")
    con.execute("UPDATE alembic_version SET version_num = '0011'")
    con.commit()
    con.close()
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    assert "file_segment" in _columns(engine)
    engine.dispose()
