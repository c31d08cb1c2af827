"""Failures stay small (issue 11 §3), lessons and newsletters, through the fake Postmark.

One message that cannot be built, or that the provider refuses, fails alone: its delivery is
marked failed with the reason and the reader's address and everyone else is mailed. The
opposite: when many messages in a row are refused for the same reason (the sender is not
verified), the pass stops, gives every one of them back to the queue and says why; once the
cause is fixed the next pass sends them all, once.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from course_fixture import make_project
from fakes.mail import FAST_LIMITS, FAST_RETRY
from sqlalchemy import Engine, select, update

from dripmail import broadcast as bc
from dripmail import subscribers as subs
from dripmail.config import Project, Settings
from dripmail.content import load_course, load_newsletter
from dripmail.engine import next_send_time, run_once
from dripmail.providers.postmark import PostmarkProvider
from dripmail.render import Renderer
from dripmail.runner import Runner
from dripmail.store.delivery_queries import previous_sent_at
from dripmail.store.schema import broadcast_deliveries, deliveries, subscribers
from dripmail.tokens import Signer

JOINED = datetime(2026, 6, 1, 12, tzinfo=UTC)  # Monday; lesson 1 on Tuesday 07:00 Berlin
DUE = datetime(2026, 6, 2, 5, 30, tzinfo=UTC)  # 07:30 in Berlin
BAD_NAME = "Dan\nBcc: eve@example.com"
SENDER_REFUSED = "Invalid 'From' address: the sender signature is not confirmed."


def _runner(tmp_path: Path, fake, count: int) -> Runner:
    project = Project(make_project(tmp_path))
    (project.newsletters_dir).mkdir(exist_ok=True)
    (project.newsletters_dir / "hips.md").write_text(
        "---\nsubject: Hips at the desk\npreheader: Three habits\n---\nHello {{ first_name }}.\n"
    )
    settings = Settings(  # type: ignore[call-arg]
        DRIPMAIL_PROVIDER="postmark",
        DRIPMAIL_SECRET_KEY="test-secret-key-for-links-0123456789abcdef",
        DRIPMAIL_DATABASE_URL="sqlite:///dripmail.db",
        POSTMARK_SERVER_TOKEN=fake.POSTMARK_TOKEN,
        DRIPMAIL_POSTMARK_BASE_URL=fake.base("postmark"),
    )
    runner = Runner(project, settings)
    # A patient read timeout: the fake validates each batch against Postmark's API file.
    runner.provider = PostmarkProvider(
        fake.POSTMARK_TOKEN,
        base=fake.base("postmark"),
        retry=replace(FAST_RETRY, timeout=60.0),
        limits=FAST_LIMITS,
        settle_seconds=0,
    )
    for i in range(count):
        sid, _ = subs.add_subscriber(
            runner.engine,
            f"p{i}@example.org",
            timezone="Europe/Berlin",
            status="pending",
            consent_source="test",
            now=JOINED,
            first_name=f"P{i}",
        )
        subs.activate(runner.engine, sid, runner.course, JOINED)
    return runner


def _store_bad_name(engine: Engine, email: str) -> None:
    """A name stored before names were cleaned at the door (old data, another tool)."""
    with engine.begin() as conn:
        conn.execute(
            update(subscribers).where(subscribers.c.email == email).values(first_name=BAD_NAME)
        )


def _run(runner: Runner, halt_after: int = 0):
    return run_once(
        runner.engine,
        runner.provider,
        runner.render_lesson,
        DUE,
        default_send_time=runner.course.send_time,
        halt_after=halt_after,
    )


def _lesson_one(engine: Engine) -> dict[str, tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(subscribers.c.email, deliveries.c.state, deliveries.c.last_error)
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(deliveries.c.lesson_day == 1)
        ).all()
    return {r.email: (r.state, r.last_error) for r in rows}


def test_a_lesson_that_cannot_be_built_fails_alone(tmp_path: Path, fake_providers) -> None:
    runner = _runner(tmp_path, fake_providers, 4)
    _store_bad_name(runner.engine, "p1@example.org")
    report = _run(runner, halt_after=3)
    assert (report.sent, report.failed, report.halted) == (3, 1, "")
    states = _lesson_one(runner.engine)
    state, error = states.pop("p1@example.org")
    assert state == "failed" and "line break" in (error or "") and "p1@example.org" in error
    assert {s for s, _ in states.values()} == {"sent"}
    sent_to = sorted(a.to for a in fake_providers.accepted("postmark"))
    assert sent_to == ["p0@example.org", "p2@example.org", "p3@example.org"]
    assert all("eve@example.com" not in str(a.headers) for a in fake_providers.accepted("postmark"))


def test_a_lesson_the_provider_refuses_fails_alone(tmp_path: Path, fake_providers) -> None:
    runner = _runner(tmp_path, fake_providers, 4)
    fake_providers.reject("p2@example.org")
    report = _run(runner, halt_after=1)  # a reader-specific refusal never halts
    assert (report.sent, report.failed, report.halted) == (3, 1, "")
    state, error = _lesson_one(runner.engine)["p2@example.org"]
    assert state == "failed" and "406" in (error or "") and "p2@example.org" in error


def test_the_same_refusal_for_everyone_stops_the_run_and_loses_nobody(
    tmp_path: Path, fake_providers
) -> None:
    runner = _runner(tmp_path, fake_providers, 12)
    fake_providers.refuse_all("postmark", SENDER_REFUSED)
    report = _run(runner, halt_after=5)
    assert report.halted and SENDER_REFUSED in report.halted and "\n" not in report.halted
    assert report.failed == 0 and report.sent == 0
    states = _lesson_one(runner.engine)
    assert Counter(s for s, _ in states.values()) == {"planned": 12}
    # The sender is verified now: the next run sends every one of them, once.
    fake_providers.refuse_all("postmark", None)
    again = _run(runner, halt_after=5)
    assert (again.sent, again.failed, again.halted) == (12, 0, "")
    assert Counter(a.to for a in fake_providers.accepted("postmark")) == {
        f"p{i}@example.org": 1 for i in range(12)
    }


def _broadcast(runner: Runner):
    newsletter = load_newsletter(runner.project, runner.project.newsletters_dir / "hips.md")
    row = bc.open_broadcast(runner.engine, newsletter, "all", DUE)
    bc.plan(runner.engine, row["id"], "all", DUE)
    started = bc.start(runner.engine, row["id"], DUE)
    compiled = Renderer(runner.project, load_course(runner.project)).newsletter(newsletter)
    render = bc.render_fn(
        compiled, "https://studio.example.com", Signer("k" * 32), row["id"], started
    )
    return row, render


def _copies(engine: Engine) -> Counter:
    with engine.connect() as conn:
        return Counter(conn.execute(select(broadcast_deliveries.c.state)).scalars())


@pytest.mark.parametrize("chunk", [2, 1000])
def test_newsletter_copy_that_cannot_be_built_fails_alone(
    tmp_path: Path, fake_providers, chunk: int
) -> None:
    runner = _runner(tmp_path, fake_providers, 4)
    _store_bad_name(runner.engine, "p1@example.org")
    row, render = _broadcast(runner)
    report = bc.send(runner.engine, runner.provider, row, render, DUE, chunk=chunk, halt_after=3)
    assert (report.sent, report.failed, report.halted) == (3, 1, "")
    with runner.engine.connect() as conn:
        failed = conn.execute(
            select(broadcast_deliveries.c.last_error).where(
                broadcast_deliveries.c.state == "failed"
            )
        ).scalar_one()
    assert "line break" in failed and "p1@example.org" in failed
    assert len(fake_providers.accepted("postmark")) == 3


def test_newsletter_refused_for_everyone_stops_and_resumes(tmp_path: Path, fake_providers) -> None:
    runner = _runner(tmp_path, fake_providers, 9)
    row, render = _broadcast(runner)
    fake_providers.refuse_all("postmark", SENDER_REFUSED)
    report = bc.send(runner.engine, runner.provider, row, render, DUE, chunk=3, halt_after=4)
    assert report.halted and SENDER_REFUSED in report.halted
    # It stopped at the chunk where the streak reached 4: the third chunk was never tried.
    assert fake_providers.send_requests["postmark"] == 2
    assert _copies(runner.engine) == {"planned": 9}
    assert bc.stats(runner.engine, row["id"]).failed == 0
    fake_providers.refuse_all("postmark", None)
    again = bc.send(runner.engine, runner.provider, row, render, DUE, chunk=3, halt_after=4)
    assert (again.sent, again.halted) == (9, "")
    assert _copies(runner.engine) == {"sent": 9}
    assert len({a.to for a in fake_providers.accepted("postmark")}) == 9


def test_a_halt_read_before_the_chunk_before_is_stored_still_holds_back_both(
    tmp_path: Path, fake_providers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a busy machine the provider can answer chunk 2 before chunk 1's answers are stored
    (the pipeline stores N-1 while N is out). Forced here: chunk 1's store waits for chunk
    2's answers, which trip the streak. Both chunks still go back to the queue."""
    runner = _runner(tmp_path, fake_providers, 9)
    row, render = _broadcast(runner)
    fake_providers.refuse_all("postmark", SENDER_REFUSED)
    answered = [0]  # chunks whose answers were read
    changed = threading.Condition()
    real_read, real_store = bc.read_answers, bc.store_answers

    def read_answers(*args, **kwargs):
        told = real_read(*args, **kwargs)
        with changed:
            answered[0] += 1
            changed.notify_all()
        return told

    def store_answers(engine, table, told, *args, **kwargs):
        if not told.halts:
            with changed:
                # A liveness bound only: chunk 2 is answered long before on any machine.
                assert changed.wait_for(lambda: answered[0] >= 2, timeout=120)
        return real_store(engine, table, told, *args, **kwargs)

    monkeypatch.setattr(bc, "read_answers", read_answers)
    monkeypatch.setattr(bc, "store_answers", store_answers)
    report = bc.send(runner.engine, runner.provider, row, render, DUE, chunk=3, halt_after=4)
    monkeypatch.undo()
    assert report.halted and SENDER_REFUSED in report.halted
    assert report.failed == 0
    assert _copies(runner.engine) == {"planned": 9}
    fake_providers.refuse_all("postmark", None)
    again = bc.send(runner.engine, runner.provider, row, render, DUE, chunk=3, halt_after=4)
    assert (again.sent, again.failed, again.halted) == (9, 0, "")


def test_a_refused_lesson_is_its_days_lesson_for_a_catch_up_reader(
    tmp_path: Path, fake_providers
) -> None:
    """Readers days behind, every message refused, four passes in one minute: each reader
    loses lesson 1 only; lesson 2 waits for the next local morning, and goes then."""
    runner = _runner(tmp_path, fake_providers, 5)
    fake_providers.refuse_all("postmark", SENDER_REFUSED)
    late = DUE + timedelta(days=4)  # 6 June 07:30 Berlin: lessons 1-5 all past their plan
    for second in range(0, 60, 15):
        now = late + timedelta(seconds=second)
        run_once(
            runner.engine,
            runner.provider,
            runner.render_lesson,
            now,
            default_send_time=runner.course.send_time,
            halt_after=20,
        )
    with runner.engine.connect() as conn:
        states = Counter(
            tuple(row) for row in conn.execute(select(deliveries.c.lesson_day, deliveries.c.state))
        )
    assert states[(1, "failed")] == 5 and states[(2, "planned")] == 5
    assert not any(state == "failed" for (day, state) in states if day > 1)
    # The loop sleeps until the next local morning: 7 June 07:00 Berlin is 05:00 UTC.
    morning = datetime(2026, 6, 7, 5, 0, tzinfo=UTC)
    wake = next_send_time(runner.engine, late, default_send_time=runner.course.send_time)
    assert wake == morning
    # The preferences page promises the same time (it reads the rule where the engine does).
    with runner.engine.connect() as conn:
        failed_at = previous_sent_at(conn, 1, 2)
    assert failed_at == late  # the first pass, which failed it (not its plan, 2 June)
    fake_providers.refuse_all("postmark", None)
    for now in (morning - timedelta(minutes=1), morning):
        report = run_once(
            runner.engine,
            runner.provider,
            runner.render_lesson,
            now,
            default_send_time=runner.course.send_time,
        )
    assert report.sent == 5
    assert sorted(a.to for a in fake_providers.accepted("postmark")) == [
        f"p{i}@example.org" for i in range(5)
    ]
