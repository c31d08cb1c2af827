"""Many subscribers at once, inserted in bulk (the planning path has its own tests)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, insert

from dripmail.store.schema import broadcasts, subscribers

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def seed(engine: Engine, count: int, start: int = 0, **overrides) -> None:
    """Insert `count` subscribers p<i>@example.org; every 10th is ineligible in some way."""
    rows = []
    for i in range(start, start + count):
        row = {
            "email": f"p{i}@example.org",
            "first_name": f"P{i}",
            "timezone": "Europe/Berlin",
            "status": "active" if i % 2 else "completed",
            "consent_source": "test",
            "consent_at": NOW,
            "newsletters": True,
            "tags": "desk" if i % 3 == 0 else "",
            "confirm_count": 0,
            "created_at": NOW,
            "updated_at": NOW,
        }
        if i % 10 == 1:
            row["status"] = ("unsubscribed", "bounced", "complained", "pending", "paused")[
                (i // 10) % 5
            ]
        if i % 10 == 3:
            row["newsletters"] = False
        row.update(overrides)
        rows.append(row)
        if len(rows) == 5000:  # in chunks, so seeding a big list stays small in memory
            with engine.begin() as conn:
                conn.execute(insert(subscribers), rows)
            rows = []
    if rows:
        with engine.begin() as conn:
            conn.execute(insert(subscribers), rows)


def eligible_emails(count: int, start: int = 0) -> set[str]:
    """Who `seed` made eligible for a broadcast to `all`."""
    return {f"p{i}@example.org" for i in range(start, start + count) if i % 10 not in (1, 3)}


def insert_sent_to_nobody(engine: Engine, at: datetime, subject: str, content_hash: str) -> None:
    """What an older version left for a broadcast to an empty segment (``tag:dsk``): the
    newsletter `hips` marked `sent` for good with not one copy planned."""
    with engine.begin() as conn:
        conn.execute(
            broadcasts.insert().values(
                slug="hips",
                subject=subject,
                segment="tag:dsk",
                status="sent",
                content_hash=content_hash,
                created_at=at,
                started_at=at,
                finished_at=at,
            )
        )
