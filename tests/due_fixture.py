"""Many readers with lesson 1 due, inserted in bulk (the planning path has its own tests)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, insert

from dripmail.store.schema import deliveries, subscribers


def seed_due(engine: Engine, count: int, now: datetime) -> None:
    """Readers r1..r<count>@example.org (UTC), each with lesson 1 due an hour before `now`."""
    readers = range(1, count + 1)
    with engine.begin() as conn:
        conn.execute(
            insert(subscribers),
            [
                {
                    "id": i,
                    "email": f"r{i}@example.org",
                    "first_name": "R",
                    "timezone": "UTC",
                    "status": "active",
                    "consent_source": "test",
                    "consent_at": now,
                    "newsletters": True,
                    "tags": "",
                    "confirm_count": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in readers
            ],
        )
        conn.execute(
            insert(deliveries),
            [
                {
                    "subscriber_id": i,
                    "lesson_day": 1,
                    "key": f"test-week-s{i}-d1",
                    "due_at": now - timedelta(hours=1),
                    "state": "planned",
                    "attempts": 0,
                    "updated_at": now,
                }
                for i in readers
            ],
        )
