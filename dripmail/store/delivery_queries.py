"""Queries about lesson deliveries that more than one part of dripmail asks.

Kept here, in the store layer, so the engine, the preferences page and the subscriber use
cases read the same rows the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NotRequired, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Result,
    RowMapping,
    Select,
    bindparam,
    func,
    or_,
    select,
    tuple_,
    type_coerce,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import NullType

from dripmail.states import DONE, OPEN_FOR_READER, DeliveryState
from dripmail.store.handover_rows import HeldRow
from dripmail.store.schema import deliveries, in_flight, subscribers


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


def day_taken_at(
    state: str, sent_at: datetime | None, due_at: datetime, updated_at: datetime
) -> datetime:
    """The instant (UTC) whose local day a finished lesson took: the next lesson waits for
    the following local send time (`schedule.next_send_at`). The engine's catch-up rule and
    the pages' promises both read it here.

    Sent: when it went out. Failed or for review: when it was settled (`updated_at`), or its
    plan if that is later (handed ahead of its time): a lesson tried and refused is that day's
    lesson, or a catch-up reader's whole course would burn in a few runs a minute apart while
    the provider refuses everything. Handed (the provider sends it at its time), skipped,
    cancelled (nothing was tried for the reader): its plan.
    """
    if sent_at is not None:
        return sent_at
    if state in (DeliveryState.FAILED, DeliveryState.REVIEW):
        return max(due_at, updated_at)
    return due_at


def previous_sent_at(conn: Connection, subscriber_id: int, lesson_day: int) -> datetime | None:
    """When lesson `lesson_day - 1` of this subscriber took its local day (`day_taken_at`),
    if it is done (the engine's catch-up rule)."""
    if lesson_day <= 1:
        return None
    row = conn.execute(
        select(
            deliveries.c.state,
            deliveries.c.sent_at,
            deliveries.c.due_at,
            deliveries.c.updated_at,
        ).where(
            deliveries.c.subscriber_id == subscriber_id,
            deliveries.c.lesson_day == lesson_day - 1,
        )
    ).first()
    if row is None or row.state not in DONE:
        return None
    return day_taken_at(row.state, row.sent_at, row.due_at, row.updated_at)


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
    """Active subscribers with a planned lesson due by `by` (UTC): a progress bar's estimate.

    Readers, not lessons: a pass sends a reader at most one lesson (one per local day), so a
    reader days behind with six lessons overdue counts once, not six times.
    """
    return conn.execute(
        select(func.count(deliveries.c.subscriber_id.distinct()))
        .select_from(deliveries.join(subscribers, subscribers.c.id == deliveries.c.subscriber_id))
        .where(
            subscribers.c.status == "active",
            deliveries.c.state == DeliveryState.PLANNED,
            deliveries.c.due_at <= by,
        )
    ).scalar_one()


def count_in_flight(conn: Connection) -> int:
    """Lesson deliveries held `claimed` or `sending` by a worker (one running now, or one that
    stopped or died before recording them): read from the small partial in-flight index."""
    return conn.execute(
        select(func.count()).select_from(deliveries).where(in_flight(deliveries))
    ).scalar_one()


# -- the engine's pass: built once, executed with parameters (no per-call statement building) --


class DueRow(HeldRow):
    """One lesson delivery as the engine handles it, joined with its subscriber (`DUE_COLUMNS`).

    `effective_due` (UTC) is added by the engine: when it really goes out
    (`schedule.next_send_at`). Times are aware UTC.
    """

    lesson_day: int
    due_at: datetime
    timezone: str
    send_time: str | None
    effective_due: NotRequired[datetime]


_UTC = deliveries.c.due_at.type


def _as_read(column: ColumnElement) -> ColumnElement:
    """`column` read as the driver returns it (SQLite: text, PostgreSQL: a naive datetime):
    `_dicts` converts each distinct value of a page once, instead of once per row."""
    return type_coerce(column, NullType()).label(column.name)


# Only what claiming, rendering and recovery read: fewer columns to fetch and parse.
DUE_COLUMNS = (
    deliveries.c.id,
    deliveries.c.key,
    deliveries.c.subscriber_id,
    deliveries.c.lesson_day,
    _as_read(deliveries.c.due_at),
    deliveries.c.state,
    deliveries.c.batch_key,
    _as_read(deliveries.c.handed_at),
    subscribers.c.email,
    subscribers.c.first_name,
    subscribers.c.timezone,
    subscribers.c.send_time,
)


def _joined() -> Select:
    return (
        select(*DUE_COLUMNS)
        .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
        .where(subscribers.c.status == "active")
    )


_EXPIRED_IDS = (
    select(deliveries.c.id)
    .where(
        in_flight(deliveries),
        deliveries.c.lease_expires_at < bindparam("now", type_=_UTC),
        # `id + 0`: paging by id must not let the planner walk the whole table in id order
        # instead of reading the small in-flight index.
        deliveries.c.id + 0 > bindparam("after"),
    )
    .order_by(deliveries.c.id + 0)
    .limit(bindparam("limit"))
)
_BY_IDS = _joined().where(deliveries.c.id.in_(bindparam("ids", expanding=True)))
_FREE = (
    deliveries.c.state == DeliveryState.PLANNED.value,
    deliveries.c.due_at <= bindparam("horizon", type_=_UTC),
    or_(
        deliveries.c.next_attempt_at.is_(None),
        deliveries.c.next_attempt_at <= bindparam("now", type_=_UTC),
    ),
)
_ORDER = (deliveries.c.due_at, deliveries.c.id)
_DUE_FIRST = _joined().where(*_FREE).order_by(*_ORDER).limit(bindparam("limit"))
_DUE_AFTER = (
    _joined()
    .where(
        *_FREE,
        tuple_(deliveries.c.due_at, deliveries.c.id)
        > tuple_(bindparam("after_due", type_=_UTC), bindparam("after_id")),
    )
    .order_by(*_ORDER)
    .limit(bindparam("limit"))
)


def expired_claims(
    conn: Connection, now: datetime, limit: int, after: int = 0
) -> tuple[list[DueRow], int | None]:
    """Rows a dead worker left `claimed` or `sending` whose lease ran out, ids > `after`.

    Returns (those of active subscribers, joined with their subscriber, by id; the last id
    read, or None when there are no more), so a caller pages through every one of them.
    Found through the partial in-flight index first: joined, SQLite would walk subscribers.
    """
    ids = list(conn.execute(_EXPIRED_IDS, {"now": now, "after": after, "limit": limit}).scalars())
    if not ids:
        return [], None
    rows = _dicts(conn, conn.execute(_BY_IDS, {"ids": ids}))
    rows.sort(key=lambda r: r["id"])
    return rows, ids[-1]


# PostgreSQL: the page's delivery rows are locked as they are read, skipping rows another
# worker has locked, so concurrent workers read different pages instead of the same one.
_DUE_FIRST_LOCKED = _DUE_FIRST.with_for_update(of=deliveries, skip_locked=True)
_DUE_AFTER_LOCKED = _DUE_AFTER.with_for_update(of=deliveries, skip_locked=True)


def due_page(
    conn: Connection,
    now: datetime,
    horizon: datetime,
    limit: int,
    after: tuple[datetime, int] | None = None,
    skip_locked: bool = False,
) -> list[DueRow]:
    """Free deliveries of active subscribers due by `horizon`, in (due_at, id) order after
    `after`, at most `limit`: an index range scan on (state, due_at) with a row-value keyset,
    so a long queue is walked in pages, never scanned whole.

    `skip_locked` (PostgreSQL only): lock the page's delivery rows (``FOR UPDATE OF
    deliveries SKIP LOCKED``) until the caller's transaction ends, leaving out rows another
    worker holds; the caller claims them in the same transaction.
    """
    params: dict = {"now": now, "horizon": horizon, "limit": limit}
    query = _DUE_FIRST_LOCKED if skip_locked else _DUE_FIRST
    if after is not None:
        query = _DUE_AFTER_LOCKED if skip_locked else _DUE_AFTER
        params |= {"after_due": after[0], "after_id": after[1]}
    return _dicts(conn, conn.execute(query, params))


def _dicts(conn: Connection, result: Result) -> list[DueRow]:
    """The rows of `DUE_COLUMNS` as `DueRow` dicts (zip with the column names: cheaper than
    `RowMapping`), fetched at once, their times aware UTC.

    The times are converted by the column type's own result processor (`UTCDateTime`, the
    same values `Connection.execute` gives), once per distinct stored value: a page's lessons
    share a handful of due times (the course's send time in each zone), so a page of 1,000
    rows parses a few strings instead of 1,000 (SQLite) and shares their datetime objects.
    """
    process = _read_time(conn.dialect)
    names = tuple(result.keys())
    seen: dict[object, datetime] = {}
    out: list[DueRow] = []
    for values in result.all():
        row = dict(zip(names, values, strict=False))  # one result: same length
        due = row["due_at"]
        when = seen.get(due)
        if when is None:
            when = seen[due] = process(due)
        row["due_at"] = when
        if row["handed_at"] is not None:
            row["handed_at"] = process(row["handed_at"])
        out.append(cast(DueRow, row))
    return out


_TIME_READERS: dict[str, Callable[[Any], Any]] = {}


def _read_time(dialect: Dialect) -> Callable[[Any], Any]:
    """`UTCDateTime`'s result processor for `dialect` (driver value -> aware UTC datetime)."""
    key = f"{dialect.name}+{dialect.driver}"
    found = _TIME_READERS.get(key)
    if found is None:
        impl = _UTC.dialect_impl(dialect)
        process = impl.result_processor(dialect, None)
        found = _TIME_READERS[key] = process if process is not None else _unchanged
    return found


def _unchanged(value: Any) -> Any:
    return value


def lessons_of(conn: Connection, subscriber_ids: Collection[int]) -> list[RowMapping]:
    """(subscriber_id, lesson_day, state, sent_at, due_at, updated_at) of every lesson of these
    readers."""
    return list(
        conn.execute(
            select(
                deliveries.c.subscriber_id,
                deliveries.c.lesson_day,
                deliveries.c.state,
                deliveries.c.sent_at,
                deliveries.c.due_at,
                deliveries.c.updated_at,
            ).where(deliveries.c.subscriber_id.in_(list(subscriber_ids)))
        ).mappings()
    )
