"""Simulated provider events for `demo`, posted through the real webhook route.

After the demo's week, the outbox has "sent" every lesson but no provider ever reports back,
so the report would show sends and nothing else. This posts a few events shaped like
Mailgun's (delivered, opened, clicked, unsubscribed) to ``POST /webhooks/mailgun`` of the web
app, in process, signed with a throwaway key made for this run: they take the same path as a
real provider's (signature and freshness check, normalising, storing once, stopping mail on an
unsubscribe). Each carries the tag ``dripmail-demo-simulated`` in its raw event, and the demo
says they are simulated.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from pydantic import SecretStr
from sqlalchemy import select

from dripmail.runner import Runner
from dripmail.store.schema import deliveries, subscribers

TAG = "dripmail-demo-simulated"
RECEIVED_AFTER = timedelta(seconds=3)  # from an event to its webhook reaching dripmail


def _plan(rows: list, video: Callable[[int], str]) -> list[tuple[str, str, str, datetime, str]]:
    """(kind, email, key, when, url) for the demo's readers, deterministic.

    The first reader opens every lesson and clicks the video of each; the second opens the
    odd days and clicks once, 5 s after delivery (a link scanner, set apart by the report);
    the third opens the first three lessons and unsubscribes after the last one.
    """
    plan: list[tuple[str, str, str, datetime, str]] = []
    order: dict[int, int] = {}
    for sid, email, day, key, sent_at in rows:
        who = order.setdefault(sid, len(order)) % 3
        delivered = sent_at + timedelta(seconds=40)
        plan.append(("delivered", email, key, delivered, ""))
        if who == 0 or (who == 1 and day % 2) or (who == 2 and day <= 3):
            plan.append(("opened", email, key, sent_at + timedelta(hours=1, minutes=day), ""))
        if who == 0:
            later = sent_at + timedelta(hours=1, minutes=9)
            plan.append(("clicked", email, key, later, video(day)))
        if who == 1 and day == 1:
            plan.append(("clicked", email, key, delivered + timedelta(seconds=5), video(day)))
        if who == 2 and day == 7:
            plan.append(("unsubscribed", email, key, sent_at + timedelta(hours=3), ""))
    return plan


def _body(key: str, stamp: int, kind: str, email: str, sid_key: str, when: datetime, url: str):
    token = secrets.token_hex(25)
    signature = hmac.new(key.encode(), f"{stamp}{token}".encode(), hashlib.sha256).hexdigest()
    data: dict = {
        "event": kind,
        "id": secrets.token_urlsafe(16),
        "timestamp": when.timestamp(),
        "recipient": email,
        "tags": [TAG],
        "user-variables": {"dripmail_key": sid_key},
    }
    if url:
        data["url"] = url
    payload = {"signature": {"timestamp": str(stamp), "token": token, "signature": signature}}
    return json.dumps({**payload, "event-data": data}).encode()


def simulate_provider_events(runner: Runner, clock: dict[str, datetime]) -> list[str]:
    """Post the simulated events for every lesson the demo sent; returns lines to print.

    `clock["now"]` is the demo's simulated time after its week; each event is received
    RECEIVED_AFTER after it happened (its delivery, open, click). Raises DripmailError if the
    web app refuses them (it would be a bug).
    """
    import httpx

    from dripmail.web.app import create_app

    with runner.engine.connect() as conn:
        rows = conn.execute(
            select(
                subscribers.c.id,
                subscribers.c.email,
                deliveries.c.lesson_day,
                deliveries.c.key,
                deliveries.c.sent_at,
            )
            .join(subscribers)
            .where(deliveries.c.state == "sent", deliveries.c.sent_at.is_not(None))
            .order_by(subscribers.c.id, deliveries.c.lesson_day)
        ).all()
    if not rows:
        return []
    course = runner.course
    plan = _plan(list(rows), lambda day: course.lesson(day).video_url)
    key = secrets.token_hex(16)  # this run only: nothing outside the process can sign
    settings = runner.settings.model_copy(update={"mailgun_webhook_signing_key": SecretStr(key)})
    # Each event is received a few seconds after it happened (as a provider's webhook is), not
    # all at the end of the week: a report --until a day in the week shows that day's events.
    received = {"at": clock["now"]}
    app = create_app(runner.project, settings, preview=True, clock=lambda: received["at"])

    async def post_all() -> int:
        stored = 0
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 9))
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            for kind, email, sid_key, when, url in plan:
                received["at"] = when + RECEIVED_AFTER
                stamp = int(received["at"].timestamp())
                body = _body(key, stamp, kind, email, sid_key, when, url)
                answer = await client.post(
                    "/webhooks/mailgun", content=body, headers={"Content-Type": "application/json"}
                )
                if answer.status_code != 200:
                    from dripmail.errors import DripmailError

                    raise DripmailError(f"demo: the webhook route refused an event: {answer.text}")
                stored += int(answer.json().get("stored", 0))
        return stored

    stored = asyncio.run(post_all())
    app.state.ctx.engine.dispose()
    counts: dict[str, int] = {}
    for kind, *_ in plan:
        counts[kind] = counts.get(kind, 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    # Short lines: the demo's output reads whole in an 80-column terminal.
    return [
        "Simulated provider events (not from a real provider), each received 3 s after it",
        f"happened: {summary};",
        f"{stored} stored through POST /webhooks/mailgun, signed with a key made for this run.",
    ]
