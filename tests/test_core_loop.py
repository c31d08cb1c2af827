"""One event loop and one pooled provider client per process, owned by the core
(`Dripmail.call_provider`): a run of many chunks reuses one HTTP client, and calls from several
threads (the web app's workers) run at the same time, not one by one behind a lock."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from course_fixture import make_project
from fakes.mail import FAST_RETRY
from sqlalchemy import insert

from dripmail.app import Dripmail
from dripmail.config import Project, Settings
from dripmail.store.schema import deliveries
from tests.broadcast_fixture import seed

NOW = datetime(2026, 6, 2, 12, tzinfo=UTC)


def _core(tmp_path: Path, fake) -> Dripmail:
    settings = Settings(  # type: ignore[call-arg]
        DRIPMAIL_PROVIDER="postmark",
        DRIPMAIL_PUBLIC_URL="https://subscriptions.example.org",
        DRIPMAIL_SECRET_KEY="test-secret-key-for-links-0123456789abcdef",
        DRIPMAIL_DATABASE_URL="sqlite:///dripmail.db",
        POSTMARK_SERVER_TOKEN=fake.POSTMARK_TOKEN,
        DRIPMAIL_POSTMARK_BASE_URL=fake.base("postmark"),
        DRIPMAIL_RATE_PER_SECOND="5000",
    )
    core = Dripmail(Project(make_project(tmp_path)), settings, clock=lambda: NOW)
    # Short back-off, patient timeout: the fake validates each batch on a busy machine.
    core.provider.http.retry = replace(FAST_RETRY, timeout=60.0)  # type: ignore[attr-defined]
    core.provider.settle_seconds = 0  # type: ignore[attr-defined]
    return core


def test_a_run_of_many_chunks_uses_one_loop_and_one_client(tmp_path: Path, fake_providers) -> None:
    core = _core(tmp_path, fake_providers)
    seed(core.engine, 30, status="active")
    with core.engine.begin() as conn:
        conn.execute(
            insert(deliveries),
            [
                {"subscriber_id": sid, "lesson_day": 1, "key": f"lesson-s{sid}-d1",
                 "due_at": NOW, "state": "planned", "attempts": 0, "updated_at": NOW}
                for sid in range(1, 31)
            ],
        )  # fmt: skip
    http = core.provider.http  # type: ignore[attr-defined]
    clients: set[int] = set()
    loops: set[int] = set()
    real_get = http._get

    def spying_get():
        client = real_get()
        clients.add(id(client))
        loops.add(id(asyncio.get_running_loop()))
        return client

    http._get = spying_get
    from dripmail.engine import run_once

    report = run_once(
        core.engine, core.provider, core.render_lesson, NOW,
        default_send_time=core.course.send_time, chunk=4, call=core.call_provider,
    )  # fmt: skip
    core.close()
    assert report.sent == 30  # in 8 chunks of at most 4
    assert len(loops) == 1 and len(clients) == 1


def test_calls_from_several_threads_run_at_the_same_time(tmp_path: Path, fake_providers) -> None:
    core = _core(tmp_path, fake_providers)
    callers = 4
    inside = 0
    all_in: asyncio.Event | None = None

    async def meet() -> bool:
        nonlocal inside, all_in
        all_in = all_in or asyncio.Event()
        inside += 1
        if inside == callers:
            all_in.set()
        # Behind a process-wide lock the first caller would wait here alone until the timeout.
        await asyncio.wait_for(all_in.wait(), timeout=120)
        return True

    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(core.call_provider(meet)))
        for _ in range(callers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    core.close()
    assert results == [True] * callers
