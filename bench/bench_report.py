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
- the first report on this history (every finished day counted, one pass per table over
  the whole history, and stored), as a value.
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
    """Schema by the real migrations, rows by set-based SQL; returns the measured "now".

    Each table is one INSERT ... SELECT over a recursive CTE (subscribers) or over the rows
    already made (deliveries from subscribers, events from deliveries): no Python per row.
    Events go in kind by kind in the order they happen for one copy (delivered, opened, the
    scanner's click, the reader's click ...), so ids keep each copy's order of arrival.
    """
    from dripmail.store.db import open_store

    open_store("sqlite:///" + path.name, path.parent).dispose()
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=OFF")  # a throw-away database: no journal to write
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-2000000")  # 2 GB: the indexes stay in memory while loading
    con.execute("PRAGMA temp_store=MEMORY")
    # Secondary indexes are built once at the end (one sort each) rather than row by row.
    indexes = con.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        " AND tbl_name IN ('subscribers', 'deliveries', 'events')"
    ).fetchall()
    for name, _sql in indexes:
        con.execute(f"DROP INDEX {name}")
    spacing = days * 86400 / n

    def stamp(expr: str) -> str:  # SQLAlchemy's text form of a naive UTC datetime
        return f"(strftime('%Y-%m-%d %H:%M:%S', {expr}) || '.000000')"

    def by_zone(i: str, pick: int) -> str:
        whens = " ".join(f"WHEN {k} THEN {z[pick]!r}" for k, z in enumerate(ZONES))
        return f"(CASE {i} % {len(ZONES)} {whens} END)"

    signed = f"datetime('{DAY0:%Y-%m-%d}', '+' || CAST(i * {spacing!r} AS INTEGER) || ' seconds')"
    confirmed = f"datetime({signed}, '+' || (60 + i % 3600) || ' seconds')"
    con.execute(
        f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})"
        " INSERT INTO subscribers (id, email, timezone, status, consent_source, consent_at,"
        " confirmed_at, confirm_count, created_at, updated_at, first_name, newsletters, tags)"
        f" SELECT i, 'u' || i || '@example.org', {by_zone('i', 0)}, 'completed', 'bench',"
        f" {stamp(signed)}, {stamp(confirmed)}, 1, {stamp(signed)}, {stamp(signed)}, '', 1, ''"
        " FROM s"
    )
    # Lesson d goes out at the zone's 07:00 (as a UTC hour) on the d-th UTC day after sign-up.
    sent = f"datetime(date(created_at), '+' || d || ' days', '+' || {by_zone('id', 1)} || ' hours')"
    # Keys padded so that they sort as they are made: each unique index grows at its end.
    con.execute(
        "WITH RECURSIVE l(d) AS (SELECT 1 UNION ALL SELECT d + 1 FROM l WHERE d < 7),"
        f" c AS MATERIALIZED (SELECT id, d, {stamp(sent)} AS at FROM subscribers CROSS JOIN l)"
        " INSERT INTO deliveries (subscriber_id, lesson_day, key, due_at, state, attempts,"
        " sent_at, updated_at)"
        " SELECT id, d, printf('bench-s%08d-d%d', id, d), at, 'sent', 1, at, at FROM c"
    )
    # h: a stable spread in 0..999 per copy. 30% open, 5% click (a quarter of the clickers'
    # first click is a link scanner at +70 s), 0.3% of lesson 1 bounce, 0.1% of lesson 3
    # complain; 0.5% of readers unsubscribe by the link 3 h after lesson 2.
    h = "((subscriber_id * 7 + lesson_day) % 1000)"
    video = "'https://studio.example.com/videos/day-' || lesson_day"
    for kind, after, detail, where in (
        ("delivered", 60, "''", "1"),
        ("opened", 3600, "''", f"{h} < 300"),
        ("clicked", 70, video, f"{h} < 12"),
        ("clicked", 5400, f"CASE {h} % 2 WHEN 1 THEN {video} ELSE 'https://x.org/shop' END",
         f"{h} < 50"),
        ("bounced", 120, "'550 unknown user'", f"lesson_day = 1 AND {h} >= 997"),
        ("complained", 7200, "''", f"lesson_day = 3 AND {h} = 996"),
    ):  # fmt: skip
        at = stamp(f"datetime(sent_at, '+{after} seconds')")
        con.execute(
            "INSERT INTO events (subscriber_id, delivery_key, provider, dedupe_key, type, detail,"
            " occurred_at, received_at)"
            f" SELECT subscriber_id, key, 'sendgrid', '{kind}{after}-' || key, '{kind}', {detail},"
            f" {at}, {at} FROM deliveries WHERE {where} ORDER BY id"
        )
    at = stamp("datetime(sent_at, '+3 hours')")
    con.execute(
        "INSERT INTO events (subscriber_id, delivery_key, provider, dedupe_key, type, detail,"
        " occurred_at, received_at)"
        f" SELECT subscriber_id, NULL, 'dripmail', 'unsubscribe-' || subscriber_id,"
        f" 'unsubscribed', 'link', {at}, {at} FROM deliveries"
        " WHERE lesson_day = 2 AND subscriber_id % 200 = 0 ORDER BY id"
    )
    for _name, sql in indexes:
        con.execute(sql)
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
            f"report: first report over {days} days of history (counts and stores every day)",
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
