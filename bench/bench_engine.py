"""The engine at scale: 1,000,000 subscribers in SQLite (20,000 with --quick).

Seven cohorts start on seven consecutive days, so at the measured moment one cohort (1/7 of
the subscribers) has its first lesson due and 7 million rows are planned; beside them a
realistic history (graduates whose lessons were sent, a few failed, for review or skipped), so
ANALYZE sees the mix a live database has. The cohorts' ids are in sign-up order, as a live
database assigns them (a day's readers sign up, confirm and start together): a due lesson is
one row in seven of its cohort's rows. The worst case, the seven cohorts interleaved id by id
(each due lesson alone on its table page, so each write of a lesson dirties a page of its
own), is measured too: the engine and the raw limit on a database built that way. Figures,
each beside the peer a user would write and the limit, in one run:
- `run` finding that nothing is due (an hour before the send time), with and without ANALYZE
  statistics; peer and limit: the one indexed query "is anything planned due?" (what a user
  would write, and the cheapest way); goal under 10 ms;
- `run` claiming and recording one day's lessons through a provider that accepts instantly
  (the engine's own cost, rendering excluded); limit: raw sqlite3 running the same protocol
  (the same statements per chunk of 1,000: read the page, take each batch of 500 straight to
  `sending`, record); each measured twice, alternately, on fresh copies, the lower-CPU run
  of each kept;
  peer: claiming and recording each delivery in its own transaction, as a first loop would;
  beside them two cheaper protocols in raw sqlite3, which say what other storage would cost
  on this disk: each delivery row written once (`_raw_floor`, the mark before the
  hand-over kept in a side table) and no delivery row rewritten at all (`_raw_log`, marks
  and records appended to a log);
- peak memory (max RSS) of the process doing it, each in a fresh subprocess.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time as clock
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from figure import compare, value  # noqa: E402

from dripmail.store.db import SQLITE_CACHE_PRAGMAS  # noqa: E402

DAY0 = datetime(2026, 6, 1, tzinfo=UTC)
SEND = time(7)


def _build(path: Path, subscribers: int, interleaved: bool = False) -> None:
    """Create the schema with the real migrations, then bulk-load rows with sqlite3.

    Subscribers 1..n are in the course (7 planned lessons each), in seven cohorts starting on
    seven consecutive days: cohort by cohort in id order, or, `interleaved`, subscriber i in
    cohort i % 7 (the worst case for the day's writes). n+1..n+n/7 graduated a week earlier
    (7 lessons sent; every 50th has one failed, every 97th one for review, every 89th one
    skipped). No ANALYZE: `_analyze` adds the statistics for the second measurement.
    """

    def cohort(i: int) -> int:
        return i % 7 if interleaved else (i - 1) * 7 // subscribers

    from dripmail.store.db import open_store

    open_store("sqlite:///" + path.name, path.parent).dispose()
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    now = "2026-05-31 12:00:00.000000"

    def subs():
        for i in range(1, subscribers + 1):
            start = (DAY0 + timedelta(days=cohort(i))).date().isoformat()
            yield (
                i,
                f"u{i}@example.org",
                "",
                "UTC",
                "active",
                "bench",
                now,
                start,
                1,
                "",
                0,
                now,
                now,
            )

    con.executemany(
        "INSERT INTO subscribers (id, email, first_name, timezone, status, consent_source,"
        " consent_at, start_date, newsletters, tags, confirm_count, created_at, updated_at)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        subs(),
    )

    graduates = subscribers // 7
    con.executemany(
        "INSERT INTO subscribers (id, email, first_name, timezone, status, consent_source,"
        " consent_at, start_date, newsletters, tags, confirm_count, created_at, updated_at)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            (i, f"g{i}@example.org", "", "UTC", "completed", "bench", now, "2026-05-01",
             1, "", 0, now, now)
            for i in range(subscribers + 1, subscribers + graduates + 1)
        ),
    )  # fmt: skip

    def history():
        for i in range(subscribers + 1, subscribers + graduates + 1):
            for day in range(1, 8):
                when = f"2026-05-{day:02d} 07:00:00.000000"
                state = "sent"
                if day == 3 and i % 50 == 0:
                    state = "failed"
                elif day == 4 and i % 97 == 0:
                    state = "review"
                elif day == 5 and i % 89 == 0:
                    state = "skipped"
                sent = when if state == "sent" else None
                yield (i, day, f"bench-g{i}-d{day}", when, state, 1, sent, now)

    con.executemany(
        "INSERT INTO deliveries (subscriber_id, lesson_day, key, due_at, state, attempts,"
        " sent_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
        history(),
    )

    def rows():
        for i in range(1, subscribers + 1):
            first = DAY0 + timedelta(days=cohort(i), hours=SEND.hour)
            for day in range(1, 8):
                due = (first + timedelta(days=day - 1)).strftime("%Y-%m-%d %H:%M:%S.000000")
                yield (i, day, f"bench-s{i}-d{day}", due, "planned", 0, now)

    con.executemany(
        "INSERT INTO deliveries (subscriber_id, lesson_day, key, due_at, state, attempts,"
        " updated_at) VALUES (?,?,?,?,?,?,?)",
        rows(),
    )
    con.commit()
    con.close()


def _analyze(path: Path) -> None:
    """Record planner statistics, as a periodic ANALYZE (or `PRAGMA optimize`) would."""
    con = sqlite3.connect(path)
    con.execute("ANALYZE")
    con.commit()
    con.close()


def _child(db: str, mode: str, at: str, sample: int) -> None:
    """Run in a fresh process so max RSS is this measurement's alone."""
    import asyncio
    import resource

    from sqlalchemy import select, update

    from dripmail.engine import run_once
    from dripmail.heap import collector_for_a_pass
    from dripmail.message import Mailbox, Message
    from dripmail.providers.base import Capabilities, Outcome, SendResult
    from dripmail.store.db import open_store
    from dripmail.store.schema import deliveries

    class Instant:
        name = "instant"
        capabilities = Capabilities(500, None, False, True)

        async def send_batch(self, messages, send_at=None, batch_key=None):
            return [SendResult(m.key, Outcome.ACCEPTED, provider_id=m.key) for m in messages]

        async def reconcile(self, messages):
            return {}

    # Built once, as dripmail's renderer holds the course's sender (`render.py`).
    sender = Mailbox("hello@studio.example.com")

    def render(row: dict) -> Message:
        return Message(
            key=row["key"],
            kind="lesson",
            ref=str(row["lesson_day"]),
            sender=sender,
            to=Mailbox(row["email"]),
            subject="Day",
            html="<p>x</p>",
            text="x",
        )

    path = Path(db)
    now = datetime.fromisoformat(at)
    count = 0
    if mode in ("peer-idle", "raw-claim", "raw-floor", "raw-log"):
        con = sqlite3.connect(path, isolation_level=None)
        # The same settings as the engine's connections (`store.db._sqlite_pragmas`), so the
        # limit differs from the engine only in the work done per row.
        con.execute("PRAGMA secure_delete=ON")
        con.execute("PRAGMA busy_timeout=30000")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("PRAGMA synchronous=NORMAL")
        for pragma in SQLITE_CACHE_PRAGMAS:
            con.execute(pragma)
        stamp = now.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        started, started_cpu = clock.perf_counter(), clock.process_time()
        if mode == "peer-idle":
            # The one indexed query a user would write: is anything planned due yet?
            times, cpus = [], []
            for _ in range(9):
                t0, c0 = clock.perf_counter(), clock.process_time()
                con.execute(
                    "SELECT 1 FROM deliveries WHERE state = 'planned' AND due_at <= ? LIMIT 1",
                    (stamp,),
                ).fetchall()
                times.append(clock.perf_counter() - t0)
                cpus.append(clock.process_time() - c0)
            seconds, cpu = sorted(times)[4], sorted(cpus)[4]
        else:
            protocols = {"raw-floor": _raw_floor, "raw-log": _raw_log}
            count = protocols.get(mode, _raw_protocol)(con, stamp)
            seconds, cpu = clock.perf_counter() - started, clock.process_time() - started_cpu
        con.close()
    else:
        engine = open_store("sqlite:///" + path.name, path.parent)
        started, started_cpu = clock.perf_counter(), clock.process_time()
        if mode == "engine-idle":
            times, cpus = [], []
            for _ in range(9):
                t0, c0 = clock.perf_counter(), clock.process_time()
                report = run_once(engine, Instant(), render, now, default_send_time=SEND)
                times.append(clock.perf_counter() - t0)
                cpus.append(clock.process_time() - c0)
                count += report.sent
            seconds, cpu = sorted(times)[4], sorted(cpus)[4]
        elif mode == "engine":
            # One event loop for the whole pass, as the CLI's core keeps one per process
            # (`Dripmail.call_provider`), not a new loop per chunk; and the garbage collector
            # set for the pass (`heap.collector_for_a_pass`), as `Dripmail.run` does.
            loop = asyncio.new_event_loop()
            with collector_for_a_pass():
                report = run_once(
                    engine,
                    Instant(),
                    render,
                    now,
                    default_send_time=SEND,
                    chunk=1000,
                    call=lambda make: loop.run_until_complete(make()),
                )
            loop.close()
            count = report.sent
            seconds, cpu = clock.perf_counter() - started, clock.process_time() - started_cpu
        elif mode == "naive-claim":
            # One transaction per delivery: claim, then record, as a loop over due rows would.
            with engine.connect() as conn:
                keys = list(
                    conn.execute(
                        select(deliveries.c.key)
                        .where(deliveries.c.state == "planned", deliveries.c.due_at <= now)
                        .limit(sample)
                    ).scalars()
                )
            for key in keys:
                with engine.begin() as conn:
                    conn.execute(
                        update(deliveries)
                        .where(deliveries.c.key == key, deliveries.c.state == "planned")
                        .values(state="claimed")
                    )
                render({"key": key, "lesson_day": 1, "email": "x@example.org"})
                with engine.begin() as conn:
                    conn.execute(
                        update(deliveries).where(deliveries.c.key == key).values(state="sent")
                    )
                count += 1
            seconds, cpu = clock.perf_counter() - started, clock.process_time() - started_cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "cpu": cpu, "count": count, "peak_mb": peak_mb}))


def _due_pages(con: sqlite3.Connection, stamp: str, unless: str = "") -> Iterator[list[tuple]]:
    """The due rows at `stamp` in pages of 1,000, keyset-paged on (due_at, id), with the
    columns the engine reads; `unless`: a table whose `delivery_id` rows take a delivery out
    of the queue (the side tables of `_raw_floor` and `_raw_log`). Ends after a short page."""
    held = (
        f" AND NOT EXISTS (SELECT 1 FROM {unless} x WHERE x.delivery_id = d.id)" if unless else ""
    )
    cursor: tuple[str, int] = ("", 0)
    while True:
        page = con.execute(
            "SELECT d.id, d.key, d.subscriber_id, d.lesson_day, d.due_at, d.state, d.batch_key,"
            " d.handed_at, s.email, s.first_name, s.timezone, s.send_time FROM deliveries d"
            " JOIN subscribers s ON s.id = d.subscriber_id WHERE s.status = 'active'"
            " AND d.state = 'planned' AND d.due_at <= ? AND (d.next_attempt_at IS NULL OR"
            f" d.next_attempt_at <= ?) AND (d.due_at, d.id) > (?, ?){held}"
            " ORDER BY d.due_at, d.id LIMIT 1000",
            (stamp, stamp, *cursor),
        ).fetchall()
        if not page:
            return
        yield page
        if len(page) < 1000:
            return
        cursor = (page[-1][4], page[-1][0])


def _raw_protocol(con: sqlite3.Connection, stamp: str) -> int:
    """The engine's protocol on SQLite in raw sqlite3, the cheapest way: per chunk of 1,000
    due rows, read the page (the columns the engine reads); take each batch of 500 still free
    straight to `sending` with its batch key (one UPDATE ... RETURNING per batch, one
    transaction); record them sent (one executemany, one transaction); then look for
    subscribers who finished, as the engine does."""
    done, touched = 0, []
    for page in _due_pages(con, stamp):
        ids = [r[0] for r in page]
        held: list[int] = []
        con.execute("BEGIN")
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            won = con.execute(
                "UPDATE deliveries SET state = 'sending', claimed_by = ?, lease_expires_at = ?,"
                " batch_key = ?, provider = ?, attempts = attempts + 1, handed_at = ?,"
                f" updated_at = ? WHERE id IN ({','.join('?' * len(batch))})"
                " AND state = 'planned' RETURNING id",
                ("raw:1", stamp, f"b-{batch[0]}", "instant", stamp, stamp, *batch),
            ).fetchall()
            held.extend(w[0] for w in won)
        con.execute("COMMIT")
        con.execute("BEGIN")
        con.executemany(
            "UPDATE deliveries SET state = 'sent', provider_message_id = ?, sent_at = ?,"
            " updated_at = ?, claimed_by = NULL, lease_expires_at = NULL WHERE id = ?",
            [(str(i), stamp, stamp, i) for i in held],
        )
        con.execute("COMMIT")
        done += len(held)
        touched.extend(r[2] for r in page)
    _complete(con, stamp, touched)
    return done


def _complete(con: sqlite3.Connection, stamp: str, touched: list[int]) -> None:
    """Mark the readers of `touched` who have nothing left in flight completed, as the
    engine's `complete_finished` does, in one transaction."""
    con.execute("BEGIN")
    for start in range(0, len(touched), 1000):
        part = touched[start : start + 1000]
        con.execute(
            "UPDATE subscribers SET status = 'completed', updated_at = ? WHERE status = 'active'"
            f" AND id IN ({','.join('?' * len(part))}) AND EXISTS (SELECT 1 FROM deliveries d"
            " WHERE d.subscriber_id = subscribers.id) AND NOT EXISTS (SELECT 1 FROM deliveries d"
            " WHERE d.subscriber_id = subscribers.id AND d.state IN"
            " ('planned', 'claimed', 'sending', 'handed'))",
            (stamp, *part),
        )
    con.execute("COMMIT")


def _raw_floor(con: sqlite3.Connection, stamp: str) -> int:
    """The engine's protocol with each delivery row written once, in raw sqlite3: per chunk
    of 1,000 due rows, one transaction records the hold and the batch before the hand-over
    (rows in a compact side table), and one records each delivery sent (its row written once)
    and drops the holds; then the same completion check as `_raw_protocol`. Two commits per
    chunk like the engine's, but one row write per delivery against its two. Not what dripmail runs:
    it shows what rewriting each row once would cost on this disk."""
    con.execute(
        "CREATE TABLE floor_holds (delivery_id INTEGER PRIMARY KEY REFERENCES deliveries(id)"
        " ON DELETE CASCADE, held_by TEXT NOT NULL, lease_expires_at TEXT NOT NULL,"
        " batch_key TEXT NOT NULL, handed_at TEXT NOT NULL)"
    )
    done, touched = 0, []
    for page in _due_pages(con, stamp, "floor_holds"):
        ids = [r[0] for r in page]
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO floor_holds (delivery_id, held_by, lease_expires_at, batch_key,"
            " handed_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(i, "raw:1", stamp, f"b-{i // 500}", stamp) for i in ids],
        )
        con.execute("COMMIT")
        con.execute("BEGIN")
        con.executemany(
            "UPDATE deliveries SET state = 'sent', provider = ?, batch_key = ?,"
            " attempts = attempts + 1, handed_at = ?, provider_message_id = ?, sent_at = ?,"
            " updated_at = ? WHERE id = ?",
            [("instant", f"b-{i // 500}", stamp, str(i), stamp, stamp, i) for i in ids],
        )
        con.execute(
            f"DELETE FROM floor_holds WHERE delivery_id IN ({','.join('?' * len(ids))})", ids
        )
        con.execute("COMMIT")
        done += len(ids)
        touched.extend(r[2] for r in page)
    _complete(con, stamp, touched)
    return done


def _raw_log(con: sqlite3.Connection, stamp: str) -> int:
    """The same marks and records appended to a log instead of rewriting delivery rows, in
    raw sqlite3: per chunk of 1,000 due rows, one transaction appends a `sending` entry per
    delivery (with its batch) before the hand-over and one appends a `sent` entry after; a
    delivery with an entry is no longer due. A chunk's entries are appended side by side,
    so each commit writes a few dozen pages instead of a thousand scattered ones. No
    completion check (a reader's state would be derived from the log too). Not what dripmail
    runs: what a log-based delivery store would cost."""
    con.execute(
        "CREATE TABLE log_entries (id INTEGER PRIMARY KEY, delivery_id INTEGER NOT NULL"
        " REFERENCES deliveries(id) ON DELETE CASCADE, state TEXT NOT NULL, held_by TEXT,"
        " batch_key TEXT, provider TEXT, provider_message_id TEXT, at TEXT NOT NULL)"
    )
    con.execute("CREATE INDEX ix_log_entries_delivery ON log_entries (delivery_id)")
    done = 0
    for page in _due_pages(con, stamp, "log_entries"):
        ids = [r[0] for r in page]
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO log_entries (delivery_id, state, held_by, batch_key, at)"
            " VALUES (?, 'sending', ?, ?, ?)",
            [(i, "raw:1", f"b-{i // 500}", stamp) for i in ids],
        )
        con.execute("COMMIT")
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO log_entries (delivery_id, state, provider, provider_message_id, at)"
            " VALUES (?, 'sent', ?, ?, ?)",
            [(i, "instant", str(i), stamp) for i in ids],
        )
        con.execute("COMMIT")
        done += len(ids)
    return done


def _measure(db: Path, mode: str, at: datetime, sample: int = 0) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(db), mode, at.isoformat(), str(sample)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _engine_and_raw(db: Path, copy: Path, at: datetime) -> tuple[dict, dict]:
    """The engine and the raw protocol over one day of `db`, each on fresh copies (at
    `copy`), alternately and twice: the lower-CPU run of each. On a shared machine the
    same run varies by half (the disk's write-back of earlier runs lands on later ones);
    the better of two, for both sides alike, is the steadier ratio."""
    runs: dict[str, list[dict]] = {"engine": [], "raw-claim": []}
    for _ in range(2):
        for mode in runs:
            shutil.copy(db, copy)
            runs[mode].append(_measure(copy, mode, at))
    engine, raw = (min(runs[m], key=lambda r: r["cpu"]) for m in runs)
    return engine, raw


def run(quick: bool) -> list[dict]:
    """The figures described in the module docstring."""
    n = 20_000 if quick else 1_000_000
    label = f"{n:,} subscribers"
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        started = clock.perf_counter()
        _build(db, n)
        build_s = clock.perf_counter() - started
        before = DAY0 + timedelta(hours=6)
        idle_bare = _measure(db, "engine-idle", before)
        peer_bare = _measure(db, "peer-idle", before)
        _analyze(db)
        idle = _measure(db, "engine-idle", before)
        peer = _measure(db, "peer-idle", before)
        due_at = DAY0 + timedelta(hours=8)
        # Each way gets its own copy of the same database at the same moment.
        raw_db = Path(tmp) / "raw.db"
        claimed, raw = _engine_and_raw(db, raw_db, due_at)
        shutil.copy(db, raw_db)
        floor = _measure(raw_db, "raw-floor", due_at)
        shutil.copy(db, raw_db)
        log = _measure(raw_db, "raw-log", due_at)
        raw_db.unlink()
        # The per-delivery loop is slow: a sample of the same day's rows, on the original.
        sample = 1_000 if quick else 5_000
        naive = _measure(db, "naive-claim", due_at, sample)
        db.unlink()
        worst_db = Path(tmp) / "interleaved.db"
        _build(worst_db, n, interleaved=True)
        _analyze(worst_db)
        worst, worst_raw = _engine_and_raw(worst_db, raw_db, due_at)
        raw_db.unlink()
    day = claimed["count"]
    # Compared on the process's CPU time: the machines are shared, and wall time there measures
    # the neighbours as much as the work (SQLite runs in the process, so its work is counted).
    naive_rate = naive["count"] / naive["cpu"]
    goal = "goal under 10 ms"
    figures = [value(f"engine: load {label} x 7 lessons and a history (setup)", "s", build_s)]
    for stats, ours, indexed in (("without", idle_bare, peer_bare), ("with", idle, peer)):
        figures.append(
            compare(
                f"run finds nothing due among {label} ({7 * n:,} planned), {stats} ANALYZE "
                f"statistics ({goal}; CPU time, median of 9)",
                "ms",
                ours["cpu"] * 1000,
                peer=indexed["cpu"] * 1000,
                peer_is="the one indexed query 'is anything planned due?' a user would write",
                limit=indexed["cpu"] * 1000,
                limit_is="the same indexed query: nothing is cheaper",
                better="lower",
            )
        )
    figures.append(
        compare(
            f"run claims+records one day ({day:,} of {label}; goal under 15 s at 1M), "
            "per CPU second",
            "deliveries/s",
            day / claimed["cpu"],
            peer=naive_rate,
            peer_is="claim and record each delivery in its own transaction, as a first loop would",
            limit=raw["count"] / raw["cpu"],
            limit_is="raw sqlite3 running the same protocol and statements per chunk of 1,000",
        )
    )
    figures += [
        value(
            f"run claims+records one day's lessons ({day:,} of {label})", "s", claimed["seconds"]
        ),
        value(f"raw sqlite3, same protocol ({raw['count']:,})", "s", raw["seconds"]),
        value(
            f"raw sqlite3, each delivery row written once ({floor['count']:,}): holds in a"
            " side table, two commits per chunk",
            "s",
            floor["seconds"],
        ),
        value(
            f"raw sqlite3, marks and records appended to a log, no delivery row rewritten"
            f" ({log['count']:,}): what a log-based delivery store would cost",
            "s",
            log["seconds"],
        ),
        value(f"peak memory, run over one day of {label}", "MB", claimed["peak_mb"]),
        compare(
            f"worst case: the seven cohorts interleaved id by id (each due lesson alone on its"
            f" table page), run claims+records one day ({worst['count']:,}), per CPU second",
            "deliveries/s",
            worst["count"] / worst["cpu"],
            peer=naive_rate,
            peer_is="claim and record each delivery in its own transaction (the figure above)",
            limit=worst_raw["count"] / worst_raw["cpu"],
            limit_is="raw sqlite3 running the same protocol on the same interleaved rows",
        ),
        value(
            f"worst case: run claims+records one day ({worst['count']:,}, interleaved)",
            "s",
            worst["seconds"],
        ),
        value(
            f"worst case: raw sqlite3, same protocol ({worst_raw['count']:,}, interleaved)",
            "s",
            worst_raw["seconds"],
        ),
    ]
    return figures


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        for fig in run("--quick" in sys.argv):
            print(fig)
