"""The welcome email: planned when the reader confirms, sent once through the engine.

Real app (in process), real SQLite, the outbox provider: the reader confirms by the link's
button, `run` hands over what is due, and the outbox shows what they received.
"""

from __future__ import annotations

import email
from datetime import timedelta
from email import policy

import pytest
from conftest import Web
from test_links import hand_over_week, lessons, pending

from dripmail.subscribers import rejoin, unsubscribe

pytestmark = pytest.mark.anyio

WELCOME = """\
---
subject: "You're in: what to have ready for day 1"
preheader: "A mat, a blanket, two blocks, and the time lesson 1 arrives."
---
## What to have ready

A mat and two blocks.
"""


@pytest.fixture
async def web(make_web, tmp_path):
    from course_fixture import make_project

    root = make_project(tmp_path / "project")  # where make_web builds its app
    (root / "course" / "welcome.md").write_text(WELCOME)
    w = make_web()
    yield w
    for client in w._clients:
        await client.aclose()


def received(web: Web) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(path.read_bytes(), policy=policy.default)
        for path in web.emails()
        if not path.name.startswith("confirm-")
    ]


async def confirm(web: Web, sid: int):
    return await web.client().post(f"/confirm/{web.token(sid, 'confirm')}")


async def test_confirming_sends_the_welcome_once_with_lesson_1_in_local_time(web: Web) -> None:
    sid = pending(web)  # Europe/Berlin; the clock is Monday 1 June 2026, 18:00 there
    page = await confirm(web, sid)
    assert page.status_code == 200
    # The confirm page still announces lesson 1, not the welcome.
    assert "Tuesday 2 June 2026 at 07:00 (Europe/Berlin)" in page.text
    week = lessons(web, sid)
    assert [x["lesson_day"] for x in week] == list(range(0, 8))
    assert week[0]["key"] == f"test-week-s{sid}-d0" and week[0]["due_at"] == web.clock.now

    await hand_over_week(web)
    (welcome,) = received(web)  # due at once; lesson 1 waits for tomorrow morning
    assert welcome["Subject"] == "You're in: what to have ready for day 1"
    text = welcome.get_body(("plain",)).get_content()
    html = welcome.get_body(("html",)).get_content()
    when = "tomorrow, Tuesday 2 June, at 07:00 your time (Europe/Berlin)"
    assert when in text and when in html
    assert "Welcome, Ann" in html and "Day 7" in html and "hello@studio.example.com" in html
    assert welcome["List-Unsubscribe"]

    await hand_over_week(web)  # a second run sends nothing more
    assert len(received(web)) == 1
    again = await confirm(web, sid)  # a second click plans nothing
    assert again.status_code == 200 and len(lessons(web, sid)) == 8

    web.clock.now += timedelta(days=1)  # Tuesday 16:00 UTC: lesson 1 went at 07:00 Berlin
    await hand_over_week(web)
    subjects = sorted(m["Subject"] for m in received(web))
    assert subjects == ["Day 1: a stretch for your hips", "You're in: what to have ready for day 1"]


async def test_coming_back_after_unsubscribing_gets_no_second_welcome(web: Web) -> None:
    sid = pending(web)
    await confirm(web, sid)
    await hand_over_week(web)
    unsubscribe(web.engine, sid, web.clock.now)
    web.clock.now += timedelta(days=2)
    assert rejoin(web.engine, sid, web.clock.now, consent_source="form")
    await confirm(web, sid)
    await hand_over_week(web)
    welcomes = [m for m in received(web) if m["Subject"].startswith("You're in")]
    assert len(welcomes) == 1


async def test_a_course_without_welcome_md_plans_only_the_lessons(make_web) -> None:
    w = make_web()
    sid = pending(w)
    await w.client().post(f"/confirm/{w.token(sid, 'confirm')}")
    assert [x["lesson_day"] for x in lessons(w, sid)] == list(range(1, 8))
    for client in w._clients:
        await client.aclose()
