"""Planning a subscriber's week: batched insert per subscriber vs one insert per lesson."""

from __future__ import annotations

import statistics
import tempfile
import time as clock
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert

from dripmail import subscribers as subs
from dripmail.store.db import open_store
from dripmail.store.schema import deliveries
from tests.course_rules import Rules


def _activate_many(n: int, naive: bool) -> float:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_store("sqlite:///b.db", Path(tmp))
        ids = [
            subs.add_subscriber(
                engine,
                f"u{i}@example.org",
                timezone="Europe/Berlin",
                status="pending",
                consent_source="bench",
                now=now,
            )[0]
            for i in range(n)
        ]
        started = clock.perf_counter()
        for sid in ids:
            if naive:
                # One transaction per lesson, as a hand-written loop would do it.
                for day in range(1, 8):
                    with engine.begin() as conn:
                        conn.execute(
                            insert(deliveries).values(
                                subscriber_id=sid,
                                lesson_day=day,
                                key=f"n-{sid}-{day}",
                                due_at=now,
                                state="planned",
                                attempts=0,
                                updated_at=now,
                            )
                        )
            else:
                subs.activate(engine, sid, Rules(id="bench"), now)
        elapsed = clock.perf_counter() - started
        engine.dispose()
    return n / elapsed


def run(quick: bool) -> list[dict]:
    """Subscribers activated (7 lessons planned each) per second, ours vs one insert per lesson."""
    n, repeats = (50, 3) if quick else (500, 5)
    ours = statistics.median(_activate_many(n, naive=False) for _ in range(repeats))
    naive = statistics.median(_activate_many(n, naive=True) for _ in range(repeats))
    return [
        {
            "name": f"activate subscribers and plan 7 lessons (SQLite, {n} subscribers)",
            "unit": "subscribers/s",
            "ours": ours,
            "naive": naive,
            "ratio": ours / naive,
            "note": "naive: one transaction per lesson row",
        }
    ]
