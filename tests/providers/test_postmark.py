"""Postmark contract and fault tests against the loopback fake (tests/fakes/provider_server)."""

from __future__ import annotations

import asyncio

import pytest
from fakes.mail import BIG_RETRY, FAST_LIMITS, FAST_RETRY, lesson, lessons

from dripmail.errors import ProviderAuthError
from dripmail.providers.base import Lookup, Outcome
from dripmail.providers.postmark import PostmarkProvider


def _provider(fake, token: str | None = None, **kwargs) -> PostmarkProvider:
    return PostmarkProvider(
        token or fake.POSTMARK_TOKEN,
        base=fake.base("postmark"),
        retry=FAST_RETRY,
        limits=FAST_LIMITS,
        settle_seconds=0,
        **kwargs,
    )


def test_payload_carries_parts_headers_reply_to_tag_key_and_stream(fake_providers) -> None:
    provider = _provider(fake_providers, stream="lessons", broadcast_stream="news")
    news = lesson(2, kind="broadcast")
    results = asyncio.run(provider.send_batch([lesson(1), news]))
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.ACCEPTED]
    first, second = fake_providers.accepted("postmark")
    original = lesson(1)
    assert (first.html, first.text, first.subject) == (
        original.html,
        original.text,
        original.subject,
    )
    assert first.headers["List-Unsubscribe"] == "<https://studio.example.com/u/tok00001x>"
    assert first.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert first.reply_to == '"Teacher" <teacher@studio.example.com>' or "Teacher" in first.reply_to
    assert first.tags == ["psoas-week-day-3"]
    assert first.extra["metadata"] == {"dripmail_key": "psoas-week-s1-d3"}
    assert (first.stream, second.stream) == ("lessons", "news")
    assert results[0].provider_id == first.provider_id


def test_a_full_batch_of_500_is_one_request(fake_providers) -> None:
    provider = _provider(fake_providers)
    assert provider.capabilities.max_batch == 500
    assert provider.capabilities.schedule_ahead is None and not provider.capabilities.can_cancel
    provider.http.retry = BIG_RETRY
    results = asyncio.run(provider.send_batch(lessons(500)))
    assert all(r.accepted for r in results)
    assert fake_providers.send_requests["postmark"] == 1
    assert len(set(fake_providers.keys("postmark"))) == 500


def test_inactive_recipient_is_permanent_and_suppressed(fake_providers) -> None:
    fake_providers.reject("reader2@example.org")
    results = asyncio.run(_provider(fake_providers).send_batch(lessons(3)))
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.PERMANENT, Outcome.ACCEPTED]
    assert results[1].suppress and "406" in (results[1].error or "")


def test_refused_token_raises_naming_the_variable(fake_providers) -> None:
    with pytest.raises(ProviderAuthError, match="POSTMARK_SERVER_TOKEN"):
        asyncio.run(_provider(fake_providers, token="wrong").send_batch(lessons(2)))
    assert fake_providers.accepted("postmark") == []


@pytest.mark.parametrize("fault", ["drop_after", "500_after", "slow_after"])
def test_ambiguous_after_acceptance_is_looked_up_not_resent(fake_providers, fault) -> None:
    fake_providers.script("postmark", [fault])
    results = asyncio.run(_provider(fake_providers).send_batch(lessons(20)))
    assert all(r.accepted and r.provider_id for r in results)
    assert sorted(fake_providers.keys("postmark")) == sorted(m.key for m in lessons(20))
    assert fake_providers.send_requests["postmark"] == 1  # looked up, never sent again


@pytest.mark.parametrize("fault", ["drop", "500", "503", "slow"])
def test_ambiguous_before_acceptance_is_looked_up_then_resent(fake_providers, fault) -> None:
    fake_providers.script("postmark", [fault])
    results = asyncio.run(_provider(fake_providers).send_batch(lessons(20)))
    assert all(r.accepted for r in results)
    assert len(fake_providers.keys("postmark")) == 20
    assert fake_providers.send_requests["postmark"] == 2


def test_429_is_retried_and_still_sent_once(fake_providers) -> None:
    fake_providers.script("postmark", ["429", "429"])
    results = asyncio.run(_provider(fake_providers).send_batch(lessons(5)))
    assert all(r.accepted for r in results)
    assert len(fake_providers.keys("postmark")) == 5


def test_persistent_429_leaves_messages_transient(fake_providers) -> None:
    fake_providers.script("postmark", ["429"] * 10)
    results = asyncio.run(_provider(fake_providers).send_batch(lessons(3)))
    assert {r.outcome for r in results} == {Outcome.TRANSIENT}
    assert fake_providers.accepted("postmark") == []


def test_reconcile_finds_by_metadata(fake_providers) -> None:
    provider = _provider(fake_providers)
    asyncio.run(provider.send_batch(lessons(2)))
    found = asyncio.run(provider.reconcile([lesson(1), lesson(2), lesson(9)]))
    assert found == {
        "psoas-week-s1-d3": Lookup.FOUND,
        "psoas-week-s2-d3": Lookup.FOUND,
        "psoas-week-s9-d3": Lookup.ABSENT,
    }
    assert asyncio.run(provider.cancel(["x"])) == []


def test_check_names_the_server(fake_providers) -> None:
    assert "dripmail test server" in asyncio.run(_provider(fake_providers).check())


def test_a_refused_request_fails_each_message_with_postmarks_reason(fake_providers) -> None:
    # More than Postmark's 500 per call: the whole request answers 422 with one ErrorCode.
    provider = _provider(fake_providers)
    provider.http.retry = BIG_RETRY  # the fake reads all 501 first: never race its validation
    results = asyncio.run(provider.send_batch(lessons(501)))
    assert {r.outcome for r in results} == {Outcome.PERMANENT}
    assert "ErrorCode 410" in (results[0].error or "")
    assert fake_providers.accepted("postmark") == []


def test_a_prepared_batch_goes_out_as_the_same_bytes_and_only_for_its_own_messages(
    fake_providers,
) -> None:
    """`prepare_batch` encodes a batch ahead (broadcasts do it in their worker thread): the
    request is byte for byte the one built at send time, and a body prepared for other
    messages (or another key) is never sent in their place."""
    fake_providers.raw_requests = []
    plain, ahead = _provider(fake_providers), _provider(fake_providers)
    batch = lessons(3)
    asyncio.run(plain.send_batch(batch, batch_key="b-plain"))
    ahead.prepare_batch(batch, "b-ahead")
    asyncio.run(ahead.send_batch(batch, batch_key="b-ahead"))
    (_, _, _, built_then), (_, _, headers, built_ahead) = fake_providers.raw_requests
    assert built_ahead == built_then
    assert {k.lower(): v for k, v in headers.items()}["content-type"] == "application/json"
    # Prepared for three, sent with two (one left out since): encoded again, for those two.
    ahead.prepare_batch(batch, "b-other")
    results = asyncio.run(ahead.send_batch(batch[:2], batch_key="b-other"))
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 2
    assert len(fake_providers.accepted("postmark")) == 3 + 3 + 2
    assert fake_providers.keys("postmark")[-2:] == [m.key for m in batch[:2]]
    assert fake_providers.validation_errors == []
