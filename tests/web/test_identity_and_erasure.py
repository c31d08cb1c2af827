"""Identities never repeat after `forget`, and erasure sticks against late provider events."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from fakes.webhook_signing import sendgrid_event
from sqlalchemy import select, text

from dripmail.engine import run_once
from dripmail.store import schema

pytestmark = pytest.mark.anyio
LESSON_1_DONE = datetime(2026, 6, 2, 23, 0, tzinfo=UTC)


async def _run(web, at: datetime) -> None:
    core = web.app.state.ctx.app
    await asyncio.to_thread(
        lambda: run_once(
            core.engine, core.provider, core.render_lesson, at,
            default_send_time=core.course.send_time,
        )
    )  # fmt: skip


def _sent_to(web) -> dict[str, str]:
    index = web.outbox / "index.jsonl"
    lines = index.read_text().splitlines() if index.exists() else []
    return {r["key"]: r["to"] for r in map(json.loads, lines)}


async def test_a_forgotten_readers_old_link_never_touches_the_next_one(web) -> None:
    core = web.app.state.ctx.app
    core.add_subscriber("old@example.com", timezone="Europe/Berlin")
    newest = core.add_subscriber("quinn@example.com", timezone="Europe/Berlin")
    old_unsubscribe = web.token(newest.id, "unsubscribe")
    old_preferences = web.token(newest.id, "preferences")
    core.forget("quinn@example.com")
    fresh = core.add_subscriber("new@example.com", timezone="Europe/Berlin")
    assert fresh.id > newest.id  # never the forgotten id again
    client = web.client()
    answer = await client.post(f"/unsubscribe/{old_unsubscribe}", data={"confirm": "yes"})
    assert answer.status_code == 404
    answer = await client.post(f"/preferences/{old_preferences}", data={"course": "paused"})
    assert answer.status_code == 404
    assert web.subscriber("new@example.com")["status"] == "active"
    await _run(web, LESSON_1_DONE)
    sent = _sent_to(web)
    key = f"test-week-s{fresh.id}-d1"
    assert sent[key] == "new@example.com"
    eml = (web.outbox / f"{key}.eml").read_text()
    assert "new@example.com" in eml  # really written, not skipped as "already there"


def _all_text(web) -> str:
    """Every stored value of every table, as text."""
    out = []
    with web.engine.connect() as conn:
        for table in schema.metadata.sorted_tables:
            for row in conn.execute(select(table)):
                out.append(" ".join(str(v) for v in row))
        out.append(" ".join(str(v) for v in conn.execute(text("PRAGMA user_version"))))
    return "\n".join(out).lower()


async def test_a_bounce_after_forget_stores_no_trace_of_the_address(web) -> None:
    core = web.app.state.ctx.app
    quinn = core.add_subscriber("quinn@example.com", timezone="Europe/Berlin")
    await _run(web, LESSON_1_DONE)
    key = f"test-week-s{quinn.id}-d1"
    before = [sendgrid_event("delivered", "quinn@example.com", key=key)]
    headers, body = web.keys.signed("sendgrid", before, web.clock.now)
    assert (await web.client().post("/webhooks/sendgrid", content=body, headers=headers)).json()[
        "stored"
    ] == 1
    core.forget("quinn@example.com")
    assert "quinn@example.com" not in _all_text(web)
    reason = "550 5.1.1 <quinn@example.com>... User unknown"
    late = [
        sendgrid_event("bounce", "quinn@example.com", key=key, reason=reason),
        sendgrid_event("bounce", "Quinn@Example.com", reason=reason),  # no key: by address
        sendgrid_event("open", "nobody@example.net"),
    ]
    headers, body = web.keys.signed("sendgrid", late, web.clock.now)
    answer = await web.client().post("/webhooks/sendgrid", content=body, headers=headers)
    assert answer.status_code == 200 and answer.json()["stopped"] == 0
    stored = _all_text(web)
    assert "quinn@example.com" not in stored and "nobody@example.net" not in stored
    with web.engine.connect() as conn:
        details = list(conn.execute(select(schema.events.c.detail)).scalars())
    assert any("<address>" in d for d in details)  # kept, without the address
