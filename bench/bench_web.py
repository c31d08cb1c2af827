"""The web edge: sign-ups per second through the app, and the preview's compile-once cache.

Sign-up: `POST /subscribe` in process (httpx's ASGI transport, SQLite, outbox provider), each
a new address, including the confirmation email written after the answer (the rate limit is
lifted for the run). Confirm: the median time of `POST /confirm/<token>` (activate + plan the
week + page). Preview: a lesson page's render (load check, compile, personalise, `check`)
with the per-file-version cache, against the naive way of loading and compiling the course
again for every page view. Reload: how long after a lesson is saved an open preview page is
told (the long poll answered by the watchfiles watcher), against the page polling the files'
modification times once a second as it used to, and against the OS's own notice (the same
watcher answering on the first event, no grouping of a save's events).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time as clock
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def _app(root: Path):
    from dripmail.config import Project, Settings
    from dripmail.web.app import create_app
    from dripmail.web.ratelimit import TokenBucket
    from tests.course_fixture import make_project

    make_project(root)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        DRIPMAIL_DATABASE_URL=f"sqlite:///{root / 'bench.db'}",
        DRIPMAIL_OUTBOX_DIR=str(root / "outbox"),
        DRIPMAIL_SECRET_KEY="bench-secret-key-0123456789",
        DRIPMAIL_PUBLIC_URL="http://bench",
    )
    app = create_app(Project(root), settings, preview=True)
    app.state.ctx.limiter = TokenBucket(capacity=10**9, per_second=1.0)
    return app


async def _signups(app, count: int) -> tuple[float, list[float]]:
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        started = clock.perf_counter()
        for i in range(count):
            answer = await client.post("/subscribe", data={"email": f"reader{i}@example.org"})
            assert answer.status_code == 200
        rate = count / (clock.perf_counter() - started)
        signer = app.state.ctx.runner.signer
        times = []
        for sid in range(1, min(count, 200) + 1):
            t = clock.perf_counter()
            answer = await client.post(f"/confirm/{signer.make(sid, 'confirm')}")
            times.append(clock.perf_counter() - t)
            assert answer.status_code == 200
    return rate, times


def _told_after_save(project, samples: int, make_watcher) -> float:
    """Median ms from a lesson save until a waiting page's long poll is answered."""
    watcher = make_watcher(project).start()
    lesson = next(project.course_dir.glob("day-2-*.md"))
    took = []
    try:
        for i in range(samples):
            seen = watcher.version
            started = clock.perf_counter()
            lesson.write_text(lesson.read_text() + f"\nEdit {i}.\n")
            assert watcher.wait_for_change(seen, 30) != seen
            took.append((clock.perf_counter() - started) * 1000)
            clock.sleep(0.4)  # let the save's last events settle before the next one
    finally:
        watcher.stop()
    return statistics.median(took)


def _polled_after_save(project, samples: int, period: float = 1.0) -> float:
    """The old way: the page asks for the files' digest every `period` s; median ms to notice."""
    import random

    from dripmail.web.preview import files_version

    lesson = next(project.course_dir.glob("day-2-*.md"))
    rng = random.Random(7)
    took = []
    for i in range(samples):
        seen = files_version(project)
        next_poll = clock.perf_counter() + period
        clock.sleep(rng.uniform(0, period))  # a save lands anywhere between two polls
        started = clock.perf_counter()
        lesson.write_text(lesson.read_text() + f"\nPoll edit {i}.\n")
        while True:
            clock.sleep(max(0.0, next_poll - clock.perf_counter()))
            next_poll += period
            if files_version(project) != seen:
                break
        took.append((clock.perf_counter() - started) * 1000)
    return statistics.median(took)


def run(quick: bool) -> list[dict]:
    """Figures described in the module docstring."""
    from dripmail.web.preview import PreviewState, files_version, render_one

    signups = 100 if quick else 1000
    views = 20 if quick else 100
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        app = _app(root)
        rate, confirm_times = asyncio.run(_signups(app, signups))
        project = app.state.ctx.project
        state = PreviewState(project)
        render_one(project, state.current(), "lesson", "3")  # warm: the first view compiles
        started = clock.perf_counter()
        for _ in range(views):
            render_one(project, state.current(), "lesson", "3")
        ours = views / (clock.perf_counter() - started)
        # The limit: a whole-page cache keyed by the files' version (one render, then lookups).
        pages: dict[str, object] = {}
        started = clock.perf_counter()
        for _ in range(views):
            version = files_version(project)
            if version not in pages:
                pages[version] = render_one(project, state.current(), "lesson", "3")
        cached = views / (clock.perf_counter() - started)
        naive_views = max(3, views // 10)
        started = clock.perf_counter()
        for _ in range(naive_views):
            render_one(project, PreviewState(project).current(), "lesson", "3")
        naive = naive_views / (clock.perf_counter() - started)
        from dripmail.preview_files import CourseWatcher

        samples = 5 if quick else 15
        told = _told_after_save(project, samples, CourseWatcher)
        polled = _polled_after_save(project, samples)
        first_event = _told_after_save(
            project, samples, lambda p: CourseWatcher(p, debounce_ms=1, step_ms=1)
        )
    from figure import compare  # bench/ is on sys.path (above)

    return [
        {
            "name": "sign-ups per second through POST /subscribe (with the confirmation email)",
            "value": rate,
            "unit": "requests/s",
        },
        {
            "name": "median GET /confirm (activate, plan 7 lessons, page)",
            "value": statistics.median(confirm_times) * 1000,
            "unit": "ms",
        },
        compare(
            "preview page renders per second (course compiled once per file version)",
            "views/s",
            ours,
            peer=naive,
            peer_is="loading and compiling the course again for every page view, as a plain "
            "render-on-request dev server does",
            limit=cached,
            limit_is="a whole-page cache keyed by the files' version: one render, then the "
            "version check and a lookup per view",
        ),
        compare(
            "live preview told of a saved lesson (median ms from save to the page's answer)",
            "ms",
            told,
            peer=polled,
            peer_is="the page polling the files' modification times once a second (before)",
            limit=first_event,
            limit_is="the OS's first event (watchfiles answering without grouping a save)",
            better="lower",
        ),
    ]


if __name__ == "__main__":
    for figure in run("--quick" in sys.argv):
        print(figure)
