"""Rendering: personalised lesson emails per second, compile-once against MJML per recipient.

The naive way a first version would take: run the Jinja template and the MJML compiler for
every reader. dripmail compiles each lesson's MJML once and personalises with a precompiled
template. Also: the median time to render one lesson for one reader (compile-once path).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time as clock
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _project(tmp: Path):
    from dripmail.config import Project

    repo = HERE.parent
    if (repo / "course" / "course.toml").is_file():
        return Project(repo)  # the real course and templates
    from tests.course_fixture import make_project

    return Project(make_project(tmp))


def run(quick: bool) -> list[dict]:
    """Figures described in the module docstring."""
    from dripmail.content import load_course
    from dripmail.render import Recipient, Renderer

    readers = 300 if quick else 3000
    naive_readers = 30 if quick else 200
    with tempfile.TemporaryDirectory() as tmp:
        project = _project(Path(tmp))
        course = load_course(project)
        people = [
            Recipient(
                email=f"r{i}@example.org",
                first_name=f"Reader {i}",
                subscriber_id=i,
                unsubscribe_url=f"https://s.example.com/unsubscribe/t{i}",
                preferences_url=f"https://s.example.com/preferences/t{i}",
            )
            for i in range(readers)
        ]
        days = [x.day for x in course.lessons]
        renderer = Renderer(project, course)
        started = clock.perf_counter()
        for i, who in enumerate(people):
            day = days[i % len(days)]
            renderer.lesson(day).personalise(who, key=str(i), kind="lesson", ref=str(day))
        ours = readers / (clock.perf_counter() - started)
        naive = Renderer(project, course)
        started = clock.perf_counter()
        for i, who in enumerate(people[:naive_readers]):
            naive.mjml_per_recipient(days[i % len(days)], who)
        theirs = naive_readers / (clock.perf_counter() - started)
        one = []
        for i in range(200 if quick else 2000):
            t = clock.perf_counter()
            renderer.lesson(1).personalise(people[i % readers], key="x", kind="lesson", ref="1")
            one.append(clock.perf_counter() - t)
        cold = []
        for _ in range(5 if quick else 20):
            t = clock.perf_counter()
            Renderer(project, course).lesson(1)
            cold.append(clock.perf_counter() - t)
    return [
        {
            "name": "personalised lesson emails per second (compile once vs MJML per reader)",
            "unit": "emails/s",
            "ours": ours,
            "naive": theirs,
            "ratio": ours / theirs,
        },
        {
            "name": "median time to personalise one lesson for one reader",
            "value": statistics.median(one) * 1000,
            "unit": "ms",
        },
        {
            "name": "median time to compile one lesson (Jinja + MJML, once per run)",
            "value": statistics.median(cold) * 1000,
            "unit": "ms",
        },
    ]


if __name__ == "__main__":
    for figure in run("--quick" in sys.argv):
        print(figure)
