"""Messages shaped like rendered lessons, for provider tests (many recipients, real headers)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from dripmail.message import Mailbox, Message
from dripmail.providers.http import Limits, RetryPolicy

# Short retry delays so fault tests run in seconds. The timeout is generous for a loaded 2-core
# machine (a busy fake may take a second to validate a big batch); the fake's `slow` fault
# holds its answer until the client hangs up, so it never races this clock.
FAST_RETRY = RetryPolicy(
    max_attempts=4, base_delay=0.001, max_delay=0.01, timeout=3.0, connect_timeout=5.0
)
# For tests of big batches without faults: the fake validates a 1,000-recipient request against
# the provider's API file, which can take long on a loaded machine.
BIG_RETRY = replace(FAST_RETRY, timeout=30.0)
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
