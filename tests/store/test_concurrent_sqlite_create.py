"""Several processes opening one brand-new SQLite project database at once: one creates the
schema, the others wait for its lock file and find it current; none fails."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from dripmail.store.db import open_store, shipped_head
from dripmail.store.schema import metadata
from tests.store.start_together import run_together

REPO = Path(__file__).resolve().parents[2]
WORKERS = 6
# Each worker process runs PRELUDE (they are forked after it), waits at a barrier file, then
# opens the store and says which migrations it ran (Alembic logs each one it applies on the
# "alembic.runtime.migration" logger).
PRELUDE = """
import sys
import logging
from pathlib import Path
ran = []
class Seen(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("Running upgrade"):
            ran.append(record.getMessage())
log = logging.getLogger("alembic.runtime.migration")
log.setLevel(logging.INFO)
log.addHandler(Seen())
from dripmail.store.db import open_store, shipped_head
# Everything a first open loads is loaded before the barrier, so the workers reach the
# version check within a few milliseconds of each other and the creations really overlap.
import alembic.command, alembic.config, alembic.script  # noqa: E401
shipped_head()
"""
BODY = """
open_store(sys.argv[1], Path.cwd())
print(len(ran))
"""


def test_processes_creating_a_new_sqlite_database_at_once_all_succeed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dripmail.db'}"
    done = run_together(PRELUDE, BODY, [url], WORKERS, tmp_path)
    codes = [code for code, _, _ in done]
    assert codes == [0] * WORKERS, [err[-600:] for _, _, err in done]
    results = [(out, err) for _, out, err in done]
    applied = sorted(int(out.strip()) for out, _ in results)
    migrations = len(list((REPO / "dripmail/store/migrations/versions").glob("0*.py")))
    # Exactly one process ran the migrations, each once; the others found the schema current.
    assert applied == [0] * (WORKERS - 1) + [migrations]
    engine = open_store(url, tmp_path)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert versions == [shipped_head()]
    engine.dispose()
