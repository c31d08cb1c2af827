"""`demo`'s simulated provider events go through the real webhook route and fill the report."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from dripmail import subscribers as subs
from dripmail.config import Project, Settings
from dripmail.demo_events import TAG, simulate_provider_events
from dripmail.engine import next_due, run_once
from dripmail.report import build, lessons_of
from dripmail.runner import Runner
from dripmail.store.schema import events
from tests.course_fixture import make_project

NOW = datetime(2026, 6, 1, 16, tzinfo=UTC)


def test_simulated_events_are_stored_through_the_webhook_route(tmp_path: Path) -> None:
    root = make_project(tmp_path / "studio")
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        DRIPMAIL_DATABASE_URL="sqlite:///demo.db",
        DRIPMAIL_OUTBOX_DIR=str(root / "outbox"),
    )
    clock = {"now": NOW}
    runner = Runner(Project(root), settings, clock=lambda: clock["now"])
    for who, zone in (
        ("maya", "America/New_York"),
        ("jonas", "Europe/Berlin"),
        ("priya", "Asia/Kolkata"),
    ):
        sid, _ = subs.add_subscriber(
            runner.engine, f"{who}@example.org", timezone=zone, status="pending",
            consent_source="demo", now=NOW,
        )  # fmt: skip
        subs.activate(runner.engine, sid, runner.course, NOW)
    while (due := next_due(runner.engine)) is not None:
        clock["now"] = due
        run_once(runner.engine, runner.provider, runner.render_lesson, due,
                 default_send_time=runner.course.send_time)  # fmt: skip

    lines = simulate_provider_events(runner, clock)

    assert lines[0].startswith("Simulated provider events (not from a real provider)")
    assert lines[1] == "happened: 21 delivered, 14 opened, 8 clicked, 1 unsubscribed;"
    assert lines[2].startswith("44 stored through POST /webhooks/mailgun")
    assert all(len(line) <= 80 for line in lines), lines
    # Each event is received just after it happened, not all at the end of the week: a
    # report up to the second lesson's day shows its deliveries.
    with runner.engine.connect() as conn:
        got = conn.execute(select(events.c.occurred_at, events.c.received_at)).all()
    assert all(r - o < timedelta(seconds=10) for o, r in got), got[:3]
    day2 = (NOW + timedelta(days=2)).date()
    partial = build(runner.engine, clock["now"], until=day2, lessons=lessons_of(runner.course))
    assert [(r.sent, r.delivered) for r in partial.lessons[:2]] == [(3, 3), (3, 3)]
    with runner.engine.connect() as conn:
        raws = conn.execute(select(events.c.raw).where(events.c.provider == "mailgun")).scalars()
        assert all(TAG in json.loads(r)["tags"] for r in raws)
    assert subs.get_subscriber(runner.engine, "priya@example.org")["status"] == "unsubscribed"
    report = build(runner.engine, clock["now"], lessons=lessons_of(runner.course))
    assert [r.opened for r in report.lessons] == [3, 2, 3, 1, 2, 1, 2]
    assert [r.clicked for r in report.lessons] == [1] * 7  # maya: the video every day
    assert [r.video_clicks for r in report.lessons] == [1] * 7
    assert report.lessons[0].scanner_clicks == 1  # jonas's scanner, 5 s after delivery
    assert [r.unsubscribed for r in report.lessons] == [0, 0, 0, 0, 0, 0, 1]
    assert {h.key: h.sent for h in report.hours} == {"07": 21}  # Kolkata too (a half-hour zone)
