"""Storing verified webhook events once, and stopping mail where an event says so."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from dripmail import subscribers as subs
from dripmail.errors import DripmailError, InputError, WebhookAuthError
from dripmail.store.schema import broadcast_deliveries, deliveries, events, webhook_nonces
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


def _find_subscriber(engine: Engine, event: WebhookEvent) -> int | None:
    """By the delivery key the message carried, else by the recipient address."""
    with engine.connect() as conn:
        if event.delivery_key:
            for table in (deliveries, broadcast_deliveries):
                sid = conn.execute(
                    select(table.c.subscriber_id).where(table.c.key == event.delivery_key)
                ).scalar_one_or_none()
                if sid is not None:
                    return int(sid)
    try:
        return int(subs.get_subscriber(engine, event.email)["id"])
    except (InputError, DripmailError):
        return None


def _seen(engine: Engine, event: WebhookEvent) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(
                select(events.c.id).where(
                    events.c.provider == event.provider, events.c.dedupe_key == event.dedupe_key
                )
            ).first()
            is not None
        )


def _stop(engine: Engine, sid: int, event: WebhookEvent, now: datetime) -> list[str]:
    if event.type == "unsubscribed":
        return subs.unsubscribe(engine, sid, now, source=f"{event.provider} webhook")
    reason = "complained" if event.type == "complained" else "bounced"
    return subs.suppress(engine, sid, reason, now)


def ingest(engine: Engine, batch: Iterable[WebhookEvent], now: datetime) -> Applied:
    """Store each event once and stop mail on hard bounce, complaint or unsubscribe.

    The stop happens *before* the event is stored: if the process dies in between, the
    provider's retry finds the event unstored and stops again (stopping is idempotent),
    instead of finding it stored and never stopping.
    """
    batch = list(batch)
    check_replays(engine, batch, now)
    out = Applied()
    for event in batch:
        if _seen(engine, event):
            out.duplicates += 1
            continue
        sid = _find_subscriber(engine, event)
        if sid is None:
            out.unmatched += 1
        elif event.stops_mail:
            out.to_cancel.extend(_stop(engine, sid, event, now))
            if sid not in out.stopped:
                out.stopped.append(sid)
        try:
            stored = subs.record_event(
                engine,
                event.provider,
                event.dedupe_key,
                event.stored_type,
                now,
                event.at,
                subscriber_id=sid,
                delivery_key=event.delivery_key,
                detail=event.detail,
            )
        except IntegrityError:
            stored = False  # a concurrent retry of the same event stored it first
        if stored:
            out.new += 1
        else:
            out.duplicates += 1
    return out


def apply_events(engine: Engine, batch: Iterable[WebhookEvent], now: datetime) -> int:
    """Store events once, stopping mail where they say so; returns how many were new.

    Use `ingest` to also get the provider ids to cancel (`Applied.to_cancel`).
    """
    return ingest(engine, batch, now).new


async def cancel_at_provider(provider, provider_ids: Sequence[str]) -> list[str]:
    """Ask the provider to cancel lessons it holds for a stopped subscriber, if it can."""
    if not provider_ids or not getattr(provider.capabilities, "can_cancel", False):
        return []
    return await provider.cancel(list(provider_ids))
