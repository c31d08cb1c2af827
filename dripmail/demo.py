"""`demo`: a simulated week for three sample subscribers, entirely on this machine."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select

from dripmail import subscribers as subs
from dripmail.config import Project, Settings
from dripmail.engine import next_due, run_once
from dripmail.runner import Runner
from dripmail.store.schema import deliveries, subscribers

# example.org is reserved (RFC 2606): these addresses can never reach a real inbox.
SAMPLE = (
    ("maya@example.org", "Maya", "America/New_York"),
    ("jonas@example.org", "Jonas", "Europe/Berlin"),
    ("priya@example.org", "Priya", "Asia/Kolkata"),
)
EXTRA_ZONES = ("Australia/Sydney", "America/Los_Angeles", "Pacific/Chatham", "Europe/London")


@dataclass
class DemoResult:
    """What the demo did: notes to print, one table row per email, and where they are."""

    notes: list[str] = field(default_factory=list)
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    outbox: Path = Path("outbox")


def _sample(count: int) -> list[tuple[str, str, str]]:
    people = list(SAMPLE)
    for i in range(len(people), count):
        people.append((f"sample{i}@example.org", f"Sample {i}", EXTRA_ZONES[i % len(EXTRA_ZONES)]))
    return people[:count]


def run_demo(project: Project, settings: Settings, now: datetime, count: int = 3) -> DemoResult:
    """Scaffold if needed, add sample subscribers, run the engine at each due time for a week."""
    result = DemoResult()
    if not (project.course_dir / "course.toml").is_file():
        from dripmail.scaffold import init_project

        init_project(project.root)
        result.notes.append(f"no course here: created the sample course in {project.root}")
    # The demo never uses a real provider, whatever DRIPMAIL_PROVIDER says.
    demo_settings = settings.model_copy(update={"provider": "outbox"})
    clock = {"now": now}
    runner = Runner(project, demo_settings, clock=lambda: clock["now"])
    course = runner.course
    ids = []
    for email, name, zone in _sample(count):
        sid, created = subs.add_subscriber(
            runner.engine,
            email,
            first_name=name,
            timezone=zone,
            status="pending",
            consent_source="demo",
            now=now,
        )
        if created:
            subs.activate(runner.engine, sid, course, now)
        ids.append(sid)
    # Wake exactly when the next lesson is due, as `run --loop` does, until the week is done.
    for _ in range(count * len(course.lessons) + 10):
        upcoming = next_due(runner.engine)
        if upcoming is None:
            break
        clock["now"] = max(upcoming, clock["now"])
        run_once(
            runner.engine,
            runner.provider,
            runner.render_lesson,
            clock["now"],
            default_send_time=course.send_time,
        )
    result.outbox = runner.provider.folder  # type: ignore[attr-defined]
    with runner.engine.connect() as conn:
        rows = conn.execute(
            select(
                subscribers.c.email,
                subscribers.c.timezone,
                deliveries.c.lesson_day,
                deliveries.c.sent_at,
                deliveries.c.state,
            )
            .join(subscribers)
            .where(subscribers.c.id.in_(ids))
            .order_by(subscribers.c.id, deliveries.c.lesson_day)
        ).all()
    for email, zone, day, sent_at, state_ in rows:
        if sent_at is None:
            result.rows.append((email, zone, f"day {day}", state_, "-"))
            continue
        local = sent_at.astimezone(ZoneInfo(zone))
        result.rows.append(
            (
                email,
                zone,
                f"day {day}: {course.lesson(day).stretch}",
                f"{local:%a %d %b %H:%M}",
                f"{sent_at:%a %d %b %H:%M}",
            )
        )
    return result
