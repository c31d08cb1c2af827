"""A run killed between the provider's acceptance and the local commit, then the next run.

The real engine (`run_once`), the real course and templates, providers built by `get_provider`
with the base URL pointing at the loopback fake. The "crash" is an exception raised inside
the provider call, after (or before) the real request: the rows stay `sending` with their
batch key, exactly as a killed process leaves them, and the next run finds them once their
lease has expired.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from course_fixture import make_project
from fakes.mail import FAST_RETRY
from sqlalchemy import select

from dripmail import subscribers as subs
from dripmail.config import Project, Settings
from dripmail.engine import run_once
from dripmail.runner import Runner
from dripmail.store.schema import deliveries

SECRET = "test-secret-key-for-links-0123456789abcdef"
START = datetime(2026, 3, 5, 12, tzinfo=UTC)
DAY_ONE = datetime(2026, 3, 6, 13, tzinfo=UTC)  # lesson 1 is due for all three readers
AFTER_LEASE = timedelta(minutes=11)
READERS = {
    "ny@example.org": "America/New_York",
    "berlin@example.org": "Europe/Berlin",
    "kolkata@example.org": "Asia/Kolkata",
}


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, no handler records anything."""


class Crashing:
    """The configured provider, but the process 'dies' right after (or before) the call."""

    def __init__(self, inner, *, before: bool = False) -> None:
        self.inner = inner
        self.before = before

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    async def send_batch(self, messages, send_at=None, batch_key=None):
        if not self.before:
            await self.inner.send_batch(messages, send_at, batch_key)
        raise Killed


def _runner(tmp_path: Path, fake, provider: str) -> Runner:
    settings = Settings(
        DRIPMAIL_PROVIDER=provider,
        DRIPMAIL_SECRET_KEY=SECRET,
        DRIPMAIL_PUBLIC_URL="https://join.studio.example.com",
        DRIPMAIL_DATABASE_URL="sqlite:///dripmail.db",
        POSTMARK_SERVER_TOKEN=fake.POSTMARK_TOKEN,
        DRIPMAIL_POSTMARK_BASE_URL=fake.base("postmark"),
        RESEND_API_KEY=fake.RESEND_KEY,
        DRIPMAIL_RESEND_BASE_URL=fake.base("resend"),
    )  # type: ignore[call-arg]
    runner = Runner(Project(make_project(tmp_path)), settings)
    runner.provider.http.retry = FAST_RETRY
    for email, zone in READERS.items():
        sid, _ = subs.add_subscriber(
            runner.engine, email, timezone=zone, status="pending", consent_source="test", now=START
        )
        subs.activate(runner.engine, sid, runner.course, START)
    return runner


def _run(runner: Runner, now: datetime, provider=None):
    return run_once(
        runner.engine,
        provider or runner.provider,
        runner.render_lesson,
        now,
        default_send_time=runner.course.send_time,
        worker_id="w",
    )


def _rows(runner: Runner) -> dict[str, dict]:
    with runner.engine.connect() as conn:
        rows = conn.execute(select(deliveries).where(deliveries.c.lesson_day == 1)).mappings()
        return {r["key"]: dict(r) for r in rows}


def _crash(runner: Runner, *, before: bool = False) -> None:
    with pytest.raises(Killed):
        _run(runner, DAY_ONE, Crashing(runner.provider, before=before))
    rows = _rows(runner)
    assert {r["state"] for r in rows.values()} == {"sending"}
    assert len({r["batch_key"] for r in rows.values()}) == 1


def test_resend_resends_the_same_batch_under_the_same_key(tmp_path, fake_providers) -> None:
    runner = _runner(tmp_path, fake_providers, "resend")
    _crash(runner)
    assert len(fake_providers.accepted("resend")) == 3  # Resend has them; we never heard
    report = _run(runner, DAY_ONE + AFTER_LEASE)
    assert (report.recovered, report.sent, report.review) == (3, 3, 0)
    # The second request carried the same key and body: Resend answered the first result.
    assert fake_providers.send_requests["resend"] == 2
    assert Counter(fake_providers.keys("resend")) == Counter({k: 1 for k in _rows(runner)})
    ids = {r.key: r.provider_id for r in fake_providers.accepted("resend")}
    assert {k: r["provider_message_id"] for k, r in _rows(runner).items()} == ids
    assert {r["state"] for r in _rows(runner).values()} == {"sent"}


def test_resend_crash_before_the_request_sends_once(tmp_path, fake_providers) -> None:
    runner = _runner(tmp_path, fake_providers, "resend")
    _crash(runner, before=True)
    assert fake_providers.accepted("resend") == []
    report = _run(runner, DAY_ONE + AFTER_LEASE)
    assert (report.recovered, report.sent) == (3, 3)
    assert sorted(fake_providers.keys("resend")) == sorted(_rows(runner))


def test_resend_after_an_edit_is_refused_and_reported_for_review(tmp_path, fake_providers) -> None:
    runner = _runner(tmp_path, fake_providers, "resend")
    _crash(runner)
    # The lesson changed between the crash and the next run: the batch is not the same any
    # more, Resend refuses the reused key (409) and nothing goes out twice.
    lesson = next(runner.project.course_dir.glob("day-1-*.md"))
    lesson.write_text(lesson.read_text() + "\nOne more sentence.\n")
    fresh = Runner(runner.project, runner.settings)
    fresh.provider.http.retry = FAST_RETRY
    report = _run(fresh, DAY_ONE + AFTER_LEASE)
    assert (report.recovered, report.review, report.sent) == (3, 3, 0)
    assert len(fake_providers.accepted("resend")) == 3
    # One reason for all three, each naming its reader's address.
    errors = {r["last_error"].rsplit(" (to ", 1)[0] for r in _rows(runner).values()}
    assert len(errors) == 1 and "already handed over once" in errors.pop()
    assert all(" (to " in r["last_error"] for r in _rows(runner).values())


def test_resend_key_forgotten_after_a_day_means_review(tmp_path, fake_providers) -> None:
    runner = _runner(tmp_path, fake_providers, "resend")
    _crash(runner)
    report = _run(runner, DAY_ONE + timedelta(hours=24))
    assert (report.recovered, report.review, report.sent) == (3, 3, 0)
    assert fake_providers.send_requests["resend"] == 1  # not sent again
    assert {r["state"] for r in _rows(runner).values()} == {"review"}


def test_postmark_looks_the_keys_up_instead_of_sending_again(tmp_path, fake_providers) -> None:
    runner = _runner(tmp_path, fake_providers, "postmark")
    _crash(runner)
    report = _run(runner, DAY_ONE + AFTER_LEASE)
    assert (report.recovered, report.sent, report.review) == (3, 3, 0)
    assert fake_providers.send_requests["postmark"] == 1
    assert Counter(fake_providers.keys("postmark")) == Counter({k: 1 for k in _rows(runner)})


def test_postmark_crash_before_the_request_sends_once(tmp_path, fake_providers) -> None:
    runner = _runner(tmp_path, fake_providers, "postmark")
    _crash(runner, before=True)
    report = _run(runner, DAY_ONE + AFTER_LEASE)
    assert (report.recovered, report.sent) == (3, 3)
    assert Counter(fake_providers.keys("postmark")) == Counter({k: 1 for k in _rows(runner)})


def test_resend_busy_after_a_crash_keeps_the_batch_for_later(tmp_path, fake_providers) -> None:
    runner = _runner(tmp_path, fake_providers, "resend")
    _crash(runner)
    # Resend answers 429 to every attempt of the recovery: that request surely was not taken,
    # but the one before the crash was. Sending these rows in a new batch (a new key) would
    # deliver them twice, so they stay `sending` under the same key for a later run.
    fake_providers.script("resend", ["429"] * FAST_RETRY.max_attempts)
    report = _run(runner, DAY_ONE + AFTER_LEASE)
    assert (report.recovered, report.retry) == (3, 3)
    rows = _rows(runner)
    assert {r["state"] for r in rows.values()} == {"sending"}
    assert len({r["batch_key"] for r in rows.values()}) == 1
    assert _run(runner, DAY_ONE + AFTER_LEASE + timedelta(minutes=5)).recovered == 0  # not yet
    report = _run(runner, DAY_ONE + AFTER_LEASE + timedelta(minutes=16))
    assert (report.recovered, report.sent) == (3, 3)
    assert Counter(fake_providers.keys("resend")) == Counter({k: 1 for k in _rows(runner)})


def test_resend_scheduled_lessons_recovered_under_the_same_keys(tmp_path, fake_providers) -> None:
    runner = _runner(tmp_path, fake_providers, "resend")
    now = datetime.now(UTC).replace(microsecond=0)
    # Readers who joined now: lesson 1 is tomorrow morning, handed over ahead with a send time.
    fresh = {f"later{n}@example.org": "Europe/Berlin" for n in range(3)}
    for email, zone in fresh.items():
        sid, _ = subs.add_subscriber(
            runner.engine, email, timezone=zone, status="pending", consent_source="test", now=now
        )
        subs.activate(runner.engine, sid, runner.course, now)
    ahead = timedelta(days=30)
    crashing = Crashing(runner.provider)
    with pytest.raises(Killed):
        run_once(
            runner.engine,
            crashing,
            runner.render_lesson,
            now,
            default_send_time=runner.course.send_time,
            worker_id="w",
            handover=ahead,
        )
    assert len(fake_providers.accepted("resend", status="scheduled")) == 3
    report = run_once(
        runner.engine,
        runner.provider,
        runner.render_lesson,
        now + AFTER_LEASE,
        default_send_time=runner.course.send_time,
        worker_id="w",
        handover=timedelta(0),
    )
    # The three March readers' lesson 1 went in the same hand-over, due at once.
    assert (report.recovered, report.handed, report.sent) == (6, 3, 3)
    assert set(Counter(fake_providers.keys("resend")).values()) == {1}
    scheduled = fake_providers.accepted("resend", status="scheduled")
    assert sorted(r.to for r in scheduled) == sorted(fresh)
    assert all(r.send_at and r.send_at > now for r in scheduled)


def test_resend_pause_and_resume_before_the_send_hands_the_lesson_over_again(
    tmp_path, fake_providers
) -> None:
    runner = _runner(tmp_path, fake_providers, "resend")
    now = datetime.now(UTC).replace(microsecond=0)
    sid, _ = subs.add_subscriber(
        runner.engine,
        "later@example.org",
        timezone="Europe/Berlin",
        status="pending",
        consent_source="test",
        now=now,
    )
    subs.activate(runner.engine, sid, runner.course, now)

    def run(at: datetime):
        return run_once(
            runner.engine,
            runner.provider,
            runner.render_lesson,
            at,
            default_send_time=runner.course.send_time,
            worker_id="w",
            handover=timedelta(days=30),
        )

    run(now)  # lesson 1 of the new reader is scheduled at Resend for tomorrow morning
    (first,) = fake_providers.accepted("resend", status="scheduled")
    # Paused by mistake and resumed a minute later: the lesson is cancelled at Resend, put back
    # in the queue, and due at the very same time again.
    handed = subs.pause(runner.engine, sid, now)
    cancelled = asyncio.run(runner.cancel_handed(handed))
    assert subs.unhand(runner.engine, cancelled, now) == 1
    subs.resume(runner.engine, sid, runner.course, now + timedelta(minutes=1))
    report = run(now + timedelta(minutes=2))
    # The fixture's other readers may get their next lesson scheduled too; look at this one.
    assert report.handed >= 1
    scheduled = [
        r
        for r in fake_providers.accepted("resend", status="scheduled")
        if r.to == "later@example.org"
    ]
    # A new email at Resend, not the cancelled one answered again from the key's memory.
    assert [(r.to, r.send_at) for r in scheduled] == [("later@example.org", first.send_at)]
    assert scheduled[0].provider_id != first.provider_id
    row = _rows(runner)[first.key]
    assert (row["state"], row["provider_message_id"]) == ("handed", scheduled[0].provider_id)
