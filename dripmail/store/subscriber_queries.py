"""The SQL about subscribers, their events and suppressions, on a caller's Connection.

Every function takes a `Connection` already in a transaction (see `store.transactions`), so
the core composes several of them into one atomic use case. No policy here: which status
may follow which, and when to re-plan, is decided in `dripmail.subscribers` and `dripmail.app`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, func, insert, select, update

from dripmail.store.schema import UTCDateTime, deliveries, events, subscribers, suppressions

# Deliveries that are still to go out (not delivered, not cancelled, not failed).
OPEN_STATES = ("planned", "claimed", "sending", "handed")
CHUNK = 500  # values per IN (...): well under every database's parameter limit


def by_id(conn: Connection, subscriber_id: int) -> RowMapping | None:
    """The subscriber row with this id, or None."""
    return (
        conn.execute(select(subscribers).where(subscribers.c.id == subscriber_id))
        .mappings()
        .first()
    )


def by_email(conn: Connection, address: str) -> RowMapping | None:
    """The subscriber row with this (normalised) address, or None."""
    return (
        conn.execute(select(subscribers).where(subscribers.c.email == address)).mappings().first()
    )


def ids_by_email(conn: Connection, addresses: Iterable[str]) -> dict[str, int]:
    """{address: id} for those of `addresses` that are subscribers (a query per 500)."""
    wanted = sorted(set(addresses))
    found: dict[str, int] = {}
    for start in range(0, len(wanted), CHUNK):
        rows = conn.execute(
            select(subscribers.c.email, subscribers.c.id).where(
                subscribers.c.email.in_(wanted[start : start + CHUNK])
            )
        )
        found.update({email: int(sid) for email, sid in rows})
    return found


def insert_subscriber(conn: Connection, values: dict[str, Any]) -> int:
    """Insert one subscriber row; returns its id."""
    result = conn.execute(insert(subscribers).values(**values))
    key = result.inserted_primary_key
    assert key is not None  # a single-row INSERT always reports its key
    return int(key[0])


def set_status(
    conn: Connection, subscriber_id: int, status: str, now: datetime, **more: Any
) -> int:
    """Set a subscriber's status (and any other columns given); returns rows changed."""
    result = conn.execute(
        update(subscribers)
        .where(subscribers.c.id == subscriber_id)
        .values(status=str(status), updated_at=now, **more)
    )
    return result.rowcount or 0


def update_subscriber(conn: Connection, subscriber_id: int, now: datetime, **values: Any) -> None:
    """Set columns of one subscriber (preferences: newsletters, timezone, send_time)."""
    conn.execute(
        update(subscribers)
        .where(subscribers.c.id == subscriber_id)
        .values(updated_at=now, **values)
    )


def set_first_name(conn: Connection, subscriber_id: int, name: str, now: datetime) -> int:
    """Replace one subscriber's stored first name; returns rows changed (0: no such id)."""
    result = conn.execute(
        update(subscribers)
        .where(subscribers.c.id == subscriber_id)
        .values(first_name=name, updated_at=now)
    )
    return result.rowcount or 0


def reopen_unsubscribed(
    conn: Connection, subscriber_id: int, now: datetime, consent: dict[str, Any]
) -> bool:
    """unsubscribed -> pending with a fresh consent record; False for any other status."""
    result = conn.execute(
        update(subscribers)
        .where(subscribers.c.id == subscriber_id, subscribers.c.status == "unsubscribed")
        .values(
            status="pending",
            start_date=None,
            confirm_sent_at=None,
            confirm_count=0,
            confirm_handed_at=None,
            confirm_claimed_by=None,
            confirm_lease_expires_at=None,
            updated_at=now,
            **consent,
        )
    )
    return bool(result.rowcount)


# -- suppressions ---------------------------------------------------------------------------


def is_suppressed(conn: Connection, hashed: str) -> bool:
    """True when this address hash is suppressed (forgotten, bounced, complained)."""
    return (
        conn.execute(
            select(suppressions.c.email_hash).where(suppressions.c.email_hash == hashed)
        ).first()
        is not None
    )


def suppressed_among(conn: Connection, hashes: Iterable[str]) -> set[str]:
    """The hashes of `hashes` that are suppressed (a query per 500)."""
    wanted = sorted(set(hashes))
    found: set[str] = set()
    for start in range(0, len(wanted), CHUNK):
        found.update(
            conn.execute(
                select(suppressions.c.email_hash).where(
                    suppressions.c.email_hash.in_(wanted[start : start + CHUNK])
                )
            ).scalars()
        )
    return found


def suppress_hash(conn: Connection, hashed: str, reason: str, now: datetime) -> None:
    """Remember a hashed address as never to be mailed again (kept once)."""
    if not is_suppressed(conn, hashed):
        conn.execute(insert(suppressions).values(email_hash=hashed, reason=reason, created_at=now))


# -- deliveries of one subscriber -------------------------------------------------------------


def handed_ids(conn: Connection, subscriber_id: int) -> list[str]:
    """Provider ids of this subscriber's lessons handed over but not yet delivered.

    These are the sends to cancel at the provider when the course stops, pauses or moves.
    """
    return list(
        conn.execute(
            select(deliveries.c.provider_message_id).where(
                deliveries.c.subscriber_id == subscriber_id,
                deliveries.c.state == "handed",
                deliveries.c.provider_message_id.is_not(None),
            )
        ).scalars()
    )


def cancel_open(conn: Connection, subscriber_id: int, now: datetime) -> int:
    """Cancel every lesson of this subscriber not yet delivered; returns how many."""
    result = conn.execute(
        update(deliveries)
        .where(
            deliveries.c.subscriber_id == subscriber_id,
            deliveries.c.state.in_(("planned", "claimed", "handed")),
        )
        .values(state="cancelled", updated_at=now, claimed_by=None, lease_expires_at=None)
    )
    return result.rowcount or 0


def unhand(conn: Connection, provider_ids: Sequence[str], now: datetime) -> int:
    """Deliveries whose scheduled send was cancelled at the provider go back to `planned`."""
    changed = 0
    ids = list(provider_ids)
    for start in range(0, len(ids), CHUNK):
        result = conn.execute(
            update(deliveries)
            .where(
                deliveries.c.provider_message_id.in_(ids[start : start + CHUNK]),
                deliveries.c.state == "handed",
            )
            .values(state="planned", provider_message_id=None, batch_key=None, updated_at=now)
        )
        changed += result.rowcount or 0
    return changed


def planned_days(conn: Connection, subscriber_id: int) -> set[int]:
    """Lesson days that already have a delivery row for this subscriber."""
    return set(
        conn.execute(
            select(deliveries.c.lesson_day).where(deliveries.c.subscriber_id == subscriber_id)
        ).scalars()
    )


def lesson_states(conn: Connection, subscriber_id: int) -> dict[int, str]:
    """{lesson day: delivery state} of every delivery row this subscriber has."""
    return {
        int(day): str(state)
        for day, state in conn.execute(
            select(deliveries.c.lesson_day, deliveries.c.state).where(
                deliveries.c.subscriber_id == subscriber_id
            )
        )
    }


def insert_deliveries(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert planned delivery rows (one statement).

    On SQLite the timestamps are converted once per distinct value (an import plans the same
    few due times for thousands of readers) and the rows go through the driver's executemany:
    per-value type processing was most of an import's time. The stored text is exactly what
    the `deliveries` table's own types write (the same processors produce it).
    """
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        conn.execute(insert(deliveries), rows)
        return
    names = list(rows[0])
    convert = {name: _sqlite_binder(conn, name) for name in names}
    cache: dict[tuple[str, Any], Any] = {}

    def bound(name: str, value: Any) -> Any:
        fn = convert[name]
        if fn is None or value is None:
            return value
        key = (name, value)
        if key not in cache:
            cache[key] = fn(value)
        return cache[key]

    params = [tuple(bound(n, row[n]) for n in names) for row in rows]
    marks = ", ".join("?" for _ in names)
    quoted = ", ".join(conn.dialect.identifier_preparer.quote(n) for n in names)
    conn.exec_driver_sql(f"INSERT INTO deliveries ({quoted}) VALUES ({marks})", params)


def _sqlite_binder(conn: Connection, name: str) -> Any:
    """The bind processor of a `deliveries` column on this dialect (None for plain values)."""
    column_type = deliveries.c[name].type
    if not isinstance(column_type, UTCDateTime):
        return None
    inner = column_type.impl_instance.dialect_impl(conn.dialect).bind_processor(conn.dialect)

    def process(value: datetime) -> Any:
        naive = column_type.process_bind_param(value, conn.dialect)
        return inner(naive) if inner else naive

    return process


def revive_cancelled(conn: Connection, subscriber_id: int, now: datetime) -> int:
    """Cancelled lessons of a reader who came back become planned again; returns how many."""
    result = conn.execute(
        update(deliveries)
        .where(deliveries.c.subscriber_id == subscriber_id, deliveries.c.state == "cancelled")
        .values(
            state="planned",
            provider_message_id=None,
            batch_key=None,
            claimed_by=None,
            lease_expires_at=None,
            next_attempt_at=None,
            updated_at=now,
        )
    )
    return result.rowcount or 0


def planned_in_order(conn: Connection, subscriber_id: int) -> list[int]:
    """Ids of this subscriber's planned lessons, by day (the welcome, day 0, keeps its time)."""
    return list(
        conn.execute(
            select(deliveries.c.id)
            .where(
                deliveries.c.subscriber_id == subscriber_id,
                deliveries.c.state == "planned",
                deliveries.c.lesson_day >= 1,
            )
            .order_by(deliveries.c.lesson_day)
        ).scalars()
    )


def set_due(conn: Connection, dues: Iterable[tuple[int, datetime]], now: datetime) -> None:
    """Move planned deliveries to new due times ((delivery id, due) pairs)."""
    for delivery_id, due in dues:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == delivery_id)
            .values(due_at=due, next_attempt_at=None, updated_at=now)
        )


def next_open_lesson(conn: Connection, subscriber_id: int) -> tuple[int, datetime] | None:
    """(day, due time) of the next lesson still to go out, or None (never the welcome, day 0)."""
    row = conn.execute(
        select(deliveries.c.lesson_day, deliveries.c.due_at)
        .where(
            deliveries.c.subscriber_id == subscriber_id,
            deliveries.c.state.in_(OPEN_STATES),
            deliveries.c.lesson_day >= 1,
        )
        .order_by(deliveries.c.lesson_day)
        .limit(1)
    ).first()
    return (int(row.lesson_day), row.due_at) if row else None


def lessons_of(conn: Connection, subscriber_id: int) -> list[RowMapping]:
    """Every delivery row of one subscriber, by lesson day."""
    return list(
        conn.execute(
            select(deliveries)
            .where(deliveries.c.subscriber_id == subscriber_id)
            .order_by(deliveries.c.lesson_day)
        ).mappings()
    )


def events_of(conn: Connection, subscriber_id: int) -> list[RowMapping]:
    """Every event row of one subscriber, by time."""
    return list(
        conn.execute(
            select(events)
            .where(events.c.subscriber_id == subscriber_id)
            .order_by(events.c.occurred_at, events.c.id)
        ).mappings()
    )


def delete_subscriber(conn: Connection, subscriber_id: int) -> None:
    """Delete a subscriber with their events and deliveries (erasure)."""
    conn.execute(events.delete().where(events.c.subscriber_id == subscriber_id))
    conn.execute(deliveries.delete().where(deliveries.c.subscriber_id == subscriber_id))
    conn.execute(subscribers.delete().where(subscribers.c.id == subscriber_id))


# -- events ---------------------------------------------------------------------------------


def scrub_unmatched_events(conn: Connection, address: str) -> int:
    """Erase an address from events stored for nobody (raw payload dropped, detail scrubbed).

    A provider event that matched no subscriber (or arrived after `forget`) may quote the
    address in its reason text or raw JSON; erasure must not leave it there.
    """
    from dripmail.validation import scrub_addresses

    found = list(
        conn.execute(
            select(events.c.id, events.c.detail).where(
                events.c.subscriber_id.is_(None),
                func.lower(func.coalesce(events.c.raw, "") + " " + events.c.detail).contains(
                    address, autoescape=True
                ),
            )
        )
    )
    for event_id, detail in found:
        conn.execute(
            update(events)
            .where(events.c.id == event_id)
            .values(raw=None, detail=scrub_addresses(detail or ""))
        )
    return len(found)


def insert_own_event(
    conn: Connection,
    type_: str,
    dedupe_key: str,
    detail: str,
    now: datetime,
    *,
    subscriber_id: int,
    delivery_key: str | None = None,
) -> None:
    """Store an event dripmail itself records (provider "dripmail": a settlement, a requeue,
    a confirmation email not sent), occurring and received at `now`, for the timeline."""
    conn.execute(
        insert(events).values(
            subscriber_id=subscriber_id,
            delivery_key=delivery_key,
            provider="dripmail",
            dedupe_key=dedupe_key,
            type=type_,
            detail=detail,
            occurred_at=now,
            received_at=now,
        )
    )


def insert_event_once(conn: Connection, values: dict[str, Any]) -> bool:
    """Store an event unless (provider, dedupe_key) is already stored; True when stored."""
    seen = conn.execute(
        select(func.count())
        .select_from(events)
        .where(events.c.provider == values["provider"], events.c.dedupe_key == values["dedupe_key"])
    ).scalar_one()
    if seen:
        return False
    conn.execute(insert(events).values(**values))
    return True


# -- listing --------------------------------------------------------------------------------


def iter_subscribers(
    conn_factory: Any, status: str | None = None, chunk: int = 1000
) -> Iterator[RowMapping]:
    """Every subscriber by id (keyset pages of `chunk`, a short read each), optionally of a status.

    `conn_factory` is an Engine: each page opens its own short connection so a long export
    never holds a read transaction open.
    """
    last = 0
    while True:
        query = select(subscribers).where(subscribers.c.id > last).order_by(subscribers.c.id)
        if status:
            query = query.where(subscribers.c.status == status)
        with conn_factory.connect() as conn:
            rows = list(conn.execute(query.limit(chunk)).mappings())
        if not rows:
            return
        yield from rows
        last = rows[-1]["id"]
