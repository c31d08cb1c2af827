"""The bulk writes of a CSV import: one batch's subscribers and their planned lessons.

An import writes thousands of rows with the same few constants (`now`, the status, the same
handful of due times): each statement is compiled once (`store.bulk.Bulk`), constants are
converted once per batch, each row passes only its own values as a tuple to the driver's
``executemany``, and the ids come back in one query per batch. Both run on the caller's
Connection, inside its transaction: a batch is still all written or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import Boolean, Connection, Date, DateTime, String, bindparam, insert
from sqlalchemy.engine import Dialect

from dripmail.store import subscriber_queries as q
from dripmail.store.bulk import Bulk
from dripmail.store.schema import UTCDateTime, deliveries, subscribers

# (email, first_name, timezone, start_date, tags): one imported subscriber.
Person = tuple[str, str, str, date | None, str]
# (subscriber id, lesson day, delivery key, due time as `stored_due` made it): one lesson.
Lesson = tuple[int, int, str, Any]

_ADD = Bulk(
    insert(subscribers).values(
        email=bindparam("email"),
        first_name=bindparam("first_name"),
        timezone=bindparam("tz"),
        start_date=bindparam("start", type_=Date()),
        tags=bindparam("tags"),
        status=bindparam("status"),
        consent_source="import",
        consent_at=bindparam("now", type_=UTCDateTime()),
        newsletters=bindparam("newsletters", type_=Boolean()),
        send_time=bindparam("send_time", type_=String()),
        confirm_count=0,
        confirmed_at=bindparam("confirmed", type_=UTCDateTime()),
        created_at=bindparam("now", type_=UTCDateTime()),
        updated_at=bindparam("now", type_=UTCDateTime()),
    ),
    ("email", "first_name", "tz", "start", "tags"),
)


def _plan(due_type: Any) -> Bulk:
    return Bulk(
        insert(deliveries).values(
            subscriber_id=bindparam("sid"),
            lesson_day=bindparam("day"),
            key=bindparam("key"),
            due_at=bindparam("due", type_=due_type),
            state="planned",
            attempts=0,
            updated_at=bindparam("now", type_=UTCDateTime()),
        ),
        ("sid", "day", "key", "due"),
    )


# `due` arrives already in its stored form (`stored_due`), so no row pays for a conversion:
# text on SQLite (passed as it is), a naive UTC timestamp elsewhere.
_PLAN_SQLITE = _plan(String())
_PLAN = _plan(DateTime())


def add_imported(
    conn: Connection,
    people: Sequence[Person],
    *,
    status: str,
    now: datetime,
    confirmed: bool,
    newsletters: bool = True,
    send_time: str | None = None,
) -> dict[str, int]:
    """Insert new subscribers (consent source `import`); returns {email: id} for them.

    `confirmed`: `confirmed_at` is `now` (else NULL: pending, or stopped in the file). The
    status, newsletter choice and send time ("HH:MM" or None: the course's) are the same for
    every row of one call: the caller groups a batch by them (nearly always one group). The
    addresses must not be in the table yet (the caller checked within the same transaction).
    """
    if not people:
        return {}
    constants = {
        "status": status,
        "now": now,
        "confirmed": now if confirmed else None,
        "newsletters": newsletters,
        "send_time": send_time,
    }
    _ADD.run(conn, people, constants)
    return ids_by_email(conn, [p[0] for p in people])


def ids_by_email(conn: Connection, emails: list[str]) -> dict[str, int]:
    """{address: id} for those of `emails` (at most `subscriber_queries.CHUNK`) that are
    subscribers; `subscriber_queries.ids_by_email` for any number."""
    if conn.dialect.name != "sqlite" or len(emails) > q.CHUNK:
        return q.ids_by_email(conn, emails)
    rows = _in(conn, "SELECT email, id FROM subscribers WHERE email", emails)
    return {email: int(sid) for email, sid in rows}


def suppressed_among(conn: Connection, hashes: list[str]) -> set[str]:
    """The hashes of `hashes` (at most `subscriber_queries.CHUNK`) that are suppressed."""
    if conn.dialect.name != "sqlite" or len(hashes) > q.CHUNK:
        return q.suppressed_among(conn, hashes)
    return {h for (h,) in _in(conn, "SELECT email_hash FROM suppressions WHERE email_hash", hashes)}


def _in(conn: Connection, head: str, values: list[str]) -> list[Any]:
    """`head IN (values)` on SQLite, as plain driver SQL: rendering 500 expanding parameters
    through SQLAlchemy cost more per import row than SQLite's own lookup."""
    if not values:
        return []
    marks = ",".join("?" * len(values))
    return list(conn.exec_driver_sql(f"{head} IN ({marks})", tuple(values)))


def plan_imported(conn: Connection, lessons: Sequence[Lesson], now: datetime) -> None:
    """Insert planned lessons: (subscriber id, day, key, due time) each, state `planned`.

    The due times are in the form `stored_due` made for this connection's dialect: an import
    plans the same few due times for thousands of readers, so each is converted once.
    """
    if lessons:
        plan = _PLAN_SQLITE if conn.dialect.name == "sqlite" else _PLAN
        plan.run(conn, lessons, {"now": now})


def stored_due(dialect: Dialect) -> Callable[[datetime], Any]:
    """`deliveries.due_at`'s conversion of an aware datetime for `dialect`'s driver.

    The column's own processors do it, so the stored value is exactly what the column writes
    (tests/test_subscriber_io.py compares import with one-by-one planning).
    """
    column_type = deliveries.c.due_at.type
    assert isinstance(column_type, UTCDateTime)
    inner = column_type.impl_instance.dialect_impl(dialect).bind_processor(dialect)
    if dialect.name != "sqlite":
        inner = None  # `_PLAN` binds a naive DateTime: the driver converts it

    def store(value: datetime) -> Any:
        naive = column_type.process_bind_param(value, dialect)
        return inner(naive) if inner is not None else naive

    return store
