"""`forget` leaves no byte of the address in the SQLite files, even with `serve` connected."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from dripmail import subscribers as subs
from dripmail.store.db import open_store
from dripmail.store.erasure import flush_erased
from dripmail.store.schema import events

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ADDRESS = "cat@example.org"


def _raw_event(address: str, n: int) -> str:
    # Long enough to spill into overflow pages, as a provider's full event may.
    return json.dumps({"email": address, "event": "bounce", "n": n, "pad": "x" * 6000})


def test_forget_leaves_no_bytes_in_the_db_or_wal_while_another_connection_is_open(
    tmp_path: Path,
) -> None:
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    # What `serve` holds: another engine (another process's pool) with an open connection.
    serve = open_store("sqlite:///dripmail.db", tmp_path)
    held = serve.connect()
    held.execute(text("SELECT count(*) FROM subscribers")).scalar()
    held.commit()
    sid, _ = subs.add_subscriber(
        engine, ADDRESS, timezone="UTC", status="active", consent_source="cli", now=NOW
    )
    others = [f"reader{i}@example.org" for i in range(20)]
    for other in others:
        subs.add_subscriber(
            engine, other, timezone="UTC", status="active", consent_source="cli", now=NOW
        )
    with engine.begin() as conn:
        for i, subscriber in enumerate([sid, None, None]):
            conn.execute(
                events.insert().values(
                    subscriber_id=subscriber,
                    provider="sendgrid",
                    dedupe_key=f"e{i}",
                    type="bounce",
                    detail=f"550 <{ADDRESS}> user unknown",
                    raw=_raw_event(ADDRESS, i),
                    occurred_at=NOW,
                    received_at=NOW,
                )
            )
    db, wal = tmp_path / "dripmail.db", tmp_path / "dripmail.db-wal"
    assert ADDRESS.encode() in db.read_bytes() + wal.read_bytes()  # the check can fail

    subs.forget(engine, sid, NOW)
    assert flush_erased(engine) is True

    for path in (db, wal):
        assert ADDRESS.encode() not in path.read_bytes(), path.name
    # The others are still there, and so is the connection `serve` holds.
    assert held.execute(text("SELECT count(*) FROM subscribers")).scalar() == len(others)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
    held.close()
    serve.dispose()
    engine.dispose()


def test_a_reader_holding_its_snapshot_delays_the_flush_and_the_next_one_clears_it(
    tmp_path: Path,
) -> None:
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    sid, _ = subs.add_subscriber(
        engine, ADDRESS, timezone="UTC", status="active", consent_source="cli", now=NOW
    )
    # A read transaction that has read keeps its snapshot: the WAL cannot be cut under it.
    reader = sqlite3.connect(tmp_path / "dripmail.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM subscribers").fetchone()
    subs.forget(engine, sid, NOW)
    assert flush_erased(engine) is False
    reader.execute("ROLLBACK")
    reader.close()
    assert flush_erased(engine) is True
    for name in ("dripmail.db", "dripmail.db-wal"):
        assert ADDRESS.encode() not in (tmp_path / name).read_bytes(), name
    engine.dispose()
