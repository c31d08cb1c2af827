"""When each lesson is due: pure functions of dates, zones and the clock passed in.

Rules (issue 4): lesson N is due on local date ``start + (N-1)`` days (weekends skipped when
asked) at the send time in the subscriber's zone. A local time that does not exist (spring-forward
gap) moves forward to the first valid minute; an ambiguous one (fall-back) takes its first
occurrence. After downtime a subscriber gets at most one lesson per local day: a late lesson
pushes the next one to the following local morning, never a burst.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

StartRule = Literal["next-morning", "immediately"]


def local_send_time(day: date, send_time: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of `send_time` on local `day` in `zone`, with DST gaps and folds handled."""
    naive = datetime.combine(day, send_time)
    # fold=0 is the first occurrence of an ambiguous time, as the rule wants.
    candidate = naive.replace(tzinfo=zone, fold=0)
    while candidate.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
        # Inside a gap the wall time does not exist: walk forward a minute at a time.
        naive += timedelta(minutes=1)
        candidate = naive.replace(tzinfo=zone, fold=0)
    return candidate.astimezone(UTC)


def _is_weekend(day: date) -> bool:
    return day.weekday() >= 5


def next_lesson_day(day: date, skip_weekends: bool) -> date:
    """The first local date on or after `day` on which a lesson may go out."""
    while skip_weekends and _is_weekend(day):
        day += timedelta(days=1)
    return day


def start_date(
    joined_at: datetime,
    zone: ZoneInfo,
    send_time: time,
    rule: StartRule = "next-morning",
    skip_weekends: bool = False,
) -> date:
    """The local date of lesson 1 for someone who joined (or confirmed) at `joined_at` (UTC).

    With ``next-morning`` a subscriber who joins after today's send time starts tomorrow;
    with ``immediately`` lesson 1 is due on the day they join.
    """
    local = joined_at.astimezone(zone)
    day = local.date()
    if rule == "next-morning" and local >= local_send_time(day, send_time, zone).astimezone(zone):
        day += timedelta(days=1)
    return next_lesson_day(day, skip_weekends)


def lesson_dates(first: date, count: int, skip_weekends: bool = False) -> list[date]:
    """Local dates of lessons 1..count, one per (week)day from `first`."""
    days: list[date] = []
    day = next_lesson_day(first, skip_weekends)
    while len(days) < count:
        days.append(day)
        day = next_lesson_day(day + timedelta(days=1), skip_weekends)
    return days


def due_times(
    first: date, count: int, send_time: time, zone: ZoneInfo, skip_weekends: bool = False
) -> list[datetime]:
    """UTC due times of lessons 1..count."""
    return [local_send_time(d, send_time, zone) for d in lesson_dates(first, count, skip_weekends)]


def next_send_at(
    planned: datetime,
    previous_sent_at: datetime | None,
    send_time: time,
    zone: ZoneInfo,
    skip_weekends: bool = False,
) -> datetime:
    """When a lesson really goes out (UTC), given its plan and when the one before it went out.

    The one rule the engine sends by and the preferences page promises by: a lesson is never
    due before its plan (`planned`, UTC), nor on the same local day as the previous lesson
    (`previous_sent_at`, None for lesson 1 or when unknown), nor on a weekend when
    `skip_weekends`. After downtime the overdue lessons go out one per local (week)day, in
    order, at `send_time` in `zone`.
    """
    if previous_sent_at is None:
        return planned
    next_day = next_lesson_day(
        previous_sent_at.astimezone(zone).date() + timedelta(days=1), skip_weekends
    )
    return max(planned, local_send_time(next_day, send_time, zone))


def catch_up_due(
    planned: datetime,
    previous_sent_at: datetime | None,
    send_time: time,
    zone: ZoneInfo,
    skip_weekends: bool = False,
) -> datetime:
    """Former name of `next_send_at` (kept for callers outside the engine)."""
    return next_send_at(planned, previous_sent_at, send_time, zone, skip_weekends)
