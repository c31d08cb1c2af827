"""The scheduling rules of a seven-day course, without files: what planning needs and no more.

Satisfies `dripmail.subscribers.CourseRules`; tests and benchmarks that only plan and send use
it instead of loading a course from disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time


@dataclass(frozen=True)
class Lesson:
    """A lesson reduced to its day."""

    day: int


@dataclass(frozen=True)
class Rules:
    """Course rules with the sample course's defaults."""

    id: str = "psoas-week"
    send_time: time = time(7)
    start: str = "next-morning"
    skip_weekends: bool = False
    lessons: tuple[Lesson, ...] = tuple(Lesson(d) for d in range(1, 8))
