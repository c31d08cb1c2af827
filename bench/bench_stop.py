"""Stop latency: how long after Ctrl-C a hand-over of one request per message ends.

A chunk of lessons due tomorrow goes to the loopback fake Resend as scheduled sends, one
request each, one request at a time at 20 requests/s (Resend's default is 2/s, which would make
the peer ten times longer still). The stop (`Dripmail.interrupted`, as Ctrl-C sets it) comes
as the fake receives the third request; the figure is the time from the stop to the pass's
return, the chunk's outcomes stored (SQLite).

- ours: the provider sends no request not yet on the wire once the stop is set
  (`providers.http`), so the pass ends after the request in flight and the bookkeeping.
- peer: the previous release, and what a user's loop over the chunk does: the chunk at the
  provider is finished (every request, at the pace), then the pass stops.
- limit: the stop set while the chunk is still being rendered, before any request: the same
  bookkeeping (mark, answers, back to the queue) with no request to wait for.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from course_fixture import make_project
from fakes.mail import FAST_RETRY
from fakes.provider_server import FakeProviders

from dripmail import subscribers as subs
from dripmail.app import Dripmail
from dripmail.config import Project, Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figure import compare

RATE = 20  # requests (one message each) per second


def _core(root: Path, fake: FakeProviders, now: datetime, readers: int) -> Dripmail:
    settings = Settings(
        DRIPMAIL_PROVIDER="resend",
        DRIPMAIL_SECRET_KEY="bench-secret-key-0123456789abcdef0123",
        DRIPMAIL_PUBLIC_URL="https://join.studio.example.com",
        DRIPMAIL_DATABASE_URL="sqlite:///dripmail.db",
        RESEND_API_KEY=fake.RESEND_KEY,
        DRIPMAIL_RESEND_BASE_URL=fake.base("resend"),
        DRIPMAIL_RATE_PER_SECOND=RATE,
        DRIPMAIL_MAX_CONCURRENCY=1,
    )  # type: ignore[call-arg]
    core = Dripmail(Project(make_project(root)), settings, clock=lambda: now)
    core.provider.http.retry = FAST_RETRY
    with core.engine.begin() as conn:
        for n in range(readers):
            sid, _ = subs.add_subscriber(
                conn,
                f"r{n}@example.org",
                timezone="Europe/Berlin",
                status="pending",
                consent_source="bench",
                now=now,
            )
            subs.activate(conn, sid, core.course, now)
    return core


def _stop_latency(fake: FakeProviders, readers: int, way: str) -> float:
    """Seconds from the stop to the end of the pass, for one way (a fresh project)."""
    now = datetime.now(UTC).replace(microsecond=0)
    with tempfile.TemporaryDirectory() as folder:
        core = _core(Path(folder), fake, now, readers)
        stopped_at: list[float] = []

        def stop() -> None:
            stopped_at.append(time.perf_counter())
            core.interrupted.set()

        if way == "peer":
            core.provider.http.stop = None  # the chunk at the provider is finished
        if way == "limit":
            render, rendered = core.render_lesson, [0]

            def render_then_stop(row):
                rendered[0] += 1
                if rendered[0] == readers:  # the chunk's last message: nothing sent yet
                    stop()
                return render(row)

            core.render_lesson = render_then_stop  # type: ignore[method-assign]
        else:
            fake.on_request("resend", 3, stop, path="/emails")
        core.run(now)
        ended = time.perf_counter()
        core.close()
        core.engine.dispose()
    return ended - stopped_at[0]


def run(quick: bool) -> list[dict]:
    """Figures for bench/run.py."""
    readers = 200 if quick else 1000
    rounds = 1 if quick else 3
    seen: dict[str, list[float]] = {"ours": [], "peer": [], "limit": []}
    with FakeProviders(validate=False) as fake:
        for _ in range(rounds):
            for way in seen:
                seen[way].append(_stop_latency(fake, readers, way))
    return [
        compare(
            f"Ctrl-C during a chunk of {readers} Resend scheduled sends (one request each, "
            f"{RATE}/s, one at a time): from the stop to the end of the pass",
            "s",
            statistics.median(seen["ours"]),
            peer=statistics.median(seen["peer"]),
            peer_is="the chunk at the provider finished, then the pass stops (the previous "
            "release; a loop over the chunk's requests)",
            limit=statistics.median(seen["limit"]),
            limit_is="the stop before any request of the chunk: its bookkeeping alone",
            better="lower",
        )
    ]
