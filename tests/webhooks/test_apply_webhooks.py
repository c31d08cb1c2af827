"""apply_events / ingest on a real SQLite store: once per event, and mail stops when it must."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fakes.webhook_signing import (
    WebhookKeys,
    mailgun_event,
    postmark_record,
    resend_event,
    sendgrid_event,
)
from sqlalchemy import Engine, func, inspect, select, update

from dripmail import subscribers as subs
from dripmail.errors import WebhookAuthError
from dripmail.store.db import MIGRATIONS, open_store
from dripmail.store.schema import deliveries, events, webhook_nonces
from dripmail.webhooks import apply_events, ingest, verify_and_parse
from tests.course_rules import Rules
from tests.store_fixture import new_store

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ADDR = "maya@example.com"


@pytest.fixture(scope="module")
def keys() -> WebhookKeys:
    return WebhookKeys.generate()


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return new_store("sqlite:///dripmail.db", tmp_path)


@pytest.fixture
def sid(engine: Engine) -> int:
    """An active subscriber on day 2: day 1 sent, day 2 handed to the provider, 3-7 planned."""
    sid, _ = subs.add_subscriber(
        engine, ADDR, timezone="Europe/Berlin", status="pending", consent_source="test", now=NOW
    )
    subs.activate(engine, sid, Rules(), NOW - timedelta(days=2))
    with engine.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.subscriber_id == sid, deliveries.c.lesson_day == 1)
            .values(state="sent", sent_at=NOW - timedelta(days=1))
        )
        conn.execute(
            update(deliveries)
            .where(deliveries.c.subscriber_id == sid, deliveries.c.lesson_day == 2)
            .values(state="handed", provider="resend", provider_message_id="re-msg-day2")
        )
    return sid


def key(sid: int, day: int = 1) -> str:
    return f"psoas-week-s{sid}-d{day}"


def states(engine: Engine, sid: int) -> dict[int, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(deliveries.c.lesson_day, deliveries.c.state).where(
                deliveries.c.subscriber_id == sid
            )
        )
        return {day: state for day, state in rows}


def stored(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(events)).mappings()]


def parse(keys: WebhookKeys, provider: str, doc, at: datetime = NOW, **kw):
    headers, body = keys.signed(provider, doc, at, **kw)
    return verify_and_parse(provider, headers, body, keys.settings(), at)


HARD_BOUNCES = {
    "postmark": lambda k: postmark_record("Bounce", ADDR, key=k),
    "sendgrid": lambda k: [sendgrid_event("bounce", ADDR, key=k)],
    "mailgun": lambda k: mailgun_event("failed", ADDR, key=k),
    "resend": lambda k: resend_event("email.bounced", ADDR, key=k),
}


@pytest.mark.parametrize("provider", list(HARD_BOUNCES))
def test_hard_bounce_suppresses_and_cancels_what_remains(
    engine: Engine, sid: int, keys: WebhookKeys, provider: str
) -> None:
    batch = parse(keys, provider, HARD_BOUNCES[provider](key(sid)))
    applied = ingest(engine, batch, NOW)
    assert applied.new == 1 and applied.stopped == [sid]
    assert subs.get_subscriber(engine, sid)["status"] == "bounced"
    assert subs.is_suppressed(engine, ADDR)
    assert states(engine, sid) == {1: "sent", **{d: "cancelled" for d in range(2, 8)}}
    # The lesson already scheduled at the provider is reported for cancelling there.
    assert applied.to_cancel == ["re-msg-day2"]
    [row] = [e for e in stored(engine) if e["provider"] == provider]
    assert (row["type"], row["subscriber_id"], row["delivery_key"]) == ("bounced", sid, key(sid))


def test_the_same_event_retried_is_stored_once(engine: Engine, sid: int, keys: WebhookKeys) -> None:
    doc = postmark_record("Bounce", ADDR, key=key(sid))
    assert apply_events(engine, parse(keys, "postmark", doc), NOW) == 1
    for minutes in (1, 10, 60):  # Postmark retries the very same body
        later = NOW + timedelta(minutes=minutes)
        assert apply_events(engine, parse(keys, "postmark", doc, later), later) == 0
    assert len(stored(engine)) == 1


def test_sendgrid_retry_with_a_new_sg_event_id_is_stored_once(
    engine: Engine, sid: int, keys: WebhookKeys
) -> None:
    first = [sendgrid_event("open", ADDR, key=key(sid)), sendgrid_event("click", ADDR)]
    retry = [{**e, "sg_event_id": f"retry-{i}"} for i, e in enumerate(first)]
    assert apply_events(engine, parse(keys, "sendgrid", first), NOW) == 2
    assert apply_events(engine, parse(keys, "sendgrid", retry), NOW) == 0
    assert sorted(e["type"] for e in stored(engine)) == ["clicked", "opened"]


def test_resend_retry_same_svix_id_new_signature_is_stored_once(
    engine: Engine, sid: int, keys: WebhookKeys
) -> None:
    doc = resend_event("email.delivered", ADDR, key=key(sid))
    assert apply_events(engine, parse(keys, "resend", doc, msg_id="msg_1"), NOW) == 1
    later = NOW + timedelta(minutes=30)  # Svix re-signs with a fresh timestamp on retry
    assert apply_events(engine, parse(keys, "resend", doc, later, msg_id="msg_1"), later) == 0
    assert len(stored(engine)) == 1


def test_mailgun_retry_with_the_same_token_is_accepted_once(
    engine: Engine, sid: int, keys: WebhookKeys
) -> None:
    doc = mailgun_event("delivered", ADDR, key=key(sid))
    first = parse(keys, "mailgun", doc, token="t" * 50)
    assert apply_events(engine, first, NOW) == 1
    assert apply_events(engine, parse(keys, "mailgun", doc, token="t" * 50), NOW) == 0


def test_mailgun_token_reused_for_another_event_is_refused(
    engine: Engine, sid: int, keys: WebhookKeys
) -> None:
    real = keys.signed("mailgun", mailgun_event("opened", ADDR, key=key(sid)), NOW)
    assert apply_events(engine, verify_and_parse("mailgun", *real, keys.settings(), NOW), NOW)
    # An attacker keeps the captured signature and swaps in a forged hard bounce.
    doc = json.loads(real[1])
    doc["event-data"] = mailgun_event("failed", ADDR, key=key(sid), id="forged")
    forged = verify_and_parse("mailgun", real[0], json.dumps(doc).encode(), keys.settings(), NOW)
    with pytest.raises(WebhookAuthError, match="already used"):
        ingest(engine, forged, NOW)
    assert subs.get_subscriber(engine, sid)["status"] == "active"
    assert [e["type"] for e in stored(engine)] == ["opened"]


def test_soft_bounce_is_recorded_and_changes_nothing(
    engine: Engine, sid: int, keys: WebhookKeys
) -> None:
    doc = mailgun_event("failed", ADDR, key=key(sid, 2), severity="temporary")
    applied = ingest(engine, parse(keys, "mailgun", doc), NOW)
    assert applied.new == 1 and applied.stopped == [] and applied.to_cancel == []
    assert subs.get_subscriber(engine, sid)["status"] == "active"
    assert not subs.is_suppressed(engine, ADDR)
    assert states(engine, sid)[3] == "planned"
    assert [e["type"] for e in stored(engine)] == ["soft_bounced"]


def test_complaint_suppresses(engine: Engine, sid: int, keys: WebhookKeys) -> None:
    ingest(engine, parse(keys, "sendgrid", [sendgrid_event("spamreport", ADDR)]), NOW)
    assert subs.get_subscriber(engine, sid)["status"] == "complained"
    assert subs.is_suppressed(engine, ADDR)
    assert states(engine, sid)[5] == "cancelled"


def test_provider_unsubscribe_stops_mail_without_a_permanent_block(
    engine: Engine, sid: int, keys: WebhookKeys
) -> None:
    applied = ingest(
        engine, parse(keys, "postmark", postmark_record("SubscriptionChange", ADDR)), NOW
    )
    assert applied.stopped == [sid] and applied.to_cancel == ["re-msg-day2"]
    assert subs.get_subscriber(engine, sid)["status"] == "unsubscribed"
    assert states(engine, sid)[7] == "cancelled"
    # Unlike a bounce or complaint, the person may sign up again later.
    assert not subs.is_suppressed(engine, ADDR)


def test_events_are_matched_by_address_when_no_key_travelled(
    engine: Engine, sid: int, keys: WebhookKeys
) -> None:
    doc = resend_event("email.opened", "Maya@Example.com")
    ingest(engine, parse(keys, "resend", doc), NOW)
    [row] = stored(engine)
    assert row["subscriber_id"] == sid and row["delivery_key"] is None


def test_event_for_an_unknown_address_is_kept_without_a_subscriber(
    engine: Engine, sid: int, keys: WebhookKeys
) -> None:
    doc = postmark_record("Bounce", "stranger@example.com")
    applied = ingest(engine, parse(keys, "postmark", doc), NOW)
    assert (applied.new, applied.unmatched, applied.stopped) == (1, 1, [])
    assert stored(engine)[0]["subscriber_id"] is None
    assert subs.get_subscriber(engine, sid)["status"] == "active"


def test_old_nonces_are_pruned(engine: Engine, sid: int, keys: WebhookKeys) -> None:
    doc = mailgun_event("opened", ADDR)
    apply_events(engine, parse(keys, "mailgun", doc), NOW)
    later = NOW + timedelta(days=3)
    apply_events(engine, parse(keys, "mailgun", {**doc, "id": "next"}, later), later)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(webhook_nonces)).scalar() == 1


def test_stop_happens_even_if_an_earlier_attempt_died_midway(
    engine: Engine, sid: int, keys: WebhookKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = parse(keys, "postmark", postmark_record("Bounce", ADDR, key=key(sid)))
    real_suppress = subs.suppress

    def dies(*args, **kwargs):
        raise RuntimeError("process killed")

    monkeypatch.setattr(subs, "suppress", dies)
    with pytest.raises(RuntimeError):
        ingest(engine, batch, NOW)
    # Nothing was stored, so the provider's retry is not mistaken for a duplicate ...
    assert stored(engine) == []
    monkeypatch.setattr(subs, "suppress", real_suppress)
    assert apply_events(engine, batch, NOW) == 1
    # ... and the retry does stop the mail.
    assert subs.get_subscriber(engine, sid)["status"] == "bounced"


class _CancellingProvider:
    """Just enough of the Provider protocol for `Runner.cancel_handed`."""

    @dataclass(frozen=True)
    class _Caps:
        can_cancel: bool

    def __init__(self, can_cancel: bool) -> None:
        self.capabilities = self._Caps(can_cancel)
        self.asked: list[str] = []

    async def cancel(self, ids):
        self.asked.extend(ids)
        return list(ids)


def test_cancelling_handed_lessons_only_asks_providers_that_can_cancel() -> None:
    from types import SimpleNamespace

    from dripmail.runner import Runner

    able, unable = _CancellingProvider(True), _CancellingProvider(False)
    with_able = SimpleNamespace(provider=able)
    with_unable = SimpleNamespace(provider=unable)
    assert asyncio.run(Runner.cancel_handed(with_able, ["a", "b"])) == ["a", "b"]  # type: ignore[arg-type]
    assert asyncio.run(Runner.cancel_handed(with_unable, ["a"])) == []  # type: ignore[arg-type]
    assert unable.asked == []


def test_database_at_revision_0001_gains_the_nonce_table(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    old = open_store("sqlite:///old.db", tmp_path, migrate=False)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with old.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with old.connect() as conn:
        assert "webhook_nonces" not in inspect(conn).get_table_names()
    upgraded = open_store("sqlite:///old.db", tmp_path)
    with upgraded.connect() as conn:
        assert "webhook_nonces" in inspect(conn).get_table_names()


def test_complaint_wins_over_unsubscribe_in_one_batch_in_any_order(
    engine: Engine, sid: int, keys: WebhookKeys
) -> None:
    batch = [sendgrid_event("spamreport", ADDR), sendgrid_event("unsubscribe", ADDR)]
    applied = ingest(engine, parse(keys, "sendgrid", batch), NOW)
    assert applied.new == 2 and applied.stopped == [sid]
    assert subs.get_subscriber(engine, sid)["status"] == "complained"
    assert subs.is_suppressed(engine, ADDR)


def test_a_large_batch_with_repeats_is_stored_once_per_event(
    engine: Engine, sid: int, keys: WebhookKeys
) -> None:
    # More events than one IN (...) query takes, the same open listed twice, and events for
    # addresses nobody subscribed with.
    opens = [
        sendgrid_event("open", f"reader{i}@example.com", timestamp=1780315080 + i)
        for i in range(1200)
    ]
    mine = sendgrid_event("open", ADDR, key=key(sid))
    applied = ingest(engine, parse(keys, "sendgrid", [*opens, mine, mine]), NOW)
    assert (applied.new, applied.duplicates, applied.unmatched) == (1201, 1, 1200)
    assert len(stored(engine)) == 1201
    assert [e["subscriber_id"] for e in stored(engine) if e["subscriber_id"]] == [sid]
    assert ingest(engine, parse(keys, "sendgrid", opens), NOW).new == 0


def test_losing_a_race_with_a_concurrent_retry_counts_duplicates(
    engine: Engine, sid: int, keys: WebhookKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dripmail.webhooks import apply

    first = [sendgrid_event("open", ADDR), sendgrid_event("click", ADDR)]
    assert apply_events(engine, parse(keys, "sendgrid", first[:1]), NOW) == 1
    # The other request stored its event after this one looked: the insert then collides.
    monkeypatch.setattr(apply, "_already_stored", lambda engine, batch: set())
    applied = ingest(engine, parse(keys, "sendgrid", first), NOW)
    assert (applied.new, applied.duplicates) == (1, 1)
    assert sorted(e["type"] for e in stored(engine)) == ["clicked", "opened"]
