"""Subscriber operations shared by the CLI, the web app and the engine.

Every function takes the clock (`now`, aware UTC) as an argument so tests and `--now` agree.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date, datetime, time
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Connection, Engine, RowMapping, func, insert, select, update

from dripmail import schedule
from dripmail.errors import InputError, NotFoundError
from dripmail.store.schema import deliveries, events, subscribers, suppressions

STATUSES = ("pending", "active", "paused", "completed", "unsubscribed", "bounced", "complained")
STOPPED = ("unsubscribed", "bounced", "complained")


class CourseRules(Protocol):
    """What planning needs from a course (satisfied by `dripmail.content.Course`)."""

    id: str
    send_time: time
    start: str
    skip_weekends: bool
    lessons: tuple[Any, ...]


def normalise_email(address: str) -> str:
    """The canonical, lower-cased form of an address; InputError naming it when invalid."""
    try:
        valid = validate_email(address.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InputError(f"{address!r} is not a valid email address: {exc}") from None
    return valid.normalized.lower()


def email_hash(address: str) -> str:
    """The hash kept in `suppressions` (never the address itself)."""
    return hashlib.sha256(normalise_email(address).encode()).hexdigest()


def validate_timezone(name: str) -> str:
    """An IANA zone name, checked; InputError with a hint otherwise."""
    try:
        if name in available_timezones() or name == "UTC":
            ZoneInfo(name)
            return name
    except (ZoneInfoNotFoundError, ValueError):
        pass
    raise InputError(
        f"{name!r} is not an IANA time zone (e.g. America/New_York, Europe/Berlin, Asia/Kolkata)"
    )


_TAG = re.compile(r"^[a-z0-9_-]{1,64}$")


def normalise_tags(value: str) -> str:
    """Tags as stored: lower-case, comma-separated, once each ("Desk, runners" -> "desk,runners").

    A tag is letters, digits, ``-`` and ``_`` (so it can name a segment, ``tag:desk``);
    anything else is an InputError naming the tag.
    """
    out: list[str] = []
    for part in re.split(r"[,\s]+", value.strip().lower()):
        if not part:
            continue
        if not _TAG.match(part):
            raise InputError(f"tags: {part!r} is not a tag (letters, digits, - and _)")
        if part not in out:
            out.append(part)
    return ",".join(out)


def is_suppressed(engine: Engine, address: str) -> bool:
    """True when the address was forgotten, bounced or complained before."""
    with engine.connect() as conn:
        row = conn.execute(
            select(suppressions.c.email_hash).where(
                suppressions.c.email_hash == email_hash(address)
            )
        ).first()
    return row is not None


def add_subscriber(
    engine: Engine,
    email: str,
    *,
    timezone: str,
    status: str,
    consent_source: str,
    now: datetime,
    first_name: str = "",
    consent_ip: str | None = None,
    consent_user_agent: str | None = None,
    consent_page: str | None = None,
    start_date: date | None = None,
    tags: str = "",
) -> tuple[int, bool]:
    """Add a subscriber, or find the existing one; returns (id, created).

    An existing subscriber is left as is (re-imports and repeated sign-ups are idempotent);
    a suppressed address is refused with InputError. `tags` (e.g. "desk, runners") name the
    newsletter segments ``tag:NAME`` they belong to.
    """
    address = normalise_email(email)
    zone = validate_timezone(timezone)
    tags = normalise_tags(tags)
    if status not in STATUSES:
        raise InputError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    if is_suppressed(engine, address):
        raise InputError(f"{address} is suppressed (forgotten, bounced or complained): not added")
    with engine.begin() as conn:
        existing = conn.execute(
            select(subscribers.c.id).where(subscribers.c.email == address)
        ).first()
        if existing:
            return existing.id, False
        result = conn.execute(
            insert(subscribers).values(
                email=address,
                first_name=first_name.strip()[:200],
                timezone=zone,
                status=status,
                consent_source=consent_source,
                consent_at=now,
                consent_ip=consent_ip,
                consent_user_agent=(consent_user_agent or "")[:512] or None,
                consent_page=consent_page,
                start_date=start_date,
                newsletters=True,
                tags=tags,
                confirm_count=0,
                # Added as active (import, `subscribers add`): confirmed on arrival.
                confirmed_at=now if status == "active" else None,
                created_at=now,
                updated_at=now,
            )
        )
        return int(result.inserted_primary_key[0]), True  # type: ignore[index]


def get_subscriber(engine: Engine, ref: int | str) -> RowMapping:
    """A subscriber by id or email; NotFoundError naming what was asked for."""
    with engine.connect() as conn:
        if isinstance(ref, int):
            cond = subscribers.c.id == ref
        else:
            cond = subscribers.c.email == normalise_email(ref)
        row = conn.execute(select(subscribers).where(cond)).mappings().first()
    if row is None:
        raise NotFoundError(f"no subscriber {ref!r}: see `subscribers list`")
    return row


def plan_lessons(
    engine: Engine, subscriber_id: int, course: CourseRules, first: date, now: datetime
) -> int:
    """Create the planned deliveries of every lesson not yet planned; returns how many."""
    sub = get_subscriber(engine, subscriber_id)
    zone = ZoneInfo(sub["timezone"])
    send = time.fromisoformat(sub["send_time"]) if sub["send_time"] else course.send_time
    days = [lesson.day for lesson in course.lessons]
    dues = schedule.due_times(first, len(days), send, zone, course.skip_weekends)
    with engine.begin() as conn:
        have = set(
            conn.execute(
                select(deliveries.c.lesson_day).where(deliveries.c.subscriber_id == subscriber_id)
            ).scalars()
        )
        rows = [
            {
                "subscriber_id": subscriber_id,
                "lesson_day": day,
                "key": f"{course.id}-s{subscriber_id}-d{day}",
                "due_at": due,
                "state": "planned",
                "attempts": 0,
                "updated_at": now,
            }
            for day, due in zip(days, dues, strict=True)
            if day not in have
        ]
        if rows:
            conn.execute(insert(deliveries), rows)
    return len(rows)


def activate(engine: Engine, subscriber_id: int, course: CourseRules, now: datetime) -> date:
    """Pending -> active: set the start date by the course's start rule and plan the lessons."""
    sub = get_subscriber(engine, subscriber_id)
    if sub["status"] in STOPPED:
        raise InputError(f"{sub['email']} is {sub['status']}: not restarted")
    zone = ZoneInfo(sub["timezone"])
    send = time.fromisoformat(sub["send_time"]) if sub["send_time"] else course.send_time
    first = sub["start_date"] or schedule.start_date(
        now,
        zone,
        send,
        course.start,  # type: ignore[arg-type]
        course.skip_weekends,
    )
    with engine.begin() as conn:
        conn.execute(
            update(subscribers)
            .where(subscribers.c.id == subscriber_id)
            .values(
                status="active",
                start_date=first,
                # The first confirmation stays (a rejoin confirms again, but signed up once).
                confirmed_at=func.coalesce(subscribers.c.confirmed_at, now),
                updated_at=now,
            )
        )
        # Someone who left and came back (see `rejoin`): the lessons they never got are
        # planned again; those they had stay done.
        revived = conn.execute(
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
        ).rowcount
    plan_lessons(engine, subscriber_id, course, first, now)
    if revived:
        return reschedule(engine, subscriber_id, course, now) or first
    return first


def rejoin(
    engine: Engine,
    subscriber_id: int,
    now: datetime,
    *,
    consent_source: str,
    consent_ip: str | None = None,
    consent_user_agent: str | None = None,
    consent_page: str | None = None,
) -> bool:
    """An unsubscribed reader signs up again: pending, with a fresh consent record.

    Only `unsubscribed` qualifies (bounced, complained and forgotten addresses never come
    back this way). They must confirm by the double opt-in email like anyone new; `activate`
    then plans the lessons they never got. Returns True when the subscriber was reopened.
    """
    with engine.begin() as conn:
        result = conn.execute(
            update(subscribers)
            .where(subscribers.c.id == subscriber_id, subscribers.c.status == "unsubscribed")
            .values(
                status="pending",
                start_date=None,
                consent_source=consent_source,
                consent_at=now,
                consent_ip=consent_ip,
                consent_user_agent=(consent_user_agent or "")[:512] or None,
                consent_page=consent_page,
                confirm_sent_at=None,
                confirm_count=0,
                updated_at=now,
            )
        )
    return bool(result.rowcount)


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


def _stop(engine: Engine, subscriber_id: int, status: str, now: datetime) -> list[str]:
    """Set a stopping status and cancel every lesson not yet delivered.

    Returns provider message ids already handed over (scheduled at the provider) so the caller
    can cancel them there.
    """
    with engine.begin() as conn:
        handed = handed_ids(conn, subscriber_id)
        conn.execute(
            update(deliveries)
            .where(
                deliveries.c.subscriber_id == subscriber_id,
                deliveries.c.state.in_(("planned", "claimed", "handed")),
            )
            .values(state="cancelled", updated_at=now, claimed_by=None, lease_expires_at=None)
        )
        conn.execute(
            update(subscribers)
            .where(subscribers.c.id == subscriber_id)
            .values(status=status, updated_at=now)
        )
    return handed


def unsubscribe(
    engine: Engine, subscriber_id: int, now: datetime, source: str = "link"
) -> list[str]:
    """Unsubscribe at once (idempotent); returns handed-over provider ids to cancel."""
    get_subscriber(engine, subscriber_id)
    handed = _stop(engine, subscriber_id, "unsubscribed", now)
    record_event(
        engine,
        "dripmail",
        f"unsubscribe-{subscriber_id}",
        "unsubscribed",
        now,
        now,
        subscriber_id=subscriber_id,
        detail=source,
    )
    return handed


def suppress(engine: Engine, subscriber_id: int, reason: str, now: datetime) -> list[str]:
    """Hard bounce or complaint: stop all mail and remember the address's hash."""
    sub = get_subscriber(engine, subscriber_id)
    status = "complained" if reason == "complained" else "bounced"
    handed = _stop(engine, subscriber_id, status, now)
    with engine.begin() as conn:
        exists = conn.execute(
            select(suppressions.c.email_hash).where(
                suppressions.c.email_hash == email_hash(sub["email"])
            )
        ).first()
        if not exists:
            conn.execute(
                insert(suppressions).values(
                    email_hash=email_hash(sub["email"]), reason=reason, created_at=now
                )
            )
    return handed


def record_event(
    engine: Engine,
    provider: str,
    dedupe_key: str,
    type_: str,
    now: datetime,
    occurred_at: datetime,
    *,
    subscriber_id: int | None = None,
    delivery_key: str | None = None,
    detail: str = "",
) -> bool:
    """Store an event once; False when the same (provider, dedupe_key) is already stored."""
    with engine.begin() as conn:
        seen = conn.execute(
            select(func.count())
            .select_from(events)
            .where(events.c.provider == provider, events.c.dedupe_key == dedupe_key)
        ).scalar_one()
        if seen:
            return False
        conn.execute(
            insert(events).values(
                subscriber_id=subscriber_id,
                delivery_key=delivery_key,
                provider=provider,
                dedupe_key=dedupe_key,
                type=type_,
                detail=detail,
                occurred_at=occurred_at,
                received_at=now,
            )
        )
    return True


def reschedule(
    engine: Engine, subscriber_id: int, course: CourseRules, now: datetime
) -> date | None:
    """Re-plan the lessons not yet handed over from the next local send time on.

    Used after a resume or a change of send time or zone: the next lesson goes out at the next
    local send time (today if it has not passed yet), the rest one per (week)day after it.
    Returns the local date of the next lesson, or None when nothing is left to send.
    """
    sub = get_subscriber(engine, subscriber_id)
    zone = ZoneInfo(sub["timezone"])
    send = time.fromisoformat(sub["send_time"]) if sub["send_time"] else course.send_time
    with engine.begin() as conn:
        left = list(
            conn.execute(
                select(deliveries.c.id)
                .where(deliveries.c.subscriber_id == subscriber_id, deliveries.c.state == "planned")
                .order_by(deliveries.c.lesson_day)
            ).scalars()
        )
        if not left:
            return None
        first = schedule.start_date(now, zone, send, "next-morning", course.skip_weekends)
        dues = schedule.due_times(first, len(left), send, zone, course.skip_weekends)
        for delivery_id, due in zip(left, dues, strict=True):
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id)
                .values(due_at=due, next_attempt_at=None, updated_at=now)
            )
    return first


def pause(engine: Engine, subscriber_id: int, now: datetime) -> list[str]:
    """Freeze the course. Returns provider ids of lessons already handed over (to cancel).

    The caller cancels those at the provider and passes the ones it could cancel to
    `unhand`; the rest will still arrive (the provider cannot take them back).
    """
    sub = get_subscriber(engine, subscriber_id)
    if sub["status"] not in ("active", "paused"):
        raise InputError(f"{sub['email']} is {sub['status']}: only an active course can pause")
    with engine.begin() as conn:
        handed = handed_ids(conn, subscriber_id)
        conn.execute(
            update(subscribers)
            .where(subscribers.c.id == subscriber_id)
            .values(status="paused", updated_at=now)
        )
    return handed


def unhand(engine: Engine, provider_ids: list[str], now: datetime) -> int:
    """Return deliveries whose scheduled send was cancelled at the provider to `planned`."""
    if not provider_ids:
        return 0
    with engine.begin() as conn:
        result = conn.execute(
            update(deliveries)
            .where(
                deliveries.c.provider_message_id.in_(provider_ids),
                deliveries.c.state == "handed",
            )
            .values(state="planned", provider_message_id=None, batch_key=None, updated_at=now)
        )
    return result.rowcount or 0


def resume(engine: Engine, subscriber_id: int, course: CourseRules, now: datetime) -> date | None:
    """Continue a paused course with the next lesson at the next local send time."""
    sub = get_subscriber(engine, subscriber_id)
    if sub["status"] != "paused":
        raise InputError(f"{sub['email']} is {sub['status']}, not paused: nothing to resume")
    with engine.begin() as conn:
        conn.execute(
            update(subscribers)
            .where(subscribers.c.id == subscriber_id)
            .values(status="active", updated_at=now)
        )
    return reschedule(engine, subscriber_id, course, now)


def forget(engine: Engine, subscriber_id: int, now: datetime) -> list[str]:
    """Erase a subscriber: rows and events deleted, only a hashed suppression kept.

    The hash stops an import or sign-up from adding the address again. Returns provider ids of
    lessons already handed over, for the caller to cancel.
    """
    sub = get_subscriber(engine, subscriber_id)
    with engine.begin() as conn:
        handed = handed_ids(conn, subscriber_id)
        conn.execute(events.delete().where(events.c.subscriber_id == subscriber_id))
        # Provider events that matched nobody may still carry the address in the raw event.
        conn.execute(
            update(events)
            .where(
                events.c.subscriber_id.is_(None),
                func.lower(events.c.raw).contains(sub["email"], autoescape=True),
            )
            .values(raw=None)
        )
        conn.execute(deliveries.delete().where(deliveries.c.subscriber_id == subscriber_id))
        conn.execute(subscribers.delete().where(subscribers.c.id == subscriber_id))
        hashed = email_hash(sub["email"])
        if not conn.execute(
            select(suppressions.c.email_hash).where(suppressions.c.email_hash == hashed)
        ).first():
            conn.execute(
                insert(suppressions).values(email_hash=hashed, reason="forgotten", created_at=now)
            )
    return handed


def timeline(engine: Engine, subscriber_id: int) -> tuple[list[RowMapping], list[RowMapping]]:
    """A subscriber's deliveries (by lesson) and events (by time), for `subscribers show`."""
    with engine.connect() as conn:
        lessons = list(
            conn.execute(
                select(deliveries)
                .where(deliveries.c.subscriber_id == subscriber_id)
                .order_by(deliveries.c.lesson_day)
            ).mappings()
        )
        happened = list(
            conn.execute(
                select(events)
                .where(events.c.subscriber_id == subscriber_id)
                .order_by(events.c.occurred_at, events.c.id)
            ).mappings()
        )
    return lessons, happened
