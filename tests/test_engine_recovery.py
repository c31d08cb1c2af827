"""A run finishes everything a crash left in flight, however many rows (not only the first 1,000),
and catch-up honours `skip_weekends` (one rule: `schedule.next_send_at`)."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, insert, select, text

from dripmail import subscribers as subs
from dripmail.engine import run_once
from dripmail.providers.outbox import OutboxProvider
from dripmail.store.db import open_store
from dripmail.store.schema import deliveries
from tests.broadcast_fixture import seed
from tests.course_rules import Rules
from tests.lesson_message import plain_lesson
from tests.store_fixture import new_store

NOW = datetime(2026, 6, 3, 12, tzinfo=UTC)


def _states(engine: Engine) -> Counter:
    with engine.connect() as conn:
        return Counter(conn.execute(select(deliveries.c.state)).scalars())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """An empty store: SQLite, and PostgreSQL (its own path: rows locked as a page is read,
    outcomes written with one ``UPDATE ... FROM unnest`` per chunk)."""
    if request.param == "sqlite":
        return new_store("sqlite:///dripmail.db", tmp_path)
    url = os.environ.get("DRIPMAIL_TEST_DATABASE_URL")
    if not url:
        pytest.skip("DRIPMAIL_TEST_DATABASE_URL is not set (CI sets it; see README)")
    engine = open_store(url, tmp_path)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE subscribers, deliveries, events RESTART IDENTITY CASCADE"))
    return engine


def test_every_row_left_in_flight_is_finished_in_one_run(store: Engine, tmp_path: Path) -> None:
    engine = store
    readers = 1300
    seed(engine, readers, status="active")
    rows = []
    for sid in range(1, readers + 1):
        sending = sid % 6 == 0  # some were mid-call: reconciled (the outbox has no file)
        rows.append(
            {
                "subscriber_id": sid,
                "lesson_day": 1,
                "key": f"lesson-t-s{sid}-d1",
                "due_at": NOW - timedelta(hours=2),
                "state": "sending" if sending else "claimed",
                "batch_key": "b-lost" if sending else None,
                "attempts": 1 if sending else 0,
                "claimed_by": "elsewhere:1",
                "lease_expires_at": NOW - timedelta(minutes=1),
                "updated_at": NOW - timedelta(hours=1),
            }
        )
    with engine.begin() as conn:
        conn.execute(insert(deliveries), rows)
    outbox = OutboxProvider(tmp_path / "outbox", clock=lambda: NOW)
    report = run_once(
        engine, outbox, plain_lesson, NOW, default_send_time=time(7), worker_id="t", chunk=500
    )
    assert _states(engine) == {"sent": readers}
    assert report.sent == readers
    assert report.recovered == sum(1 for r in rows if r["state"] == "sending")


def test_catch_up_skips_the_weekend(tmp_path: Path) -> None:
    """New York, start Monday 2026-03-02, weekends skipped, Thursday's runs all missed."""
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    rules = Rules(skip_weekends=True)
    joined = datetime(2026, 3, 1, 12, tzinfo=UTC)
    sid, _ = subs.add_subscriber(
        engine,
        "ny@example.org",
        timezone="America/New_York",
        status="pending",
        consent_source="test",
        now=joined,
        start_date=date(2026, 3, 2),
    )
    subs.activate(engine, sid, rules, joined)
    outbox = OutboxProvider(tmp_path / "outbox")
    zone = ZoneInfo("America/New_York")
    for hour in range(24 * 14):
        now = datetime(2026, 3, 2, tzinfo=UTC) + timedelta(hours=hour)
        if now.astimezone(zone).date() == date(2026, 3, 5):
            continue  # the Thursday the cron host was down
        outbox._clock = lambda now=now: now
        run_once(
            engine, outbox, plain_lesson, now, default_send_time=time(7), skip_weekends=True,
            worker_id="t",
        )  # fmt: skip
    lines = [json.loads(x) for x in (tmp_path / "outbox/index.jsonl").read_text().splitlines()]
    sent = {int(x["ref"]): datetime.fromisoformat(x["written_at"]).astimezone(zone) for x in lines}
    days = {day: f"{at:%a %d %H:%M}" for day, at in sent.items()}
    assert days == {
        1: "Mon 02 07:00",
        2: "Tue 03 07:00",
        3: "Wed 04 07:00",
        4: "Fri 06 00:00",  # Thursday's lesson, late: as soon as the engine is back
        5: "Mon 09 07:00",  # not Saturday
        6: "Tue 10 07:00",
        7: "Wed 11 07:00",
    }


def test_limit_caps_new_sends_not_the_recovery_of_what_a_crash_left(tmp_path: Path) -> None:
    """`run --limit 1` after a crash: every in-flight row is finished, then one new lesson."""
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    seed(engine, 40, status="active")
    rows = [
        {
            "subscriber_id": sid,
            "lesson_day": 1,
            "key": f"lesson-t-s{sid}-d1",
            "due_at": NOW - timedelta(hours=2),
            "state": "claimed" if sid <= 25 else "planned",
            "claimed_by": "elsewhere:1" if sid <= 25 else None,
            "lease_expires_at": NOW - timedelta(minutes=1) if sid <= 25 else None,
            "updated_at": NOW - timedelta(hours=1),
        }
        for sid in range(1, 41)
    ]
    with engine.begin() as conn:
        conn.execute(insert(deliveries), rows)
    outbox = OutboxProvider(tmp_path / "outbox", clock=lambda: NOW)
    run_once(
        engine,
        outbox,
        plain_lesson,
        NOW,
        default_send_time=time(7),
        worker_id="t",
        chunk=10,
        limit=1,
    )
    assert _states(engine) == {"sent": 26, "planned": 14}


def test_outcomes_of_every_kind_are_stored_alike_on_both_stores(store: Engine) -> None:
    """`record_many` (one ``UPDATE ... FROM unnest`` per group on PostgreSQL, an executemany
    on SQLite): each row gets its own values, shared ones once, and its claim released."""
    from dripmail.handover import record_many

    seed(store, 5, status="active")
    with store.begin() as conn:
        conn.execute(
            insert(deliveries),
            [
                {
                    "subscriber_id": sid,
                    "lesson_day": 1,
                    "key": f"k{sid}",
                    "due_at": NOW,
                    "state": "sending",
                    "claimed_by": "me:1",
                    "lease_expires_at": NOW + timedelta(minutes=5),
                    "updated_at": NOW - timedelta(hours=1),
                }
                for sid in range(1, 6)
            ],
        )
        ids = {k: i for k, i in conn.execute(select(deliveries.c.key, deliveries.c.id))}
    later = NOW + timedelta(hours=3)
    record_many(
        store,
        deliveries,
        NOW,
        [
            (ids["k1"], {"state": "sent", "provider_message_id": "p1", "sent_at": NOW}),
            (ids["k2"], {"state": "handed", "provider_message_id": None, "sent_at": later}),
            (ids["k3"], {"state": "planned", "last_error": "busy", "next_attempt_at": later}),
            (ids["k4"], {"state": "failed", "last_error": "gone (to p4@example.org)"}),
            (ids["k5"], {"state": "failed", "last_error": "gone (to p5@example.org)"}),
        ],
    )
    c = deliveries.c
    with store.connect() as conn:
        got = {
            r.key: tuple(r)[1:]
            for r in conn.execute(
                select(
                    c.key,
                    c.state,
                    c.provider_message_id,
                    c.sent_at,
                    c.last_error,
                    c.next_attempt_at,
                    c.claimed_by,
                    c.lease_expires_at,
                    c.updated_at,
                )
            )
        }
    assert got == {
        "k1": ("sent", "p1", NOW, None, None, None, None, NOW),
        "k2": ("handed", None, later, None, None, None, None, NOW),
        "k3": ("planned", None, None, "busy", later, None, None, NOW),
        "k4": ("failed", None, None, "gone (to p4@example.org)", None, None, None, NOW),
        "k5": ("failed", None, None, "gone (to p5@example.org)", None, None, None, NOW),
    }
