"""The welcome email: `course/welcome.md`, sent once right after a sign-up is confirmed.

It is a course file like the lessons (front matter `subject` and `preheader`, then Markdown:
props, a short safety screen, anything the studio wants to say), rendered through
`emails/welcome.*`, which add what comes from elsewhere: the week's lessons from the course
and, per reader, when lesson 1 arrives in their own time zone (`recipient.first_lesson`).

The engine sends it as lesson day 0 (`WELCOME_DAY`): a delivery planned when the reader
confirms, due at once, with the unique key ``<course>-s<id>-d0``, so it goes out exactly once
per subscriber through the same claims, batches and reconciliation as the lessons.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from dripmail.config import Project
    from dripmail.content import Problems

WELCOME_FILE = "welcome.md"
WELCOME_FIELDS = ("subject", "preheader", "sources")
WELCOME_DAY = 0  # the delivery's lesson_day: before lesson 1, never a lesson itself


@dataclass(frozen=True, slots=True)
class Welcome:
    """The welcome email's text: front matter plus the Markdown body."""

    subject: str
    preheader: str
    body: str
    path: Path
    body_line: int


def read_welcome(project: Project, problems: Problems) -> Welcome | None:
    """`course/welcome.md` if the course has one; problems reported at their line.

    A course without the file simply sends no welcome email.
    """
    from dripmail.content import IGNORED
    from dripmail.front_matter import key_line, read_front_matter, unknown_field
    from dripmail.markdown_checks import check_front_matter_text, check_markdown

    path = project.course_dir / WELCOME_FILE
    if not path.is_file():
        return None
    where = project.display(path)
    read = read_front_matter(path, where, problems)
    if read is None:
        return None
    meta, body, head, body_line = read.meta, read.body, read.head, read.body_line
    before = len(problems.errors)
    values: dict[str, str] = {}
    for key in ("subject", "preheader"):
        value = meta.get(key)
        if not isinstance(value, str) or not value.strip():
            problems.error(where, key_line(head, key) or 1, f"{key}: missing")
        values[key] = str(value or "").strip()
    for key in meta:
        if key not in WELCOME_FIELDS:
            problems.warn(
                where, key_line(head, key), f"{unknown_field(key, WELCOME_FIELDS)} {IGNORED}"
            )
    if not body.strip():
        problems.error(where, body_line, "the welcome email has no text after the front matter")
    check_markdown(body, where, body_line, problems, "welcome")
    check_front_matter_text(meta, head, where, problems, "welcome")
    if len(problems.errors) > before:
        return None
    return Welcome(values["subject"], values["preheader"], body, path, body_line)


def first_lesson_phrase(due: datetime, zone: str, sent_at: datetime) -> str:
    """When lesson 1 arrives, as the reader reads it in their zone, relative to the email.

    E.g. ``tomorrow, Tuesday 2 June, at 07:00 your time (Europe/Berlin)``; "today" and
    "tomorrow" are counted in the reader's zone from `sent_at` (the welcome's send time), so
    the same delivery always renders the same words.
    """
    tz = ZoneInfo(zone)
    at, sent = due.astimezone(tz), sent_at.astimezone(tz)
    date_words = f"{at:%A} {at.day} {at:%B}"
    if at.date() == sent.date():
        when = f"today, {date_words},"
    elif at.date() == sent.date() + timedelta(days=1):
        when = f"tomorrow, {date_words},"
    else:
        when = f"on {date_words}"
    return f"{when} at {at:%H:%M} your time ({zone})"
