"""Migration 0011 on a database created before it: broadcasts gain `stopped_reason` and
`stopped_at` (why and when their last send stopped), and the schema matches `schema.py`."""

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


def test_0011_adds_the_stop_columns_to_an_older_database(tmp_path: Path) -> None:
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    assert {"stopped_reason", "stopped_at"} <= _columns(engine)  # a new database has them
    engine.dispose()
    # Make it look like a database last upgraded to 0010, without the columns.
    con = sqlite3.connect(tmp_path / "dripmail.db")
    con.execute("ALTER TABLE broadcasts DROP COLUMN stopped_reason")
    con.execute("ALTER TABLE broadcasts DROP COLUMN stopped_at")
    con.execute("UPDATE alembic_version SET version_num = '0010'")
    con.commit()
    con.close()
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    assert {"stopped_reason", "stopped_at"} <= _columns(engine)
    engine.dispose()
