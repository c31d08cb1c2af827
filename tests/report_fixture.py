"""A course project with a known history, made through the real paths, for the report's tests.

Sign-ups through POST /subscribe, confirmations through POST /confirm/<token>, lessons sent by
the engine (outbox provider) at their due times, an unsubscribe through POST /unsubscribe,
a newsletter through the broadcast module, and provider events through POST /webhooks/sendgrid
signed like SendGrid signs them. `EXPECTED` is every figure the report must show for it.

People (sign-up 2026-06-01 16:00 UTC): a (New York, confirms after 10 min, finishes the week,
gets the newsletter), b (Berlin, 30 min; a scanner click on lesson 1; complains after lesson
3), c (New York, 2 h; clicks another link; unsubscribes after lesson 2), d (Kolkata, never
confirms), e (Berlin, 1 h; lesson 1 hard-bounces).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import select

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from course_fixture import make_project  # noqa: E402
from fakes.webhook_signing import WebhookKeys, sendgrid_event  # noqa: E402

from dripmail.config import Project, Settings  # noqa: E402
from dripmail.store.schema import broadcast_deliveries, deliveries, subscribers  # noqa: E402

SECRET = "test-secret-key-for-links-0123456789"
PUBLIC = "http://testserver"
T0 = datetime(2026, 6, 1, 16, 0, tzinfo=UTC)
ISSUE = "---\nsubject: Hips at the desk\npreheader: Three habits for long days\n---\nHello.\n"
VIDEO = "https://studio.example.com/videos/day-1"
SHOP = "https://studio.example.com/shop"
BLOG = "https://studio.example.com/blog"
PEOPLE = {
    "a": ("America/New_York", timedelta(minutes=10)),
    "b": ("Europe/Berlin", timedelta(minutes=30)),
    "c": ("America/New_York", timedelta(hours=2)),
    "d": ("Asia/Kolkata", None),
    "e": ("Europe/Berlin", timedelta(hours=1)),
}
AFTER = datetime(2026, 7, 1, tzinfo=UTC)  # every day of the history is over


@dataclass
class History:
    """The project, its settings and the app that made the history."""

    root: Path
    settings: Settings
    keys: WebhookKeys
    app: object
    clock: list[datetime]
    database_url: str = ""

    @property
    def engine(self):
        return self.app.state.ctx.engine  # type: ignore[attr-defined]

    def env(self) -> dict[str, str]:
        """Environment for `send.py` subprocesses on this project."""
        return {
            **self.keys.env(),
            "DRIPMAIL_DATABASE_URL": self.database_url or f"sqlite:///{self.root / 'report.db'}",
            "DRIPMAIL_OUTBOX_DIR": str(self.root / "outbox"),
            "DRIPMAIL_PUBLIC_URL": PUBLIC,
            "DRIPMAIL_SECRET_KEY": SECRET,
        }


def make_history(root: Path, database_url: str = "") -> History:
    """Build the project under `root` and play the history through the app (a few seconds).

    The database is SQLite in `root` unless `database_url` names another (emptied first).
    """
    from dripmail.web.app import create_app

    make_project(root)
    (root / "newsletters").mkdir(exist_ok=True)
    (root / "newsletters" / "hips.md").write_text(ISSUE)
    keys = WebhookKeys.generate()
    h = History(root, None, keys, None, [T0], database_url)  # type: ignore[arg-type]
    if database_url:
        _empty(database_url, root)
    h.settings = keys.settings(**{k: v for k, v in h.env().items() if k.startswith("DRIPMAIL")})
    h.app = create_app(Project(root), h.settings, clock=lambda: h.clock[0])
    asyncio.run(_play(h))
    return h


def _empty(url: str, root: Path) -> None:
    from sqlalchemy import text

    from dripmail.store.db import open_store

    engine = open_store(url, root)
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE subscribers, deliveries, events, broadcasts, broadcast_deliveries,"
                " suppressions, webhook_nonces, report_days RESTART IDENTITY CASCADE"
            )
        )
    engine.dispose()


def _at(h: History, when: datetime) -> None:
    h.clock[0] = when


async def _run_until(h: History, until: datetime) -> None:
    from dripmail.engine import next_due, run_once

    runner = h.app.state.ctx.runner  # type: ignore[attr-defined]
    while (due := next_due(h.engine)) is not None and due <= until:
        _at(h, due)
        # run_once runs its own event loop: in a thread, as `run` would from cron.
        await asyncio.to_thread(
            lambda at=due: run_once(
                h.engine,
                runner.provider,
                runner.render_lesson,
                at,
                default_send_time=runner.course.send_time,
            )
        )
    _at(h, until)


def _sid(h: History, who: str) -> int:
    with h.engine.connect() as conn:
        return conn.execute(
            select(subscribers.c.id).where(subscribers.c.email == f"{who}@example.org")
        ).scalar_one()


def _sent_at(h: History, who: str, day: int) -> datetime:
    with h.engine.connect() as conn:
        return conn.execute(
            select(deliveries.c.sent_at).where(
                deliveries.c.subscriber_id == _sid(h, who), deliveries.c.lesson_day == day
            )
        ).scalar_one()


def _key(h: History, who: str, day: int) -> str:
    return f"test-week-s{_sid(h, who)}-d{day}"


def _ev(kind: str, who: str, key: str, at: datetime, **extra: object) -> dict:
    return sendgrid_event(
        kind, f"{who}@example.org", key=key, timestamp=int(at.timestamp()), **extra
    )


async def _hook(h: History, client: httpx.AsyncClient, batch: list[dict]) -> None:
    headers, body = h.keys.signed("sendgrid", batch, h.clock[0])
    answer = await client.post("/webhooks/sendgrid", content=body, headers=headers)
    assert answer.status_code == 200 and answer.json()["stored"] == len(batch), answer.text


async def _play(h: History) -> None:
    from dripmail.tokens import Signer

    signer = Signer(SECRET)
    for i, (who, (zone, _)) in enumerate(PEOPLE.items()):
        transport = httpx.ASGITransport(app=h.app, client=(f"203.0.113.{i + 1}", 5000))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC) as client:
            answer = await client.post(
                "/subscribe", data={"email": f"{who}@example.org", "timezone": zone}
            )
            assert answer.status_code == 200, answer.text
    transport = httpx.ASGITransport(app=h.app, client=("203.0.113.50", 5000))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC) as client:
        for who, (_zone, after) in sorted(PEOPLE.items(), key=lambda p: p[1][1] or timedelta(9)):
            if after is None:
                continue
            _at(h, T0 + after)
            token = signer.make(_sid(h, who), "confirm")
            answer = await client.post(f"/confirm/{token}")
            assert answer.status_code == 200, answer.text

        # Lesson 1 goes to a, b, c and e on 2 June at 07:00 their time.
        await _run_until(h, datetime(2026, 6, 2, 12, 0, tzinfo=UTC))
        sent = {who: _sent_at(h, who, 1) for who in "abce"}
        delivered = {who: sent[who] + timedelta(minutes=1) for who in "abc"}
        _at(h, datetime(2026, 6, 2, 13, 30, tzinfo=UTC))
        batch = [_ev("delivered", who, _key(h, who, 1), delivered[who]) for who in "abc"]
        batch.append(_ev("bounce", "e", _key(h, "e", 1), sent["e"] + timedelta(minutes=1)))
        batch += [
            _ev("open", "a", _key(h, "a", 1), datetime(2026, 6, 2, 12, 0, tzinfo=UTC)),
            _ev("open", "a", _key(h, "a", 1), datetime(2026, 6, 2, 12, 30, tzinfo=UTC)),
            _ev("open", "b", _key(h, "b", 1), datetime(2026, 6, 2, 6, 0, tzinfo=UTC)),
            _ev("click", "a", _key(h, "a", 1), datetime(2026, 6, 2, 12, 0, tzinfo=UTC), url=VIDEO),
            # b's gateway follows the link 5 s after delivery: a link scanner.
            _ev("click", "b", _key(h, "b", 1), delivered["b"] + timedelta(seconds=5), url=VIDEO),
            _ev("click", "c", _key(h, "c", 1), datetime(2026, 6, 2, 13, 0, tzinfo=UTC),
                url=SHOP + "?utm_source=email"),
        ]  # fmt: skip
        await _hook(h, client, batch)

        # Lesson 2 to a, b, c; c unsubscribes by the link that afternoon.
        await _run_until(h, datetime(2026, 6, 3, 12, 0, tzinfo=UTC))
        _at(h, datetime(2026, 6, 3, 14, 0, tzinfo=UTC))
        token = signer.make(_sid(h, "c"), "unsubscribe")
        answer = await client.post(f"/unsubscribe/{token}", data={"confirm": "yes"})
        assert answer.status_code == 200, answer.text
        _at(h, datetime(2026, 6, 3, 14, 30, tzinfo=UTC))
        await _hook(h, client, [_ev("delivered", "a", _key(h, "a", 2), h.clock[0])])

        # Lesson 3 to a and b; b reports it as spam.
        await _run_until(h, datetime(2026, 6, 4, 12, 0, tzinfo=UTC))
        _at(h, datetime(2026, 6, 4, 15, 0, tzinfo=UTC))
        await _hook(h, client, [_ev("spamreport", "b", _key(h, "b", 3), h.clock[0])])

        # Lessons 4 to 7 to a alone; a opens lesson 7.
        await _run_until(h, datetime(2026, 6, 9, 12, 0, tzinfo=UTC))
        _at(h, datetime(2026, 6, 8, 13, 0, tzinfo=UTC) + timedelta(days=1))
        await _hook(h, client, [_ev("open", "a", _key(h, "a", 7), h.clock[0])])

        # The newsletter on 10 June: only a is still reading.
        _at(h, datetime(2026, 6, 10, 15, 0, tzinfo=UTC))
        key = await asyncio.to_thread(_newsletter, h)
        _at(h, datetime(2026, 6, 10, 16, 0, tzinfo=UTC))
        await _hook(
            h,
            client,
            [
                _ev("delivered", "a", key, datetime(2026, 6, 10, 15, 1, tzinfo=UTC)),
                _ev("open", "a", key, datetime(2026, 6, 10, 15, 30, tzinfo=UTC)),
                _ev("click", "a", key, datetime(2026, 6, 10, 15, 31, tzinfo=UTC), url=BLOG),
            ],
        )


def _newsletter(h: History) -> str:
    from dripmail import broadcast as bc
    from dripmail.content import load_newsletter

    runner = h.app.state.ctx.runner  # type: ignore[attr-defined]
    project = Project(h.root)
    issue = load_newsletter(project, project.newsletters_dir / "hips.md")
    row = bc.open_broadcast(h.engine, issue, "all", h.clock[0])
    bc.plan(h.engine, row["id"], "all", h.clock[0])
    compiled = runner.renderer.newsletter(issue)
    render = bc.render_fn(compiled, PUBLIC, runner.signer, row["id"])
    bc.send(h.engine, runner.provider, bc.find(h.engine, row["id"]), render, h.clock[0])
    with h.engine.connect() as conn:
        return conn.execute(select(broadcast_deliveries.c.key)).scalar_one()


def _lesson(day, sent, delivered=0, opened=0, clicked=0, scanner=0, video=0, other=0,
            unsub=0, bounced=0, complained=0, drop=None, links=None):  # fmt: skip
    def r(n: int) -> float | None:
        return round(n / sent, 4) if sent else None

    return {
        "key": str(day), "title": f"{day}. Stretch number {day}", "sent": sent,
        "delivered": delivered, "opened": opened, "clicked": clicked, "scanner_clicks": scanner,
        "video_clicks": video, "other_clicks": other, "unsubscribed": unsub, "bounced": bounced,
        "complained": complained, "delivered_rate": r(delivered), "open_rate": r(opened),
        "click_rate": r(clicked), "unsubscribe_rate": r(unsub), "bounce_rate": r(bounced),
        "complaint_rate": r(complained), "drop": None if drop is None else drop[0],
        "drop_rate": None if drop is None else drop[1], "not_yet_due": False,
        "links": links or {},
    }  # fmt: skip


EXPECTED = {
    "since": None,
    "until": None,
    "scanner_clicks_counted": False,
    "funnel": {
        "signups": 5, "confirmed": 4, "confirm_rate": 0.8, "median_confirm_seconds": 1800,
        "confirmed_by_link": 4, "confirmed_without_link": 0,
        "started": 4, "completed": 1, "start_rate": 1.0, "completion_rate": 0.25,
    },
    "lessons": [
        _lesson(1, 4, delivered=3, opened=2, clicked=2, scanner=1, video=1, other=1, bounced=1,
                links={SHOP: 1, VIDEO: 1}),
        _lesson(2, 3, delivered=1, unsub=1, drop=(1, 0.25)),
        _lesson(3, 2, complained=1, drop=(1, 0.3333)),
        _lesson(4, 1, drop=(1, 0.5)),
        _lesson(5, 1, drop=(0, 0.0)),
        _lesson(6, 1, drop=(0, 0.0)),
        _lesson(7, 1, opened=1, drop=(0, 0.0)),
    ],
    "newsletters": [
        {
            "key": "hips", "title": "Hips at the desk", "sent": 1, "delivered": 1, "opened": 1,
            "clicked": 1, "scanner_clicks": 0, "video_clicks": 0, "other_clicks": 1,
            "unsubscribed": 0, "bounced": 0, "complained": 0, "delivered_rate": 1.0,
            "open_rate": 1.0, "click_rate": 1.0, "unsubscribe_rate": 0.0, "bounce_rate": 0.0,
            "complaint_rate": 0.0, "drop": None, "drop_rate": None, "not_yet_due": False,
            "links": {BLOG: 1},
        }
    ],
    "hours": [
        {"key": "07", "sent": 13, "opened": 3, "clicked": 2, "open_rate": 0.2308,
         "click_rate": 0.1538},
        {"key": "11", "sent": 1, "opened": 1, "clicked": 1, "open_rate": 1.0, "click_rate": 1.0},
    ],
    "zones": [
        {"key": "America/New_York", "sent": 10, "opened": 3, "clicked": 3, "open_rate": 0.3,
         "click_rate": 0.3},
        {"key": "Europe/Berlin", "sent": 4, "opened": 1, "clicked": 0, "open_rate": 0.25,
         "click_rate": 0.0},
    ],
    "days": [
        {"day": "2026-06-01", "signups": 5, "unsubscribed": 0},
        {"day": "2026-06-02", "signups": 0, "unsubscribed": 0},
        {"day": "2026-06-03", "signups": 0, "unsubscribed": 1},
    ],
}  # fmt: skip
