"""Making an erasure physical on SQLite: old page images leave the write-ahead log too."""

from __future__ import annotations

import time

from sqlalchemy import Engine

# How often and how long the checkpoint waits for another connection's read to end. A
# `serve` process holds pooled connections but reads for milliseconds at a time; a reader
# that stays longer leaves the WAL for a later checkpoint (README, erasure).
CHECKPOINT_TRIES = 5
CHECKPOINT_WAIT_MS = 200


def flush_erased(engine: Engine) -> bool:
    """Copy the WAL into the database file and truncate it, after an erasure committed.

    `PRAGMA secure_delete` (set on every connection, `db._sqlite_pragmas`) zeroes deleted
    rows in the pages written, but until a checkpoint the WAL still holds the pages as they
    were before (the address included), and the database file too. A TRUNCATE checkpoint
    writes the zeroed pages into the file and empties the WAL. Returns True when that is
    done (or the database is not SQLite), False when a reader kept its snapshot through every
    try: the old pages then stay in the WAL until the next complete checkpoint (the next
    `forget`, or SQLite's own when the last connection closes). Never raises for that.
    """
    if engine.dialect.name != "sqlite":
        return True
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        cur = raw.cursor()
        try:
            # A short busy wait per try instead of the store's 30 s: erasure already committed.
            cur.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
            for attempt in range(CHECKPOINT_TRIES):
                # (busy, frames in the WAL, frames checkpointed); busy=0 with TRUNCATE means
                # every frame was copied and the WAL file was cut to zero bytes.
                busy, _log, _done = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy == 0:
                    return True
                time.sleep(CHECKPOINT_WAIT_MS / 1000 * (attempt + 1))
            return False
        finally:
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
