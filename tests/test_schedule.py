from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from dripmail.schedule import due_times, local_send_time, next_send_at, start_date

ZONES = [
    "America/New_York",
    "Europe/Berlin",
    "Australia/Sydney",
    "Asia/Kolkata",
    "Pacific/Chatham",
]


def test_spring_forward_gap_moves_to_first_valid_minute() -> None:
    ny = ZoneInfo("America/New_York")
    # 2026-03-08 02:30 does not exist in New York; 03:00 EDT is the first valid minute.
    due = local_send_time(date(2026, 3, 8), time(2, 30), ny)
    assert due.astimezone(ny).strftime("%H:%M") == "03:00"


def test_fall_back_takes_first_occurrence() -> None:
    ny = ZoneInfo("America/New_York")
    due = local_send_time(date(2026, 11, 1), time(1, 30), ny)
    assert due == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT, not EST


def test_half_and_three_quarter_hour_zones() -> None:
    assert local_send_time(date(2026, 6, 1), time(7), ZoneInfo("Asia/Kolkata")) == datetime(
        2026, 6, 1, 1, 30, tzinfo=UTC
    )
    chatham = local_send_time(date(2026, 6, 1), time(7), ZoneInfo("Pacific/Chatham"))
    assert chatham.minute == 15  # UTC+12:45 in winter


def test_join_after_send_time_starts_next_morning() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    early = datetime(2026, 6, 1, 4, 0, tzinfo=UTC)  # 06:00 local
    late = datetime(2026, 6, 1, 6, 0, tzinfo=UTC)  # 08:00 local
    assert start_date(early, berlin, time(7)) == date(2026, 6, 1)
    assert start_date(late, berlin, time(7)) == date(2026, 6, 2)
    assert start_date(late, berlin, time(7), "immediately") == date(2026, 6, 1)


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    first=st.dates(min_value=date(2024, 1, 1), max_value=date(2030, 12, 31)),
    hour=st.integers(0, 23),
    minute=st.sampled_from([0, 15, 30, 45]),
    skip=st.booleans(),
)
def test_every_lesson_once_in_order_one_per_local_day(
    zone: str, first: date, hour: int, minute: int, skip: bool
) -> None:
    tz = ZoneInfo(zone)
    send = time(hour, minute)
    dues = due_times(first, 7, send, tz, skip)
    assert len(dues) == 7
    assert dues == sorted(dues) and len(set(dues)) == 7
    local_days = [d.astimezone(tz).date() for d in dues]
    assert len(set(local_days)) == 7
    for d in dues:
        local = d.astimezone(tz)
        if skip:
            assert local.weekday() < 5
        # At the send time, except inside a DST gap where it moves forward (< 3 h).
        wall = datetime.combine(local.date(), send)
        shift = local.replace(tzinfo=None) - wall
        assert timedelta(0) <= shift < timedelta(hours=3)


@settings(max_examples=200, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    downtime_days=st.integers(0, 10),
)
def test_catch_up_never_bursts(zone: str, downtime_days: int) -> None:
    tz = ZoneInfo(zone)
    send = time(7)
    planned = due_times(date(2026, 3, 1), 7, send, tz)
    # The engine was off: it wakes `downtime_days` after lesson 1 was due and runs hourly.
    now = planned[0] + timedelta(days=downtime_days)
    sent: list[datetime] = []
    while len(sent) < 7:
        due = next_send_at(planned[len(sent)], sent[-1] if sent else None, send, tz)
        if due <= now:
            sent.append(now)
        now += timedelta(hours=1)
    local_days = [s.astimezone(tz).date() for s in sent]
    assert len(set(local_days)) == 7  # at most one a local day
    assert all(s >= p for s, p in zip(sent, planned, strict=True))
