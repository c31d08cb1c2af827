"""Providers: messages per second through each HTTP provider against the loopback fake.

Ours: the messages split into the provider's largest batches, the batches handed over
concurrently through one provider object (one pooled client, the limiter's concurrency bound).
Naive: one request per message, one after the other. Both in the same run, against the same
fake server (tests/fakes/provider_server.py) with request validation off, so the figure is the
client's and the protocol's cost, not the validator's. The client-side rate limits are lifted
(DRIPMAIL_RATE_PER_SECOND would do the same): real providers' limits would cap both ways.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fakes.mail import lessons
from fakes.provider_server import FakeProviders

from dripmail.providers.http import Limits, RetryPolicy
from dripmail.providers.mailgun import MailgunProvider
from dripmail.providers.postmark import PostmarkProvider
from dripmail.providers.resend import ResendProvider
from dripmail.providers.sendgrid import SendGridProvider

LIMITS = Limits(messages_per_second=None, requests_per_second=None, max_concurrency=8)
RETRY = RetryPolicy(max_attempts=2, base_delay=0.01, timeout=30)


def _provider(name: str, fake: FakeProviders):
    if name == "postmark":
        return PostmarkProvider(
            fake.POSTMARK_TOKEN, base=fake.base(name), limits=LIMITS, retry=RETRY, settle_seconds=0
        )
    if name == "sendgrid":
        return SendGridProvider(fake.SENDGRID_KEY, base=fake.base(name), limits=LIMITS, retry=RETRY)
    if name == "mailgun":
        return MailgunProvider(
            fake.MAILGUN_KEY, fake.MAILGUN_DOMAIN, base=fake.base(name), limits=LIMITS, retry=RETRY
        )
    return ResendProvider(fake.RESEND_KEY, base=fake.base(name), limits=LIMITS, retry=RETRY)


async def _batched(provider, messages) -> float:
    size = provider.capabilities.max_batch
    batches = [messages[i : i + size] for i in range(0, len(messages), size)]
    began = time.perf_counter()
    answers = await asyncio.gather(
        *(
            provider.send_batch(b, batch_key=f"bench-{time.time_ns()}-{n}")
            for n, b in enumerate(batches)
        )
    )
    elapsed = time.perf_counter() - began
    assert all(r.accepted for rs in answers for r in rs)
    await provider.aclose()
    return len(messages) / elapsed


async def _one_by_one(provider, messages) -> float:
    began = time.perf_counter()
    for n, message in enumerate(messages):
        (result,) = await provider.send_batch([message], batch_key=f"one-{time.time_ns()}-{n}")
        assert result.accepted
    elapsed = time.perf_counter() - began
    await provider.aclose()
    return len(messages) / elapsed


def run(quick: bool) -> list[dict]:
    """Figures for bench/run.py."""
    n = 300 if quick else 2000
    repeats = 1 if quick else 3
    figures = []
    with FakeProviders(validate=False) as fake:
        for name in ("postmark", "sendgrid", "mailgun", "resend"):
            ours, naive = [], []
            for r in range(repeats):
                messages = lessons(n, start=1 + r * n)
                ours.append(asyncio.run(_batched(_provider(name, fake), messages)))
                naive.append(asyncio.run(_one_by_one(_provider(name, fake), messages)))
            o, v = statistics.median(ours), statistics.median(naive)
            figures.append(
                {
                    "name": f"{name}: {n} lessons to the loopback fake "
                    "(batched + concurrent vs one request per message)",
                    "unit": "msg/s",
                    "ours": round(o, 1),
                    "naive": round(v, 1),
                    "ratio": round(o / v, 1) if v else None,
                }
            )
    return figures


if __name__ == "__main__":
    for figure in run(quick="--quick" in sys.argv):
        print(figure)
