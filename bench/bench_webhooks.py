"""Webhooks: verifying a signed SendGrid batch, and storing its events batched vs one by one.

SendGrid posts many events per request and retries what is not answered in time, so the
storing step is measured three ways: `ingest` (a few queries and one insert for the batch), the
peer (look up, check and insert each event in its own transactions, through the library's
one-event calls) and the limit (the bare sqlite3 driver: one query for the batch's subscriber
ids, one `INSERT OR IGNORE` executemany, one transaction, no replay or stop checks).
"""

from __future__ import annotations

import sqlite3
import statistics
import sys
import tempfile
import time as clock
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from dripmail import subscribers as subs
from dripmail.store.db import open_store
from dripmail.webhooks import ingest, verify_and_parse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fakes.webhook_signing import WebhookKeys, sendgrid_event

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figure import compare, medians

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


def _bare_connection(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    return con


def _bare_store(con: sqlite3.Connection, batch) -> int:
    """The cheapest way to store the same events: bare driver, one transaction."""
    stamp = NOW.replace(tzinfo=None).isoformat(sep=" ")
    con.execute("BEGIN")
    emails = sorted({e.email for e in batch})
    ids = dict(
        con.execute(
            f"SELECT email, id FROM subscribers WHERE email IN ({','.join('?' * len(emails))})",
            emails,
        ).fetchall()
    )
    before = con.total_changes
    con.executemany(
        "INSERT OR IGNORE INTO events (subscriber_id, delivery_key, provider, dedupe_key, type,"
        " detail, raw, occurred_at, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                ids.get(e.email),
                e.delivery_key,
                e.provider,
                e.dedupe_key,
                e.stored_type,
                e.detail,
                e.raw,
                e.at.replace(tzinfo=None).isoformat(sep=" "),
                stamp,
            )
            for e in batch
        ],
    )
    con.execute("COMMIT")
    return con.total_changes - before


def _store(n_events: int, way: str) -> float:
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
        bare = _bare_connection(Path(tmp) / "b.db") if way == "limit" else None
        started = clock.perf_counter()
        if way == "peer":
            new = _naive_store(engine, batch)
        elif bare is not None:
            new = _bare_store(bare, batch)
            bare.close()
        else:
            new = ingest(engine, batch, NOW).new
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
    seen = medians({way: partial(_store, n, way) for way in ("ours", "peer", "limit")}, repeats)
    verify = _verify(n, repeats * 3)
    return [
        compare(
            f"store a {n}-event SendGrid batch (batched ingest)",
            "s",
            seen["ours"],
            peer=seen["peer"],
            peer_is="each event looked up, checked and stored in its own transactions through "
            "the library's one-event calls: the loop a webhook handler first writes",
            limit=seen["limit"],
            limit_is="the bare sqlite3 driver: one query for the subscriber ids, one INSERT OR "
            "IGNORE executemany, one transaction, no replay or stop checks",
            better="lower",
        ),
        {
            "name": f"verify + normalise a signed {n}-event SendGrid batch",
            "value": round(verify * 1000, 2),
            "unit": "ms",
        },
    ]


if __name__ == "__main__":
    for figure in run(quick="--quick" in sys.argv):
        print(figure)
