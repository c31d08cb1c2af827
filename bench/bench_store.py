"""Activating a subscriber (a confirmation): status, start date and the week's lessons planned.

Three ways over the same pending subscribers, each in a fresh SQLite database, on CPU time
(SQLite runs in the process, so its work is counted; the machines are shared):

- ours: `subscribers.activate` (one transaction: read the subscriber, set it active with its
  start date, read its lesson rows, insert the missing ones in one statement);
- peer: what a first version writes: read the subscriber, set its status, then insert each
  lesson in its own transaction (a loop over the course's days with an ORM-style insert);
- limit: the bare sqlite3 driver doing ours' statements in one transaction, due times
  converted beforehand, no checks.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time as clock
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from sqlalchemy import Engine, insert, select, update

from dripmail import subscribers as subs
from dripmail.store.db import open_store
from dripmail.store.schema import deliveries, subscribers
from tests.course_rules import Rules

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figure import compare, medians

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
DAYS = range(1, 8)


def _pending(engine: Engine, n: int) -> list[int]:
    return [
        subs.add_subscriber(
            engine,
            f"u{i}@example.org",
            timezone="Europe/Berlin",
            status="pending",
            consent_source="bench",
            now=NOW,
        )[0]
        for i in range(n)
    ]


def _ours(engine: Engine, path: Path, ids: list[int]) -> None:
    rules = Rules(id="bench")
    for sid in ids:
        subs.activate(engine, sid, rules, NOW)


def _peer(engine: Engine, path: Path, ids: list[int]) -> None:
    for sid in ids:
        with engine.begin() as conn:
            conn.execute(select(subscribers).where(subscribers.c.id == sid)).first()
            conn.execute(
                update(subscribers)
                .where(subscribers.c.id == sid)
                .values(status="active", start_date=NOW.date(), confirmed_at=NOW, updated_at=NOW)
            )
        for day in DAYS:
            with engine.begin() as conn:
                conn.execute(
                    insert(deliveries).values(
                        subscriber_id=sid,
                        lesson_day=day,
                        key=f"bench-s{sid}-d{day}",
                        due_at=NOW + timedelta(days=day),
                        state="planned",
                        attempts=0,
                        updated_at=NOW,
                    )
                )


def _limit(engine: Engine, path: Path, ids: list[int]) -> None:
    engine.dispose()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    stamp = NOW.replace(tzinfo=None).isoformat(sep=" ")
    dues = [(NOW + timedelta(days=d)).replace(tzinfo=None).isoformat(sep=" ") for d in DAYS]
    for sid in ids:
        con.execute("BEGIN")
        con.execute("SELECT * FROM subscribers WHERE id = ?", (sid,)).fetchone()
        con.execute(
            "UPDATE subscribers SET status = 'active', start_date = ?, confirmed_at ="
            " coalesce(confirmed_at, ?), updated_at = ? WHERE id = ?",
            (NOW.date().isoformat(), stamp, stamp, sid),
        )
        con.execute(
            "SELECT lesson_day, state FROM deliveries WHERE subscriber_id = ?", (sid,)
        ).fetchall()
        con.executemany(
            "INSERT INTO deliveries (subscriber_id, lesson_day, key, due_at, state, attempts,"
            " updated_at) VALUES (?, ?, ?, ?, 'planned', 0, ?)",
            [(sid, d, f"bench-s{sid}-d{d}", due, stamp) for d, due in zip(DAYS, dues, strict=True)],
        )
        con.execute("COMMIT")
    con.close()


def _rate(way: Callable[[Engine, Path, list[int]], None], n: int) -> float:
    """Subscribers activated per CPU second, in a fresh database."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_store("sqlite:///b.db", Path(tmp))
        ids = _pending(engine, n)
        started = clock.process_time()
        way(engine, Path(tmp) / "b.db", ids)
        took = clock.process_time() - started
        engine.dispose()
        with sqlite3.connect(Path(tmp) / "b.db") as con:
            (planned,) = con.execute("SELECT count(*) FROM deliveries").fetchone()
    assert planned == 7 * n, (way.__name__, planned)
    return n / took


def run(quick: bool) -> list[dict]:
    """Subscribers activated (7 lessons planned each) per CPU second: ours, peer, limit."""
    n, repeats = (50, 3) if quick else (500, 5)
    ways = {"ours": _ours, "peer": _peer, "limit": _limit}
    seen = medians({name: partial(_rate, way, n) for name, way in ways.items()}, repeats)
    return [
        compare(
            f"activate subscribers and plan 7 lessons (SQLite, {n} subscribers), per CPU second",
            "subscribers/s",
            seen["ours"],
            peer=seen["peer"],
            peer_is="read the subscriber and set its status, then insert each lesson in its own "
            "transaction: the loop over the course's days a first version writes",
            limit=seen["limit"],
            limit_is="the bare sqlite3 driver running the same statements in one transaction, "
            "values converted beforehand, no checks",
        )
    ]


if __name__ == "__main__":
    for figure in run("--quick" in sys.argv):
        print(figure)
