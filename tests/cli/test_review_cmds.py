"""`deliveries review` / `deliveries settle` after real ambiguous hand-overs.

The CLI's real entry point (`main()`, in process with its argv, environment and working folder
set) against the loopback fake Mailgun, which drops the connection after
accepting a request: Mailgun cannot be asked afterwards, so the lesson and the newsletter copy
land in review. Settling them is checked in the real SQLite database.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from dripmail.store.db import open_store
from dripmail.store.schema import broadcast_deliveries, broadcasts, deliveries, events
from tests.course_fixture import make_project

REPO = Path(__file__).resolve().parents[2]
SECRET = "review-test-secret-key-0123456789abcdef"
LESSON = "test-week-s1-d1"


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run `send.py ARGS` through `dripmail.cli.main` in this process; returns code and output."""
    from dripmail.cli import main

    for name in list(os.environ):
        if name.startswith(("DRIPMAIL_", "MAILGUN_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("USER", "operator-ann")

    def run(root: Path, env: dict[str, str], *args: str) -> Ran:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(root)
        monkeypatch.setattr(sys, "argv", [str(REPO / "send.py"), *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)

    return run


@pytest.fixture
def studio(tmp_path: Path, fake_providers, cli) -> tuple[Path, dict[str, str]]:
    """A project on Mailgun whose lesson 1 and newsletter copy both wait for review."""
    root = make_project(tmp_path)
    (root / "newsletters").mkdir()
    (root / "newsletters" / "june.md").write_text(
        "---\nsubject: June news\npreheader: What is new\n---\nHello hips.\n"
    )
    env = {
        "DRIPMAIL_PROVIDER": "mailgun",
        "DRIPMAIL_SECRET_KEY": SECRET,
        "DRIPMAIL_PUBLIC_URL": "https://join.studio.example.com",
        "MAILGUN_API_KEY": fake_providers.MAILGUN_KEY,
        "MAILGUN_DOMAIN": fake_providers.MAILGUN_DOMAIN,
        "DRIPMAIL_MAILGUN_BASE_URL": fake_providers.base("mailgun"),
    }
    start = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    add = cli(
        root,
        env,
        "subscribers",
        "add",
        "ana@example.org",
        "--timezone",
        "Europe/Berlin",
        "--start",
        start,
    )
    assert add.returncode == 0, add.stderr
    fake_providers.script("mailgun", ["drop_after", "drop_after"])
    run = cli(root, env, "run", "--quiet")
    assert run.returncode == 3, run.stdout + run.stderr
    assert "1 for review" in run.stdout
    sent = cli(root, env, "broadcast", "newsletters/june.md", "--yes", "--quiet")
    assert sent.returncode == 3, sent.stdout + sent.stderr
    assert fake_providers.keys("mailgun").count(LESSON) == 1
    return root, env


def _state(root: Path) -> tuple[str, str, str]:
    engine = open_store("sqlite:///dripmail.db", root)
    with engine.connect() as conn:
        lesson = conn.execute(select(deliveries.c.state).where(deliveries.c.key == LESSON))
        copy = conn.execute(select(broadcast_deliveries.c.state))
        status = conn.execute(select(broadcasts.c.status))
        out = (lesson.scalar_one(), copy.scalar_one(), status.scalar_one())
    engine.dispose()
    return out


def _settle_events(root: Path) -> list[tuple[str, str, str]]:
    engine = open_store("sqlite:///dripmail.db", root)
    with engine.connect() as conn:
        rows = conn.execute(
            select(events.c.delivery_key, events.c.type, events.c.detail)
            .where(events.c.provider == "dripmail", events.c.type.like("review_%"))
            .order_by(events.c.id)
        ).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def test_review_lists_lessons_and_newsletters_with_what_is_known(studio, cli) -> None:
    root, env = studio
    out = cli(root, env, "deliveries", "review")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("2 deliveries wait for review")
    assert f"{LESSON}  lesson day 1  to ana@example.org (active)" in text
    assert "newsletter june  to ana@example.org (active)" in text
    assert text.count("provider mailgun, batch b-") == 2 and "handed over 20" in text
    assert text.count("known: ") == 2 and "events: none from the provider" in text
    assert "deliveries settle KEY --as sent" in text
    status = cli(root, env, "status")
    assert "1 lesson(s) wait for review: `python " in status.stdout


def test_settle_resend_and_sent_are_recorded_with_who_and_when(studio, fake_providers, cli) -> None:
    root, env = studio
    copy_key = next(k for k in fake_providers.keys("mailgun") if k and k.startswith("nl-"))
    resend = cli(root, env, "deliveries", "settle", LESSON, "--as", "resend")
    assert resend.returncode == 0, resend.stderr
    assert f"{LESSON}: back in the queue, goes out on the next `run`" in resend.stdout
    planned = cli(root, env, "subscribers", "show", "ana@example.org").stdout
    assert "(to be sent again, asked by operator-ann)" in planned, planned
    again = cli(root, env, "run", "--quiet")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 sent" in again.stdout
    assert fake_providers.keys("mailgun").count(LESSON) == 2  # the operator asked for it

    sent = cli(
        root,
        env,
        "deliveries",
        "settle",
        "--all",
        "--as",
        "sent",
        "--by",
        "bob",
        "--note",
        "in the Mailgun log",
    )
    assert sent.returncode == 0, sent.stderr
    assert f"{copy_key}: settled as sent by bob" in sent.stdout
    assert _state(root) == ("sent", "sent", "sent")
    assert _settle_events(root) == [
        (LESSON, "review_resend", "by operator-ann"),
        (copy_key, "review_sent", "by bob: in the Mailgun log"),
    ]
    assert cli(root, env, "deliveries", "review").stdout == "nothing waits for review\n"
    shown = cli(root, env, "subscribers", "show", "ana@example.org")
    assert "review_sent" in shown.stdout and "by bob" in shown.stdout
    day1 = next(x for x in shown.stdout.splitlines() if x.startswith("  day 1 "))
    # Sent by the provider on the resend: the reason it was in review is stale and cleared
    # (the settlement stays in the events above).
    assert day1.startswith("  day 1  sent ") and "(" not in day1, shown.stdout


def test_newsletter_resend_reopens_the_broadcast_for_its_command(
    studio, fake_providers, cli
) -> None:
    root, env = studio
    copy_key = next(k for k in fake_providers.keys("mailgun") if k and k.startswith("nl-"))
    out = cli(root, env, "deliveries", "settle", copy_key, "--as", "resend", "--by", "cy")
    assert out.returncode == 0, out.stderr
    assert "broadcast newsletters/june.md` sends it" in out.stdout
    assert _state(root)[1:] == ("planned", "sending")
    sent = cli(root, env, "broadcast", "newsletters/june.md", "--yes", "--quiet")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert fake_providers.keys("mailgun").count(copy_key) == 2
    assert _state(root)[1:] == ("sent", "sent")


def test_settle_errors_are_one_line_and_change_nothing(studio, cli) -> None:
    root, env = studio
    both = cli(root, env, "deliveries", "settle", LESSON, "--all", "--as", "sent")
    assert both.returncode == 2 and "not both" in both.stderr and "Usage:" in both.stderr
    neither = cli(root, env, "deliveries", "settle", "--as", "sent")
    assert neither.returncode == 2 and "Usage:" in neither.stderr, neither.stderr
    assert "name the delivery keys to settle, or --all" in neither.stderr
    unknown = cli(root, env, "deliveries", "settle", "nope-1", LESSON, "--as", "sent")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "error: no delivery nope-1 (see `deliveries review`)"
    planned = cli(root, env, "deliveries", "settle", "test-week-s1-d7", "--as", "sent")
    assert planned.returncode == 1
    assert "test-week-s1-d7 is planned, not waiting for review" in planned.stderr
    bad = cli(root, env, "deliveries", "settle", LESSON, "--as", "maybe")
    assert bad.returncode == 2 and "Invalid value for '--as'" in bad.stderr
    # --by and --note are recorded and printed on one line: a break or a control is refused.
    for option, value in (("--by", "ann\nbob"), ("--note", "seen\u2028x"), ("--note", "a\x07")):
        split = cli(root, env, "deliveries", "settle", LESSON, "--as", "sent", option, value)
        assert split.returncode == 1 and split.stderr.count("\n") == 1, split.stderr
        assert f"{option} contains a control or line-break character (U+" in split.stderr
    gone = cli(root, env, "subscribers", "unsubscribe", "ana@example.org")
    assert gone.returncode == 0, gone.stderr
    refused = cli(root, env, "deliveries", "settle", "--all", "--as", "resend")
    assert refused.returncode == 1
    assert f"{LESSON}: left for review: ana@example.org is unsubscribed" in refused.stderr
    assert _state(root) == ("review", "review", "sent")
    assert _settle_events(root) == []
