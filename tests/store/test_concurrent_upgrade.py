"""Several workers starting at once against a new PostgreSQL schema: one upgrades, the others
wait for its advisory lock and find the schema current; none fails."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from dripmail.store.db import open_store
from dripmail.store.schema import metadata
from tests.store.start_together import run_together

REPO = Path(__file__).resolve().parents[2]
WORKERS = 4
# Each worker process is forked after PRELUDE (what opening the store loads, so the upgrades
# start within milliseconds of each other), waits at a barrier file, then opens the store.
PRELUDE = """
import sys
from pathlib import Path
from dripmail.store.db import open_store
import alembic.command, alembic.config, alembic.script  # noqa: E401
"""
BODY = """
open_store(sys.argv[1], Path.cwd())
print("ok")
"""


@pytest.mark.postgres
def test_workers_starting_at_once_upgrade_once(tmp_path: Path) -> None:
    url = os.environ.get("DRIPMAIL_TEST_DATABASE_URL")
    if not url:
        pytest.skip("DRIPMAIL_TEST_DATABASE_URL is not set (CI sets it; see README)")
    schema = f"upgrade_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    scoped = (
        make_url(url)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    try:
        done = run_together(PRELUDE, BODY, [scoped], WORKERS, tmp_path)
        codes = [code for code, _, _ in done]
        assert codes == [0] * WORKERS, [err[-600:] for _, _, err in done]
        engine = open_store(scoped, tmp_path)
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
            versions = conn.execute(text("SELECT count(*) FROM alembic_version")).scalar()
        assert versions == 1
        engine.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
