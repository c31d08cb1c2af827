"""Queries for putting failed lessons back in the queue (`dripmail.retry`).

A lesson `failed` for good (the provider refused it, or its message could not be built) is
done as far as the engine is concerned: the next lesson follows it. These queries find such
lessons by reader, reason and date, with what decides whether one may go out again (the
reader's status, a later lesson already on its way), and requeue one with a single
conditional UPDATE that checks the same again, so a decision made on a stale reading never
sends a lesson out of order or to someone who stopped mail meanwhile.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from uuid import uuid4

from sqlalchemy import Connection, Select, and_, exists, select, update
from sqlalchemy.orm import aliased

from dripmail.states import DeliveryState
from dripmail.store.schema import (
    back_in_queue,
    deliveries,
    subscribers,
    suppressions,
)
from dripmail.store.subscriber_queries import insert_own_event

# A later lesson in one of these states has reached the reader, may have (review), or is
# being handed over right now: the failed lesson before it must not follow it.
ON_ITS_WAY = (
    DeliveryState.SENT.value,
    DeliveryState.HANDED.value,
    DeliveryState.REVIEW.value,
    DeliveryState.CLAIMED.value,
    DeliveryState.SENDING.value,
)

# Readers whose failed lessons may go out again. `completed` readers are made active again
# when one is requeued; `paused` ones get it when they resume. Everyone else (pending, and
# the stopped statuses) is refused in the requeue statement itself.
REQUEUABLE_STATUSES = ("active", "completed", "paused")


@dataclass(frozen=True)
class FailedLesson:
    """One failed lesson with its reader, as `failed_lessons` reads it.

    Times are aware UTC: `due_at` its plan, `failed_at` when it was marked failed (its last
    update). `later_day`/`later_state`: the first later lesson of the reader that is sent,
    handed over, in review or in flight (None when there is none).
    """

    id: int
    key: str
    subscriber_id: int
    email: str
    subscriber_status: str
    lesson_day: int
    due_at: datetime
    failed_at: datetime
    last_error: str
    timezone: str
    send_time: str | None
    later_day: int | None
    later_state: str | None


def _later(column: str) -> Select:
    """Correlated: `column` of the reader's first later lesson that is on its way."""
    later = aliased(deliveries)
    return (
        select(later.c[column])
        .where(
            later.c.subscriber_id == deliveries.c.subscriber_id,
            later.c.lesson_day > deliveries.c.lesson_day,
            later.c.state.in_(ON_ITS_WAY),
        )
        .order_by(later.c.lesson_day)
        .limit(1)
    )


def failed_lessons(
    conn: Connection,
    *,
    subscriber_ids: Collection[int] | None = None,
    reason: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[FailedLesson]:
    """Failed lessons, by reader and lesson, narrowed by every filter given.

    `subscriber_ids`: only these readers; `reason`: the stored reason contains this text (any
    case, taken literally: `%` and `_` are not wildcards); `since`/`until` (aware UTC): marked
    failed at or after / before.
    """
    query = (
        select(
            deliveries.c.id,
            deliveries.c.key,
            deliveries.c.subscriber_id,
            subscribers.c.email,
            subscribers.c.status.label("subscriber_status"),
            deliveries.c.lesson_day,
            deliveries.c.due_at,
            deliveries.c.updated_at.label("failed_at"),
            deliveries.c.last_error,
            subscribers.c.timezone,
            subscribers.c.send_time,
            _later("lesson_day").scalar_subquery().label("later_day"),
            _later("state").scalar_subquery().label("later_state"),
        )
        .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
        .where(deliveries.c.state == DeliveryState.FAILED.value)
        .order_by(subscribers.c.email, deliveries.c.lesson_day)
    )
    if subscriber_ids is not None:
        query = query.where(deliveries.c.subscriber_id.in_(list(subscriber_ids)))
    if reason:
        query = query.where(deliveries.c.last_error.icontains(reason, autoescape=True))
    if since is not None:
        query = query.where(deliveries.c.updated_at >= since)
    if until is not None:
        query = query.where(deliveries.c.updated_at < until)
    return [
        FailedLesson(**{**row, "last_error": row["last_error"] or ""})
        for row in conn.execute(query).mappings()
    ]


def suppressed(conn: Connection, hashes: Collection[str]) -> dict[str, str]:
    """Of these address hashes, those suppressed, with why (forgotten, bounced, complained)."""
    wanted = list(hashes)
    out: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        out.update(
            conn.execute(
                select(suppressions.c.email_hash, suppressions.c.reason).where(
                    suppressions.c.email_hash.in_(wanted[start : start + 500])
                )
            ).all()
        )
    return out


def requeue(conn: Connection, lesson: FailedLesson, now: datetime, note: str) -> bool:
    """Put one failed lesson back to `planned`, as never handed over; False if it may not go.

    One statement that holds only if the lesson is still failed, no later lesson of the
    reader is on its way (`ON_ITS_WAY`) and the reader may still be mailed
    (`REQUEUABLE_STATUSES`). The plan (`due_at`) is kept: the engine sends it on its next
    pass by its one rule (`schedule.next_send_at`: not before the next local morning after
    the lesson before it), and the next lesson waits for it. `attempts` keeps counting
    hand-overs; `last_error` becomes `note` (cleared when it is sent). A `completed` reader
    is made active again so the engine looks at them.
    """
    later = _later("id")
    may_be_mailed = (
        select(subscribers.c.id)
        .where(
            subscribers.c.id == deliveries.c.subscriber_id,
            subscribers.c.status.in_(REQUEUABLE_STATUSES),
        )
        .exists()
    )
    done = conn.execute(
        update(deliveries)
        .where(
            deliveries.c.id == lesson.id,
            deliveries.c.state == DeliveryState.FAILED.value,
            and_(~exists(later), may_be_mailed),
        )
        .values(back_in_queue(now, note))
    ).rowcount
    if not done:
        return False
    conn.execute(
        update(subscribers)
        .where(subscribers.c.id == lesson.subscriber_id, subscribers.c.status == "completed")
        .values(status="active", updated_at=now)
    )
    return True


def record(conn: Connection, lesson: FailedLesson, detail: str, now: datetime) -> None:
    """The requeue as an event row (who, when, the reason it had failed), for the timeline."""
    insert_own_event(
        conn,
        "lesson_retry",
        f"retry-{lesson.key}-{uuid4().hex}",  # each requeue is its own row
        detail,
        now,
        subscriber_id=lesson.subscriber_id,
        delivery_key=lesson.key,
    )
