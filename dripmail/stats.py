"""Counts for `status`: subscribers, lessons, deliveries, what is next and what went wrong."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

from sqlalchemy import Engine, func, select

from dripmail.engine import next_due, next_send_time
from dripmail.store.confirmation_queries import NotSent, not_sent
from dripmail.store.schema import deliveries, subscribers


@dataclass
class Status:
    """A snapshot of the store, in the order `status` prints it."""

    subscribers: dict[str, int] = field(default_factory=dict)
    lessons: dict[int, int] = field(default_factory=dict)
    deliveries: dict[str, int] = field(default_factory=dict)
    next_due: datetime | None = None
    failures: list[dict] = field(default_factory=list)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    # Planned lessons of active subscribers whose planned time is already past (`run` has not
    # caught up: cron stopped, or a simulated `--now` ran ahead of the real clock; or the
    # one-lesson-per-local-day rule holds them, which is no fault).
    overdue: int = 0
    # Of those, lessons a provider's temporary error (a 5xx, a 429 pause) put back with a retry
    # time still ahead, and the earliest such time: they wait for it, not for the day rule.
    retrying: int = 0
    retry_at: datetime | None = None
    # Pending readers whose confirmation email was not handed over (it could not be built,
    # the provider did not take it or could not be reached) and nobody is sending it now.
    unconfirmed: NotSent = field(default_factory=lambda: NotSent(0))
    # Failed lessons no retry will ever requeue (`retry.Left.final`: the reader stopped mail
    # or already got a later lesson); the other failed ones may go back with a retry.
    failed_final: int = 0
    # Failed lessons a retry leaves for now, by why (`retry.Left` not final: the reader has
    # not confirmed, a later lesson is in review or in flight), most first.
    failed_waiting: list[tuple[str, int]] = field(default_factory=list)

    def next_due_line(self) -> str:
        """`Next due: ...`, saying plainly when that time is already past (never silently)."""
        if self.next_due is None:
            return "Next due: nothing planned"
        line = f"Next due: {self.next_due:%Y-%m-%d %H:%M} UTC"
        if self.next_due > self.now:
            waits = []
            if self.retrying and self.retry_at is not None:
                waits.append(
                    f"{self.retrying} lesson(s) wait to be tried again after a provider error, "
                    f"the first at {self.retry_at:%H:%M} UTC"
                )
            if self.overdue > self.retrying:
                waits.append(
                    f"{self.overdue - self.retrying} lesson(s) planned earlier wait for it: at "
                    "most one lesson per reader per local day"
                )
            return f"{line} ({'; '.join(waits)})" if waits else line
        # Past its planned time; `run` sends late lessons at most one per reader per local day
        # (the catch-up rule), so a lesson can stay late a day without anything being wrong.
        return (
            f"{line}: OVERDUE by {_age(self.now - self.next_due)}; {self.overdue} lesson(s) "
            "past their planned time. `run` sends them, at most one per reader per local day; "
            "if this grows, check that cron or `run --loop` is running"
        )


def _age(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    return f"{minutes // (24 * 60)} days"


def collect(
    engine: Engine,
    recent: int = 10,
    now: datetime | None = None,
    *,
    send_time: time | None = None,
    skip_weekends: bool = False,
) -> Status:
    """Aggregate counts with a handful of GROUP BY queries (fast on a million rows).

    `now` (aware UTC, default the real clock) decides what counts as overdue. With the
    course's `send_time` (and `skip_weekends`), "next due" is when the engine will really send
    the next lesson (`engine.next_send_time`: the one-lesson-per-local-day rule applied);
    without, the earliest planned time.
    """
    out = Status(now=now or datetime.now(UTC))
    with engine.connect() as conn:
        out.subscribers = dict(
            conn.execute(
                select(subscribers.c.status, func.count())
                .group_by(subscribers.c.status)
                .order_by(subscribers.c.status)
            ).all()
        )
        out.lessons = dict(
            conn.execute(
                select(deliveries.c.lesson_day, func.count())
                .where(deliveries.c.state.in_(("sent", "handed")))
                .group_by(deliveries.c.lesson_day)
                .order_by(deliveries.c.lesson_day)
            ).all()
        )
        out.deliveries = dict(
            conn.execute(
                select(deliveries.c.state, func.count())
                .group_by(deliveries.c.state)
                .order_by(deliveries.c.state)
            ).all()
        )
        out.failures = [
            dict(r)
            for r in conn.execute(
                select(deliveries.c.key, deliveries.c.state, deliveries.c.last_error)
                .where(deliveries.c.state.in_(("failed", "review")))
                .order_by(deliveries.c.updated_at.desc())
                .limit(recent)
            ).mappings()
        ]
        out.unconfirmed = not_sent(conn)
    out.next_due = (
        next_due(engine)
        if send_time is None
        else next_send_time(
            engine, out.now, default_send_time=send_time, skip_weekends=skip_weekends
        )
    )
    if out.next_due is not None and (send_time is not None or out.next_due <= out.now):
        with engine.connect() as conn:
            out.overdue = conn.execute(
                select(func.count())
                .select_from(deliveries.join(subscribers))
                .where(
                    deliveries.c.state == "planned",
                    subscribers.c.status == "active",
                    deliveries.c.due_at <= out.now,
                )
            ).scalar_one()
            out.retrying, out.retry_at = conn.execute(
                select(func.count(), func.min(deliveries.c.next_attempt_at))
                .select_from(deliveries.join(subscribers))
                .where(
                    deliveries.c.state == "planned",
                    subscribers.c.status == "active",
                    deliveries.c.due_at <= out.now,
                    deliveries.c.next_attempt_at > out.now,
                )
            ).one()
        # A lesson waiting for its retry goes then (`run --loop` looks every minute), which
        # the day rule's time above does not count.
        if out.retry_at is not None and out.next_due is not None and out.next_due > out.now:
            out.next_due = min(out.next_due, out.retry_at)
    return out
