"""Providers: messages per second through each HTTP provider against the loopback fake.

Ours: the messages split into the provider's largest batches, the batches handed over
concurrently through one provider object (one pooled client, the limiter's concurrency bound).
Peer: one request per message, one after the other (the loop every provider's quick-start
shows). Limit: the very requests dripmail sent (recorded by the fake, bodies already encoded)
replayed by a bare `httpx.AsyncClient` on the same 8 connections: no message building, batching,
pacing or answer parsing, so it is the fake's ceiling for this provider's protocol. All three in
the same run, against the same fake server (tests/fakes/provider_server.py) with request
validation off, so the figure is the client's and the protocol's cost, not the validator's. The
client-side rate limits are lifted (DRIPMAIL_RATE_PER_SECOND would do the same): real providers'
limits would cap every way alike.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fakes.mail import lessons
from fakes.provider_server import FakeProviders

from dripmail.providers.http import Limits, RetryPolicy
from dripmail.providers.mailgun import MailgunProvider
from dripmail.providers.postmark import PostmarkProvider
from dripmail.providers.resend import ResendProvider
from dripmail.providers.sendgrid import SendGridProvider

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figure import compare

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


# Headers the bare client sets itself, and the idempotency key: replaying it would let the fake
# answer from its cache instead of doing the work again.
_NOT_REPLAYED = {"host", "content-length", "connection", "accept-encoding", "idempotency-key"}


async def _replayed(base: str, sent: list[tuple[str, str, dict[str, str], bytes]], n: int) -> float:
    """Messages per second of a bare client replaying recorded requests on 8 connections."""
    requests = [
        (method, path, {k: v for k, v in headers.items() if k.lower() not in _NOT_REPLAYED}, body)
        for method, path, headers, body in sent
    ]
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        began = time.perf_counter()
        answers = await asyncio.gather(
            *(client.request(m, p, headers=h, content=b) for m, p, h, b in requests)
        )
        elapsed = time.perf_counter() - began
    assert all(a.status_code < 300 for a in answers), [a.text for a in answers[:3]]
    return n / elapsed


def run(quick: bool) -> list[dict]:
    """Figures for bench/run.py."""
    n = 300 if quick else 2000
    repeats = 1 if quick else 3
    figures = []
    with FakeProviders(validate=False) as fake:
        for name in ("postmark", "sendgrid", "mailgun", "resend"):
            ours, naive, bare = [], [], []
            for r in range(repeats):
                messages = lessons(n, start=1 + r * n)
                fake.raw_requests = []
                ours.append(asyncio.run(_batched(_provider(name, fake), messages)))
                sent, fake.raw_requests = fake.raw_requests, None
                bare.append(asyncio.run(_replayed(fake.url, sent, n)))
                naive.append(asyncio.run(_one_by_one(_provider(name, fake), messages)))
            figures.append(
                compare(
                    f"{name}: {n} lessons to the loopback fake (batched + concurrent)",
                    "msg/s",
                    statistics.median(ours),
                    peer=statistics.median(naive),
                    peer_is="one request per message, one after the other: the loop each "
                    "provider's quick-start shows",
                    limit=statistics.median(bare),
                    limit_is="the same requests dripmail sent, bodies already encoded, replayed "
                    "by a bare httpx client on the same 8 connections (the fake's ceiling)",
                )
            )
    return figures


if __name__ == "__main__":
    for figure in run(quick="--quick" in sys.argv):
        print(figure)
