"""`dripmail.retry` on SQLite and PostgreSQL: the requeue statement re-checks at write time,
so a plan made before a later lesson went out (or the reader stopped mail) never sends a
lesson out of order or to someone who left; and the requeued lesson goes out by the engine's
one-lesson-per-local-day rule."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text, update

from dripmail import retry
from dripmail import subscribers as subs
from dripmail.engine import run_once
from dripmail.providers.outbox import OutboxProvider
from dripmail.store.db import open_store
from dripmail.store.schema import deliveries
from tests.course_rules import Rules
from tests.lesson_message import plain_lesson
from tests.store_fixture import new_store

JOINED = datetime(2026, 6, 1, 12, tzinfo=UTC)  # lesson 1: Tuesday 2 June, 07:00 Berlin
LATER = datetime(2026, 6, 10, 12, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "sqlite":
        return new_store("sqlite:///dripmail.db", tmp_path)
    url = os.environ.get("DRIPMAIL_TEST_DATABASE_URL")
    if not url:
        pytest.skip("DRIPMAIL_TEST_DATABASE_URL is not set (CI sets it; see README)")
    engine = open_store(url, tmp_path)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE subscribers, deliveries, events RESTART IDENTITY CASCADE"))
        conn.execute(text("TRUNCATE suppressions"))
    return engine


def _reader(engine: Engine, email: str) -> int:
    sid, _ = subs.add_subscriber(
        engine,
        email,
        timezone="Europe/Berlin",
        status="pending",
        consent_source="test",
        now=JOINED,
        start_date=date(2026, 6, 2),
    )
    subs.activate(engine, sid, Rules(), JOINED)
    return sid


def _set(engine: Engine, sid: int, day: int, **values) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.subscriber_id == sid, deliveries.c.lesson_day == day)
            .values(updated_at=JOINED + timedelta(days=day), **values)
        )


def _state(engine: Engine, sid: int, day: int) -> str:
    with engine.connect() as conn:
        return conn.execute(
            select(deliveries.c.state).where(
                deliveries.c.subscriber_id == sid, deliveries.c.lesson_day == day
            )
        ).scalar_one()


def _plan(engine: Engine, now: datetime = LATER, **selection) -> retry.RetryPlan:
    return retry.plan(engine, retry.Selection(**selection), now, time(7))


def test_a_plan_made_before_a_later_lesson_went_out_requeues_nothing(store: Engine) -> None:
    sid = _reader(store, "a@example.org")
    _set(store, sid, 1, state="sent", sent_at=JOINED + timedelta(hours=17))
    _set(store, sid, 2, state="failed", last_error="refused: sender not confirmed")
    planned = _plan(store, everything=True)
    assert [r.lesson.lesson_day for r in planned.requeue] == [2] and not planned.left
    # Meanwhile a run sent lesson 3 (lesson 2 counted as done), and another reader stopped.
    _set(store, sid, 3, state="sent", sent_at=JOINED + timedelta(days=3))
    done = retry.apply(store, planned, "ann", "", LATER)
    assert not done.requeue and [x.kind for x in done.left] == ["changed"]
    assert _state(store, sid, 2) == "failed"


def test_a_reader_who_stopped_after_the_plan_is_not_requeued(store: Engine) -> None:
    sid = _reader(store, "b@example.org")
    _set(store, sid, 1, state="failed", last_error="refused")
    planned = _plan(store, addresses=("b@example.org",))
    assert len(planned.requeue) == 1
    subs.suppress(store, sid, "bounced", LATER)
    done = retry.apply(store, planned, "ann", "", LATER)
    assert not done.requeue and _state(store, sid, 1) == "failed"
    # Planned again now: left, and why.
    again = _plan(store, addresses=("b@example.org",))
    assert [(x.why, x.kind) for x in again.left] == [("b@example.org is bounced", "bounced")]


def test_requeued_lessons_go_out_in_order_one_a_day(store: Engine, tmp_path: Path) -> None:
    """Lessons 2 and 3 failed (both refused); requeued, lesson 2 goes on the next pass and
    lesson 3 waits for the next local morning after it; lesson 4 waits for lesson 3."""
    sid = _reader(store, "c@example.org")
    _set(store, sid, 1, state="sent", sent_at=datetime(2026, 6, 2, 5, tzinfo=UTC))
    for day in (2, 3):
        _set(store, sid, day, state="failed", last_error="refused", batch_key=f"b-{day}")
    now = datetime(2026, 6, 4, 12, tzinfo=UTC)  # lesson 4 is due tomorrow
    planned = _plan(store, now, reason="REFUSED")
    assert [(r.lesson.lesson_day, r.goes_out, r.waits) for r in planned.requeue] == [
        (2, now, ""),
        (3, None, "after lesson 2 (one a day)"),
    ]
    retry.apply(store, planned, "ann", "sender fixed", now)
    outbox = OutboxProvider(tmp_path / "outbox", clock=lambda: now)

    def run(at: datetime) -> None:
        run_once(store, outbox, plain_lesson, at, default_send_time=time(7), worker_id="t")

    run(now)
    assert [_state(store, sid, d) for d in (2, 3, 4)] == ["sent", "planned", "planned"]
    run(datetime(2026, 6, 5, 4, 59, tzinfo=UTC))  # 06:59 in Berlin: not yet
    assert _state(store, sid, 3) == "planned"
    run(datetime(2026, 6, 5, 5, 0, tzinfo=UTC))
    assert [_state(store, sid, d) for d in (3, 4)] == ["sent", "planned"]
    run(datetime(2026, 6, 6, 5, 0, tzinfo=UTC))
    assert _state(store, sid, 4) == "sent"
