"""A new, empty SQLite store for a test, without running every migration again for each test.

The shipped migrations build one database per test process (the first time one is asked for);
each new store is a copy of it with its own random installation id, as migration 0008 gives
every database. That is the database `open_store` would create, for 2 ms instead of 60 ms of
CPU (hundreds of tests start from an empty store). The migrations themselves, a first open
and several processes creating one database at once are tested in tests/store/.
"""

from __future__ import annotations

import atexit
import secrets
import shutil
import sqlite3
import tempfile
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from dripmail.store.db import open_store, resolve_url

_template: Path | None = None


def _migrated() -> Path:
    """The database the migrations made for this process (made on first use)."""
    global _template
    if _template is None:
        folder = Path(tempfile.mkdtemp(prefix="dripmail-migrated-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        path = folder / "dripmail.db"
        open_store(f"sqlite:///{path}", folder).dispose()
        # The last connection closed checkpoints the WAL into the file and removes it.
        assert not Path(f"{path}-wal").exists(), "the migrated database is not in one file"
        _template = path
    return _template


def new_store(url: str, root: Path) -> Engine:
    """`open_store(url, root)` for a database that does not exist yet: for SQLite, a copy of
    the migrated database is put at its path first (with a new installation id); any other
    URL (PostgreSQL) is opened as it is."""
    database = make_url(resolve_url(url, root)).database
    if make_url(url).get_backend_name() == "sqlite" and database not in (None, "", ":memory:"):
        path = Path(database)
        assert not path.exists(), f"{path} exists: new_store is for a new database"
        shutil.copyfile(_migrated(), path)
        with sqlite3.connect(path) as conn:
            conn.execute(
                "UPDATE installation SET id = ? WHERE name = 'this'", (secrets.token_hex(8),)
            )
        conn.close()
    return open_store(url, root)
