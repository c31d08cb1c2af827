"""The real engine (`run_once`) and CLI (`send.py run`, `test-send`) against the fake providers.

The project is a real course on disk rendered by the real templates; the provider is built by
`get_provider` from settings exactly as in production, with only the base URL pointing at the
loopback fake.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_in_process import run_cli
from course_fixture import make_project
from fakes.mail import FAST_RETRY
from sqlalchemy import select

from dripmail import subscribers as subs
from dripmail.config import Project, Settings
from dripmail.engine import run_once
from dripmail.errors import ProviderAuthError
from dripmail.runner import Runner, handover_window
from dripmail.store.schema import deliveries

SECRET = "test-secret-key-for-links-0123456789abcdef"
READERS = {
    "ny@example.org": "America/New_York",
    "berlin@example.org": "Europe/Berlin",
    "kolkata@example.org": "Asia/Kolkata",
}


def _settings(tmp_path: Path, fake, provider: str, **extra: str) -> Settings:
    env = {
        "DRIPMAIL_PROVIDER": provider,
        "DRIPMAIL_SECRET_KEY": SECRET,
        "DRIPMAIL_PUBLIC_URL": "https://join.studio.example.com",
        "DRIPMAIL_DATABASE_URL": "sqlite:///dripmail.db",
        "DRIPMAIL_RATE_PER_SECOND": "5000",  # the fake has no limits; pacing is tested apart
        "POSTMARK_SERVER_TOKEN": fake.POSTMARK_TOKEN,
        "DRIPMAIL_POSTMARK_BASE_URL": fake.base("postmark"),
        "RESEND_API_KEY": fake.RESEND_KEY,
        "DRIPMAIL_RESEND_BASE_URL": fake.base("resend"),
        **extra,
    }
    return Settings(**env)  # type: ignore[arg-type]


def _runner(tmp_path: Path, fake, provider: str, now: datetime, **extra: str) -> Runner:
    project = Project(make_project(tmp_path))
    runner = Runner(project, _settings(tmp_path, fake, provider, **extra))
    runner.provider.http.retry = FAST_RETRY  # the fake's faults, answered in milliseconds
    for email, zone in READERS.items():
        sid, _ = subs.add_subscriber(
            runner.engine, email, timezone=zone, status="pending", consent_source="test", now=now
        )
        subs.activate(runner.engine, sid, runner.course, now)
    return runner


def _states(runner: Runner) -> Counter:
    with runner.engine.connect() as conn:
        return Counter(conn.execute(select(deliveries.c.state)).scalars())


def test_postmark_week_under_faults_each_lesson_exactly_once(tmp_path, fake_providers) -> None:
    start = datetime(2026, 3, 5, 12, tzinfo=UTC)
    runner = _runner(tmp_path, fake_providers, "postmark", start)
    runner.provider.settle_seconds = 0
    fake_providers.chaos("postmark", rate=0.2, seed=3)
    assert handover_window(runner.provider, runner.settings) == timedelta(0)
    now = start
    while now < start + timedelta(days=9):
        run_once(
            runner.engine,
            runner.provider,
            runner.render_lesson,
            now,
            default_send_time=runner.course.send_time,
            worker_id="w",
        )
        now += timedelta(hours=1)
    keys = Counter(fake_providers.keys("postmark"))
    assert len(keys) == 21 and set(keys.values()) == {1}
    assert _states(runner) == Counter({"sent": 21})
    record = fake_providers.accepted("postmark")[0]
    assert record.html and record.text and record.headers["List-Unsubscribe"].startswith("<http")
    assert record.tags == ["test-week-day-1"] and record.stream == "outbound"


def test_resend_schedules_the_week_ahead_and_an_unsubscribe_cancels(
    tmp_path, fake_providers
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    runner = _runner(tmp_path, fake_providers, "resend", now)
    fake_providers.chaos("resend", rate=0.2, seed=5, kinds=("429", "500_after", "drop_after"))
    # Every retry is safe (same key, same body); enough of them that 20% faults never exhaust.
    runner.provider.http.with_retry(max_attempts=10)
    window = handover_window(runner.provider, runner.settings)
    assert window == timedelta(days=30)
    for _ in range(8):  # each pass hands over the next lesson of each reader
        run_once(
            runner.engine,
            runner.provider,
            runner.render_lesson,
            now,
            default_send_time=runner.course.send_time,
            worker_id="w",
            handover=window,
        )
    scheduled = fake_providers.accepted("resend", status="scheduled")
    assert Counter(r.key for r in scheduled) == Counter({k: 1 for k in {r.key for r in scheduled}})
    assert len(scheduled) == 21 and _states(runner) == Counter({"handed": 21})
    assert all(r.send_at and r.send_at > now for r in scheduled)
    sid = subs.get_subscriber(runner.engine, "berlin@example.org")["id"]
    handed = subs.unsubscribe(runner.engine, sid, now)
    cancelled = asyncio.run(runner.cancel_handed(handed))
    assert len(cancelled) == 7
    gone = {r.to for r in fake_providers.accepted("resend", status="cancelled")}
    assert gone == {"berlin@example.org"}


def test_refused_token_stops_the_run_and_returns_every_claim(tmp_path, fake_providers) -> None:
    start = datetime(2026, 3, 5, 12, tzinfo=UTC)
    runner = _runner(tmp_path, fake_providers, "postmark", start, POSTMARK_SERVER_TOKEN="bad")
    with pytest.raises(ProviderAuthError, match="POSTMARK_SERVER_TOKEN"):
        run_once(
            runner.engine,
            runner.provider,
            runner.render_lesson,
            start + timedelta(days=2),
            default_send_time=runner.course.send_time,
            worker_id="w",
        )
    assert _states(runner) == Counter({"planned": 21})
    with runner.engine.connect() as conn:
        assert set(conn.execute(select(deliveries.c.attempts)).scalars()) == {0}


def _cli(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`send.py ARGS` through the entry point, in process, with settings from `env` alone (the
    CLI kill trials in tests/cli run real processes against the fake)."""
    prefixes = ("DRIPMAIL_", "POSTMARK_", "SENDGRID_", "MAILGUN_", "RESEND_")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return run_cli(tmp_path, *args, env={**clean, **env})


@pytest.mark.parametrize("provider", ["postmark", "resend"])
def test_send_py_run_and_test_send_through_the_base_url(tmp_path, fake_providers, provider) -> None:
    make_project(tmp_path)
    env = {
        "DRIPMAIL_PROVIDER": provider,
        "DRIPMAIL_SECRET_KEY": SECRET,
        "DRIPMAIL_PUBLIC_URL": "https://join.studio.example.com",
        "DRIPMAIL_RATE_PER_SECOND": "5000",
        "POSTMARK_SERVER_TOKEN": fake_providers.POSTMARK_TOKEN,
        "DRIPMAIL_POSTMARK_BASE_URL": fake_providers.base("postmark"),
        "RESEND_API_KEY": fake_providers.RESEND_KEY,
        "DRIPMAIL_RESEND_BASE_URL": fake_providers.base("resend"),
    }
    sent = _cli(tmp_path, env, "test-send", "2", "--to", "me@example.org")
    assert sent.returncode == 0, sent.stderr
    assert f"via {provider}" in sent.stdout
    added = _cli(
        tmp_path,
        env,
        "subscribers",
        "add",
        "ana@example.org",
        "--start",
        "2026-03-06",
        "--timezone",
        "Europe/Berlin",
        "--now",
        "2026-03-05T12:00Z",
    )
    assert added.returncode == 0, added.stderr
    # --yes: a simulated clock with a (fake) real provider must be asked for on purpose.
    run = _cli(tmp_path, env, "run", "--now", "2026-03-06T09:00Z", "--quiet", "--yes")
    assert run.returncode == 0, run.stderr
    assert "1 sent" in run.stdout
    keys = fake_providers.keys(provider)
    assert len(keys) == 2 and keys[1] == "test-week-s1-d1" and keys[0].startswith("test-d2-")
    again = _cli(tmp_path, env, "run", "--now", "2026-03-06T09:30Z", "--quiet", "--yes")
    assert again.returncode == 0, again.stderr
    # Re-running never sends lesson 1 again (Resend may hand lesson 2 over ahead of time).
    assert Counter(fake_providers.keys(provider))["test-week-s1-d1"] == 1
