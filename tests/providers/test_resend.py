"""Resend contract and fault tests against the loopback fake (tests/fakes/provider_server)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from fakes.mail import BIG_RETRY, FAST_LIMITS, FAST_RETRY, lesson, lessons

from dripmail.errors import ProviderAuthError
from dripmail.providers.base import Lookup, Outcome
from dripmail.providers.resend import ResendProvider


def _provider(fake, key: str | None = None) -> ResendProvider:
    return ResendProvider(
        key or fake.RESEND_KEY, base=fake.base("resend"), retry=FAST_RETRY, limits=FAST_LIMITS
    )


def test_payload_carries_parts_headers_reply_to_and_tags(fake_providers) -> None:
    results = asyncio.run(_provider(fake_providers).send_batch([lesson(1)], batch_key="b-1"))
    assert results[0].accepted and results[0].provider_id
    (got,) = fake_providers.accepted("resend")
    original = lesson(1)
    assert (got.html, got.text, got.subject) == (original.html, original.text, original.subject)
    assert got.headers == original.headers
    assert "teacher@studio.example.com" in (got.reply_to or "")
    assert got.key == "psoas-week-s1-d3"
    assert "category:psoas-week-day-3" in got.tags


def test_a_full_batch_of_100_is_one_request_with_the_batch_key(fake_providers) -> None:
    provider = _provider(fake_providers)
    assert provider.capabilities.max_batch == 100 and provider.capabilities.idempotency_key
    provider.http.retry = BIG_RETRY
    results = asyncio.run(provider.send_batch(lessons(100), batch_key="b-full"))
    assert all(r.accepted for r in results)
    assert fake_providers.send_requests["resend"] == 1
    # The same batch again (a later run resending it): Resend answers the first result.
    again = asyncio.run(provider.send_batch(lessons(100), batch_key="b-full"))
    assert [r.provider_id for r in again] == [r.provider_id for r in results]
    assert len(fake_providers.accepted("resend")) == 100


@pytest.mark.parametrize("fault", ["drop_after", "500_after", "slow_after", "drop", "503"])
def test_ambiguous_answers_are_retried_with_the_same_key_and_body(fake_providers, fault) -> None:
    fake_providers.script("resend", [fault])
    results = asyncio.run(_provider(fake_providers).send_batch(lessons(30), batch_key="b-x"))
    assert all(r.accepted for r in results)
    assert sorted(fake_providers.keys("resend")) == sorted(m.key for m in lessons(30))
    assert fake_providers.send_requests["resend"] == 2


def test_same_key_with_another_body_is_review_never_resent(fake_providers) -> None:
    provider = _provider(fake_providers)
    asyncio.run(provider.send_batch(lessons(2), batch_key="b-same"))
    changed = [lesson(1, day=3), lesson(2, day=4)]
    results = asyncio.run(provider.send_batch(changed, batch_key="b-same"))
    assert {r.outcome for r in results} == {Outcome.REVIEW}
    assert len(fake_providers.accepted("resend")) == 2


def test_ambiguous_until_attempts_run_out_is_review(fake_providers) -> None:
    fake_providers.script("resend", ["500_after"] * 10)
    results = asyncio.run(_provider(fake_providers).send_batch(lessons(3), batch_key="b-r"))
    assert {r.outcome for r in results} == {Outcome.REVIEW}
    assert "Idempotency-Key b-r" in (results[0].error or "")
    assert len(fake_providers.accepted("resend")) == 3  # accepted once, never twice


def test_rejected_recipient_in_a_permissive_batch(fake_providers) -> None:
    fake_providers.reject("reader2@example.org")
    results = asyncio.run(_provider(fake_providers).send_batch(lessons(3), batch_key="b-p"))
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.PERMANENT, Outcome.ACCEPTED]
    assert "suppressed" in (results[1].error or "")


def test_scheduled_send_goes_alone_with_scheduled_at_and_can_be_cancelled(fake_providers) -> None:
    provider = _provider(fake_providers)
    assert provider.capabilities.schedule_ahead == timedelta(days=30)
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    batch = [lesson(1), lesson(2, send_at=later)]
    results = asyncio.run(provider.send_batch(batch, batch_key="b-s"))
    assert all(r.accepted for r in results)
    scheduled = fake_providers.accepted("resend", status="scheduled")
    assert [(r.key, r.send_at) for r in scheduled] == [("psoas-week-s2-d3", later)]
    cancelled = asyncio.run(provider.cancel([results[1].provider_id, results[0].provider_id]))
    assert cancelled == [results[1].provider_id]  # the one already sent cannot be
    assert fake_providers.accepted("resend", status="cancelled")[0].key == "psoas-week-s2-d3"


def test_bad_key_raises_naming_the_variable(fake_providers) -> None:
    with pytest.raises(ProviderAuthError, match="RESEND_API_KEY"):
        asyncio.run(_provider(fake_providers, key="re_wrong").send_batch(lessons(1)))


def test_reconcile_cannot_tell(fake_providers) -> None:
    found = asyncio.run(_provider(fake_providers).reconcile([lesson(1)]))
    assert found == {"psoas-week-s1-d3": Lookup.UNKNOWN}


def test_check_lists_domains(fake_providers) -> None:
    assert "studio.example.com" in asyncio.run(_provider(fake_providers).check())
