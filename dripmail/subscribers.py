"""Subscriber policy: adding, activating, planning, stopping, pausing, erasing.

Each function takes a `bind`: an Engine (the function runs in its own transaction) or a
Connection (it runs inside the caller's, see `dripmail.app`, where a use case is one
transaction). The SQL is in `dripmail.store.subscriber_queries`; input checks in
`dripmail.validation`. Every function takes the clock (`now`, aware UTC) as an argument so
tests and `--now` agree.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Collection, Iterable
from datetime import date, datetime, time
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, RowMapping, func

from dripmail import schedule
from dripmail.errors import InputError, NotFoundError
from dripmail.states import STOPPED as STOPPED_STATUSES
from dripmail.states import SubscriberStatus
from dripmail.store import subscriber_queries as q
from dripmail.store.delivery_queries import previous_sent_before
from dripmail.store.report_queries import forget_days_of
from dripmail.store.schema import subscribers
from dripmail.store.transactions import transaction
from dripmail.validation import (
    clean_name,
    normalise_email,
    normalise_tags,
    validate_timezone,
)
from dripmail.welcome import WELCOME_DAY

STATUSES = tuple(s.value for s in SubscriberStatus)
STOPPED = tuple(sorted(s.value for s in STOPPED_STATUSES))
Bind = Engine | Connection


class CourseRules(Protocol):
    """What planning needs from a course (satisfied by `dripmail.content.Course`)."""

    @property
    def id(self) -> str: ...
    @property
    def send_time(self) -> time: ...
    @property
    def start(self) -> str: ...
    @property
    def skip_weekends(self) -> bool: ...
    @property
    def lessons(self) -> tuple[Any, ...]: ...


def email_hash(address: str, normalised: bool = False) -> str:
    """The hash kept in `suppressions` (never the address itself).

    `normalised`: the address already went through `normalise_email` (skip doing it again).
    """
    canonical = address if normalised else normalise_email(address)
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_suppressed(bind: Bind, address: str) -> bool:
    """True when the address was forgotten, bounced or complained before."""
    with transaction(bind) as conn:
        return q.is_suppressed(conn, email_hash(address))


def add_subscriber(
    bind: Bind,
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

    Every value is validated here, whatever door it came through (`dripmail.validation`):
    the name cleaned of control characters, the zone made canonical, the tags normalised.
    An existing subscriber is left as is (re-imports and repeated sign-ups are idempotent);
    a suppressed address is refused with InputError. `tags` (e.g. "desk, runners") name the
    newsletter segments ``tag:NAME`` they belong to.
    """
    address = normalise_email(email)
    zone = validate_timezone(timezone)
    tags = normalise_tags(tags)
    name = clean_name(first_name)
    if status not in STATUSES:
        raise InputError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    with transaction(bind) as conn:
        if q.is_suppressed(conn, email_hash(address)):
            raise InputError(
                f"{address} is suppressed (forgotten, bounced or complained): not added"
            )
        existing = q.by_email(conn, address)
        if existing:
            return int(existing["id"]), False
        sid = q.insert_subscriber(
            conn,
            {
                "email": address,
                "first_name": name,
                "timezone": zone,
                "status": str(status),
                "consent_source": consent_source,
                "consent_at": now,
                "consent_ip": consent_ip,
                "consent_user_agent": (consent_user_agent or "")[:512] or None,
                "consent_page": consent_page,
                "start_date": start_date,
                "newsletters": True,
                "tags": tags,
                "confirm_count": 0,
                # Added as active (import, `subscribers add`): confirmed on arrival.
                "confirmed_at": now if status == "active" else None,
                "created_at": now,
                "updated_at": now,
            },
        )
        return sid, True


def get_subscriber(bind: Bind, ref: int | str) -> RowMapping:
    """A subscriber by id or email; NotFoundError naming what was asked for."""
    with transaction(bind) as conn:
        if isinstance(ref, int):
            row = q.by_id(conn, ref)
        else:
            try:
                row = q.by_email(conn, normalise_email(ref))
            except InputError:
                row = None
    if row is None:
        raise NotFoundError(f"no subscriber {ref!r}: see `subscribers list`")
    return row


def _send_time(sub: RowMapping, course: CourseRules) -> time:
    return time.fromisoformat(sub["send_time"]) if sub["send_time"] else course.send_time


def delivery_key(course_id: str, subscriber_id: int, day: int) -> str:
    """The idempotency key of one lesson for one subscriber (``<course>-s<id>-d<day>``)."""
    return f"{course_id}-s{subscriber_id}-d{day}"


def delivery_keys(course_id: str, subscriber_id: int, days: Iterable[int]) -> list[str]:
    """`delivery_key` of each of `days` for one subscriber (an import plans thousands)."""
    prefix = f"{course_id}-s{subscriber_id}-d"
    return [prefix + str(day) for day in days]


def plan_lessons(
    bind: Bind, subscriber_id: int, course: CourseRules, first: date, now: datetime
) -> int:
    """Create the planned deliveries of every lesson not yet planned; returns how many."""
    with transaction(bind) as conn:
        sub = get_subscriber(conn, subscriber_id)
        return _plan_missing(conn, sub, course, first, now, q.planned_days(conn, subscriber_id))


def _plan_missing(
    conn: Connection,
    sub: RowMapping,
    course: CourseRules,
    first: date,
    now: datetime,
    have: Collection[int],
) -> int:
    """Insert the planned deliveries of the course's lessons whose day is not in `have`."""
    subscriber_id = int(sub["id"])
    days = [lesson.day for lesson in course.lessons]
    dues = schedule.due_times(
        first, len(days), _send_time(sub, course), ZoneInfo(sub["timezone"]), course.skip_weekends
    )
    rows = [
        {
            "subscriber_id": subscriber_id,
            "lesson_day": day,
            "key": delivery_key(course.id, subscriber_id, day),
            "due_at": due,
            "state": "planned",
            "attempts": 0,
            "updated_at": now,
        }
        for day, due in zip(days, dues, strict=True)
        if day not in have
    ]
    q.insert_deliveries(conn, rows)
    return len(rows)


def plan_welcome(bind: Bind, subscriber_id: int, course: CourseRules, now: datetime) -> bool:
    """Plan the welcome email (lesson day 0, due at once) if the course has one.

    Its key ``<course>-s<id>-d0`` is unique like a lesson's, so a subscriber gets it exactly
    once: confirming again, or coming back after unsubscribing, plans nothing new. Returns
    True when it was planned now.
    """
    if getattr(course, "welcome", None) is None:
        return False
    with transaction(bind) as conn:
        if WELCOME_DAY in q.planned_days(conn, subscriber_id):
            return False
        q.insert_deliveries(
            conn,
            [
                {
                    "subscriber_id": subscriber_id,
                    "lesson_day": WELCOME_DAY,
                    "key": delivery_key(course.id, subscriber_id, WELCOME_DAY),
                    "due_at": now,
                    "state": "planned",
                    "attempts": 0,
                    "updated_at": now,
                }
            ],
        )
    return True


def activate(bind: Bind, subscriber_id: int, course: CourseRules, now: datetime) -> date:
    """Pending -> active: set the start date by the course's start rule and plan the lessons.

    Returns the local date of the next lesson.
    """
    with transaction(bind) as conn:
        sub = get_subscriber(conn, subscriber_id)
        if sub["status"] in STOPPED:
            raise InputError(f"{sub['email']} is {sub['status']}: not restarted")
        zone = ZoneInfo(sub["timezone"])
        first: date = sub["start_date"] or schedule.start_date(
            now,
            zone,
            _send_time(sub, course),
            course.start,  # type: ignore[arg-type]
            course.skip_weekends,
        )
        q.set_status(
            conn,
            subscriber_id,
            SubscriberStatus.ACTIVE,
            now,
            start_date=first,
            # The first confirmation stays (a rejoin confirms again, but signed up once).
            confirmed_at=func.coalesce(subscribers.c.confirmed_at, now),
        )
        # Someone who left and came back (see `rejoin`): the lessons they never got are
        # planned again; those they had stay done. One read answers both "any to revive?"
        # and "which are planned?" (a first confirmation has no rows at all).
        states = q.lesson_states(conn, subscriber_id)
        revived = (
            q.revive_cancelled(conn, subscriber_id, now) if "cancelled" in states.values() else 0
        )
        _plan_missing(conn, sub, course, first, now, states.keys())
        if revived:
            return reschedule(conn, subscriber_id, course, now) or first
    return first


def rename(
    bind: Bind,
    subscriber_id: int,
    name: str,
    now: datetime,
    by: str = "corrected by the operator (cli)",
) -> tuple[str, str]:
    """Replace a subscriber's first name, cleaned by the sign-up's rules (`clean_name`: control
    and line-break characters become a space; longer than the limit is an InputError).

    For a name stored before those rules (or by hand) that no mail header can carry. Recorded
    as a ``renamed`` event (detail ``first name <by>``). Returns (old name, new name); equal
    when nothing changed (then no event is recorded).
    """
    new = clean_name(name)
    with transaction(bind) as conn:
        row = q.by_id(conn, subscriber_id)
        if row is None:
            raise NotFoundError(f"no subscriber {subscriber_id}: see `subscribers list`")
        old = str(row["first_name"] or "")
        if old == new:
            return old, new
        q.set_first_name(conn, subscriber_id, new, now)
        q.insert_event_once(
            conn,
            {
                "subscriber_id": subscriber_id,
                "delivery_key": None,
                "provider": "dripmail",
                "dedupe_key": f"renamed-{subscriber_id}-{uuid.uuid4().hex}",
                "type": "renamed",
                "detail": f"first name {by}",
                "occurred_at": now,
                "received_at": now,
            },
        )
    return old, new


def rejoin(
    bind: Bind,
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
    consent = {
        "consent_source": consent_source,
        "consent_at": now,
        "consent_ip": consent_ip,
        "consent_user_agent": (consent_user_agent or "")[:512] or None,
        "consent_page": consent_page,
    }
    with transaction(bind) as conn:
        return q.reopen_unsubscribed(conn, subscriber_id, now, consent)


def handed_ids(conn: Connection, subscriber_id: int) -> list[str]:
    """Provider ids of this subscriber's lessons handed over but not yet delivered."""
    return q.handed_ids(conn, subscriber_id)


def _stop(conn: Connection, subscriber_id: int, status: str, now: datetime) -> list[str]:
    """Set a stopping status and cancel every lesson not yet delivered.

    Returns provider message ids already handed over (scheduled at the provider) so the caller
    can cancel them there.
    """
    handed = q.handed_ids(conn, subscriber_id)
    q.cancel_open(conn, subscriber_id, now)
    q.set_status(conn, subscriber_id, status, now)
    return handed


def unsubscribe(bind: Bind, subscriber_id: int, now: datetime, source: str = "link") -> list[str]:
    """Unsubscribe at once (idempotent); returns handed-over provider ids to cancel."""
    with transaction(bind) as conn:
        get_subscriber(conn, subscriber_id)
        handed = _stop(conn, subscriber_id, SubscriberStatus.UNSUBSCRIBED, now)
        record_event(
            conn,
            "dripmail",
            f"unsubscribe-{subscriber_id}",
            "unsubscribed",
            now,
            now,
            subscriber_id=subscriber_id,
            detail=source,
        )
    return handed


def suppress(bind: Bind, subscriber_id: int, reason: str, now: datetime) -> list[str]:
    """Hard bounce or complaint: stop all mail and remember the address's hash."""
    with transaction(bind) as conn:
        sub = get_subscriber(conn, subscriber_id)
        status = SubscriberStatus.COMPLAINED if reason == "complained" else SubscriberStatus.BOUNCED
        handed = _stop(conn, subscriber_id, status, now)
        q.suppress_hash(conn, email_hash(sub["email"]), reason, now)
    return handed


def record_event(
    bind: Bind,
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
    with transaction(bind) as conn:
        return q.insert_event_once(
            conn,
            {
                "subscriber_id": subscriber_id,
                "delivery_key": delivery_key,
                "provider": provider,
                "dedupe_key": dedupe_key,
                "type": type_,
                "detail": detail,
                "occurred_at": occurred_at,
                "received_at": now,
            },
        )


def reschedule(bind: Bind, subscriber_id: int, course: CourseRules, now: datetime) -> date | None:
    """Re-plan the lessons not yet handed over from the next local send time on.

    Used after a resume or a change of send time or zone: the next lesson goes out at the next
    local send time (today if it has not passed yet), the rest one per (week)day after it.
    Returns the local date of the next lesson, or None when nothing is left to send.
    """
    with transaction(bind) as conn:
        sub = get_subscriber(conn, subscriber_id)
        zone = ZoneInfo(sub["timezone"])
        send = _send_time(sub, course)
        left = q.planned_in_order(conn, subscriber_id)
        if not left:
            return None
        first = schedule.start_date(now, zone, send, "next-morning", course.skip_weekends)
        # The engine never sends two lessons on one local day (`schedule.next_send_at`): plan
        # the first one where the engine will really send it, so the page promises that day.
        previous = previous_sent_before(conn, left[0])
        first = (
            schedule.next_send_at(
                schedule.local_send_time(first, send, zone),
                previous,
                send,
                zone,
                course.skip_weekends,
            )
            .astimezone(zone)
            .date()
        )
        dues = schedule.due_times(first, len(left), send, zone, course.skip_weekends)
        q.set_due(conn, zip(left, dues, strict=True), now)
    return first


def pause(bind: Bind, subscriber_id: int, now: datetime) -> list[str]:
    """Freeze the course. Returns provider ids of lessons already handed over (to cancel).

    The caller cancels those at the provider and passes the ones it could cancel to
    `unhand`; the rest will still arrive (the provider cannot take them back).
    """
    with transaction(bind) as conn:
        sub = get_subscriber(conn, subscriber_id)
        if sub["status"] not in ("active", "paused"):
            raise InputError(f"{sub['email']} is {sub['status']}: only an active course can pause")
        handed = q.handed_ids(conn, subscriber_id)
        q.set_status(conn, subscriber_id, SubscriberStatus.PAUSED, now)
    return handed


def unhand(bind: Bind, provider_ids: list[str], now: datetime) -> int:
    """Return deliveries whose scheduled send was cancelled at the provider to `planned`."""
    if not provider_ids:
        return 0
    with transaction(bind) as conn:
        return q.unhand(conn, provider_ids, now)


def resume(bind: Bind, subscriber_id: int, course: CourseRules, now: datetime) -> date | None:
    """Continue a paused course with the next lesson at the next local send time."""
    with transaction(bind) as conn:
        sub = get_subscriber(conn, subscriber_id)
        if sub["status"] != "paused":
            raise InputError(f"{sub['email']} is {sub['status']}, not paused: nothing to resume")
        q.set_status(conn, subscriber_id, SubscriberStatus.ACTIVE, now)
        return reschedule(conn, subscriber_id, course, now)


def forget(bind: Bind, subscriber_id: int, now: datetime) -> list[str]:
    """Erase a subscriber: rows and events deleted, only a hashed suppression kept.

    The hash stops an import or sign-up from adding the address again; the report's stored
    days that counted the reader are dropped in the same transaction (the next report counts
    them again). Returns provider ids of lessons already handed over, for the caller to cancel.
    """
    with transaction(bind) as conn:
        sub = get_subscriber(conn, subscriber_id)
        handed = q.handed_ids(conn, subscriber_id)
        # The report's stored days still count the reader: dropped, counted again without.
        forget_days_of(conn, subscriber_id)
        q.delete_subscriber(conn, subscriber_id)
        # Provider events that matched nobody may still quote the address.
        q.scrub_unmatched_events(conn, sub["email"])
        q.suppress_hash(conn, email_hash(sub["email"]), "forgotten", now)
    return handed


def timeline(bind: Bind, subscriber_id: int) -> tuple[list[RowMapping], list[RowMapping]]:
    """A subscriber's deliveries (by lesson) and events (by time), for `subscribers show`."""
    with transaction(bind) as conn:
        return q.lessons_of(conn, subscriber_id), q.events_of(conn, subscriber_id)
