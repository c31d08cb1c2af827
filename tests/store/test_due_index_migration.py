"""Migration 0010 on a database created before it: the due index gains the id."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from dripmail.store.db import open_store
from dripmail.store.schema import metadata


def _due_index(engine) -> list[str]:
    with engine.connect() as conn:
        found = {i["name"]: i["column_names"] for i in inspect(conn).get_indexes("deliveries")}
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    return list(found["ix_deliveries_state_due"])


def test_0010_rebuilds_the_due_index_of_an_older_database(tmp_path: Path) -> None:
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    assert _due_index(engine) == ["state", "due_at", "id"]  # a new database has it at once
    engine.dispose()
    # Make it look like a database last upgraded to 0009, with the index as it was then.
    con = sqlite3.connect(tmp_path / "dripmail.db")
    con.execute("DROP INDEX ix_deliveries_state_due")
    con.execute("CREATE INDEX ix_deliveries_state_due ON deliveries (state, due_at)")
    con.execute("UPDATE alembic_version SET version_num = '0009'")
    con.commit()
    con.close()
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    assert _due_index(engine) == ["state", "due_at", "id"]
    engine.dispose()
