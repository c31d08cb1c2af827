"""1,000 messages per provider with 20% of send requests failing, some after acceptance.

An engine-like loop hands the messages over in batches, puts TRANSIENT ones back in the queue
and sends them again, and keeps the rest as final. Whatever the faults, no recipient may get
an email twice; Postmark (lookups) and Resend (idempotency key) must deliver every message
exactly once; SendGrid and Mailgun, whose APIs cannot tell, report the unclear ones for review
instead of guessing. Rejected recipients end PERMANENT with the provider's reason.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from fakes.mail import FAST_LIMITS, FAST_RETRY, lessons

from dripmail.providers.base import Outcome, SendResult
from dripmail.providers.mailgun import MailgunProvider
from dripmail.providers.postmark import PostmarkProvider
from dripmail.providers.resend import ResendProvider
from dripmail.providers.sendgrid import SendGridProvider

COUNT = 1000
BATCH = 25  # small batches: many requests, so 20% of them really is a lot of faults
REJECTED = ("reader13@example.org", "reader404@example.org", "reader999@example.org")


def _provider(name: str, fake):
    if name == "postmark":
        return PostmarkProvider(
            fake.POSTMARK_TOKEN,
            base=fake.base("postmark"),
            retry=FAST_RETRY,
            limits=FAST_LIMITS,
            settle_seconds=0,
        )
    if name == "sendgrid":
        return SendGridProvider(
            fake.SENDGRID_KEY, base=fake.base("sendgrid"), retry=FAST_RETRY, limits=FAST_LIMITS
        )
    if name == "mailgun":
        return MailgunProvider(
            fake.MAILGUN_KEY,
            fake.MAILGUN_DOMAIN,
            base=fake.base("mailgun"),
            retry=FAST_RETRY,
            limits=FAST_LIMITS,
        )
    return ResendProvider(
        fake.RESEND_KEY, base=fake.base("resend"), retry=FAST_RETRY, limits=FAST_LIMITS
    )


async def _engine_like(provider, messages) -> dict[str, SendResult]:
    final: dict[str, SendResult] = {}
    queue = list(messages)
    for _round in range(20):
        if not queue:
            break
        batches = [queue[i : i + BATCH] for i in range(0, len(queue), BATCH)]
        results = await asyncio.gather(
            *(provider.send_batch(b, batch_key=f"b{_round}-{n}") for n, b in enumerate(batches))
        )
        queue = []
        for batch, answers in zip(batches, results, strict=True):
            for message, result in zip(batch, answers, strict=True):
                if result.outcome is Outcome.TRANSIENT:
                    queue.append(message)
                else:
                    final[message.key] = result
    assert not queue, "transient failures did not clear in 20 rounds"
    return final


@pytest.mark.parametrize("name", ["postmark", "resend", "sendgrid", "mailgun"])
def test_thousand_messages_with_one_request_in_five_failing(fake_providers, name) -> None:
    for address in REJECTED:
        fake_providers.reject(address)
    fake_providers.chaos(name, rate=0.2, seed=7)
    messages = lessons(COUNT)
    final = asyncio.run(_engine_like(_provider(name, fake_providers), messages))
    kinds = Counter(kind for _, kind in fake_providers.faults_done)
    assert sum(kinds.values()) >= 5 and any(k.endswith("_after") for k in kinds), kinds

    at_provider = Counter(fake_providers.keys(name))
    assert max(at_provider.values()) == 1, "a recipient got the same lesson twice"

    outcomes = Counter(r.outcome for r in final.values())
    rejected_keys = {m.key for m in messages if m.to.address in REJECTED}
    for key in rejected_keys:
        result = final[key]
        if result.outcome is Outcome.PERMANENT:
            assert result.error
            assert result.suppress == (name == "postmark")  # 406: inactive recipient
        else:  # only possible where a batch was ambiguous before the rejection was seen
            assert result.outcome is Outcome.REVIEW and name in ("sendgrid", "mailgun")
    for key, result in final.items():
        if result.outcome is Outcome.ACCEPTED:
            assert at_provider[key] == 1 and result.provider_id
        elif result.outcome is Outcome.REVIEW:
            assert at_provider[key] <= 1 and "check by hand" in (result.error or "")
    if name == "postmark":
        # Looked up after every ambiguous answer: exactly once, nothing left for review.
        assert outcomes[Outcome.ACCEPTED] == COUNT - len(REJECTED)
        assert outcomes[Outcome.REVIEW] == 0
    elif name == "resend":
        # Retried with the same key and body; review only if every attempt stayed unclear.
        assert outcomes[Outcome.ACCEPTED] + outcomes[Outcome.REVIEW] == COUNT - len(REJECTED)
        assert outcomes[Outcome.ACCEPTED] >= COUNT - len(REJECTED) - 2 * BATCH
    else:
        # No key, no lookup: every unclear batch is reviewed, none is resent.
        assert outcomes[Outcome.REVIEW] > 0
        assert (
            outcomes[Outcome.ACCEPTED] + outcomes[Outcome.REVIEW] + outcomes[Outcome.PERMANENT]
            == COUNT
        )
