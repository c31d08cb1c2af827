"""The engine on PostgreSQL: claim + record one day's lessons at 100,000 subscribers (10,000 with
--quick) with 4 `run` workers at once, beside one worker doing the same day alone.

Runs when DRIPMAIL_BENCH_DATABASE_URL (or DRIPMAIL_TEST_DATABASE_URL) names a PostgreSQL
database; the figures go into a schema of their own, dropped afterwards. Seven cohorts start on
seven consecutive days, so one cohort (1/7) has its first lesson due at the measured moment.
The provider accepts instantly (the engine's own cost). Checked: every due lesson was sent once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time as clock
import uuid
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from figure import compare, value  # noqa: E402

DAY0 = datetime(2026, 6, 1, tzinfo=UTC)
SEND = time(7)
WORKERS = 4


def _url() -> str | None:
    url = os.environ.get("DRIPMAIL_BENCH_DATABASE_URL") or os.environ.get(
        "DRIPMAIL_TEST_DATABASE_URL"
    )
    return url if url and url.startswith("postgresql") else None


def _scoped(url: str, schema: str) -> str:
    from sqlalchemy.engine import make_url

    return (
        make_url(url)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )


def _build(url: str, n: int) -> None:
    """Schema by the real migrations, then rows by COPY."""
    from sqlalchemy import create_engine

    from dripmail.store.db import open_store

    open_store(url, Path.cwd()).dispose()
    engine = create_engine(url)
    now = "2026-05-31 12:00:00"
    with engine.begin() as conn:
        cur = conn.connection.cursor()
        with cur.copy(
            "COPY subscribers (id, email, first_name, timezone, status, consent_source,"
            " consent_at, start_date, newsletters, tags, confirm_count, created_at, updated_at)"
            " FROM STDIN"
        ) as copy:
            for i in range(1, n + 1):
                start = (DAY0 + timedelta(days=i % 7)).date().isoformat()
                copy.write_row(
                    (i, f"u{i}@example.org", "", "UTC", "active", "bench", now, start, True,
                     "", 0, now, now)
                )  # fmt: skip
        with cur.copy(
            "COPY deliveries (subscriber_id, lesson_day, key, due_at, state, attempts,"
            " updated_at) FROM STDIN"
        ) as copy:
            for i in range(1, n + 1):
                first = DAY0 + timedelta(days=i % 7, hours=SEND.hour)
                for day in range(1, 8):
                    due = (first + timedelta(days=day - 1)).strftime("%Y-%m-%d %H:%M:%S")
                    copy.write_row((i, day, f"bench-s{i}-d{day}", due, "planned", 0, now))
        conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('subscribers', 'id'), {n})")
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()


def _child(url: str, at: str, worker: str) -> None:
    from dripmail.engine import run_once
    from dripmail.message import Mailbox, Message
    from dripmail.providers.base import Capabilities, Outcome, SendResult
    from dripmail.store.db import open_store

    class Instant:
        name = "instant"
        capabilities = Capabilities(500, None, False, True)

        async def send_batch(self, messages, send_at=None, batch_key=None):
            return [SendResult(m.key, Outcome.ACCEPTED, provider_id=m.key) for m in messages]

        async def reconcile(self, messages):
            return {}

    def render(row: dict) -> Message:
        return Message(
            key=row["key"], kind="lesson", ref=str(row["lesson_day"]),
            sender=Mailbox("hello@studio.example.com"), to=Mailbox(row["email"]),
            subject="Day", html="<p>x</p>", text="x",
        )  # fmt: skip

    engine = open_store(url, Path.cwd())
    with engine.connect():
        pass  # the pool's first connection is opened before the start, as a running loop has
    # Ready: the parent starts every worker's pass at once, so the figure is the pass itself,
    # not four Python start-ups competing for two cores.
    print("ready", flush=True)
    sys.stdin.readline()
    started, cpu = clock.perf_counter(), clock.process_time()
    report = run_once(
        engine, Instant(), render, datetime.fromisoformat(at), default_send_time=SEND,
        worker_id=worker,
    )  # fmt: skip
    print(
        json.dumps(
            {
                "seconds": clock.perf_counter() - started,
                "cpu": clock.process_time() - cpu,
                "sent": report.sent,
            }
        ),
        flush=True,
    )


def _workers(url: str, at: datetime, count: int) -> tuple[float, float, int]:
    """(wall seconds from the common start to the last worker's end, their summed CPU
    seconds, lessons sent), `count` workers started together once each is ready."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", url, at.isoformat(), f"bench:{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(HERE.parent)},
        )
        for i in range(count)
    ]
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("a bench worker failed to start")
    started = clock.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    answers = []
    for proc in procs:
        assert proc.stdout is not None
        # Each worker prints its figures when its pass ends; the last one read ends the
        # time (the interpreters' exit afterwards is not the pass).
        answers.append(proc.stdout.readline())
    seconds = clock.perf_counter() - started
    sent, cpu = 0, 0.0
    for proc, line in zip(procs, answers, strict=True):
        proc.communicate()
        if proc.returncode != 0 or not line.strip():
            raise RuntimeError("a bench worker failed")
        answer = json.loads(line)
        sent += answer["sent"]
        cpu += answer["cpu"]
    return seconds, cpu, sent


def _sent_once(url: str) -> tuple[int, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        sent = conn.execute(text("SELECT count(*) FROM deliveries WHERE state = 'sent'")).scalar()
        keys = conn.execute(
            text("SELECT count(DISTINCT key) FROM deliveries WHERE state = 'sent'")
        ).scalar()
    engine.dispose()
    return int(sent or 0), int(keys or 0)


def run(quick: bool) -> list[dict]:
    """4 workers vs 1 worker on the same day's lessons, on PostgreSQL."""
    url = _url()
    if url is None:
        return [value("engine on PostgreSQL: skipped (no DRIPMAIL_BENCH_DATABASE_URL)", "", 0)]
    from sqlalchemy import create_engine, text

    n = 10_000 if quick else 100_000
    admin = create_engine(url)
    figures: list[dict] = []
    rates: dict[int, float] = {}
    try:
        for count in (1, WORKERS):
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            scoped = _scoped(url, schema)
            try:
                _build(scoped, n)
                seconds, cpu, sent = _workers(scoped, DAY0 + timedelta(hours=8), count)
                stored, distinct = _sent_once(scoped)
                if not (sent == stored == distinct == n // 7):  # ids 7, 14, ... start today
                    raise RuntimeError(f"not exactly once: {sent} {stored} {distinct}")
                rates[count] = sent / seconds
                figures.append(
                    value(
                        f"PostgreSQL, {n:,} subscribers: {count} worker(s) claim+record one day "
                        f"({sent:,} lessons, each sent once; wall from a common start, "
                        "Python start-up excluded)",
                        "s",
                        seconds,
                    )
                )
                figures.append(
                    value(
                        f"PostgreSQL, {n:,} subscribers: {count} worker(s), their CPU time "
                        "(summed; the database server's not counted)",
                        "s",
                        cpu,
                    )
                )
            finally:
                with admin.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()
    figures.append(
        compare(
            f"PostgreSQL, {n:,} subscribers: {WORKERS} workers claim+record one day",
            "deliveries/s",
            rates[WORKERS],
            peer=rates[1],
            peer_is="one `run` process doing the same day alone (what a single cron job does)",
        )
    )
    return figures


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        for fig in run("--quick" in sys.argv):
            print(fig)
