"""`subscribers import`: rows per second on SQLite, against the peer and the limit.

- ours: `import_csv` (encoding check, sniffing, validation of every cell as at every other
  door, idempotency and suppression checks, 7 lessons planned per row, batches of 500 rows
  per transaction).
- peer: what a user would write with the library's one-subscriber calls: `add_subscriber`
  then `activate`, a transaction each, row by row (the way import worked before).
- limit: the sqlite3 driver's `executemany` of the same subscriber and delivery rows, values
  converted to their stored form beforehand, no checks at all: the fastest SQLite stores them.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time as clock
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from figure import compare  # noqa: E402

from dripmail import subscribers as subs  # noqa: E402
from dripmail.store.db import open_store  # noqa: E402
from dripmail.store.schema import deliveries, subscribers  # noqa: E402
from dripmail.subscriber_io import import_csv  # noqa: E402
from tests.course_rules import Rules  # noqa: E402

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
ZONES = ("Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "UTC")


def _csv(path: Path, n: int) -> Path:
    lines = ["email,first_name,timezone,start_date,tags"]
    for i in range(n):
        start = "2026-06-0" + str(2 + i % 5) if i % 3 == 0 else ""
        lines.append(f"u{i}@example.org,Name {i},{ZONES[i % len(ZONES)]},{start},desk")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _ours(n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_store("sqlite:///b.db", Path(tmp))
        path = _csv(Path(tmp) / "people.csv", n)
        started = clock.perf_counter()
        report = import_csv(engine, path, Rules(), "UTC", NOW)
        elapsed = clock.perf_counter() - started
        assert report.added == n and not report.rejected, report.rejected[:3]
        engine.dispose()
    return n / elapsed


def _peer(n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_store("sqlite:///b.db", Path(tmp))
        started = clock.perf_counter()
        for i in range(n):
            sid, _ = subs.add_subscriber(
                engine,
                f"u{i}@example.org",
                first_name=f"Name {i}",
                timezone=ZONES[i % len(ZONES)],
                status="pending",
                consent_source="import",
                now=NOW,
                tags="desk",
            )
            subs.activate(engine, sid, Rules(), NOW)
        elapsed = clock.perf_counter() - started
        engine.dispose()
    return n / elapsed


def _limit(n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_store("sqlite:///b.db", Path(tmp))
        people = [
            {
                "id": i + 1,
                "email": f"u{i}@example.org",
                "first_name": f"Name {i}",
                "timezone": ZONES[i % len(ZONES)],
                "status": "active",
                "consent_source": "import",
                "consent_at": NOW,
                "newsletters": True,
                "tags": "desk",
                "confirm_count": 0,
                "created_at": NOW,
                "updated_at": NOW,
            }
            for i in range(n)
        ]
        lessons = [
            {
                "subscriber_id": i + 1,
                "lesson_day": day,
                "key": f"w-s{i + 1}-d{day}",
                "due_at": NOW + timedelta(days=day),
                "state": "planned",
                "attempts": 0,
                "updated_at": NOW,
            }
            for i in range(n)
            for day in range(1, 8)
        ]
        # Values converted to what SQLite stores before the clock starts; then only the
        # driver's executemany, in the same 500-row transactions as ours.
        raw_people = [_stored(engine, subscribers, row) for row in people]
        raw_lessons = [_stored(engine, deliveries, row) for row in lessons]
        people_sql = _insert_sql(subscribers, people[0])
        lessons_sql = _insert_sql(deliveries, lessons[0])
        started = clock.perf_counter()
        for start in range(0, n, 500):
            with engine.begin() as conn:
                conn.exec_driver_sql(people_sql, raw_people[start : start + 500])
                conn.exec_driver_sql(lessons_sql, raw_lessons[start * 7 : (start + 500) * 7])
        elapsed = clock.perf_counter() - started
        engine.dispose()
    return n / elapsed


def _stored(engine, table, row: dict) -> tuple:
    """`row` as the driver receives it (each column's own bind processing applied)."""
    dialect = engine.dialect
    out = []
    for name, value in row.items():
        process = table.c[name].type.bind_processor(dialect)
        out.append(process(value) if process else value)
    return tuple(out)


def _insert_sql(table, row: dict) -> str:
    return f"INSERT INTO {table.name} ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})"


def run(quick: bool) -> list[dict]:
    """Import rows per second: ours vs row-by-row library calls (peer) and bare executemany."""
    n, peer_n, repeats = (5_000, 300, 3) if quick else (20_000, 1_000, 5)
    # Interleaved rounds (each way times only its own work, not the database setup), so a
    # burst of load from a neighbour hits all three alike; medians per way.
    seen: dict[str, list[float]] = {"ours": [], "peer": [], "limit": []}
    for _ in range(repeats):
        seen["ours"].append(_ours(n))
        seen["peer"].append(_peer(peer_n))
        seen["limit"].append(_limit(n))
    ours, peer, limit = (statistics.median(seen[k]) for k in ("ours", "peer", "limit"))
    return [
        compare(
            f"subscribers import, SQLite ({n:,} rows, 7 lessons planned each)",
            "rows/s",
            ours,
            peer=peer,
            peer_is=f"add_subscriber + activate per row, a transaction each ({peer_n:,} rows):"
            " the library's one-subscriber calls in a loop, as import did before",
            limit=limit,
            limit_is="the sqlite3 driver's executemany of the same subscriber and lesson rows,"
            " values converted to their stored form beforehand, no checks, same 500-row"
            " transactions",
        )
    ]


if __name__ == "__main__":
    for figure in run(quick=True):
        print(figure)
