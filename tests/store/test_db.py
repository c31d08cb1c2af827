import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from dripmail.errors import StoreError
from dripmail.store.db import MIGRATIONS, open_store, shipped_head, small_page_cache
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


def test_every_sqlite_connection_gets_the_cache_and_checkpoint_sizes(tmp_path: Path) -> None:
    # The engine's pass at 1M subscribers depends on these (see SQLITE_CACHE_PRAGMAS): a
    # connection opened by the pool later must have them too, not only the first one.
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    with engine.connect() as first, engine.connect() as second:
        for conn in (first, second):
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar_one() == -65536
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 16384
            assert conn.exec_driver_sql("PRAGMA journal_size_limit").scalar_one() == 67108864
            assert conn.exec_driver_sql("PRAGMA secure_delete").scalar_one() == 1
    engine.dispose()


def test_the_head_read_from_the_files_is_alembics_and_a_current_store_opens_without_it(
    tmp_path: Path,
) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert shipped_head() == ScriptDirectory.from_config(cfg).get_current_head()
    open_store("sqlite:///dripmail.db", tmp_path)
    # A second process finds the schema current without loading Alembic (its start-up cost).
    probe = (
        "import sys; from pathlib import Path; from dripmail.store.db import open_store; "
        f"open_store('sqlite:///dripmail.db', Path({str(tmp_path)!r})); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_fast_check_finds_an_older_or_missing_version_stale(tmp_path: Path) -> None:
    from dripmail.store.db import _is_current

    engine = open_store("sqlite:///dripmail.db", tmp_path)
    assert _is_current(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    assert not _is_current(engine)  # open_store would run Alembic's upgrade
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    assert not _is_current(engine)


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


def test_an_older_sqlite_database_gets_ids_that_never_repeat(tmp_path: Path) -> None:
    """Migration 0006 rebuilds `subscribers` with AUTOINCREMENT and keeps every child row."""
    from datetime import UTC, datetime

    from alembic.operations import Operations

    from dripmail import subscribers as subs
    from tests.course_rules import Rules

    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    engine = open_store("sqlite:///old.db", tmp_path)
    for name in ("a", "b", "c"):
        sid, _ = subs.add_subscriber(
            engine, f"{name}@example.org", timezone="UTC", status="pending",
            consent_source="test", now=now,
        )  # fmt: skip
        subs.activate(engine, sid, Rules(), now)
    subs.record_event(engine, "test", "e1", "delivered", now, now, subscriber_id=1)
    # Make it the database of a release before 0006: no AUTOINCREMENT, stamped 0005.
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.commit()
        with conn.begin():
            ops = Operations(MigrationContext.configure(conn))
            with ops.batch_alter_table(
                "subscribers", recreate="always", table_kwargs={"sqlite_autoincrement": False}
            ):
                pass
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0005'")
        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        conn.commit()
        ddl = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'subscribers'")
        assert "AUTOINCREMENT" not in ddl.scalar_one()
    engine.dispose()

    upgraded = open_store("sqlite:///old.db", tmp_path)
    with upgraded.connect() as conn:
        ddl = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'subscribers'")
        assert "AUTOINCREMENT" in ddl.scalar_one()
        assert conn.exec_driver_sql("SELECT count(*) FROM deliveries").scalar_one() == 21
        assert conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one() == 1
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    subs.forget(upgraded, 3, now)
    sid, _ = subs.add_subscriber(
        upgraded, "d@example.org", timezone="UTC", status="pending", consent_source="t", now=now
    )
    assert sid == 4  # not 3 again


@pytest.mark.parametrize(
    "url",
    [
        "postgres://studio:s3cret-pw@db.example.com/dripmail",
        "postgresql+nodriver://studio:s3cret-pw@db.example.com/dripmail",
        "postgresql+psycopg://studio:s3cret-pw@127.0.0.1:1/dripmail",
        "not a url studio:s3cret-pw@db",
    ],
)
def test_a_database_error_never_prints_the_password(tmp_path, url: str) -> None:
    with pytest.raises(StoreError) as caught:
        open_store(url, tmp_path)
    assert "s3cret-pw" not in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def test_a_small_page_cache_holds_only_while_asked_for(tmp_path: Path) -> None:
    # A broadcast walks the list in id order (store.db.small_page_cache): its connections use
    # SQLite's default cache, and give the large one back for whatever runs after it.
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    with small_page_cache(engine), engine.connect() as first, engine.connect() as second:
        for conn in (first, second):
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar_one() == -2000
    with engine.connect() as first, engine.connect() as second, engine.connect() as third:
        for conn in (first, second, third):
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar_one() == -65536
    engine.dispose()
