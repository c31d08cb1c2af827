"""Messages shaped like rendered lessons, for provider tests (many recipients, real headers)."""

from __future__ import annotations

from datetime import datetime

from dripmail.message import Mailbox, Message
from dripmail.providers.http import Limits, RetryPolicy

# Short retry delays so fault tests run in seconds; a generous timeout, so no answer races the
# client's clock on a loaded 2-core machine (the fake validates every request against the
# provider's API file). No fault test waits for it to fire: the fake's `slow` fault holds a
# request `slow_seconds`, then closes the connection unanswered (see provider_server).
FAST_RETRY = RetryPolicy(
    max_attempts=4, base_delay=0.001, max_delay=0.01, timeout=60.0, connect_timeout=60.0
)
# For tests of big batches without faults (kept for their callers: FAST_RETRY is as patient).
BIG_RETRY = FAST_RETRY
FAST_LIMITS = Limits(messages_per_second=None, requests_per_second=None, max_concurrency=8)


def lesson(
    n: int,
    *,
    day: int = 3,
    send_at: datetime | None = None,
    address: str | None = None,
    kind: str = "lesson",
) -> Message:
    """Lesson `day` for subscriber `n`, personalised the way render.py personalises it."""
    email = address or f"reader{n}@example.org"
    name = f"Reader{n}"
    unsubscribe = f"https://studio.example.com/u/tok{n:05d}x"
    preferences = f"https://studio.example.com/p/pref{n:05d}y"
    html = (
        f"<html><body><p>Hi {name},</p><p>Day {day}: the low lunge.</p>"
        '<a href="https://studio.example.com/video/low-lunge">watch</a>'
        f'<a href="{preferences}">preferences</a> <a href="{unsubscribe}">unsubscribe</a>'
        "</body></html>"
    )
    text = (
        f"Hi {name},\n\nDay {day}: the low lunge.\n"
        "Watch: https://studio.example.com/video/low-lunge\n"
        f"Preferences: {preferences}\nUnsubscribe: {unsubscribe}\n"
    )
    return Message(
        key=f"psoas-week-s{n}-d{day}",
        kind=kind,  # type: ignore[arg-type]
        ref=str(day),
        sender=Mailbox("hello@studio.example.com", "Studio, Yoga"),
        to=Mailbox(email, name),
        subject=f"Day {day} for {name}: the low lunge",
        html=html,
        text=text,
        reply_to=Mailbox("teacher@studio.example.com", "Teacher"),
        headers={
            "List-Unsubscribe": f"<{unsubscribe}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        tags=("psoas-week", f"day-{day}"),
        send_at=send_at,
    )


def lessons(count: int, start: int = 1, **kwargs) -> list[Message]:
    """`count` lessons for subscribers start..start+count-1."""
    return [lesson(n, **kwargs) for n in range(start, start + count)]
