"""Newsletter broadcasts: one issue to every eligible subscriber, once each, resumable.

A broadcast is identified by its file's slug. Starting it plans one `broadcast_deliveries` row
per eligible subscriber (a unique key, so a re-run can never plan anyone twice), streaming the
subscribers by id in chunks; sending claims chunks with a lease and hands them over through the
same careful path as lessons (`dripmail.handover`). Killing it at any moment and running the
same command again continues where it stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, func, insert, or_, select, update
from sqlalchemy.engine import RowMapping

from dripmail.content import Newsletter
from dripmail.errors import InputError, NotFoundError
from dripmail.handover import RenderFn, deliver, release
from dripmail.providers.base import Provider
from dripmail.store.schema import broadcast_deliveries, broadcasts, events, subscribers

LEASE = timedelta(minutes=10)
CHUNK = 1000


@dataclass
class BroadcastReport:
    """What one `send` pass did."""

    sent: int = 0
    handed: int = 0
    retry: int = 0
    failed: int = 0
    review: int = 0
    recovered: int = 0
    suppressed: int = 0


def content_hash(newsletter: Newsletter) -> str:
    """Hash of what readers get: subject, preheader and body."""
    text = "\x00".join((newsletter.subject, newsletter.preheader, newsletter.body))
    return hashlib.sha256(text.encode()).hexdigest()


def eligible(segment: str):
    """The WHERE clause for subscribers who may receive a newsletter of `segment`."""
    # Unsubscribed, bounced and complained never match; forgotten ones no longer exist.
    statuses = {"all": ("active", "completed"), "in-course": ("active",)}
    statuses["graduates"] = ("completed",)
    if segment.startswith("tag:"):
        tag = segment[4:]
        return and_(
            subscribers.c.status.in_(("active", "completed")),
            subscribers.c.newsletters.is_(True),
            ("," + subscribers.c.tags + ",").like(f"%,{tag},%"),
        )
    if segment not in statuses:
        raise InputError(f"segment {segment!r}: use all, in-course, graduates or tag:NAME")
    return and_(subscribers.c.status.in_(statuses[segment]), subscribers.c.newsletters.is_(True))


def count_eligible(engine: Engine, segment: str) -> int:
    """How many subscribers a broadcast to `segment` would reach now."""
    with engine.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(subscribers).where(eligible(segment))
        ).scalar_one()


def sample(engine: Engine, segment: str, size: int = 5) -> list[str]:
    """A few addresses of the segment, to show before asking for confirmation."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(subscribers.c.email)
                .where(eligible(segment))
                .order_by(subscribers.c.id)
                .limit(size)
            ).scalars()
        )


def find(engine: Engine, ref: int | str) -> RowMapping:
    """A broadcast by id or slug; NotFoundError with a hint otherwise."""
    cond = broadcasts.c.id == ref if isinstance(ref, int) else broadcasts.c.slug == ref
    with engine.connect() as conn:
        row = conn.execute(select(broadcasts).where(cond)).mappings().first()
    if row is None:
        raise NotFoundError(f"no broadcast {ref!r}: see `broadcasts list`")
    return row


def open_broadcast(
    engine: Engine,
    newsletter: Newsletter,
    segment: str,
    now: datetime,
    scheduled_at: datetime | None = None,
) -> RowMapping:
    """The broadcast row for this newsletter, created on first use.

    An existing one is continued only if the file is unchanged and the segment is the same;
    a cancelled one is refused.
    """
    digest = content_hash(newsletter)
    with engine.begin() as conn:
        row = (
            conn.execute(select(broadcasts).where(broadcasts.c.slug == newsletter.slug))
            .mappings()
            .first()
        )
        if row is None:
            conn.execute(
                insert(broadcasts).values(
                    slug=newsletter.slug,
                    subject=newsletter.subject,
                    segment=segment,
                    status="scheduled",
                    scheduled_at=scheduled_at,
                    content_hash=digest,
                    created_at=now,
                )
            )
    if row is None:
        return find(engine, newsletter.slug)
    where = f"{newsletter.path.name} (broadcast {row['id']})"
    if row["status"] == "cancelled":
        raise InputError(f"{where} was cancelled; copy the file under a new name to send it")
    if row["content_hash"] and row["content_hash"] != digest and row["started_at"]:
        raise InputError(
            f"{where} was edited after it started sending; readers so far got the old text. "
            "Restore the file, or save the new text under a new file name for a new broadcast"
        )
    if row["segment"] != segment:
        raise InputError(f"{where} was started for segment {row['segment']!r}, not {segment!r}")
    if scheduled_at is not None and row["scheduled_at"] != scheduled_at and not row["started_at"]:
        with engine.begin() as conn:
            conn.execute(
                update(broadcasts)
                .where(broadcasts.c.id == row["id"])
                .values(scheduled_at=scheduled_at, content_hash=digest)
            )
        return find(engine, row["id"])
    return row


def plan(
    engine: Engine,
    broadcast_id: int,
    segment: str,
    now: datetime,
    chunk: int = CHUNK,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Plan one delivery per eligible subscriber not planned yet; returns how many were added.

    Streams subscribers by id (keyset pagination), so memory does not grow with the list.
    """
    added, last = 0, 0
    while True:
        with engine.begin() as conn:
            ids = list(
                conn.execute(
                    select(subscribers.c.id)
                    .where(eligible(segment), subscribers.c.id > last)
                    .order_by(subscribers.c.id)
                    .limit(chunk)
                ).scalars()
            )
            if not ids:
                return added
            last = ids[-1]
            have = set(
                conn.execute(
                    select(broadcast_deliveries.c.subscriber_id).where(
                        broadcast_deliveries.c.broadcast_id == broadcast_id,
                        broadcast_deliveries.c.subscriber_id.in_(ids),
                    )
                ).scalars()
            )
            rows = [
                {
                    "broadcast_id": broadcast_id,
                    "subscriber_id": sid,
                    "key": f"nl-{broadcast_id}-s{sid}",
                    "state": "planned",
                    "attempts": 0,
                    "updated_at": now,
                }
                for sid in ids
                if sid not in have
            ]
            if rows:
                conn.execute(insert(broadcast_deliveries), rows)
            added += len(rows)
        if progress:
            progress(len(ids))


def _claim_chunk(
    engine: Engine, broadcast_id: int, worker: str, now: datetime, chunk: int
) -> list[dict]:
    """Claim up to `chunk` rows still to send (free, or left by a dead worker)."""
    bd = broadcast_deliveries
    free = and_(
        bd.c.state == "planned",
        or_(bd.c.next_attempt_at.is_(None), bd.c.next_attempt_at <= now),
    )
    expired = and_(bd.c.state.in_(("claimed", "sending")), bd.c.lease_expires_at < now)
    query = (
        select(bd, subscribers.c.email, subscribers.c.first_name, subscribers.c.status)
        .join(subscribers, subscribers.c.id == bd.c.subscriber_id)
        .where(bd.c.broadcast_id == broadcast_id, or_(free, expired))
        .order_by(bd.c.id)
        .limit(chunk)
    )
    with engine.begin() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
        if engine.dialect.name == "postgresql" and rows:
            lockable = set(
                conn.execute(
                    select(bd.c.id)
                    .where(bd.c.id.in_([r["id"] for r in rows]))
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            rows = [r for r in rows if r["id"] in lockable]
        # Someone who left since planning gets nothing: skip rather than send.
        gone = [r["id"] for r in rows if r["status"] not in ("active", "completed")]
        if gone:
            conn.execute(
                update(bd).where(bd.c.id.in_(gone)).values(state="skipped", updated_at=now)
            )
        held = []
        free = {r["id"]: r for r in rows if r["state"] == "planned" and r["id"] not in gone}
        if free:
            # One conditional UPDATE for the chunk; RETURNING says which rows we won.
            won = conn.execute(
                update(bd)
                .where(bd.c.id.in_(list(free)), bd.c.state == "planned")
                .values(
                    state="claimed",
                    claimed_by=worker,
                    lease_expires_at=now + LEASE,
                    updated_at=now,
                )
                .returning(bd.c.id)
            ).scalars()
            held.extend(free[i] for i in won)
        for row in rows:
            if row["id"] in gone or row["state"] == "planned":
                continue
            # A dead worker's claim: take it over only if its lease is still expired.
            result = conn.execute(
                update(bd)
                .where(
                    bd.c.id == row["id"],
                    bd.c.state == row["state"],
                    bd.c.lease_expires_at < now,
                )
                .values(claimed_by=worker, lease_expires_at=now + LEASE, updated_at=now)
            )
            if result.rowcount == 1:
                held.append(row)
    return held


def send(
    engine: Engine,
    provider: Provider,
    broadcast: RowMapping,
    render: RenderFn,
    now: datetime,
    *,
    worker: str,
    chunk: int = CHUNK,
    progress: Callable[[int], None] | None = None,
) -> BroadcastReport:
    """Hand over everything planned for this broadcast; safe to run again after a crash."""
    report = BroadcastReport()
    with engine.begin() as conn:
        conn.execute(
            update(broadcasts)
            .where(broadcasts.c.id == broadcast["id"], broadcasts.c.started_at.is_(None))
            .values(started_at=now, status="sending")
        )
    while True:
        held = _claim_chunk(engine, broadcast["id"], worker, now, chunk)
        if not held:
            break
        try:
            asyncio.run(deliver(engine, broadcast_deliveries, provider, held, render, now, report))
        except BaseException:
            release(engine, broadcast_deliveries, [r["key"] for r in held], now)
            raise
        if progress:
            progress(len(held))
    with engine.begin() as conn:
        left = conn.execute(
            select(func.count())
            .select_from(broadcast_deliveries)
            .where(
                broadcast_deliveries.c.broadcast_id == broadcast["id"],
                broadcast_deliveries.c.state.in_(("planned", "claimed", "sending")),
            )
        ).scalar_one()
        if not left:
            conn.execute(
                update(broadcasts)
                .where(broadcasts.c.id == broadcast["id"])
                .values(status="sent", finished_at=now)
            )
    return report


def cancel(engine: Engine, broadcast_id: int, now: datetime) -> RowMapping:
    """Cancel a broadcast that has not started; InputError once it is sending."""
    row = find(engine, broadcast_id)
    if row["started_at"] is not None:
        raise InputError(
            f"broadcast {broadcast_id} started at {row['started_at']:%Y-%m-%d %H:%M} UTC: "
            "too late to cancel (what is planned can still be stopped per subscriber)"
        )
    with engine.begin() as conn:
        conn.execute(
            update(broadcasts).where(broadcasts.c.id == broadcast_id).values(status="cancelled")
        )
        conn.execute(
            update(broadcast_deliveries)
            .where(
                broadcast_deliveries.c.broadcast_id == broadcast_id,
                broadcast_deliveries.c.state == "planned",
            )
            .values(state="cancelled", updated_at=now)
        )
    return find(engine, broadcast_id)


@dataclass(frozen=True)
class BroadcastStats:
    """Counts for `broadcasts list` and `broadcasts show`."""

    recipients: int
    accepted: int
    failed: int
    pending: int
    bounced: int
    opened: int
    clicked: int


def stats(engine: Engine, broadcast_id: int) -> BroadcastStats:
    """Recipients and outcomes of one broadcast (events matched by delivery key)."""
    bd = broadcast_deliveries
    with engine.connect() as conn:
        states = dict(
            conn.execute(
                select(bd.c.state, func.count())
                .where(bd.c.broadcast_id == broadcast_id)
                .group_by(bd.c.state)
            ).all()
        )
        kinds = dict(
            conn.execute(
                select(events.c.type, func.count(func.distinct(events.c.delivery_key)))
                .where(events.c.delivery_key.like(f"nl-{broadcast_id}-s%"))
                .group_by(events.c.type)
            ).all()
        )
    return BroadcastStats(
        recipients=sum(states.values()),
        accepted=states.get("sent", 0) + states.get("handed", 0),
        failed=states.get("failed", 0) + states.get("review", 0),
        pending=sum(states.get(s, 0) for s in ("planned", "claimed", "sending")),
        bounced=kinds.get("bounced", 0),
        opened=kinds.get("opened", 0),
        clicked=kinds.get("clicked", 0),
    )


def list_broadcasts(engine: Engine) -> list[RowMapping]:
    """Every broadcast, newest first."""
    with engine.connect() as conn:
        return list(conn.execute(select(broadcasts).order_by(broadcasts.c.id.desc())).mappings())
