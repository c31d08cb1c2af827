"""SendGrid contract tests against the loopback fake (tests/fakes/provider_server)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from fakes.mail import BIG_RETRY, FAST_LIMITS, FAST_RETRY, lesson, lessons

from dripmail.errors import ProviderAuthError
from dripmail.providers.base import Lookup, Outcome
from dripmail.providers.sendgrid import SendGridProvider


def _provider(fake, key: str | None = None) -> SendGridProvider:
    return SendGridProvider(
        key or fake.SENDGRID_KEY, base=fake.base("sendgrid"), retry=FAST_RETRY, limits=FAST_LIMITS
    )


def test_each_reader_gets_exactly_the_rendered_email(fake_providers) -> None:
    batch = lessons(5)
    results = asyncio.run(_provider(fake_providers).send_batch(batch))
    assert all(r.accepted for r in results)
    assert fake_providers.send_requests["sendgrid"] == 1  # one template, five personalizations
    got = {r.key: r for r in fake_providers.accepted("sendgrid")}
    for message in batch:
        record = got[message.key]
        assert (record.html, record.text, record.subject) == (
            message.html,
            message.text,
            message.subject,
        )
        assert record.headers == message.headers  # List-Unsubscribe + -Post per recipient
        assert record.reply_to == '"Teacher" <teacher@studio.example.com>'
        assert record.tags == ["psoas-week", "day-3"]
        assert record.extra["custom_args"] == {"dripmail_key": message.key}


def test_a_full_batch_of_1000_is_one_request(fake_providers) -> None:
    provider = _provider(fake_providers)
    assert provider.capabilities.max_batch == 1000
    provider.http.retry = BIG_RETRY
    assert all(r.accepted for r in asyncio.run(provider.send_batch(lessons(1000))))
    assert fake_providers.send_requests["sendgrid"] == 1
    assert len(fake_providers.accepted("sendgrid")) == 1000


def test_scheduled_send_carries_send_at_and_batch_id_and_cancels(fake_providers) -> None:
    provider = _provider(fake_providers)
    assert provider.capabilities.schedule_ahead == timedelta(hours=72)
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=30)
    results = asyncio.run(provider.send_batch(lessons(3, send_at=later)))
    ids = {r.provider_id for r in results}
    assert len(ids) == 1  # one batch_id: one cancel covers the batch
    records = fake_providers.accepted("sendgrid", status="scheduled")
    assert {r.send_at for r in records} == {later} and records[0].batch_id
    assert asyncio.run(provider.cancel(list(ids))) == list(ids)
    assert len(fake_providers.accepted("sendgrid", status="cancelled")) == 3


def test_one_batch_id_per_send_time_so_a_cancel_takes_back_exactly_one_provider_id(
    fake_providers,
) -> None:
    provider = _provider(fake_providers)
    base = datetime.now(UTC).replace(microsecond=0)
    first, second = base + timedelta(hours=30), base + timedelta(hours=31)
    # Two lessons (two templates) at two send times in one hand-over, e.g. New York's and
    # Chicago's 07:00. Every message under one batch id must carry the same provider id,
    # or a cancel would take back lessons the engine still believes are scheduled.
    batch = [
        *lessons(2, day=3, send_at=first),
        *lessons(2, start=3, day=4, send_at=second),
        *lessons(2, start=5, day=4, send_at=first),
    ]
    results = asyncio.run(provider.send_batch(batch))
    ids = [r.provider_id for r in results]
    assert ids[0] == ids[1] == ids[4] == ids[5] and ids[2] == ids[3] and ids[0] != ids[2]
    by_batch = {}
    for record in fake_providers.accepted("sendgrid", status="scheduled"):
        by_batch.setdefault(record.batch_id, set()).add(record.send_at)
    assert sorted(by_batch.values(), key=min) == [{first}, {second}]
    assert asyncio.run(provider.cancel([ids[0]])) == [ids[0]]
    cancelled = fake_providers.accepted("sendgrid", status="cancelled")
    still = fake_providers.accepted("sendgrid", status="scheduled")
    assert {r.send_at for r in cancelled} == {first} and len(cancelled) == 4
    assert {r.send_at for r in still} == {second} and len(still) == 2


def test_no_cancel_within_ten_minutes_of_the_send_time(fake_providers) -> None:
    provider = _provider(fake_providers)
    soon = datetime.now(UTC) + timedelta(minutes=5)
    results = asyncio.run(provider.send_batch([lesson(1, send_at=soon)]))
    assert asyncio.run(provider.cancel([results[0].provider_id])) == []


def test_beyond_the_window_is_not_handed_over(fake_providers) -> None:
    far = datetime.now(UTC) + timedelta(days=4)
    results = asyncio.run(_provider(fake_providers).send_batch([lesson(1, send_at=far)]))
    assert results[0].outcome is Outcome.TRANSIENT
    assert fake_providers.accepted("sendgrid") == []


def test_a_refused_address_fails_alone_and_the_rest_goes(fake_providers) -> None:
    fake_providers.reject("reader4@example.org")
    results = asyncio.run(_provider(fake_providers).send_batch(lessons(6)))
    assert [r.outcome for r in results].count(Outcome.ACCEPTED) == 5
    assert results[3].outcome is Outcome.PERMANENT and "valid address" in (results[3].error or "")
    assert len(fake_providers.accepted("sendgrid")) == 5


@pytest.mark.parametrize("fault", ["drop_after", "500_after", "slow_after", "503"])
def test_ambiguous_is_review_and_never_resent(fake_providers, fault) -> None:
    fake_providers.script("sendgrid", [fault])
    results = asyncio.run(_provider(fake_providers).send_batch(lessons(4)))
    assert {r.outcome for r in results} == {Outcome.REVIEW}
    assert fake_providers.send_requests["sendgrid"] == 1
    assert len(fake_providers.accepted("sendgrid")) == (4 if fault.endswith("_after") else 0)


def test_429_honours_retry_after_then_sends(fake_providers) -> None:
    from dripmail.providers.http import retry_after_seconds

    fake_providers.script("sendgrid", ["429"])
    results = asyncio.run(_provider(fake_providers).send_batch(lessons(2)))
    assert all(r.accepted for r in results)
    assert (
        retry_after_seconds({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2000000010"}, 2e9)
        == 10
    )


def test_bad_key_names_the_variable(fake_providers) -> None:
    with pytest.raises(ProviderAuthError, match="SENDGRID_API_KEY"):
        asyncio.run(_provider(fake_providers, key="SG.wrong").send_batch(lessons(1)))


def test_reconcile_cannot_tell_and_check_reports_scope(fake_providers) -> None:
    provider = _provider(fake_providers)
    assert asyncio.run(provider.reconcile([lesson(1)])) == {"psoas-week-s1-d3": Lookup.UNKNOWN}
    assert "mail.send allowed" in asyncio.run(provider.check())
