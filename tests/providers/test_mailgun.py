"""Mailgun contract tests against the loopback fake (tests/fakes/provider_server)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from fakes.mail import BIG_RETRY, FAST_LIMITS, FAST_RETRY, lesson, lessons

from dripmail.errors import ProviderAuthError
from dripmail.providers.base import Lookup, Outcome
from dripmail.providers.mailgun import MailgunProvider


def _provider(fake, key: str | None = None, domain: str | None = None) -> MailgunProvider:
    return MailgunProvider(
        key or fake.MAILGUN_KEY,
        domain or fake.MAILGUN_DOMAIN,
        base=fake.base("mailgun"),
        retry=FAST_RETRY,
        limits=FAST_LIMITS,
    )


def test_each_reader_gets_exactly_the_rendered_email(fake_providers) -> None:
    batch = lessons(5)
    results = asyncio.run(_provider(fake_providers).send_batch(batch))
    assert all(r.accepted for r in results)
    assert fake_providers.send_requests["mailgun"] == 1  # recipient-variables: one request
    got = {r.key: r for r in fake_providers.accepted("mailgun")}
    for message in batch:
        record = got[message.key]
        assert (record.html, record.text, record.subject) == (
            message.html,
            message.text,
            message.subject,
        )
        assert record.headers["List-Unsubscribe"] == message.headers["List-Unsubscribe"]
        assert record.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert record.reply_to == message.reply_to.formatted()
        assert record.tags == ["psoas-week", "day-3"]
        assert record.extra["variables"] == {"dripmail_key": message.key}


def test_a_full_batch_of_1000_is_one_request(fake_providers) -> None:
    provider = _provider(fake_providers)
    provider.http.retry = BIG_RETRY
    assert all(r.accepted for r in asyncio.run(provider.send_batch(lessons(1000))))
    assert fake_providers.send_requests["mailgun"] == 1


def test_deliverytime_within_the_window_and_no_cancel(fake_providers) -> None:
    provider = _provider(fake_providers)
    assert provider.capabilities.schedule_ahead == timedelta(days=3)
    assert not provider.capabilities.can_cancel
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=50)
    results = asyncio.run(provider.send_batch([*lessons(2, send_at=later), lesson(9)]))
    assert all(r.accepted for r in results)
    scheduled = fake_providers.accepted("mailgun", status="scheduled")
    assert [r.send_at for r in scheduled] == [later, later]
    assert asyncio.run(provider.cancel([results[0].provider_id])) == []


def test_a_refused_address_is_found_by_halving(fake_providers) -> None:
    fake_providers.reject("reader7@example.org")
    results = asyncio.run(_provider(fake_providers).send_batch(lessons(16)))
    assert [r.outcome for r in results].count(Outcome.PERMANENT) == 1
    assert results[6].outcome is Outcome.PERMANENT and "not a valid address" in results[6].error
    assert len(fake_providers.accepted("mailgun")) == 15


@pytest.mark.parametrize("fault", ["drop_after", "500_after", "drop"])
def test_ambiguous_is_review_and_never_resent(fake_providers, fault) -> None:
    fake_providers.script("mailgun", [fault])
    results = asyncio.run(_provider(fake_providers).send_batch(lessons(3)))
    assert {r.outcome for r in results} == {Outcome.REVIEW}
    assert fake_providers.send_requests["mailgun"] == 1


def test_wrong_key_and_wrong_domain_name_their_variables(fake_providers) -> None:
    with pytest.raises(ProviderAuthError, match="MAILGUN_API_KEY"):
        asyncio.run(_provider(fake_providers, key="nope").send_batch(lessons(1)))
    with pytest.raises(ProviderAuthError, match="MAILGUN_DOMAIN"):
        asyncio.run(_provider(fake_providers, domain="other.example").send_batch(lessons(1)))


def test_reconcile_cannot_tell_and_check_shows_domain(fake_providers) -> None:
    provider = _provider(fake_providers)
    assert asyncio.run(provider.reconcile([lesson(1)])) == {"psoas-week-s1-d3": Lookup.UNKNOWN}
    assert "mg.studio.example.com is active" in asyncio.run(provider.check())
