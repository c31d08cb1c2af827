import os
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from dripmail.errors import StoreError
from dripmail.store.db import open_store
from dripmail.store.schema import metadata


def test_sqlite_created_in_project_root_with_wal(tmp_path: Path) -> None:
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    assert (tmp_path / "dripmail.db").exists()
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert set(metadata.tables) <= set(inspect(conn).get_table_names())
        # The migrated schema matches the tables the code uses.
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    open_store("sqlite:///dripmail.db", tmp_path)  # second open: already current


def test_unreachable_database_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot reach the database") as err:
        open_store("postgresql+psycopg://u:secret@127.0.0.1:1/x", tmp_path)
    assert "secret" not in str(err.value)  # never print a password
    with pytest.raises(StoreError, match="not a database URL"):
        open_store("nonsense", tmp_path)


@pytest.mark.postgres
def test_postgres_migrates() -> None:
    url = os.environ.get("DRIPMAIL_TEST_DATABASE_URL")
    if not url:
        pytest.skip("DRIPMAIL_TEST_DATABASE_URL is not set (CI sets it; see README)")
    engine = open_store(url, Path.cwd())
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
