from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, select

from dripmail import subscribers as subs
from dripmail.errors import InputError, NotFoundError
from dripmail.store.schema import deliveries, events
from tests.course_rules import Rules
from tests.store_fixture import new_store

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return new_store("sqlite:///dripmail.db", tmp_path)


def test_email_normalised_and_unique_regardless_of_case(engine: Engine) -> None:
    sid, created = subs.add_subscriber(
        engine,
        " Ana@Example.ORG ",
        timezone="Europe/Berlin",
        status="pending",
        consent_source="web",
        now=NOW,
    )
    again, created_again = subs.add_subscriber(
        engine,
        "ana@example.org",
        timezone="Europe/Berlin",
        status="pending",
        consent_source="web",
        now=NOW,
    )
    assert created and not created_again and sid == again
    assert subs.get_subscriber(engine, "ANA@example.org")["email"] == "ana@example.org"


@pytest.mark.parametrize("bad", ["not-an-address", "a@", "@b.com", "a b@c.com"])
def test_bad_address_named_in_error(engine: Engine, bad: str) -> None:
    with pytest.raises(InputError, match="not a valid email address"):
        subs.add_subscriber(
            engine, bad, timezone="UTC", status="active", consent_source="cli", now=NOW
        )


def test_bad_timezone_and_unknown_subscriber(engine: Engine) -> None:
    with pytest.raises(InputError, match="Mars/Olympus"):
        subs.validate_timezone("Mars/Olympus")
    with pytest.raises(NotFoundError):
        subs.get_subscriber(engine, "nobody@example.org")


def test_activate_plans_seven_lessons_at_local_seven(engine: Engine) -> None:
    sid, _ = subs.add_subscriber(
        engine,
        "raj@example.org",
        timezone="Asia/Kolkata",
        status="pending",
        consent_source="web",
        now=NOW,
    )
    first = subs.activate(engine, sid, Rules(), NOW)  # 17:30 local: starts next morning
    assert first == date(2026, 6, 2)
    with engine.connect() as conn:
        rows = conn.execute(select(deliveries).order_by(deliveries.c.lesson_day)).mappings().all()
    assert [r["lesson_day"] for r in rows] == list(range(1, 8))
    local = [r["due_at"].astimezone(ZoneInfo("Asia/Kolkata")) for r in rows]
    assert all(t.strftime("%H:%M") == "07:00" for t in local)
    assert subs.plan_lessons(engine, sid, Rules(), first, NOW) == 0  # never planned twice


def test_unsubscribe_cancels_and_sticks_and_suppress_blocks_readd(engine: Engine) -> None:
    sid, _ = subs.add_subscriber(
        engine,
        "kim@example.org",
        timezone="UTC",
        status="pending",
        consent_source="web",
        now=NOW,
    )
    subs.activate(engine, sid, Rules(), NOW)
    subs.unsubscribe(engine, sid, NOW)
    subs.unsubscribe(engine, sid, NOW)  # idempotent
    with engine.connect() as conn:
        states = set(conn.execute(select(deliveries.c.state)).scalars())
        assert conn.execute(select(events.c.type)).scalars().all() == ["unsubscribed"]
    assert states == {"cancelled"}
    assert subs.get_subscriber(engine, sid)["status"] == "unsubscribed"
    with pytest.raises(InputError):
        subs.activate(engine, sid, Rules(), NOW)
    subs.suppress(engine, sid, "complained", NOW)
    assert subs.is_suppressed(engine, "KIM@example.org")


def _active(engine: Engine, email: str = "ana@example.org", zone: str = "Europe/Berlin") -> int:
    sid, _ = subs.add_subscriber(
        engine, email, timezone=zone, status="pending", consent_source="test", now=NOW
    )
    subs.activate(engine, sid, Rules(), NOW)
    return sid


def _dues(engine: Engine, sid: int) -> dict[int, datetime]:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                select(deliveries.c.lesson_day, deliveries.c.due_at).where(
                    deliveries.c.subscriber_id == sid, deliveries.c.state == "planned"
                )
            ).all()
        )


def test_pause_then_resume_continues_next_local_morning(engine: Engine) -> None:
    sid = _active(engine)
    later = datetime(2026, 6, 10, 9, 0, tzinfo=UTC)  # 11:00 in Berlin: past today's 07:00
    subs.pause(engine, sid, NOW)
    assert subs.get_subscriber(engine, sid)["status"] == "paused"
    first = subs.resume(engine, sid, Rules(), later)
    assert first == date(2026, 6, 11)
    dues = _dues(engine, sid)
    berlin = ZoneInfo("Europe/Berlin")
    local = {d: t.astimezone(berlin) for d, t in dues.items()}
    assert local[1].date() == date(2026, 6, 11) and local[1].hour == 7
    assert [local[d].date() for d in range(1, 8)] == [date(2026, 6, 11 + i) for i in range(7)]
    with pytest.raises(InputError, match="not paused"):
        subs.resume(engine, sid, Rules(), later)


def test_forget_erases_and_blocks_re_adding(engine: Engine) -> None:
    sid = _active(engine)
    subs.forget(engine, sid, NOW)
    with pytest.raises(NotFoundError):
        subs.get_subscriber(engine, "ana@example.org")
    with engine.connect() as conn:
        assert conn.execute(select(deliveries)).first() is None
        assert conn.execute(select(events)).first() is None
    with pytest.raises(InputError, match="suppressed"):
        subs.add_subscriber(
            engine, "ANA@example.org", timezone="UTC", status="pending", consent_source="x", now=NOW
        )
