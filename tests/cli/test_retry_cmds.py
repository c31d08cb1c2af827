"""`deliveries retry`: failed lessons back in the queue, through the real entry point (in
process) on a real SQLite database and the outbox provider.

A lesson fails for good here the way it does in production when a reader's stored name holds
a line break (the message cannot be built): `run` marks it failed and the next lesson follows.
The operator fixes the name (here by SQL: no command edits a name) and retries.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select, update

from dripmail.store.db import open_store
from dripmail.store.schema import deliveries, events, subscribers
from tests.cli_in_process import run_cli
from tests.course_fixture import make_project

JOINED = "2026-06-01T12:00:00+00:00"  # Monday: lesson 1 on Tuesday 07:00 in Berlin
DAY_1 = "2026-06-02T05:30:00+00:00"
DAY_2 = "2026-06-03T05:30:00+00:00"
BAD = "Dan\nBcc: eve@example.com"


def _cli(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DRIPMAIL_")}
    return run_cli(root, *args, env={**base, "COLUMNS": "200", "USER": "ann", **env})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = make_project(tmp_path)
    rows = [f"p{i}@example.org,P{i},Europe/Berlin" for i in range(4)]
    (root / "people.csv").write_text("email,first_name,timezone\n" + "\n".join(rows) + "\n")
    out = _cli(root, "subscribers", "import", "people.csv", "--now", JOINED)
    assert out.returncode == 0, out.stderr
    return root


def _store(root: Path):
    return open_store("sqlite:///dripmail.db", root)


def _name(root: Path, email: str, name: str) -> None:
    engine = _store(root)
    with engine.begin() as conn:
        conn.execute(
            update(subscribers).where(subscribers.c.email == email).values(first_name=name)
        )
    engine.dispose()


def _lesson(root: Path, email: str, day: int) -> dict:
    engine = _store(root)
    with engine.connect() as conn:
        row = (
            conn.execute(
                select(deliveries)
                .join(subscribers)
                .where(subscribers.c.email == email, deliveries.c.lesson_day == day)
            )
            .mappings()
            .one()
        )
    engine.dispose()
    return dict(row)


def _fail_lesson_1(root: Path, *emails: str) -> None:
    """Lesson 1 of `emails` fails for good (bad stored names); the others get it."""
    for email in emails:
        _name(root, email, BAD)
    out = _cli(root, "run", "--now", DAY_1, "-q")
    assert out.returncode == 3, out.stdout + out.stderr
    assert f"{len(emails)} failed" in out.stdout
    for email in emails:
        assert _lesson(root, email, 1)["state"] == "failed"


def test_retry_needs_a_selection_usage_error(project: Path) -> None:
    out = _cli(project, "deliveries", "retry")
    assert out.returncode == 2, out.stderr
    assert "say which failed lessons to retry" in out.stderr and "--all" in out.stderr
    both = _cli(project, "deliveries", "retry", "--all", "--reason", "x")
    assert both.returncode == 2 and "leave out the filters" in both.stderr


def test_retry_puts_a_fixed_lesson_back_and_run_sends_it_once_in_order(project: Path) -> None:
    _fail_lesson_1(project, "p0@example.org")
    _name(project, "p0@example.org", "Dan")  # the cause is fixed
    before = _lesson(project, "p0@example.org", 1)
    status = _cli(project, "status")
    assert "1 lesson(s) failed for good: once the cause is fixed, `" in status.stdout
    assert "deliveries retry --dry-run` shows what would go back in the queue" in status.stdout

    dry = _cli(project, "deliveries", "retry", "--reason", "LINE BREAK", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: 1 failed lesson would go back in the queue:" in dry.stdout
    assert "test-week-s1-d1" in dry.stdout and "to p0@example.org" in dry.stdout
    assert "goes out on the next `run`" in dry.stdout
    assert "cannot build the message" in dry.stdout and "nothing was written" in dry.stdout
    assert _lesson(project, "p0@example.org", 1) == before

    out = _cli(project, "deliveries", "retry", "--address", "P0@Example.org")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("put 1 failed lesson back in the queue (asked by ann)")
    assert "test-week-s1-d1" in out.stdout and out.stderr == ""
    row = _lesson(project, "p0@example.org", 1)
    assert row["state"] == "planned" and row["batch_key"] is None and row["handed_at"] is None
    assert row["attempts"] == before["attempts"]  # hand-overs so far stay counted
    assert row["last_error"] == "back in the queue, asked by ann"
    engine = _store(project)
    with engine.connect() as conn:
        kinds = conn.execute(
            select(events.c.type, events.c.detail).where(events.c.delivery_key == row["key"])
        ).all()
    engine.dispose()
    assert len(kinds) == 1 and kinds[0][0] == "lesson_retry"
    assert kinds[0][1].startswith("lesson 1 by ann (failed: cannot build the message")

    # Lesson 2 was due on day 2 but waits for lesson 1: the day-2 run sends lesson 1 only.
    sent = _cli(project, "run", "--now", DAY_2, "-q")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert _lesson(project, "p0@example.org", 1)["state"] == "sent"
    assert _lesson(project, "p0@example.org", 2)["state"] == "planned"
    assert _lesson(project, "p0@example.org", 1)["last_error"] is None  # a stale reason goes
    files = [p.name for p in (project / "outbox").glob("*s1-d*.eml")]
    assert files == ["test-week-s1-d1.eml"]
    again = _cli(project, "deliveries", "retry", "--address", "p0@example.org")
    assert again.returncode == 0
    assert again.stdout.strip() == "nothing to retry: no failed lesson to p0@example.org"


def test_retry_never_requeues_for_a_reader_who_stopped_and_says_why(project: Path) -> None:
    _fail_lesson_1(project, "p0@example.org", "p1@example.org", "p2@example.org")
    for email in ("p0@example.org", "p1@example.org", "p2@example.org"):
        _name(project, email, "Fixed")
    assert _cli(project, "subscribers", "unsubscribe", "p1@example.org").returncode == 0
    from dripmail.subscribers import suppress

    engine = _store(project)
    sid = _lesson(project, "p2@example.org", 1)["subscriber_id"]
    suppress(engine, sid, "complained", _lesson(project, "p2@example.org", 1)["updated_at"])
    engine.dispose()

    status = _cli(project, "status").stdout
    # Only the lesson a retry can requeue is pointed at; the other two are said to be final.
    assert "1 lesson(s) failed for good: once the cause is fixed" in status
    assert "2 failed lesson(s) are final: the reader stopped mail" in status
    named = _cli(project, "deliveries", "retry", "--address", "p1@example.org", "--dry-run")
    assert "test-week-s2-d1: p1@example.org is unsubscribed" in named.stderr  # asked: listed

    out = _cli(project, "deliveries", "retry", "--all")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("put 1 failed lesson back in the queue")
    assert "p0@example.org" in out.stdout and out.stderr == ""
    assert (
        "left out 2 failed lessons are final (1 unsubscribed, 1 complained): the reader "
        "stopped mail or already got a later lesson, so no retry requeues them"
    ) in out.stdout.splitlines()
    assert _lesson(project, "p1@example.org", 1)["state"] == "failed"
    assert _lesson(project, "p2@example.org", 1)["state"] == "failed"
    # Every time after: nothing to do, exit 0, the same one line; status no longer points at
    # a retry.
    again = _cli(project, "deliveries", "retry", "--all")
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert "left out 2 failed lessons are final" in again.stdout
    assert "nothing was requeued" in again.stdout
    status = _cli(project, "status").stdout
    assert "failed for good" not in status and "2 failed lesson(s) are final" in status

    assert _cli(project, "subscribers", "forget", "p1@example.org", "--yes").returncode == 0
    gone = _cli(project, "deliveries", "retry", "--address", "p1@example.org")
    assert gone.returncode == 1
    assert gone.stderr.strip() == (
        "error: p1@example.org was erased (`subscribers forget`): nothing of theirs can be "
        "sent again"
    )
    unknown = _cli(project, "deliveries", "retry", "--address", "nobody@example.org")
    assert unknown.returncode == 1 and "no subscriber nobody@example.org" in unknown.stderr


def test_retry_leaves_a_lesson_whose_reader_got_a_later_one(project: Path) -> None:
    _fail_lesson_1(project, "p0@example.org")
    _name(project, "p0@example.org", "Dan")
    # Failed counts as done: lesson 2 goes out on day 2. Lesson 1 now would come after it.
    assert _cli(project, "run", "--now", DAY_2, "-q").returncode == 0
    assert _lesson(project, "p0@example.org", 2)["state"] == "sent"
    out = _cli(project, "deliveries", "retry", "--address", "p0@example.org")
    assert out.returncode == 3
    assert "nothing was requeued" in out.stdout
    assert (
        "test-week-s1-d1: p0@example.org's lesson 2 already went out: lesson 1 would arrive "
        "after it"
    ) in out.stderr
    assert "(1 a later lesson went out)" in out.stderr
    assert _lesson(project, "p0@example.org", 1)["state"] == "failed"


def test_retry_of_a_completed_readers_last_lesson_makes_them_active(project: Path) -> None:
    """Lesson 7 failed, so the reader counted as completed: requeued, `run` sends it."""
    for day in range(1, 7):
        out = _cli(project, "run", "--now", f"2026-06-{1 + day:02d}T05:30:00+00:00", "-q")
        assert out.returncode == 0, out.stdout
    _name(project, "p3@example.org", BAD)
    assert _cli(project, "run", "--now", "2026-06-08T05:30:00+00:00", "-q").returncode == 3
    engine = _store(project)
    with engine.connect() as conn:
        status = conn.execute(
            select(subscribers.c.status).where(subscribers.c.email == "p3@example.org")
        ).scalar_one()
    assert status == "completed"
    _name(project, "p3@example.org", "P3")
    early = _cli(project, "deliveries", "retry", "--until", "2026-06-07")
    assert early.returncode == 0
    assert (
        early.stdout.strip() == "nothing to retry: no failed lesson failed on or before 2026-06-07"
    )
    out = _cli(project, "deliveries", "retry", "--since", "2026-06-08", "--until", "2026-06-08")
    assert out.returncode == 0, out.stderr
    assert "put 1 failed lesson back" in out.stdout and "test-week-s4-d7" in out.stdout
    with engine.connect() as conn:
        status = conn.execute(
            select(subscribers.c.status).where(subscribers.c.email == "p3@example.org")
        ).scalar_one()
    engine.dispose()
    assert status == "active"
    assert _cli(project, "run", "--now", "2026-06-08T06:00:00+00:00", "-q").returncode == 0
    assert _lesson(project, "p3@example.org", 7)["state"] == "sent"


def test_retry_above_the_threshold_needs_yes_without_a_terminal(project: Path) -> None:
    _fail_lesson_1(project, "p0@example.org", "p1@example.org")
    out = _cli(project, "deliveries", "retry", "--all", DRIPMAIL_CONFIRM_THRESHOLD="1")
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "error: 2 lessons is above DRIPMAIL_CONFIRM_THRESHOLD (1): re-run with --yes to "
        "requeue them (--dry-run lists them)"
    )
    assert _lesson(project, "p0@example.org", 1)["state"] == "failed"
    yes = _cli(project, "deliveries", "retry", "--all", "--yes", DRIPMAIL_CONFIRM_THRESHOLD="1")
    assert yes.returncode == 0, yes.stderr
    assert "put 2 failed lessons back in the queue" in yes.stdout


def test_retry_bad_date_is_one_line(project: Path) -> None:
    out = _cli(project, "deliveries", "retry", "--since", "yesterday")
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "error: --since 'yesterday' is not a date: use YYYY-MM-DD (a UTC day)"
    )


def test_retry_help_teaches(project: Path) -> None:
    out = _cli(project, "deliveries", "retry", "--help")
    text = " ".join(out.stdout.split())
    for said in ("--dry-run", "unsubscribed, bounced, complained, suppressed or erased",
                 "one a day", "Exit code 0", "3: done, but some"):  # fmt: skip
        assert said in text, said


def test_lessons_the_provider_refused_go_out_once_after_the_cause_is_fixed(
    project: Path, fake_providers
) -> None:
    """The case the command is for: Postmark refused every lesson (the sender signature was
    not confirmed yet; four readers, fewer than the halt's 20 in a row). Once it is fixed,
    a retry by reason puts them back and the next run delivers each once."""
    env = {
        "DRIPMAIL_PROVIDER": "postmark",
        "POSTMARK_SERVER_TOKEN": fake_providers.POSTMARK_TOKEN,
        "DRIPMAIL_POSTMARK_BASE_URL": fake_providers.base("postmark"),
        "DRIPMAIL_SECRET_KEY": "a-test-secret-that-is-long-enough",
        "DRIPMAIL_PUBLIC_URL": "https://join.studio.example.com",
    }
    fake_providers.refuse_all("postmark", "The From address is not a confirmed signature")
    failed = _cli(project, "run", "--now", DAY_1, "--yes", "-q", **env)
    assert failed.returncode == 3 and "4 failed" in failed.stdout, failed.stdout
    fake_providers.refuse_all("postmark", None)
    dry = _cli(
        project, "deliveries", "retry", "--reason", "confirmed signature", "--dry-run", **env
    )
    assert "dry run: 4 failed lessons would go back in the queue:" in dry.stdout, dry.stdout
    out = _cli(project, "deliveries", "retry", "--reason", "confirmed signature", **env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("put 4 failed lessons back in the queue (asked by ann)")
    sent = _cli(project, "run", "--now", DAY_2, "--yes", "-q", **env)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "4 sent" in sent.stdout
    keys = [a.key for a in fake_providers.accepted("postmark")]
    assert sorted(keys) == [f"test-week-s{i}-d1" for i in range(1, 5)]


@pytest.mark.parametrize("bad", ["Ann\nBob", "Ann\u2028Bob", "Ann\x07", "Ann\u202eboB"])
@pytest.mark.parametrize("option", ["--by", "--note"])
def test_retry_refuses_by_or_note_that_would_break_a_line(
    project: Path, option: str, bad: str
) -> None:
    _fail_lesson_1(project, "p0@example.org")
    _name(project, "p0@example.org", "Dan")
    out = _cli(project, "deliveries", "retry", "--all", option, bad)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    code = f"U+{ord(bad[3]):04X}"
    assert f"{option} contains a control or line-break character ({code})" in out.stderr
    assert _lesson(project, "p0@example.org", 1)["state"] == "failed"  # nothing requeued


@pytest.mark.parametrize("who", ["", "   "])
def test_retry_refuses_an_empty_by(project: Path, who: str) -> None:
    _fail_lesson_1(project, "p0@example.org")
    _name(project, "p0@example.org", "Dan")
    out = _cli(project, "deliveries", "retry", "--all", "--by", who)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr == "error: --by is empty: give who decides, or leave --by out for $USER\n"
    assert _lesson(project, "p0@example.org", 1)["state"] == "failed"  # nothing requeued


def test_a_stored_retry_note_is_shown_on_one_line_and_names_its_lesson(project: Path) -> None:
    """A note stored before the check (or by hand) cannot split `subscribers show`'s lines;
    each `lesson_retry` event says which lesson it put back."""
    _fail_lesson_1(project, "p0@example.org")
    _name(project, "p0@example.org", "Dan")
    out = _cli(project, "deliveries", "retry", "--all", "--by", "ops", "--note", "name fixed")
    assert out.returncode == 0 and "(asked by ops)" in out.stdout
    engine = _store(project)
    with engine.begin() as conn:
        conn.execute(
            update(events)
            .where(events.c.type == "lesson_retry")
            .values(detail="lesson 1 by ops: fixed\nBcc\u2028x\x07 (failed: y)")
        )
    engine.dispose()
    shown = _cli(project, "subscribers", "show", "p0@example.org").stdout.splitlines()
    (line,) = [x for x in shown if "lesson_retry" in x]
    assert line.endswith("lesson 1 by ops: fixed\\u000aBcc\\u2028x\\u0007 (failed: y)"), line


def test_retry_lists_the_lessons_then_asks_in_the_right_number(project: Path) -> None:
    """On a terminal above the threshold: which lessons first, then "1 failed lesson"."""
    import pty
    import sys

    from tests.terminal import read_to_end, read_until

    _fail_lesson_1(project, "p0@example.org")
    _name(project, "p0@example.org", "Dan")
    send = Path(__file__).resolve().parents[2] / "send.py"
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIPMAIL_")}
    proc = subprocess.Popen(
        [sys.executable, str(send), "--root", str(project), "deliveries", "retry", "--all"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**env, "DRIPMAIL_CONFIRM_THRESHOLD": "0", "COLUMNS": "200", "USER": "ann"},
    )
    os.close(follower)
    seen = read_until(leader, b"back in the queue?")
    os.write(leader, b"n\n")
    assert proc.wait(timeout=300) == 1
    said = (seen + read_to_end(leader)).decode()
    listed = said.index("test-week-s1-d1")
    assert listed < said.index("Put 1 failed lesson back in the queue? [y/N]"), said
    assert "1 failed lesson would go back in the queue:" in said and "to p0@example.org" in said
    assert "nothing was requeued" in said
    assert _lesson(project, "p0@example.org", 1)["state"] == "failed"


def test_retry_help_names_the_values_of_by_and_note() -> None:
    out = run_cli(Path.cwd(), "deliveries", "retry", "--help", env={**os.environ, "COLUMNS": "200"})
    said = " ".join(out.stdout.split())
    assert "--by NAME" in said and "--note TEXT" in said and "<str>" not in said


def test_status_tells_failed_lessons_a_retry_leaves_for_now_from_those_it_requeues(
    project: Path,
) -> None:
    """A reader back to `pending` (asked to confirm again) keeps a failed lesson that no
    retry requeues until they confirm: `status` does not point a retry at it."""
    _fail_lesson_1(project, "p0@example.org", "p1@example.org")
    for email in ("p0@example.org", "p1@example.org"):
        _name(project, email, "Fixed")
    engine = _store(project)
    with engine.begin() as conn:
        conn.execute(
            update(subscribers)
            .where(subscribers.c.email == "p1@example.org")
            .values(status="pending")
        )
    engine.dispose()
    status = _cli(project, "status").stdout
    assert "1 lesson(s) failed for good: once the cause is fixed" in status
    assert "1 failed lesson(s) cannot go back in the queue yet (1 pending)" in status
    out = _cli(project, "deliveries", "retry", "--all")
    assert out.stdout.startswith("put 1 failed lesson back in the queue")
    assert "p1@example.org is pending (not confirmed)" in out.stderr
