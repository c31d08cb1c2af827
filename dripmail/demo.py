"""`demo`: a simulated week for three sample subscribers, entirely inside its own folder.

The demo never reads or writes a real project's data: it runs on its own SQLite database and
outbox in ``<project>/demo/`` (marked as the demo's by a marker file, and started afresh on
each run), with the outbox provider, whatever ``DRIPMAIL_DATABASE_URL``, ``DRIPMAIL_PROVIDER``
or ``DRIPMAIL_OUTBOX_DIR`` say. It renders the project's own course when there is one, the
sample course shipped with dripmail otherwise, and writes nothing outside ``demo/``.

Steps, each one function so a later step (simulated provider events) is one more call in
`run_demo`: `prepare` (the folder and settings), `add_sample`, `simulate_week`, `timeline`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select

from dripmail import subscribers as subs
from dripmail.config import Project, Settings
from dripmail.demo_events import simulate_provider_events
from dripmail.engine import next_due, run_once
from dripmail.errors import InputError
from dripmail.runner import Runner
from dripmail.store.schema import deliveries, subscribers

DEMO_DIR = "demo"
# Written into demo/ when the demo creates it: a demo/ folder without it is someone else's.
MARKER = ".dripmail-demo"
MARKER_TEXT = "Made by `dripmail demo`; the demo deletes and rewrites this folder on every run.\n"
DATABASE = "demo.db"


def is_demo_database(database_url: str) -> bool:
    """True for the demo's own SQLite file (``<root>/demo/demo.db``): its figures are simulated."""
    return database_url.startswith("sqlite:") and database_url.replace("\\", "/").endswith(
        f"/{DEMO_DIR}/{DATABASE}"
    )


# example.org is reserved (RFC 2606): these addresses can never reach a real inbox.
SAMPLE = (
    ("maya@example.org", "Maya", "America/New_York"),
    ("jonas@example.org", "Jonas", "Europe/Berlin"),
    ("priya@example.org", "Priya", "Asia/Kolkata"),
)
EXTRA_ZONES = ("Australia/Sydney", "America/Los_Angeles", "Pacific/Chatham", "Europe/London")


@dataclass
class DemoResult:
    """What the demo did.

    `written` is the number of emails this run wrote (counted from the engine's reports, so it
    matches the files in `outbox`); `rows` is one table row per planned lesson; `folder` is the
    demo's own folder; `sample_course` is True when the project had no course of its own.
    """

    notes: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # about the simulated events: after the week
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    folder: Path = Path(DEMO_DIR)
    outbox: Path = Path(DEMO_DIR) / "outbox"
    written: int = 0
    sample_course: bool = False


def _sample(count: int) -> list[tuple[str, str, str]]:
    people = list(SAMPLE)
    for i in range(len(people), count):
        people.append((f"sample{i}@example.org", f"Sample {i}", EXTRA_ZONES[i % len(EXTRA_ZONES)]))
    return people[:count]


def prepare(root: Path, settings: Settings, result: DemoResult) -> Runner:
    """Make ``root/demo/`` afresh and a Runner that only uses it; InputError if it is not ours.

    The course comes from `root` if it has one (read only), else from the shipped sample.
    """
    folder = root / DEMO_DIR
    if folder.exists() and not (folder / MARKER).is_file():
        raise InputError(
            f"{folder} exists and was not made by `demo` (no {MARKER} in it): the demo only "
            "writes into a folder of its own; move that folder or run demo elsewhere"
        )
    if folder.exists():
        # Our own folder from an earlier demo: the simulated week starts again from now.
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(MARKER_TEXT, encoding="utf-8")
    result.folder = folder
    result.outbox = folder / "outbox"
    content = Project(root)
    if not (content.course_dir / "course.toml").is_file():
        from dripmail.scaffold import sample_root

        content = Project(sample_root())
        result.sample_course = True
    demo_settings = settings.model_copy(
        update={
            "provider": "outbox",
            "database_url": f"sqlite:///{folder / DATABASE}",
            "outbox_dir": str(result.outbox),
        }
    )
    return Runner(content, demo_settings)


def add_sample(runner: Runner, count: int, now: datetime) -> list[int]:
    """Add `count` confirmed sample subscribers (example.org) and plan their week; their ids."""
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
            subs.activate(runner.engine, sid, runner.course, now)
        ids.append(sid)
    return ids


def simulate_week(runner: Runner, clock: dict[str, datetime]) -> int:
    """Run the engine at each due time until nothing is planned, as `run --loop` would wake.

    `clock["now"]` is the simulated time (advanced here; the runner's provider reads it).
    Returns the number of emails handed to the outbox.
    """
    written = 0
    for _ in range(10_000):  # a bound, never reached: the week ends when nothing is planned
        upcoming = next_due(runner.engine)
        if upcoming is None:
            break
        clock["now"] = max(upcoming, clock["now"])
        report = run_once(
            runner.engine,
            runner.provider,
            runner.render_lesson,
            clock["now"],
            default_send_time=runner.course.send_time,
        )
        written += report.sent + report.handed
    return written


def timeline(runner: Runner, ids: list[int]) -> list[tuple[str, str, str, str, str]]:
    """One row per planned lesson: address, zone, lesson, local send time, UTC send time."""
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
    out = []
    for email, zone, day, sent_at, state_ in rows:
        if sent_at is None:
            out.append((email, zone, f"day {day}", state_, "-"))
            continue
        local = sent_at.astimezone(ZoneInfo(zone))
        out.append(
            (
                email,
                zone,
                f"day {day}",  # the stretch names are in `preview`: the table fits 80 columns
                f"{local:%a %d %b %H:%M}",
                f"{sent_at:%d %b %H:%M}",
            )
        )
    return out


def run_demo(root: Path, settings: Settings, now: datetime, count: int = 3) -> DemoResult:
    """The whole demo in ``root/demo/``: sample subscribers, a simulated week, the timeline.

    `now` is aware UTC (the week starts then). Raises InputError if ``root/demo`` exists and
    is not the demo's own folder; never touches the project's database or outbox.
    """
    result = DemoResult()
    clock = {"now": now}
    runner = prepare(root, settings, result)
    runner.clock = lambda: clock["now"]
    try:
        ids = add_sample(runner, count, now)
        result.written = simulate_week(runner, clock)
        # Providers report deliveries, opens and clicks back: simulated here, through the
        # real webhook route, so the report has something to show (labelled as simulated).
        result.events.extend(simulate_provider_events(runner, clock))
        result.rows = timeline(runner, ids)
    finally:
        runner.engine.dispose()
    if result.sample_course:
        result.notes.append(
            f"no course in {root}: the demo used the sample course (`init` copies it here)"
        )
    return result
