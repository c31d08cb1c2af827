"""The preferences page promises the time the engine really sends: both ask
`schedule.next_send_at` (issue 11: one rule, one function)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from dripmail.engine import run_once
from dripmail.store.schema import deliveries
from dripmail.subscribers import activate, add_subscriber
from dripmail.web.links import local_when

pytestmark = pytest.mark.anyio
PROMISE = re.compile(r"arrives on (\w+ \d+ \w+ \d{4} at \d\d:\d\d \([\w/]+\))")


async def _run(web) -> None:
    """One engine pass at the clock's time (in a thread: it runs its own event loop)."""
    import anyio

    runner = web.app.state.ctx.runner
    await anyio.to_thread.run_sync(
        lambda: run_once(
            web.engine,
            runner.provider,
            runner.render_lesson,
            web.clock.now,
            default_send_time=runner.course.send_time,
            skip_weekends=runner.course.skip_weekends,
            worker_id="t",
        )
    )


def _sent_at(web, sid: int, day: int) -> datetime | None:
    with web.engine.connect() as conn:
        return conn.execute(
            select(deliveries.c.sent_at).where(
                deliveries.c.subscriber_id == sid, deliveries.c.lesson_day == day
            )
        ).scalar_one()


async def _promise_then_engine(web, zone: str, joined: datetime, change: dict, until: datetime):
    """Join, run hourly until just after a morning lesson, change preferences, read the page's
    promise, then run hourly and see when the next lesson really goes out."""
    web.clock.now = joined
    sid, _ = add_subscriber(
        web.engine, "ann@example.com", timezone=zone, status="pending",
        consent_source="test", now=joined, first_name="Ann",
    )  # fmt: skip
    activate(web.engine, sid, web.app.state.ctx.course(), joined)
    now = joined.replace(minute=0) + timedelta(hours=1)
    while now <= until:
        web.clock.now = now
        await _run(web)
        now += timedelta(hours=1)
    sent = [d for d in range(1, 8) if _sent_at(web, sid, d)]
    web.clock.now = until + timedelta(minutes=10)  # just after that morning's lesson
    url = f"/preferences/{web.token(sid, 'preferences')}"
    form = {"course": "active", "newsletters": "on", "send_time": "07:00", "timezone": zone}
    answer = await web.client().post(url, data={**form, **change})
    assert answer.status_code == 303
    page = await web.client().get(f"{url}?saved=1")
    (promised,) = PROMISE.findall(page.text)
    next_day = sent[-1] + 1
    now = until  # on the half hours from here, so a lesson goes out on its minute
    while _sent_at(web, sid, next_day) is None:
        now += timedelta(minutes=30)
        web.clock.now = now
        await _run(web)
    new_zone = change.get("timezone", zone)
    return promised, local_when(_sent_at(web, sid, next_day), new_zone)


async def test_a_later_send_time_set_after_the_mornings_lesson(web) -> None:
    # Berlin; lesson 1 on Tuesday 1 December 2026, lesson 2 on Wednesday at 07:00.
    promised, really = await _promise_then_engine(
        web,
        "Europe/Berlin",
        datetime(2026, 11, 30, 12, tzinfo=UTC),
        {"send_time": "20:00"},
        until=datetime(2026, 12, 2, 6, tzinfo=UTC),
    )
    assert promised == really == "Thursday 3 December 2026 at 20:00 (Europe/Berlin)"


async def test_moving_from_los_angeles_to_tokyo(web) -> None:
    # Lesson 2 at 07:00 on Wednesday in Los Angeles, already Thursday in Tokyo.
    promised, really = await _promise_then_engine(
        web,
        "America/Los_Angeles",
        datetime(2026, 11, 30, 20, tzinfo=UTC),
        {"timezone": "Asia/Tokyo"},
        until=datetime(2026, 12, 2, 15, tzinfo=UTC),
    )
    assert promised == really == "Friday 4 December 2026 at 07:00 (Asia/Tokyo)"
