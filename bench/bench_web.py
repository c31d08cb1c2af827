"""The web edge: sign-ups per second through the app, and the preview's compile-once cache.

Sign-up: `POST /subscribe` in process (httpx's ASGI transport, SQLite, outbox provider), each
a new address, including the confirmation email written after the answer (the rate limit is
lifted for the run). Confirm: the median time of `POST /confirm/<token>` (activate + plan the
week + page). Preview: a lesson page's render (load check, compile, personalise, `check`)
with the per-file-version cache, against the naive way of loading and compiling the course
again for every page view; the cache still looks at every file's modification time per view.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time as clock
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


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


def run(quick: bool) -> list[dict]:
    """Figures described in the module docstring."""
    from dripmail.web.preview import PreviewState, render_one

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
        naive_views = max(3, views // 10)
        started = clock.perf_counter()
        for _ in range(naive_views):
            render_one(project, PreviewState(project).current(), "lesson", "3")
        naive = naive_views / (clock.perf_counter() - started)
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
        {
            "name": "preview page renders per second (cache per file version vs reload per view)",
            "unit": "views/s",
            "ours": ours,
            "naive": naive,
            "ratio": ours / naive,
        },
    ]


if __name__ == "__main__":
    for figure in run("--quick" in sys.argv):
        print(figure)
