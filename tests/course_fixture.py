"""Builds a small, valid course project on disk (real files, the real templates)."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

COURSE_TOML = """\
id = "test-week"
title = "A test week of hip stretches"
send_time = "07:00"
timezone = "America/New_York"
start = "next-morning"
skip_weekends = false
site_url = "https://studio.example.com"
postal_address = "1 Test Street, Springfield"

[sender]
name = "Test Studio"
address = "hello@studio.example.com"

[reply_to]
name = "Test Studio"
address = "reply@studio.example.com"

[brand]
primary = "#1f5f52"
background = "#f7f4ee"
text = "#222222"
muted = "#5c5c5c"
wordmark = "Test Studio"
logo_url = ""
logo_alt = "Test Studio"
"""


SAFETY_YAML = """\
safety:
  - who: "Hip replacement"
    what: "Keep to the precautions your surgeon gave you."
stop: "Stop if you feel sharp pain, numbness or tingling."
sources:
  - "Kenhub, Psoas major muscle"
"""


def lesson_text(day: int, /, *, safety: bool = True, **overrides: str) -> str:
    """A valid lesson file for `day`; `overrides` replace front matter values.

    `safety=False` leaves out the safety block, stop line and sources (check warns).
    """
    meta = {
        "day": str(day),
        "slug": f"stretch-{day}",
        "subject": f"Day {day}: a stretch for your hips",
        "preheader": f"Lesson {day} of the week: one stretch, five minutes, a video.",
        "stretch": f"Stretch number {day}",
        "duration": "6 minutes",
        "video_url": f"https://studio.example.com/videos/day-{day}",
        "video_thumbnail": f"https://studio.example.com/videos/day-{day}.jpg",
        "video_thumbnail_alt": "A person kneeling on a yoga mat in a low lunge",
    }
    meta.update(overrides)
    head = "\n".join(f'{k}: "{v}"' if k != "day" else f"{k}: {v}" for k, v in meta.items())
    return (
        f"---\n{head}\n{SAFETY_YAML if safety else ''}---\n"
        "Good morning. Today is about the front of the hip.\n\n"
        "## Why this stretch\n\n"
        "The psoas major runs from T12-L5 to the lesser trochanter of the femur.\n\n"
        "## How to do it\n\n"
        "1. Kneel on your mat. Breathe in.\n"
        "2. Step one foot forward. Breathe out.\n\n"
        "## Stay safe\n\n"
        "Stop if you feel sharp pain, numbness or tingling.\n"
    )


def make_project(root: Path) -> Path:
    """course/ with course.toml and 7 lessons, emails/ copied from the repo."""
    course = root / "course"
    course.mkdir(parents=True, exist_ok=True)
    (course / "course.toml").write_text(COURSE_TOML)
    for day in range(1, 8):
        (course / f"day-{day}-stretch-{day}.md").write_text(lesson_text(day))
    shutil.copytree(REPO / "emails", root / "emails", dirs_exist_ok=True)
    return root


def copy_real_project(root: Path) -> Path:
    """The repository's own course/, newsletters/ and emails/ copied into `root` (real files:
    what a marketer edits), for tests that reproduce an edit to them."""
    for folder in ("course", "newsletters", "emails"):
        shutil.copytree(REPO / folder, root / folder, dirs_exist_ok=True)
    return root
