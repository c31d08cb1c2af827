"""A running server uses the course's files as they are now (issue: `serve` kept the first
text it built until restarted, and would not start at all while a lesson had a typo, taking
one-click unsubscribe, preferences and webhooks down with it). In process: the real app, a real
project on disk, SQLite and the outbox."""

from __future__ import annotations

import email
from email import policy
from pathlib import Path

import pytest
from conftest import NOW, assert_clean
from fakes.webhook_signing import mailgun_event
from sqlalchemy import select

from dripmail.store.schema import events
from dripmail.subscribers import activate, add_subscriber

pytestmark = pytest.mark.anyio


def confirmations(web) -> dict[str, email.message.EmailMessage]:
    """The confirmation emails in the outbox, by recipient."""
    found = {}
    for path in web.emails():
        if path.name.startswith("confirm-"):
            message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
            found[message["To"].addresses[0].addr_spec] = message
    return found


def text_of(message: email.message.EmailMessage) -> str:
    return message.get_body(("plain",)).get_content()


def break_lesson(root: Path) -> tuple[Path, str, int]:
    """Day 2's `stretch:` line made invalid YAML; returns the file, its good text and the
    broken line's number (as `check` names it)."""
    (path,) = (root / "course").glob("day-2-*.md")
    good = path.read_text()
    lines = good.splitlines(keepends=True)
    number = next(i for i, line in enumerate(lines, 1) if line.startswith("stretch:"))
    lines[number - 1] = "stretch: [oops\n"
    path.write_text("".join(lines))
    return path, good, number


async def test_a_sign_up_gets_the_confirmation_template_as_it_is_now(web):
    client = web.client()
    assert (await client.post("/subscribe", data={"email": "first@example.com"})).status_code == 200
    template = web.root / "emails" / "confirm.txt.j2"
    template.write_text(template.read_text() + "\nEDITED: a line added while serving.\n")
    assert (await client.post("/subscribe", data={"email": "later@example.com"})).status_code == 200
    sent = confirmations(web)
    assert "EDITED" not in text_of(sent["first@example.com"])
    assert "EDITED: a line added while serving." in text_of(sent["later@example.com"])


async def test_the_confirm_page_names_the_lesson_subject_as_it_is_now(web):
    client = web.client()
    await client.post("/subscribe", data={"email": "ann@example.com"})
    sid = web.subscriber("ann@example.com")["id"]
    # Loaded before the edit (the page of an earlier reader).
    (await client.get("/")).raise_for_status()
    (lesson,) = (web.root / "course").glob("day-1-*.md")
    lesson.write_text(
        "\n".join(
            'subject: "Day 1, renamed while serving"' if line.startswith("subject:") else line
            for line in lesson.read_text().splitlines()
        )
        + "\n"
    )
    answer = await client.post(f"/confirm/{web.token(sid, 'confirm')}")
    assert answer.status_code == 200, answer.text
    assert "Day 1, renamed while serving" in answer.text


async def test_started_with_a_broken_lesson_unsubscribe_preferences_and_webhooks_work(make_web):
    web = make_web()
    sid, _ = add_subscriber(
        web.engine, "maya@example.com", timezone="Europe/Berlin", status="pending",
        consent_source="test", now=NOW,
    )  # fmt: skip
    activate(web.engine, sid, web.app.state.ctx.course(), NOW)
    other, _ = add_subscriber(
        web.engine, "bo@example.com", timezone="UTC", status="pending", consent_source="test",
        now=NOW,
    )  # fmt: skip
    activate(web.engine, other, web.app.state.ctx.course(), NOW)
    path, _good, line = break_lesson(web.root)
    web = make_web()  # a restart (a deploy) with the typo in place: it starts
    (problem,) = web.app.state.ctx.app.content_problems()
    assert problem.startswith(f"course/{path.name}:{line}: front matter is not valid YAML")
    client = web.client()
    # RFC 8058 one-click, as a mail client sends it.
    one_click = await client.post(
        f"/unsubscribe/{web.token(sid, 'unsubscribe')}",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 200, one_click.text
    assert web.subscriber("maya@example.com")["status"] == "unsubscribed"
    page = await client.get(f"/unsubscribe/{web.token(other, 'unsubscribe')}")
    assert page.status_code == 200 and "Unsubscribe" in page.text
    prefs = web.token(other, "preferences")
    shown = await client.get(f"/preferences/{prefs}")
    assert shown.status_code == 200, shown.text
    assert "Your next lesson" in shown.text  # the schedule, without lesson text
    saved = await client.post(
        f"/preferences/{prefs}", data={"send_time": "09:30", "timezone": "UTC", "course": ""}
    )
    assert saved.status_code == 303, saved.text
    assert web.subscriber("bo@example.com")["send_time"] == "09:30"
    headers, body = web.keys.signed(
        "mailgun", mailgun_event("failed", "bo@example.com", key=f"test-week-s{other}-d1"), NOW
    )
    hook = await client.post("/webhooks/mailgun", content=body, headers=headers)
    assert hook.status_code == 200 and hook.json()["stored"] == 1, hook.text
    assert web.subscriber("bo@example.com")["status"] == "bounced"
    for answer in (one_click, page, shown):
        assert_clean(answer)


async def test_a_sign_up_while_a_lesson_is_broken_is_stored_and_confirmed_once_fixed(make_web):
    web = make_web()
    path, good, line = break_lesson(web.root)
    client = web.client()
    form = {"email": "zoe@example.com", "timezone": ""}  # the course's zone, from course.toml
    answer = await client.post("/subscribe", data=form)
    assert answer.status_code == 200 and "Check your inbox" in answer.text
    row = web.subscriber("zoe@example.com")
    assert row["status"] == "pending" and row["timezone"] == "America/New_York"
    assert confirmations(web) == {}  # never the text of before the typo, never half an email
    with web.engine.connect() as conn:
        (why,) = conn.execute(
            select(events.c.detail).where(events.c.type == "confirm_not_sent")
        ).scalars()
    assert f"course/{path.name}:{line}:" in why and "(to zoe@example.com)" in why
    assert (await client.get("/")).status_code == 200  # the form page needs no lesson text
    path.write_text(good)  # fixed, no restart
    web.clock.now = NOW.replace(hour=17)  # after the quiet period: the reader asks again
    again = await client.post("/subscribe", data=form)
    assert again.status_code == 200
    assert list(confirmations(web)) == ["zoe@example.com"]
