import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, text

from dripmail.store.db import open_store
from dripmail.store.schema import deliveries, subscribers

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def _seed(url: str, root: Path, n: int) -> None:
    engine = open_store(url, root)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE subscribers, deliveries, events CASCADE"))
        conn.execute(
            insert(subscribers),
            [
                {
                    "id": i,
                    "email": f"u{i}@example.org",
                    "first_name": "",
                    "timezone": "UTC",
                    "status": "active",
                    "consent_source": "test",
                    "consent_at": NOW,
                    "newsletters": True,
                    "tags": "",
                    "confirm_count": 0,
                    "created_at": NOW,
                    "updated_at": NOW,
                }
                for i in range(1, n + 1)
            ],
        )
        conn.execute(
            insert(deliveries),
            [
                {
                    "subscriber_id": i,
                    "lesson_day": 1,
                    "key": f"psoas-week-s{i}-d1",
                    "due_at": NOW - timedelta(hours=1),
                    "state": "planned",
                    "attempts": 0,
                    "updated_at": NOW,
                }
                for i in range(1, n + 1)
            ],
        )
    engine.dispose()


def _workers(root: Path, url: str, count: int, passes: int) -> None:
    """`count` worker processes (forked by tests/engine_worker.py after its imports) racing
    for the same rows until none is left."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests/engine_worker.py"),
            str(root),
            url,
            NOW.isoformat(),
            str(passes),
            str(count),
        ],
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0


def _count(root: Path, url: str) -> tuple[int, int, int]:
    """Files written, index lines, and hand-overs the engine made (attempts: a double claim
    would show as 2 even though the outbox itself refuses a second file)."""
    files = len(list((root / "outbox").glob("*.eml")))
    lines = (root / "outbox/index.jsonl").read_text().splitlines()
    engine = open_store(url, root)
    with engine.connect() as conn:
        handed = conn.execute(
            text("SELECT sum(attempts) FROM deliveries WHERE state = 'sent'")
        ).scalar_one()
    engine.dispose()
    return files, len(lines), handed


def test_two_sqlite_workers_never_double_send(tmp_path: Path) -> None:
    url = "sqlite:///dripmail.db"
    # Pages of 50 (engine_worker.py) make the workers race for the same rows 20 times over.
    _seed(url, tmp_path, 1000)
    _workers(tmp_path, url, 2, passes=1000)
    assert _count(tmp_path, url) == (1000, 1000, 1000)


@pytest.mark.postgres
@pytest.mark.slow
def test_four_postgres_workers_each_delivery_once(tmp_path: Path) -> None:
    url = os.environ.get("DRIPMAIL_TEST_DATABASE_URL")
    if not url:
        pytest.skip("DRIPMAIL_TEST_DATABASE_URL is not set (CI sets it; see README)")
    # 40 pages of 50 raced for by four workers (ten each if shared evenly); each row written
    # to the outbox (a MIME build and an fsync) once, so the size sets the test's time, not
    # how hard the claims race.
    _seed(url, tmp_path, 2000)
    _workers(tmp_path, url, 4, passes=1000)
    assert _count(tmp_path, url) == (2000, 2000, 2000)
