import json
from collections import Counter
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, select, update

from dripmail import subscribers as subs
from dripmail.engine import next_send_time, run_once
from dripmail.providers.outbox import OutboxProvider
from dripmail.store.db import open_store
from dripmail.store.schema import deliveries
from tests.course_rules import Rules
from tests.lesson_message import plain_lesson

START = datetime(2026, 3, 5, 12, 0, tzinfo=UTC)  # the week crosses US/EU DST changes
ZONES = {
    "ny@example.org": "America/New_York",
    "berlin@example.org": "Europe/Berlin",
    "kolkata@example.org": "Asia/Kolkata",
}


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    for email, zone in ZONES.items():
        sid, _ = subs.add_subscriber(
            engine, email, timezone=zone, status="pending", consent_source="test", now=START
        )
        subs.activate(engine, sid, Rules(), START)
    return engine


def _simulate(engine: Engine, outbox: OutboxProvider, hours: list[datetime]) -> None:
    for now in hours:
        outbox._clock = lambda now=now: now
        run_once(engine, outbox, plain_lesson, now, default_send_time=time(7), worker_id="t")


def test_week_in_three_zones_each_lesson_once_at_local_seven(
    engine: Engine, tmp_path: Path
) -> None:
    outbox = OutboxProvider(tmp_path / "outbox")
    _simulate(engine, outbox, [START + timedelta(minutes=15 * i) for i in range(4 * 24 * 9)])
    lines = [json.loads(x) for x in (tmp_path / "outbox/index.jsonl").read_text().splitlines()]
    assert len(lines) == 21 and len({x["key"] for x in lines}) == 21
    for email, zone in ZONES.items():
        mine = [x for x in lines if x["to"] == email]
        assert [int(x["ref"]) for x in mine] == list(range(1, 8))
        written = [datetime.fromisoformat(x["written_at"]).astimezone(ZoneInfo(zone)) for x in mine]
        assert len({w.date() for w in written}) == 7
        # Written at the first 15-minute tick at or after 07:00 local.
        assert all(w.hour == 7 and w.minute < 15 for w in written)
    # A re-run is a no-op.
    _simulate(engine, outbox, [START + timedelta(days=10)])
    assert len((tmp_path / "outbox/index.jsonl").read_text().splitlines()) == 21


def test_downtime_catch_up_one_lesson_per_local_day(engine: Engine, tmp_path: Path) -> None:
    outbox = OutboxProvider(tmp_path / "outbox")
    # The engine is off for the first four days, then runs hourly.
    _simulate(engine, outbox, [START + timedelta(days=4, hours=h) for h in range(24 * 10)])
    lines = [json.loads(x) for x in (tmp_path / "outbox/index.jsonl").read_text().splitlines()]
    per_day = Counter(
        (
            x["to"],
            datetime.fromisoformat(x["written_at"]).astimezone(ZoneInfo(ZONES[x["to"]])).date(),
        )
        for x in lines
    )
    assert len(lines) == 21 and max(per_day.values()) == 1


def test_a_lesson_held_back_by_the_one_per_day_rule_wakes_the_loop_when_it_can_go(
    engine: Engine, tmp_path: Path
) -> None:
    outbox = OutboxProvider(tmp_path / "outbox")
    # Off for ten days: every lesson is overdue. One pass sends each reader lesson 1; lesson 2
    # is due by its plan but held back to the next local morning (no later lesson is planned
    # in the future, so only the held ones can give the time).
    now = START + timedelta(days=10)  # 15 March, 12:00 UTC: past 07:00 in all three zones
    _simulate(engine, outbox, [now])
    assert len((tmp_path / "outbox/index.jsonl").read_text().splitlines()) == 3
    # Kolkata's morning comes first: 16 March 07:00 IST is 01:30 UTC.
    wake = next_send_time(engine, now, default_send_time=time(7))
    assert wake == datetime(2026, 3, 16, 1, 30, tzinfo=UTC)
    # The same answer for a provider that takes messages an hour ahead of their time.
    ahead = next_send_time(engine, now, default_send_time=time(7), handover=timedelta(hours=1))
    assert ahead == wake - timedelta(hours=1)
    # It is the time the engine really sends by: nothing a minute before, Kolkata's lesson 2 then.
    report = run_once(
        engine, outbox, plain_lesson, wake - timedelta(minutes=1), default_send_time=time(7)
    )
    assert report.sent == 0
    outbox._clock = lambda: wake
    assert run_once(engine, outbox, plain_lesson, wake, default_send_time=time(7)).sent == 1
    last = json.loads((tmp_path / "outbox/index.jsonl").read_text().splitlines()[-1])
    assert (last["to"], last["ref"]) == ("kolkata@example.org", "2")
    # Next: Berlin's 07:00 CET, 06:00 UTC.
    after = next_send_time(engine, wake, default_send_time=time(7))
    assert after == datetime(2026, 3, 16, 6, 0, tzinfo=UTC)


def test_nothing_planned_has_no_next_send_time(engine: Engine, tmp_path: Path) -> None:
    outbox = OutboxProvider(tmp_path / "outbox")
    _simulate(engine, outbox, [START + timedelta(days=30 + d) for d in range(8)])
    assert len((tmp_path / "outbox/index.jsonl").read_text().splitlines()) == 21
    assert next_send_time(engine, START + timedelta(days=40), default_send_time=time(7)) is None


def test_crashed_sending_claim_is_reconciled_not_resent(engine: Engine, tmp_path: Path) -> None:
    outbox = OutboxProvider(tmp_path / "outbox")
    now = START + timedelta(days=1, hours=12)
    run_once(engine, outbox, plain_lesson, now, default_send_time=time(7), worker_id="a")
    # Simulate a worker that died after the provider accepted but before the commit.
    with engine.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.state == "sent")
            .values(state="sending", claimed_by="dead", lease_expires_at=now)
        )
    report = run_once(
        engine,
        outbox,
        plain_lesson,
        now + timedelta(minutes=1),
        default_send_time=time(7),
        worker_id="b",
    )
    assert report.recovered == 3 and report.sent == 3
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 3
    with engine.connect() as conn:
        assert set(
            conn.execute(select(deliveries.c.state).where(deliveries.c.lesson_day == 1)).scalars()
        ) == {"sent"}


def test_unsubscribed_gets_nothing_more(engine: Engine, tmp_path: Path) -> None:
    outbox = OutboxProvider(tmp_path / "outbox")
    sid = subs.get_subscriber(engine, "ny@example.org")["id"]
    subs.unsubscribe(engine, sid, START)
    _simulate(engine, outbox, [START + timedelta(hours=h) for h in range(24 * 9)])
    lines = (tmp_path / "outbox/index.jsonl").read_text()
    assert "ny@example.org" not in lines and lines.count("\n") == 14


class _RefusingProvider(OutboxProvider):
    """The outbox, except that the credential is refused on the first call."""

    async def send_batch(self, messages, send_at=None, batch_key=None):
        from dripmail.errors import ProviderAuthError

        raise ProviderAuthError("postmark", "POSTMARK_SERVER_TOKEN", "401")


def _states(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(
                    deliveries.c.key,
                    deliveries.c.state,
                    deliveries.c.attempts,
                    deliveries.c.batch_key,
                    deliveries.c.claimed_by,
                    deliveries.c.provider,
                    deliveries.c.handed_at,
                ).order_by(deliveries.c.key)
            ).all()
        )


def test_refused_credential_returns_every_claim_unchanged(engine: Engine, tmp_path: Path) -> None:
    from dripmail.errors import ProviderAuthError

    before = _states(engine)
    now = START + timedelta(days=1, hours=12)
    with pytest.raises(ProviderAuthError, match="POSTMARK_SERVER_TOKEN"):
        run_once(
            engine, _RefusingProvider(tmp_path / "x"), plain_lesson, now, default_send_time=time(7)
        )
    assert _states(engine) == before
    # The next run with a working provider sends all of day 1.
    report = run_once(
        engine, OutboxProvider(tmp_path / "outbox"), plain_lesson, now, default_send_time=time(7)
    )
    assert report.sent == 3


def test_small_chunks_and_limit_walk_the_queue_without_skipping(
    engine: Engine, tmp_path: Path
) -> None:
    outbox = OutboxProvider(tmp_path / "outbox")
    now = START + timedelta(days=1, hours=12)
    first = run_once(engine, outbox, plain_lesson, now, default_send_time=time(7), limit=2, chunk=1)
    assert first.sent == 2
    rest = run_once(engine, outbox, plain_lesson, now, default_send_time=time(7), chunk=1)
    assert rest.sent == 1
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 3


def test_subscriber_completes_after_the_last_lesson(engine: Engine, tmp_path: Path) -> None:
    outbox = OutboxProvider(tmp_path / "outbox")
    _simulate(engine, outbox, [START + timedelta(hours=h) for h in range(24 * 9)])
    statuses = {subs.get_subscriber(engine, e)["status"] for e in ZONES}
    assert statuses == {"completed"}


def test_permanent_rejection_with_suppress_stops_the_address(
    engine: Engine, tmp_path: Path
) -> None:
    from dripmail.providers.base import Outcome, SendResult

    class Rejecting(OutboxProvider):
        async def send_batch(self, messages, send_at=None, batch_key=None):
            out = []
            for m in messages:
                if m.to.address.startswith("ny@"):
                    out.append(
                        SendResult(m.key, Outcome.PERMANENT, error="406 inactive", suppress=True)
                    )
                else:
                    out.extend(await OutboxProvider.send_batch(self, [m]))
            return out

    now = START + timedelta(days=1, hours=12)
    report = run_once(
        engine, Rejecting(tmp_path / "outbox"), plain_lesson, now, default_send_time=time(7)
    )
    assert report.failed == 1 and report.suppressed == 1 and report.sent == 2
    assert subs.get_subscriber(engine, "ny@example.org")["status"] == "bounced"
    assert subs.is_suppressed(engine, "NY@example.org")
