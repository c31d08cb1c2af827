"""Webhooks: verifying a signed SendGrid batch, and storing its events batched vs one by one.

SendGrid posts many events per request and retries what is not answered in time, so the
storing step is measured both ways: `ingest` (a few queries and one insert for the batch) and
the naive loop (look up, check and insert each event in its own transactions).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time as clock
from datetime import UTC, datetime
from pathlib import Path

from dripmail import subscribers as subs
from dripmail.store.db import open_store
from dripmail.webhooks import ingest, verify_and_parse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fakes.webhook_signing import WebhookKeys, sendgrid_event

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def _naive_store(engine, batch) -> int:
    new = 0
    for event in batch:
        try:
            sid = int(subs.get_subscriber(engine, event.email)["id"])
        except Exception:
            sid = None
        new += subs.record_event(
            engine,
            event.provider,
            event.dedupe_key,
            event.stored_type,
            NOW,
            event.at,
            subscriber_id=sid,
            delivery_key=event.delivery_key,
            detail=event.detail,
        )
    return new


def _store(n_events: int, naive: bool) -> float:
    keys = WebhookKeys.generate()
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_store("sqlite:///b.db", Path(tmp))
        for i in range(0, n_events, 10):
            subs.add_subscriber(
                engine,
                f"u{i}@example.org",
                timezone="Europe/Berlin",
                status="active",
                consent_source="bench",
                now=NOW,
            )
        docs = [
            sendgrid_event("open", f"u{i - i % 10}@example.org", timestamp=1780315080 + i)
            for i in range(n_events)
        ]
        batch = verify_and_parse(
            "sendgrid", *keys.signed("sendgrid", docs, NOW), keys.settings(), NOW
        )
        started = clock.perf_counter()
        new = _naive_store(engine, batch) if naive else ingest(engine, batch, NOW).new
        took = clock.perf_counter() - started
        assert new == n_events
        engine.dispose()
    return took


def _verify(n_events: int, repeats: int) -> float:
    keys = WebhookKeys.generate()
    settings = keys.settings()
    docs = [sendgrid_event("open", f"u{i}@example.org") for i in range(n_events)]
    headers, body = keys.signed("sendgrid", docs, NOW)
    times = []
    for _ in range(repeats):
        started = clock.perf_counter()
        verify_and_parse("sendgrid", headers, body, settings, NOW)
        times.append(clock.perf_counter() - started)
    return statistics.median(times)


def run(quick: bool) -> list[dict]:
    """Figures for bench/run.py."""
    n = 300 if quick else 2000
    repeats = 3 if quick else 5
    ours = statistics.median(_store(n, naive=False) for _ in range(repeats))
    naive = statistics.median(_store(n, naive=True) for _ in range(repeats))
    verify = _verify(n, repeats * 3)
    return [
        {
            "name": f"store a {n}-event SendGrid batch (batched ingest vs event by event)",
            "unit": "s",
            "ours": round(ours, 4),
            "naive": round(naive, 4),
            "ratio": round(naive / ours, 1) if ours else None,
        },
        {
            "name": f"verify + normalise a signed {n}-event SendGrid batch",
            "value": round(verify * 1000, 2),
            "unit": "ms",
        },
    ]


if __name__ == "__main__":
    for figure in run(quick="--quick" in sys.argv):
        print(figure)
