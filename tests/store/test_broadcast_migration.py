"""Migration 0004 on a database created before it (broadcast_deliveries without handed_at)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from dripmail.store.db import open_store
from dripmail.store.schema import metadata


def test_0004_adds_handed_at_to_an_older_database(tmp_path: Path) -> None:
    open_store("sqlite:///dripmail.db", tmp_path).dispose()
    # Make it look like a database last upgraded to 0003.
    con = sqlite3.connect(tmp_path / "dripmail.db")
    con.execute("ALTER TABLE broadcast_deliveries DROP COLUMN handed_at")
    con.execute("UPDATE alembic_version SET version_num = '0003'")
    con.commit()
    con.close()
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("broadcast_deliveries")}
        assert "handed_at" in columns
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
