"""Queries about lesson deliveries that more than one part of dripmail asks.

Kept here, in the store layer, so the engine, the preferences page and the subscriber use
cases read the same rows the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select

from dripmail.states import DONE, OPEN_FOR_READER, DeliveryState
from dripmail.store.schema import deliveries, subscribers


@dataclass(frozen=True, slots=True)
class NextLesson:
    """The next lesson still to reach a reader, as stored.

    `due_at` is the planned time (UTC); `previous_sent_at` is when the lesson before it went
    out (UTC; None for lesson 1 or while it is not done). `schedule.next_send_at` turns both
    into the time it really goes out.
    """

    day: int
    due_at: datetime
    previous_sent_at: datetime | None


def previous_sent_at(conn: Connection, subscriber_id: int, lesson_day: int) -> datetime | None:
    """When lesson `lesson_day - 1` of this subscriber went out (or was due), if it is done.

    The same reading as the engine's catch-up rule: a done lesson counts from its `sent_at`,
    or its due time when it has none (skipped, cancelled).
    """
    if lesson_day <= 1:
        return None
    row = conn.execute(
        select(deliveries.c.state, deliveries.c.sent_at, deliveries.c.due_at).where(
            deliveries.c.subscriber_id == subscriber_id,
            deliveries.c.lesson_day == lesson_day - 1,
        )
    ).first()
    if row is None or row.state not in DONE:
        return None
    return row.sent_at or row.due_at


def previous_sent_before(conn: Connection, delivery_id: int) -> datetime | None:
    """`previous_sent_at` for the subscriber and lesson of one delivery (by id)."""
    row = conn.execute(
        select(deliveries.c.subscriber_id, deliveries.c.lesson_day).where(
            deliveries.c.id == delivery_id
        )
    ).first()
    return None if row is None else previous_sent_at(conn, row.subscriber_id, row.lesson_day)


def next_lesson(conn: Connection, subscriber_id: int) -> NextLesson | None:
    """The first lesson of this subscriber not yet sent (planned or in flight), or None."""
    row = conn.execute(
        select(
            deliveries.c.lesson_day,
            deliveries.c.due_at,
            deliveries.c.state,
            deliveries.c.sent_at,
        )
        .where(
            deliveries.c.subscriber_id == subscriber_id,
            deliveries.c.state.in_(OPEN_FOR_READER),
        )
        .order_by(deliveries.c.lesson_day)
        .limit(1)
    ).first()
    if row is None:
        return None
    if row.state == DeliveryState.HANDED and row.sent_at is not None:
        # Already at a provider that delivers it at this time: nothing is left to decide.
        return NextLesson(row.lesson_day, row.sent_at, None)
    return NextLesson(
        row.lesson_day, row.due_at, previous_sent_at(conn, subscriber_id, row.lesson_day)
    )


def count_due(conn: Connection, by: datetime) -> int:
    """Planned lessons of active subscribers due by `by` (UTC): a progress bar's estimate."""
    return conn.execute(
        select(func.count())
        .select_from(deliveries.join(subscribers, subscribers.c.id == deliveries.c.subscriber_id))
        .where(
            subscribers.c.status == "active",
            deliveries.c.state == DeliveryState.PLANNED,
            deliveries.c.due_at <= by,
        )
    ).scalar_one()
