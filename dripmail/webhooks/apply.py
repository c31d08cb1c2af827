"""Storing verified webhook events once, and stopping mail where an event says so."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from dripmail import subscribers as subs
from dripmail.errors import InputError, WebhookAuthError
from dripmail.store.schema import (
    broadcast_deliveries,
    deliveries,
    events,
    subscribers,
    webhook_nonces,
)
from dripmail.validation import scrub_addresses
from dripmail.webhooks.common import WebhookEvent

# Nonces only need keeping while their signed timestamp could still pass the freshness check
# (at most DRIPMAIL_WEBHOOK_TOLERANCE_SECONDS, capped at a day); two days is ample.
NONCE_RETENTION = timedelta(days=2)


@dataclass
class Applied:
    """What one batch of events did."""

    new: int = 0  # events stored for the first time
    duplicates: int = 0  # already stored (a provider retry)
    unmatched: int = 0  # stored, but no subscriber has that delivery key or address
    stopped: list[int] = field(default_factory=list)  # subscribers whose mail was stopped
    # Provider ids of lessons already handed over (scheduled there): cancel them at the provider.
    to_cancel: list[str] = field(default_factory=list)
    # Set by `Dripmail.apply_events`: what the provider took back of `to_cancel`.
    recall: Any = None


def check_replays(engine: Engine, batch: Sequence[WebhookEvent], now: datetime) -> None:
    """Record each request nonce with its digest; WebhookAuthError if seen with other content.

    The same nonce with the same content is a provider retry and passes (the events table then
    stores nothing twice); with different content it is someone reusing a captured signature.
    """
    nonces = {(e.provider, e.replay_id): e.replay_digest for e in batch if e.replay_id}
    if not nonces:
        return
    with engine.begin() as conn:
        conn.execute(delete(webhook_nonces).where(webhook_nonces.c.seen_at < now - NONCE_RETENTION))
    for (provider, nonce), digest in nonces.items():
        for _attempt in range(2):
            try:
                with engine.begin() as conn:
                    seen = conn.execute(
                        select(webhook_nonces.c.digest).where(
                            webhook_nonces.c.provider == provider, webhook_nonces.c.nonce == nonce
                        )
                    ).scalar_one_or_none()
                    if seen is None:
                        conn.execute(
                            insert(webhook_nonces).values(
                                provider=provider, nonce=nonce, digest=digest, seen_at=now
                            )
                        )
                break
            except IntegrityError:
                continue  # a concurrent request stored it first: read it again
        if seen is not None and seen != digest:
            raise WebhookAuthError(provider, "this signature was already used for another event")


CHUNK = 500  # ids per IN (...) query: well under every database's parameter limit


def _chunks(items: list, size: int = CHUNK):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _already_stored(engine: Engine, batch: list[WebhookEvent]) -> set[tuple[str, str]]:
    """The (provider, dedupe_key) pairs of `batch` already in the events table."""
    found: set[tuple[str, str]] = set()
    by_provider: dict[str, list[str]] = {}
    for e in batch:
        by_provider.setdefault(e.provider, []).append(e.dedupe_key)
    with engine.connect() as conn:
        for provider, keys in by_provider.items():
            for part in _chunks(keys):
                rows = conn.execute(
                    select(events.c.dedupe_key).where(
                        events.c.provider == provider, events.c.dedupe_key.in_(part)
                    )
                ).scalars()
                found.update((provider, k) for k in rows)
    return found


def _normalised(address: str) -> str | None:
    try:
        return subs.normalise_email(address)
    except InputError:
        return None


def _subscribers_for(engine: Engine, batch: list[WebhookEvent]) -> list[int | None]:
    """Each event's subscriber: by the delivery key it carried, else by the recipient address.

    A handful of queries for the whole batch, not several per event.
    """
    keys = sorted({e.delivery_key for e in batch if e.delivery_key})
    by_key: dict[str, int] = {}
    addresses = {e.email: _normalised(e.email) for e in batch}
    wanted = sorted({a for a in addresses.values() if a})
    by_email: dict[str, int] = {}
    with engine.connect() as conn:
        for table in (broadcast_deliveries, deliveries):  # lessons win on a clash
            for part in _chunks(keys):
                rows = conn.execute(
                    select(table.c.key, table.c.subscriber_id).where(table.c.key.in_(part))
                )
                by_key.update({k: int(sid) for k, sid in rows})
        for part in _chunks(wanted):
            rows = conn.execute(
                select(subscribers.c.email, subscribers.c.id).where(subscribers.c.email.in_(part))
            )
            by_email.update({email: int(sid) for email, sid in rows})
    out: list[int | None] = []
    for e in batch:
        sid = by_key.get(e.delivery_key) if e.delivery_key else None
        if sid is None:
            address = addresses[e.email]
            sid = by_email.get(address) if address else None
        out.append(sid)
    return out


STRENGTH = {"unsubscribed": 0, "bounced": 1, "complained": 2}


def _action(event: WebhookEvent) -> str:
    return "bounced" if event.type == "bounced" else event.type


def _stop(engine: Engine, sid: int, event: WebhookEvent, now: datetime) -> list[str]:
    if event.type == "unsubscribed":
        return subs.unsubscribe(engine, sid, now, source=f"{event.provider} webhook")
    reason = "complained" if event.type == "complained" else "bounced"
    return subs.suppress(engine, sid, reason, now)


def _row(event: WebhookEvent, sid: int | None, now: datetime) -> dict:
    # Provider reasons quote addresses ("550 5.1.1 <quinn@example.com>... User unknown"). An
    # event that matches nobody (never subscribed, or forgotten) keeps no address at all, so
    # erasure sticks; a subscriber's own events go when they are forgotten.
    raw = event.raw or None
    if sid is None and raw:
        raw = scrub_addresses(raw)
    return {
        "subscriber_id": sid,
        "delivery_key": event.delivery_key,
        "provider": event.provider,
        "dedupe_key": event.dedupe_key,
        "type": event.stored_type,
        "detail": scrub_addresses(event.detail),
        "raw": raw,
        "occurred_at": event.at,
        "received_at": now,
    }


def ingest(engine: Engine, batch: Iterable[WebhookEvent], now: datetime) -> Applied:
    """Store each event once and stop mail on hard bounce, complaint or unsubscribe.

    Stops happen *before* the events are stored: if the process dies in between, the
    provider's retry finds the events unstored and stops again (stopping is idempotent),
    instead of finding them stored and never stopping. New events are written in one
    transaction; if a concurrent retry of the same request wins the race, each is then
    stored on its own and the ones already there count as duplicates.
    """
    batch = list(batch)
    check_replays(engine, batch, now)
    out = Applied()
    unique: dict[tuple[str, str], WebhookEvent] = {}
    for event in batch:
        unique.setdefault((event.provider, event.dedupe_key), event)
    stored = _already_stored(engine, list(unique.values()))
    fresh = [e for k, e in unique.items() if k not in stored]
    out.duplicates = len(batch) - len(fresh)
    sids = _subscribers_for(engine, fresh)
    out.unmatched = sum(1 for sid in sids if sid is None)
    # Weakest first, so a subscriber who unsubscribed and also complained ends up complained
    # (and suppressed), whatever order the provider listed the events in.
    stops: dict[tuple[int, int], WebhookEvent] = {}
    for event, sid in zip(fresh, sids, strict=True):
        if sid is not None and event.stops_mail:
            stops.setdefault((STRENGTH[_action(event)], sid), event)
    for (_strength, sid), event in sorted(stops.items(), key=lambda item: item[0]):
        out.to_cancel.extend(_stop(engine, sid, event, now))
        if sid not in out.stopped:
            out.stopped.append(sid)
    rows = [_row(e, sid, now) for e, sid in zip(fresh, sids, strict=True)]
    if not rows:
        return out
    try:
        with engine.begin() as conn:
            conn.execute(insert(events), rows)
        out.new = len(rows)
    except IntegrityError:
        for row in rows:
            try:
                with engine.begin() as conn:
                    conn.execute(insert(events).values(**row))
                out.new += 1
            except IntegrityError:
                out.duplicates += 1
    return out


def apply_events(engine: Engine, batch: Iterable[WebhookEvent], now: datetime) -> int:
    """Store events once, stopping mail where they say so; returns how many were new.

    Use `ingest` to also get the provider ids to cancel (`Applied.to_cancel`).
    """
    return ingest(engine, batch, now).new
