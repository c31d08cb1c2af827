"""Requests prepared ahead (`prepare_batch`, as broadcasts call it in their worker thread), on
every HTTP provider against the loopback fake: the same request bytes as one built at send
time, used only for the messages it was built for, never for a scheduled send."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import pytest
from fakes.mail import FAST_LIMITS, FAST_RETRY, lessons

from dripmail.message import Message
from dripmail.providers.api import HttpProvider
from dripmail.providers.mailgun import MailgunProvider
from dripmail.providers.postmark import PostmarkProvider
from dripmail.providers.prepared import Prepared
from dripmail.providers.resend import ResendProvider
from dripmail.providers.sendgrid import SendGridProvider

# The method each provider builds a request body with: after `prepare_batch`, sending the
# prepared batch must not call it again (the work was done ahead).
BUILDS = {
    "postmark": "payload",
    "resend": "payload",
    "sendgrid": "request_body",
    "mailgun": "form",
}


def _provider(fake, name: str) -> HttpProvider:
    common = {"base": fake.base(name), "retry": FAST_RETRY, "limits": FAST_LIMITS}
    if name == "postmark":
        return PostmarkProvider(fake.POSTMARK_TOKEN, settle_seconds=0, **common)
    if name == "resend":
        return ResendProvider(fake.RESEND_KEY, **common)
    if name == "sendgrid":
        return SendGridProvider(fake.SENDGRID_KEY, **common)
    return MailgunProvider(fake.MAILGUN_KEY, fake.MAILGUN_DOMAIN, **common)


def _send(provider: HttpProvider, batch: list[Message], key: str) -> list:
    async def go() -> list:
        try:
            return await provider.send_batch(batch, batch_key=key)
        finally:
            await provider.aclose()

    return asyncio.run(go())


def _sent_body(fake) -> bytes:
    """The body of the last send request, its multipart boundary (random per request) named
    alike, so two requests with the same fields compare equal."""
    _, _, headers, body = [r for r in fake.raw_requests if r[0] == "POST"][-1]
    kind = {k.lower(): v for k, v in headers.items()}["content-type"]
    boundary = re.search(r"boundary=([^;]+)", kind)
    return body.replace(boundary.group(1).encode(), b"B") if boundary else body


def _boom(*args: object, **kwargs: object) -> None:
    raise AssertionError("built again at send time: the prepared request was not used")


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_a_prepared_batch_is_the_request_built_at_send_time(fake_providers, name: str) -> None:
    fake_providers.raw_requests = []
    batch = lessons(3)
    results = _send(_provider(fake_providers, name), batch, "b-plain")
    assert [r.accepted for r in results] == [True] * 3
    built_then = _sent_body(fake_providers)
    ahead = _provider(fake_providers, name)
    ahead.prepare_batch(batch, "b-ahead")
    setattr(ahead, BUILDS[name], _boom)  # from here on only the prepared request can go
    results = _send(ahead, batch, "b-ahead")
    assert [r.accepted for r in results] == [True] * 3
    assert _sent_body(fake_providers) == built_then
    assert fake_providers.keys(name)[-3:] == [m.key for m in batch]
    assert fake_providers.validation_errors == []


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_a_request_prepared_for_other_messages_is_built_again(fake_providers, name: str) -> None:
    """Prepared for three, sent with two (one left out since: an address the provider cannot
    carry) or under another key: built again for what is sent, never sent as prepared."""
    batch = lessons(3)
    provider = _provider(fake_providers, name)
    provider.prepare_batch(batch, "b-1")
    provider.prepare_batch(batch, "b-2")
    assert [r.accepted for r in _send(provider, batch[:2], "b-1")] == [True] * 2
    assert [r.accepted for r in _send(provider, batch, "b-other")] == [True] * 3
    assert fake_providers.keys(name) == [m.key for m in batch[:2] + batch]


@pytest.mark.parametrize("name", ["mailgun", "resend", "sendgrid"])
def test_a_batch_with_a_scheduled_message_is_prepared_at_send_time(
    fake_providers, name: str
) -> None:
    # Whether it is due, or needs a batch id first, depends on the clock when it is sent.
    later = datetime.now(UTC) + timedelta(days=1)
    provider = _provider(fake_providers, name)
    assert provider.prepare_request(lessons(2, send_at=later)) is None
    assert provider.prepare_request(lessons(2)) is not None


def test_prepared_work_is_given_back_once_and_only_for_its_messages() -> None:
    batch = lessons(3)
    kept: Prepared[str] = Prepared(keep=2)
    kept.put("b-1", batch, "one")
    assert kept.take(batch, None) is None
    assert kept.take(batch[::-1], "b-1") is None  # another order is another request
    kept.put("b-1", batch, "one")
    assert kept.take(batch, "b-1") == "one" and kept.take(batch, "b-1") is None
    for n in range(5):  # a halted broadcast's batches are not kept forever
        kept.put(f"b-{n}", batch, str(n))
    assert len(kept) == 2 and kept.take(batch, "b-4") == "4"
