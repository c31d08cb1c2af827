"""The report at scale: 1,000,000 subscribers, 7,000,000 deliveries (10,000 with --quick).

The history: sign-ups spread evenly over half a year (two weeks with --quick), each confirmed
and sent all seven lessons at 07:00 in one of five time zones; providers report every delivery,
30% opens, 5% clicks (a quarter of them by a link scanner), 0.3% bounces, 0.05% complaints and
0.5% unsubscribes: about 9.5 million events. "Now" is half an hour into the day after the last
send, so every day but the last is over.

Figures (same run, same database):
- the whole report (`dripmail.report.build`: funnel, lessons, newsletters, hours, zones, days)
  once the finished days are stored: ours;
- the peer: the GROUP BY queries a user would write over the whole tables (lessons sent,
  unique events per lesson and type through a join, sign-ups and confirmations, sends by zone);
- the limit: reading the stored rows of the finished days and nothing else;
- the first report on this history (every finished day counted and stored), as a value.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import time as clock
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from figure import compare, value  # noqa: E402

DAY0 = datetime(2026, 1, 1, tzinfo=UTC)
ZONES = (
    ("America/New_York", 12),
    ("Europe/Berlin", 6),
    ("Asia/Kolkata", 1),
    ("Australia/Sydney", 20),
    ("America/Los_Angeles", 15),
)  # zone and the UTC hour of 07:00 there (winter; close enough for a load test)
FMT = "%Y-%m-%d %H:%M:%S.%f"


def _build(path: Path, n: int, days: int) -> datetime:
    """Schema by the real migrations, rows by sqlite3 in bulk; returns the measured "now"."""
    from dripmail.store.db import open_store

    open_store("sqlite:///" + path.name, path.parent).dispose()
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    spacing = days * 86400 / n

    def signed_up(i: int) -> datetime:
        return DAY0 + timedelta(seconds=int(i * spacing))

    def sub_rows():
        for i in range(1, n + 1):
            at = signed_up(i)
            zone = ZONES[i % len(ZONES)][0]
            confirmed = at + timedelta(seconds=60 + i % 3600)
            yield (i, f"u{i}@example.org", zone, "completed", "bench", at.strftime(FMT),
                   confirmed.strftime(FMT), 1, at.strftime(FMT), at.strftime(FMT))  # fmt: skip

    con.executemany(
        "INSERT INTO subscribers (id, email, timezone, status, consent_source, consent_at,"
        " confirmed_at, confirm_count, created_at, updated_at, first_name, newsletters, tags)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,'',1,'')",
        sub_rows(),
    )

    def sent_at(i: int, day: int) -> datetime:
        start = signed_up(i) + timedelta(days=1)
        hour = ZONES[i % len(ZONES)][1]
        return datetime(start.year, start.month, start.day, hour, tzinfo=UTC) + timedelta(
            days=day - 1
        )

    def delivery_rows():
        for i in range(1, n + 1):
            for day in range(1, 8):
                at = sent_at(i, day).strftime(FMT)
                yield (i, day, f"bench-s{i}-d{day}", at, "sent", 1, at, at)

    con.executemany(
        "INSERT INTO deliveries (subscriber_id, lesson_day, key, due_at, state, attempts,"
        " sent_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
        delivery_rows(),
    )

    def event_rows():
        seq = 0
        for i in range(1, n + 1):
            for day in range(1, 8):
                key = f"bench-s{i}-d{day}"
                sent = sent_at(i, day)
                h = (i * 7 + day) % 1000  # a stable spread in 0..999
                kinds = [("delivered", 60, "")]
                if h < 300:
                    kinds.append(("opened", 3600, ""))
                if h < 50:
                    # A quarter of the clickers' first click is a link scanner at +70 s.
                    link = f"https://studio.example.com/videos/day-{day}"
                    if h < 12:
                        kinds.append(("clicked", 70, link))
                    kinds.append(("clicked", 5400, link if h % 2 else "https://x.org/shop"))
                if day == 1 and h >= 997:
                    kinds.append(("bounced", 120, "550 unknown user"))
                if day == 3 and h == 996:
                    kinds.append(("complained", 7200, ""))
                for kind, after, detail in kinds:
                    seq += 1
                    at = (sent + timedelta(seconds=after)).strftime(FMT)
                    yield (i, key, "sendgrid", f"e{seq}", kind, detail, at, at)
            if i % 200 == 0:  # 0.5% unsubscribe by the link after lesson 2
                seq += 1
                at = (sent_at(i, 2) + timedelta(hours=3)).strftime(FMT)
                yield (i, None, "dripmail", f"unsubscribe-{i}", "unsubscribed", "link", at, at)

    con.executemany(
        "INSERT INTO events (subscriber_id, delivery_key, provider, dedupe_key, type, detail,"
        " occurred_at, received_at) VALUES (?,?,?,?,?,?,?,?)",
        event_rows(),
    )
    con.commit()
    con.execute("ANALYZE")
    last = con.execute("SELECT max(sent_at) FROM deliveries").fetchone()[0]
    con.close()
    end = datetime.strptime(last, FMT).replace(tzinfo=UTC)
    return datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1, minutes=30)


def _lessons():
    from dripmail.report import LessonInfo

    return [
        LessonInfo(d, f"day {d}", f"https://studio.example.com/videos/day-{d}") for d in range(1, 8)
    ]


def _ours(engine, now: datetime) -> float:
    from dripmail.report import build

    started = clock.perf_counter()
    build(engine, now, lessons=_lessons())
    return clock.perf_counter() - started


PEER_SQL = (
    "SELECT lesson_day, count(*) FROM deliveries WHERE state IN ('sent','handed')"
    " GROUP BY lesson_day",
    "SELECT d.lesson_day, e.type, count(DISTINCT e.delivery_key) FROM events e"
    " JOIN deliveries d ON d.key = e.delivery_key GROUP BY d.lesson_day, e.type",
    "SELECT count(*), count(confirmed_at) FROM subscribers",
    "SELECT s.timezone, count(*) FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id"
    " WHERE d.state IN ('sent','handed') GROUP BY s.timezone",
)


def _peer(path: Path) -> float:
    """The GROUP BY queries a user would write over the whole tables (a fraction of the report)."""
    con = sqlite3.connect(path)
    started = clock.perf_counter()
    for sql in PEER_SQL:
        con.execute(sql).fetchall()
    elapsed = clock.perf_counter() - started
    con.close()
    return elapsed


def _limit(path: Path) -> float:
    """Reading the stored rows of the finished days, nothing else."""
    con = sqlite3.connect(path)
    started = clock.perf_counter()
    con.execute("SELECT * FROM report_days").fetchall()
    elapsed = clock.perf_counter() - started
    con.close()
    return elapsed


def run(quick: bool) -> list[dict]:
    """The figures described in the module docstring."""
    from dripmail.store.db import open_store

    n, days = (10_000, 14) if quick else (1_000_000, 182)
    # A run at another size by hand: BENCH_REPORT_SIZE=200000x36 (subscribers x days).
    if os.environ.get("BENCH_REPORT_SIZE"):
        n, days = (int(x) for x in os.environ["BENCH_REPORT_SIZE"].split("x"))
    label = f"{n:,} subscribers, {7 * n:,} deliveries"
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "report.db"
        started = clock.perf_counter()
        now = _build(db, n, days)
        build_s = clock.perf_counter() - started
        engine = open_store("sqlite:///" + db.name, db.parent)
        with engine.connect() as conn:
            events = conn.exec_driver_sql("SELECT count(*) FROM events").scalar()
        first = _ours(engine, now)
        ours = statistics.median(_ours(engine, now) for _ in range(5))
        cpu_started = clock.process_time()
        _ours(engine, now)
        ours_cpu = clock.process_time() - cpu_started
        limit = statistics.median(_limit(db) for _ in range(5))
        peer = _peer(db)  # once: it takes long
        engine.dispose()
    return [
        value(f"report: load {label}, {events:,} events (setup)", "s", build_s),
        value(f"whole report at {label}: CPU time of this process", "s", ours_cpu),
        value(
            f"report: first report over {days} days of history (counts and stores each day)",
            "s",
            first,
        ),
        compare(
            f"whole report at {label} ({events:,} events)",
            "s",
            ours,
            peer=peer,
            peer_is="four GROUP BY queries over the whole tables (lessons sent, unique events "
            "per lesson through a join, sign-ups, sends by zone): less than the report shows",
            limit=limit,
            limit_is="reading the stored day rows alone",
            better="lower",
        ),
    ]


if __name__ == "__main__":
    for fig in run("--quick" in sys.argv):
        print(fig)
