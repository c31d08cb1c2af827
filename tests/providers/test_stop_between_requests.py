"""Ctrl-C (or SIGTERM) during a hand-over of many rate-limited requests stops between requests.

The stop is `Dripmail.interrupted`, set here by the loopback fake when its N-th request
arrives (before answering it), as `Dripmail.call_provider` sets it when Ctrl-C reaches the
waiting thread. The requests on the wire are answered and recorded; those not yet sent (also
those waiting for their rate-limiter slot or a retry) are not sent, and go back to the queue
due at once; a look-up not asked leaves its row `sending` for the next run. The next run sends
each remaining message once. Real SQLite and PostgreSQL, the real course, the providers'
default pacing (two requests a second for Resend, ten for Postmark) with one request at a
time, so the count of requests that got out is exact.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from course_fixture import make_project
from fakes.mail import FAST_RETRY
from fakes.provider_server import Fault
from sqlalchemy import select, text

from dripmail import subscribers as subs
from dripmail.app import Dripmail
from dripmail.config import Project, Settings
from dripmail.engine import run_once
from dripmail.providers.base import is_stopped, stopped_error
from dripmail.providers.http import HttpClient, Limits, RetryPolicy, Sent
from dripmail.stopping import StopRequest, sleep_unless_stopped
from dripmail.store.db import open_store
from dripmail.store.schema import deliveries

SECRET = "test-secret-key-for-links-0123456789abcdef"
START = datetime(2026, 3, 5, 12, tzinfo=UTC)
DAY_ONE = datetime(2026, 3, 6, 13, tzinfo=UTC)  # lesson 1 is due for every reader
AFTER_LEASE = timedelta(minutes=11)
READERS = 10
# A pace no test waits out: only a stop ends such a wait.
GLACIAL = Limits(requests_per_second=0.001, max_concurrency=1)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store's URL: SQLite, and PostgreSQL (emptied first; its own path: rows locked as a
    page is read, outcomes written with one ``UPDATE ... FROM unnest`` per chunk)."""
    if request.param == "sqlite":
        return "sqlite:///dripmail.db"
    url = os.environ.get("DRIPMAIL_TEST_DATABASE_URL")
    if not url:
        pytest.skip("DRIPMAIL_TEST_DATABASE_URL is not set (CI sets it; see README)")
    engine = open_store(url, tmp_path)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE subscribers, deliveries, events RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


def _core(tmp_path: Path, fake, provider: str, now: datetime, database: str) -> Dripmail:
    settings = Settings(
        DRIPMAIL_PROVIDER=provider,
        DRIPMAIL_SECRET_KEY=SECRET,
        DRIPMAIL_PUBLIC_URL="https://join.studio.example.com",
        DRIPMAIL_DATABASE_URL=database,
        POSTMARK_SERVER_TOKEN=fake.POSTMARK_TOKEN,
        DRIPMAIL_POSTMARK_BASE_URL=fake.base("postmark"),
        RESEND_API_KEY=fake.RESEND_KEY,
        DRIPMAIL_RESEND_BASE_URL=fake.base("resend"),
        # One request at a time: the fake's N-th request is the last that gets out.
        DRIPMAIL_MAX_CONCURRENCY=1,
    )  # type: ignore[call-arg]
    core = Dripmail(Project(make_project(tmp_path)), settings, clock=lambda: now)
    core.provider.http.retry = FAST_RETRY
    return core


def _readers(core: Dripmail, joined: datetime) -> None:
    for n in range(READERS):
        sid, _ = subs.add_subscriber(
            core.engine,
            f"reader{n}@example.org",
            timezone="Europe/Berlin",
            status="pending",
            consent_source="test",
            now=joined,
        )
        subs.activate(core.engine, sid, core.course, joined)


def _lesson_one(core: Dripmail) -> dict[str, dict]:
    with core.engine.connect() as conn:
        rows = conn.execute(select(deliveries).where(deliveries.c.lesson_day == 1)).mappings()
        return {r["key"]: dict(r) for r in rows}


# -- the HTTP layer -------------------------------------------------------------------------


def _client(fake, limits: Limits = GLACIAL, retry: RetryPolicy = FAST_RETRY) -> HttpClient:
    client = HttpClient(
        "postmark",
        "X",
        fake.base("postmark"),
        headers={"X-Postmark-Server-Token": fake.POSTMARK_TOKEN},
        limits=limits,
        retry=retry,
    )
    client.stop = StopRequest()
    return client


def test_requests_waiting_for_their_rate_limit_slot_are_not_sent_after_a_stop(
    fake_providers,
) -> None:
    """Three look-ups at a pace of one per 1,000 s: the first is on the wire when the stop
    comes and is answered; the two waiting for their slot end at once, unsent."""
    client = _client(fake_providers)
    assert client.stop is not None
    fake_providers.on_request("postmark", 1, client.stop.set)

    async def three():
        return await asyncio.gather(
            *(client.call("GET", "/server", idempotent=True) for _ in range(3))
        )

    answers = asyncio.run(three())
    assert [a.sent for a in answers] == [Sent.ANSWERED, Sent.NOT_SENT, Sent.NOT_SENT]
    assert answers[0].status == 200
    assert all(is_stopped(a.error) for a in answers[1:])
    assert answers[1].error == stopped_error(fake_providers.base("postmark"))
    assert (client.requests, len(fake_providers.requests)) == (1, 1)


def test_the_slots_a_stop_abandoned_do_not_hold_back_the_next_request(fake_providers) -> None:
    """Fifty look-ups at one a second book slots 49 s ahead; stopped after the first, those
    bookings are forgotten: once the stop is handled, the next request waits one interval at
    most, not behind the 49 requests that were never sent."""
    client = _client(fake_providers, Limits(requests_per_second=1, max_concurrency=1))
    assert client.stop is not None
    fake_providers.on_request("postmark", 1, client.stop.set)

    async def fifty():
        return await asyncio.gather(
            *(client.call("GET", "/server", idempotent=True) for _ in range(50))
        )

    answers = asyncio.run(fifty())
    assert sum(a.sent is Sent.ANSWERED for a in answers) == 1
    assert client.limiter.reserve(0) <= 1.0  # the booked wait (seconds), not a timing


def test_a_stop_during_a_retry_wait_ends_the_call_unsent(fake_providers) -> None:
    """Refused with 429 and asked to wait 100 s (the provider surely did nothing): a stop
    during that wait ends the call as "not sent: stopped", without the retry."""
    client = _client(fake_providers, Limits())
    assert client.stop is not None
    fake_providers.script("postmark", [Fault("429", retry_after=100)])
    fake_providers.on_request("postmark", 1, client.stop.set)
    answer = asyncio.run(client.call("POST", "/email/batch", json=[], messages=0))
    assert answer.sent is Sent.NOT_SENT and is_stopped(answer.error)
    assert fake_providers.send_requests["postmark"] == 1


def test_an_ambiguous_request_is_finished_whatever_the_stop(fake_providers) -> None:
    """A 500 after sending may have been acted on: a stop never turns it into "not sent".
    A request the provider deduplicates is retried as without a stop and answered."""
    client = _client(fake_providers, Limits())
    assert client.stop is not None
    fake_providers.script("postmark", ["500"])
    fake_providers.on_request("postmark", 1, client.stop.set)
    answer = asyncio.run(client.call("POST", "/email/batch", json=[], idempotent=True))
    assert answer.sent is Sent.ANSWERED and answer.status == 200
    assert fake_providers.send_requests["postmark"] == 2


def test_an_ambiguous_request_not_deduplicated_stays_ambiguous_after_a_stop(
    fake_providers,
) -> None:
    client = _client(fake_providers, Limits())
    assert client.stop is not None
    fake_providers.script("postmark", ["500"])
    fake_providers.on_request("postmark", 1, client.stop.set)
    answer = asyncio.run(client.call("POST", "/email/batch", json=[]))
    assert answer.sent is Sent.AMBIGUOUS and not is_stopped(answer.error)


def test_a_stop_wakes_a_sleep_set_from_another_thread() -> None:
    """`StopRequest.set` from the thread that caught Ctrl-C wakes a sleeper on the loop; a
    plain `threading.Event` is looked at as it sleeps."""
    for stop in (StopRequest(), threading.Event()):

        async def sleeper(stop: threading.Event = stop) -> bool:
            return await sleep_unless_stopped(1000, stop)

        async def main(stop: threading.Event = stop) -> bool:
            task = asyncio.ensure_future(sleeper())
            await asyncio.sleep(0)
            threading.Thread(target=stop.set).start()
            return await task

        assert asyncio.run(main()) is True


# -- a run through the core ------------------------------------------------------------------


def test_resend_scheduled_sends_stop_between_requests_and_the_next_run_sends_the_rest(
    tmp_path, fake_providers, database
) -> None:
    """Lessons due tomorrow go to Resend one request each (``scheduled_at``), two a second.
    Stopped at the third: three are scheduled there and recorded, the other seven are back in
    the queue due at once, and the next run schedules each of them once."""
    now = datetime.now(UTC).replace(microsecond=0)
    core = _core(tmp_path, fake_providers, "resend", now, database)
    _readers(core, now)
    fake_providers.on_request("resend", 3, core.interrupted.set, path="/emails")
    report = core.run(now).lessons
    assert core.interrupted.is_set()
    assert fake_providers.send_requests["resend"] == 3 < READERS
    assert (report.handed, report.stopped, report.retry, report.review) == (3, 7, 0, 0)
    rows = _lesson_one(core)
    scheduled = {r.key: r.provider_id for r in fake_providers.accepted("resend", "scheduled")}
    assert {k: r["provider_message_id"] for k, r in rows.items() if k in scheduled} == scheduled
    back = [r for k, r in rows.items() if k not in scheduled]
    assert len(back) == 7
    for row in back:
        assert row["state"] == "planned" and row["next_attempt_at"] is None, row
        assert (row["last_error"], row["batch_key"], row["claimed_by"]) == (None, None, None)
        assert row["attempts"] == 0  # never handed over
    again = core.run(now).lessons  # the stop is forgotten once handled: a new pass
    # The seven, and lesson 2 of the three readers whose lesson 1 went before the stop.
    assert (again.handed, again.stopped, again.retry) == (7 + 3, 0, 0)
    keys = Counter(fake_providers.keys("resend"))
    assert set(keys.values()) == {1}  # nobody got anything twice
    assert Counter(k for k in keys.elements() if k in rows) == Counter(dict.fromkeys(rows, 1))
    assert {r["state"] for r in _lesson_one(core).values()} == {"handed"}
    core.close()


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs."""


class Crashing:
    """The configured provider; the process 'dies' right after the batch was accepted."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    async def send_batch(self, messages, send_at=None, batch_key=None):
        await self.inner.send_batch(messages, send_at, batch_key)
        raise Killed


def test_postmark_lookups_not_asked_stay_in_flight_for_the_next_run(
    tmp_path, fake_providers, database
) -> None:
    """A crash left ten lessons in flight (Postmark has them). The next run looks each up
    (ten a second) and is stopped at the third look-up: three are recorded as sent, the
    seven not asked stay `sending` (never review, never sent again), and the run after looks
    them up and records them. Postmark got each lesson once."""
    core = _core(tmp_path, fake_providers, "postmark", DAY_ONE + AFTER_LEASE, database)
    _readers(core, START)
    with pytest.raises(Killed):
        run_once(
            core.engine,
            Crashing(core.provider),
            core.render_lesson,
            DAY_ONE,
            default_send_time=core.course.send_time,
            worker_id="w",
        )
    assert len(fake_providers.accepted("postmark")) == READERS
    fake_providers.on_request("postmark", 3, core.interrupted.set, path="/messages/outbound")
    report = core.run().lessons
    lookups = [r for r in fake_providers.requests if r[2] == "/messages/outbound"]
    assert len(lookups) == 3 < READERS
    assert (report.recovered, report.sent, report.stopped, report.review) == (3, 3, 7, 0)
    rows = _lesson_one(core)
    assert Counter(r["state"] for r in rows.values()) == Counter({"sent": 3, "sending": 7})
    waiting = [r for r in rows.values() if r["state"] == "sending"]
    assert all(r["claimed_by"] is None and r["batch_key"] for r in waiting)
    again = core.run().lessons  # the very same time: their lease is over already
    assert (again.recovered, again.sent, again.review, again.stopped) == (7, 7, 0, 0)
    assert {r["state"] for r in _lesson_one(core).values()} == {"sent"}
    assert fake_providers.send_requests["postmark"] == 1
    assert Counter(fake_providers.keys("postmark")) == Counter(dict.fromkeys(rows, 1))
    core.close()
