"""`Dripmail`, the application door: properties over arbitrary input, the same at every door."""

from __future__ import annotations

import csv
import json
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dripmail.app import Dripmail
from dripmail.config import Project, Settings
from dripmail.engine import run_once
from dripmail.errors import InputError
from dripmail.validation import clean_name
from tests.course_fixture import make_project

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # a Monday
TODAY = date(2026, 6, 1)


@pytest.fixture(scope="module")
def course_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("app") / "project")


def _core(root: Path, work: Path, clock: datetime = NOW) -> Dripmail:
    values = {
        "DRIPMAIL_DATABASE_URL": f"sqlite:///{work / 'app.db'}",
        "DRIPMAIL_OUTBOX_DIR": str(work / "outbox"),
    }
    return Dripmail(
        Project(root),
        Settings(_env_file=None, **values),  # type: ignore[call-arg]
        clock=lambda: clock,
    )


def _lessons_sent(work: Path) -> list[tuple[str, str]]:
    index = work / "outbox" / "index.jsonl"
    lines = index.read_text(encoding="utf-8").splitlines() if index.exists() else []
    return [(r["to"], r["ref"]) for r in map(json.loads, lines) if r["kind"] == "lesson"]


NAMES = st.text(st.characters(exclude_categories=("Cs",)), max_size=120)
DATES = st.one_of(
    st.none(),
    st.integers(min_value=-800, max_value=800).map(lambda days: TODAY + timedelta(days=days)),
    st.dates(),  # 0001-01-01 .. 9999-12-31
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.tuples(NAMES, DATES), min_size=1, max_size=6))
def test_every_valid_row_is_sent_exactly_once(
    course_root: Path, rows: list[tuple[str, date | None]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "people.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["email", "first_name", "start_date"])
            for i, (name, start) in enumerate(rows):
                writer.writerow([f"r{i}@example.org", name, start.isoformat() if start else ""])
        valid = set()
        for i, (name, start) in enumerate(rows):
            if "\n" in name or "\r" in name:
                continue  # a quoted cell over a line break: refused (it may be a quote left open)
            try:
                clean_name(name.replace("\x00", " "))
            except InputError:
                continue
            if start is None or abs((start - TODAY).days) <= 366:
                valid.add(f"r{i}@example.org")
        core = _core(course_root, work)
        report = core.import_subscribers(path)
        assert report.added == len(valid), report.rejected
        assert len(report.rejected) == len(rows) - len(valid)
        # A year and a bit later, every lesson 1 is due (catch-up sends one a day).
        later = NOW + timedelta(days=370)
        for _ in range(2):  # a second pass at the same time sends nothing more
            run_once(
                core.engine, core.provider, core.render_lesson, later,
                default_send_time=core.course.send_time,
            )  # fmt: skip
        sent = _lessons_sent(work)
        firsts = [to for to, ref in sent if ref == "1"]
        assert sorted(firsts) == sorted(valid)
        core.engine.dispose()


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("timezone", "EST", "abbreviation"),
        ("timezone", "america/new_york", "did you mean America/New_York"),
        ("send_time", "25:00", "send time"),
        ("course", "deleted", "course:"),
    ],
)
def test_preferences_refuse_bad_values_and_change_nothing(
    course_root: Path, tmp_path: Path, field: str, value: str, says: str
) -> None:
    core = _core(course_root, tmp_path)
    added = core.add_subscriber("ann@example.com", timezone="Europe/Berlin")
    before = core.timeline(added.id)
    with pytest.raises(InputError, match=says):
        core.set_preferences(added.id, newsletters=False, **{field: value})
    after = core.timeline(added.id)
    assert dict(after.subscriber) == dict(before.subscriber)
    assert [dict(r) for r in after.lessons] == [dict(r) for r in before.lessons]


def test_preferences_store_a_legacy_zone_canonical_and_replan(
    course_root: Path, tmp_path: Path
) -> None:
    core = _core(course_root, tmp_path)
    added = core.add_subscriber("ann@example.com", timezone="Europe/Berlin")
    saved = core.set_preferences(added.id, newsletters=True, timezone="US/Pacific")
    assert saved.replanned
    row = core.subscriber(added.id)
    assert row["timezone"] == "America/Los_Angeles"
    day, due = core.next_lesson(added.id) or (0, NOW)
    assert day == 1
    assert due.hour == 14  # 07:00 in Los Angeles (PDT) is 14:00 UTC


def test_the_same_name_is_cleaned_at_every_door(course_root: Path, tmp_path: Path) -> None:
    core = _core(course_root, tmp_path)
    raw = "Dan\nBcc: eve@example.com\u2028"
    core.add_subscriber("a@example.com", name=raw)
    signed = core.subscribe("b@example.com", name=raw, timezone="Mars/Olympus")
    assert signed.zone_fallback and signed.subscriber_id is not None
    (tmp_path / "p.csv").write_text(f'email,first_name\nc@example.com,"{raw}"\n')
    core.import_subscribers(tmp_path / "p.csv")
    names = {r["email"]: r["first_name"] for r in core.list_subscribers()}
    assert set(names.values()) == {"Dan Bcc: eve@example.com"}
    b = core.subscriber("b@example.com")
    assert b["timezone"] == core.course.timezone and b["status"] == "pending"


def test_run_loop_sleeps_until_a_held_lesson_can_go(course_root: Path, tmp_path: Path) -> None:
    # A reader who started long ago: every lesson is overdue, one goes out per local day.
    path = tmp_path / "people.csv"
    path.write_text("email,first_name,start_date\nlate@example.org,Late,2026-05-20\n")
    core = _core(course_root, tmp_path)
    assert core.import_subscribers(path).added == 1
    # The progress bar's total: one lesson this pass, not the seven that are overdue.
    assert core.count_due(NOW) == 1
    assert core.run(NOW).lessons.sent == 1
    assert _lessons_sent(tmp_path) == [("late@example.org", "1")]
    # Lesson 2 is due by its plan but held to tomorrow 07:00 New York (11:00 UTC): the loop
    # sleeps its longest, not a second at a time printing "0 sent" until then ...
    assert core.seconds_to_next(NOW) == 60.0
    # ... and wakes for it on time.
    tomorrow = datetime(2026, 6, 2, 11, 0, tzinfo=UTC)
    assert core.seconds_to_next(tomorrow - timedelta(seconds=30)) == 30.0
    assert core.run(tomorrow - timedelta(seconds=30)).lessons.sent == 0
    assert core.run(tomorrow).lessons.sent == 1
    core.close()


def test_runs_progress_follows_the_outbox_as_it_fills(course_root: Path, tmp_path: Path) -> None:
    """`run`'s progress bar counts what was handed over after each chunk, while the pass
    goes on: with the outbox, each count is the files already written, not 0 until the end
    (an operator saw "0/3000" with 1,000 written)."""
    from tests.due_fixture import seed_due

    core = _core(course_root, tmp_path)
    readers = 1500  # more than one chunk of 1,000
    seed_due(core.engine, readers, NOW)
    seen: list[tuple[int, int]] = []  # (progress so far, files in the outbox then)

    def progress(count: int) -> None:
        done = (seen[-1][0] if seen else 0) + count
        seen.append((done, len(list((tmp_path / "outbox").glob("*.eml")))))

    assert core.run(NOW, progress=progress).lessons.sent == readers
    core.close()
    assert len(seen) >= 2 and seen[0][0] < readers  # it moved before the end
    assert all(done == files for done, files in seen) and seen[-1][0] == readers
