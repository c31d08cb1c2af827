"""Queries for deliveries set aside for review (lessons and newsletter copies alike).

A delivery is in state ``review`` when its hand-over was ambiguous and the provider cannot
tell whether it kept it (SendGrid, Mailgun, SMTP; Postmark when its search has not caught up).
These queries list them with what is known, and settle them: as sent, or back to the queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    String,
    Table,
    cast,
    literal_column,
    null,
    select,
    union_all,
    update,
)

from dripmail.store.schema import (
    back_in_queue,
    broadcast_deliveries,
    broadcasts,
    deliveries,
    events,
    subscribers,
)
from dripmail.store.subscriber_queries import insert_own_event


@dataclass(frozen=True)
class ReviewRow:
    """One delivery waiting for review.

    `kind` is ``lesson`` or ``newsletter``; `what` is ``day N`` or the newsletter's slug;
    `handed_at` (aware UTC) is when its batch was first handed over; `events` are what the
    provider's webhooks reported for this key since: ``(type, occurred_at, provider)``.
    """

    kind: str
    key: str
    subscriber_id: int
    email: str
    subscriber_status: str
    what: str
    provider: str | None
    batch_key: str | None
    handed_at: datetime | None
    attempts: int
    last_error: str | None
    broadcast_id: int | None = None
    events: list[tuple[str, datetime, str]] = field(default_factory=list)


def _lessons():
    return (
        select(
            literal_column("'lesson'", String).label("kind"),
            deliveries.c.key,
            deliveries.c.subscriber_id,
            subscribers.c.email,
            subscribers.c.status.label("subscriber_status"),
            deliveries.c.lesson_day.label("day"),
            cast(null(), String).label("slug"),
            cast(null(), Integer).label("broadcast_id"),
            deliveries.c.provider,
            deliveries.c.batch_key,
            deliveries.c.handed_at,
            deliveries.c.attempts,
            deliveries.c.last_error,
            deliveries.c.updated_at,
        )
        .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
        .where(deliveries.c.state == "review")
    )


def _newsletters():
    bd = broadcast_deliveries
    return (
        select(
            literal_column("'newsletter'", String).label("kind"),
            bd.c.key,
            bd.c.subscriber_id,
            subscribers.c.email,
            subscribers.c.status.label("subscriber_status"),
            cast(null(), Integer).label("day"),
            broadcasts.c.slug,
            bd.c.broadcast_id,
            bd.c.provider,
            bd.c.batch_key,
            bd.c.handed_at,
            bd.c.attempts,
            bd.c.last_error,
            bd.c.updated_at,
        )
        .join(subscribers, subscribers.c.id == bd.c.subscriber_id)
        .join(broadcasts, broadcasts.c.id == bd.c.broadcast_id)
        .where(bd.c.state == "review")
    )


def waiting(engine: Engine, keys: Sequence[str] | None = None) -> list[ReviewRow]:
    """Deliveries in state ``review`` (only `keys` if given), oldest first, with their events."""
    lessons, letters = _lessons(), _newsletters()
    if keys is not None:
        lessons = lessons.where(deliveries.c.key.in_(keys))
        letters = letters.where(broadcast_deliveries.c.key.in_(keys))
    both = union_all(lessons, letters).subquery()
    with engine.connect() as conn:
        rows = list(conn.execute(select(both).order_by(both.c.updated_at, both.c.key)).mappings())
        found = _events(conn, [r["key"] for r in rows])
    out = []
    for r in rows:
        handed = r["handed_at"]
        if handed is not None and handed.tzinfo is None:  # typed by the union's first select
            handed = handed.replace(tzinfo=UTC)
        out.append(
            ReviewRow(
                kind=r["kind"],
                key=r["key"],
                subscriber_id=r["subscriber_id"],
                email=r["email"],
                subscriber_status=r["subscriber_status"],
                what=f"day {r['day']}" if r["kind"] == "lesson" else str(r["slug"]),
                provider=r["provider"],
                batch_key=r["batch_key"],
                handed_at=handed,
                attempts=r["attempts"] or 0,
                last_error=r["last_error"],
                broadcast_id=r["broadcast_id"],
                events=found.get(r["key"], []),
            )
        )
    return out


def states(engine: Engine, keys: Sequence[str]) -> dict[str, str]:
    """The state of each of `keys` that exists, lesson or newsletter copy."""
    bd = broadcast_deliveries
    with engine.connect() as conn:
        return dict(
            conn.execute(
                union_all(
                    select(deliveries.c.key, deliveries.c.state).where(deliveries.c.key.in_(keys)),
                    select(bd.c.key, bd.c.state).where(bd.c.key.in_(keys)),
                )
            ).all()
        )


def _events(conn: Connection, keys: list[str]) -> dict[str, list[tuple[str, datetime, str]]]:
    out: dict[str, list[tuple[str, datetime, str]]] = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        for key, type_, occurred, provider in conn.execute(
            select(events.c.delivery_key, events.c.type, events.c.occurred_at, events.c.provider)
            .where(events.c.delivery_key.in_(chunk))
            .order_by(events.c.occurred_at, events.c.id)
        ):
            out.setdefault(key, []).append((type_, occurred, provider))
    return out


def settle_sent(conn: Connection, row: ReviewRow, now: datetime) -> bool:
    """Mark one review row `sent` (sent at its hand-over time, else now); False if it moved on."""
    table = _table(row)
    done = conn.execute(
        update(table)
        .where(table.c.key == row.key, table.c.state == "review")
        .values(state="sent", sent_at=row.handed_at or now, updated_at=now)
    ).rowcount
    return bool(done)


def settle_resend(conn: Connection, row: ReviewRow, now: datetime, note: str) -> bool:
    """Put one review row back in the queue as never handed over; False if it moved on.

    A lesson whose reader was marked `completed` meanwhile (review counts as done) makes the
    reader active again so `run` picks it up; a newsletter reopens its finished broadcast so
    running the same `broadcast` command (or `run`, if it was scheduled) sends it.
    """
    table = _table(row)
    done = conn.execute(
        update(table)
        .where(table.c.key == row.key, table.c.state == "review")
        .values(back_in_queue(now, note))
    ).rowcount
    if not done:
        return False
    if row.kind == "lesson":
        conn.execute(
            update(subscribers)
            .where(subscribers.c.id == row.subscriber_id, subscribers.c.status == "completed")
            .values(status="active", updated_at=now)
        )
    else:
        conn.execute(
            update(broadcasts)
            .where(broadcasts.c.id == row.broadcast_id, broadcasts.c.status == "sent")
            .values(status="sending", finished_at=None)
        )
    return True


def record(conn: Connection, row: ReviewRow, type_: str, detail: str, now: datetime) -> None:
    """The settlement as an event row: who and when, next to the provider's own events."""
    insert_own_event(
        conn,
        type_,
        f"{type_}-{row.key}-{now.isoformat()}",
        detail,
        now,
        subscriber_id=row.subscriber_id,
        delivery_key=row.key,
    )


def _table(row: ReviewRow) -> Table:
    return deliveries if row.kind == "lesson" else broadcast_deliveries
