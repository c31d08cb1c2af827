"""The plainest lesson message for a due row: what engine tests hand a provider when the
email's content is not what they check (the render path has its own tests)."""

from __future__ import annotations

from dripmail.message import Mailbox, Message

SENDER = Mailbox("hello@studio.example.com")


def plain_lesson(row: dict) -> Message:
    """Lesson `row["lesson_day"]` for `row["email"]`, keyed by the row's delivery key."""
    return Message(
        key=row["key"],
        kind="lesson",
        ref=str(row["lesson_day"]),
        sender=SENDER,
        to=Mailbox(row["email"]),
        subject=f"Day {row['lesson_day']}",
        html="<p>x</p>",
        text="x",
    )
