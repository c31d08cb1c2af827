"""Opening the database: URL resolution, SQLite pragmas, and migrations on first use."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from dripmail.errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


# user:password@ in any URL-like text, parsable or not (postgres://user:pw@host). A password
# in a URL cannot hold a raw "/" (it must be percent-encoded), which keeps "scheme:" apart.
_CREDENTIALS = re.compile(r"(?P<user>[^\s:/@]+):[^@\s/]*@")


def redact(text: str) -> str:
    """`text` with the password of every ``scheme://user:password@`` replaced by ``***``.

    Errors show database URLs so the operator sees which one failed, never its password.
    """
    return _CREDENTIALS.sub(r"\g<user>:***@", text)


def resolve_url(url: str, root: Path) -> str:
    """A relative SQLite path is relative to the project root, not to the shell's folder."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(
            f"DRIPMAIL_DATABASE_URL is not a database URL: {redact(url)!r} "
            "(e.g. sqlite:///dripmail.db or postgresql+psycopg://user:pass@host/db)"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        if not path.is_absolute():
            parsed = parsed.set(database=str(root / path))
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets readers and one writer work at once; the busy timeout makes concurrent
    # `run` processes wait for the write lock instead of failing. secure_delete zeroes deleted
    # rows so `subscribers forget` leaves no address in free pages or free space of a page;
    # it is set here because builds differ in their default (Debian's is ON, upstream OFF).
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA secure_delete=ON")
    # The busy timeout comes first: switching a new file to WAL takes a lock that another
    # process creating the same database may hold for a moment.
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    for pragma in SQLITE_CACHE_PRAGMAS:
        cur.execute(pragma)
    cur.close()


# Measured at 1,000,000 subscribers (bench/bench_engine.py): one day's lessons are every 7th
# reader's, so a chunk of 1,000 deliveries touches ~1,000 table pages plus index pages
# (4-5 MB), read by the page query and written by the claim, the `sending` mark and the
# record. SQLite's default 2 MB cache cannot hold one chunk, so each of those statements read
# its pages again through syscalls; 64 MB holds a chunk and the interior pages of every index
# of a ~2 GB database (it is a ceiling per connection, filled only as pages are read). The
# default checkpoint every 1,000 WAL pages ran after nearly every commit of a chunk (each
# writes ~1,000 pages), copying the same page to the database and syncing up to three times
# per chunk; every 16,384 pages (64 MB) it copies each page once per several chunks, and the
# WAL file is cut back to that size afterwards. Raw sqlite3 running the engine's protocol at
# 1M: 89 s wall and 21.8 s CPU before, 38 s and 17.5 s after (a shared 2-core machine).
SQLITE_CACHE_PRAGMAS = (
    "PRAGMA cache_size=-65536",
    "PRAGMA wal_autocheckpoint=16384",
    "PRAGMA journal_size_limit=67108864",
)


# SQLite's own default cache (2 MB), for work that reads each page once (`small_page_cache`).
SQLITE_SMALL_CACHE = "PRAGMA cache_size=-2000"


@contextmanager
def small_page_cache(engine: Engine) -> Iterator[None]:
    """Within: connections of this SQLite engine use SQLite's default 2 MB page cache.

    For work that walks its tables in key order, one chunk after another (a broadcast plans
    and sends by subscriber and copy id): it reads each page once, so the large cache of
    `SQLITE_CACHE_PRAGMAS` only fills with pages never read again, and the process grows with
    the list (30 MB more at 100,000 subscribers than at 10,000 in bench/bench_broadcast.py,
    at the same speed). Each connection checked out meanwhile gets the small cache (SQLite
    frees the excess at once) and the large one back when it is returned. PostgreSQL: as is.
    """
    if engine.dialect.name != "sqlite":
        yield
        return

    def small(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(SQLITE_SMALL_CACHE)
        cur.close()
        record.info["small_page_cache"] = True

    def large(dbapi_conn: Any, record: Any) -> None:
        if record.info.pop("small_page_cache", False) and dbapi_conn is not None:
            cur = dbapi_conn.cursor()
            cur.execute(SQLITE_CACHE_PRAGMAS[0])
            cur.close()

    event.listen(engine, "checkout", small)
    event.listen(engine, "checkin", large)
    try:
        yield
    finally:
        event.remove(engine, "checkout", small)
        event.remove(engine, "checkin", large)


# Any constant shared by every dripmail process: the key of the PostgreSQL advisory lock
# that serialises schema upgrades ("dripmail" in ASCII, as a signed 64-bit number).
MIGRATION_LOCK = 0x64726970_6D61696C
# How long a process waits for another one's SQLite upgrade (a long one rebuilds tables).
UPGRADE_LOCK_WAIT_S = 600


def upgrade(engine: Engine) -> None:
    """Apply every Alembic migration shipped in the package (a no-op when up to date).

    Several workers may start at once against a new or older database. On PostgreSQL the
    upgrade runs under a transaction-scoped advisory lock: the first one upgrades, the others
    wait for it and then find the schema current (Alembic reads the version inside the same
    locked transaction). On SQLite a lock file beside the database (`NAME.lock`, filelock)
    does the same across processes.
    """
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    sqlite = engine.dialect.name == "sqlite"
    with _sqlite_upgrade_lock(engine):
        _upgrade_locked(engine, cfg, sqlite)


def _sqlite_upgrade_lock(engine: Engine) -> AbstractContextManager[object]:
    """A lock file beside a SQLite database, held by one process while it upgrades.

    Python's sqlite3 commits before each DDL statement, so two processes creating a new
    database both saw no tables and the second failed with "table ... already exists". Alembic
    reads the version again once the lock is held, so the waiting ones find it current.
    """
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        return nullcontext()
    return FileLock(f"{database}.lock", timeout=UPGRADE_LOCK_WAIT_S)


def _upgrade_locked(engine: Engine, cfg: Config, sqlite: bool) -> None:
    from alembic import command

    with engine.connect() as conn:
        if sqlite:
            # A table rebuild (Alembic batch mode) drops the old table: with foreign keys on,
            # that would cascade-delete its children. The pragma only works outside a
            # transaction, so it is set first; migrations check their references themselves.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
                    )
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def open_store(url: str, root: Path, migrate: bool = True) -> Engine:
    """An Engine for `url`, schema created or upgraded on first use; StoreError if unreachable."""
    resolved = resolve_url(url, root)
    try:
        engine = create_engine(resolved, future=True)
    except (ArgumentError, ModuleNotFoundError) as exc:
        raise StoreError(
            f"cannot use DRIPMAIL_DATABASE_URL {redact(url)!r}: {redact(str(exc))}"
        ) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        if migrate and _brand_new_sqlite(engine):
            # Processes opening a database that does not exist yet would all create the file
            # and switch it to WAL at the same instant, and SQLite may refuse that switch at
            # once ("database is locked") instead of waiting. One at a time, under the lock
            # file the upgrade uses: the first creates it in WAL, the others find it so.
            with _sqlite_upgrade_lock(engine):
                engine.connect().close()
        if migrate and not _is_current(engine):
            upgrade(engine)
    except OperationalError as exc:
        reason = redact(str(exc.orig).splitlines()[0] if exc.orig else str(exc))
        safe = make_url(resolved).render_as_string(hide_password=True)
        raise StoreError(f"cannot reach the database at {safe}: {reason}") from None
    except Timeout as exc:
        raise StoreError(
            f"another dripmail process has held {exc.lock_file} for over "
            f"{UPGRADE_LOCK_WAIT_S} s while upgrading the database; wait for it, or delete "
            "that file if no dripmail process is running"
        ) from None
    return engine


# `revision = "0009"` and `down_revision = "0008"` (or None) as every migration file states them.
_REVISION = re.compile(r'^(down_revision|revision)\s*=\s*(?:None|"([^"]+)")\s*$', re.M)


def shipped_head() -> str | None:
    """The newest migration shipped in the package, read from the files without Alembic.

    Every process that opens the store asks whether the schema is current; loading Alembic's
    script directory for that (Alembic, Mako and Pygments, every migration module) cost most
    of a short command's start-up. None when the files do not form one plain chain (a merge,
    a branch, an unreadable file): the caller then asks Alembic itself.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        found = dict((m.group(1), m.group(2)) for m in _REVISION.finditer(path.read_text()))
        if not found.get("revision") or "down_revision" not in found:
            return None
        revisions.add(found["revision"])
        if found["down_revision"]:
            parents.add(found["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 and parents <= revisions else None


def _brand_new_sqlite(engine: Engine) -> bool:
    """Whether `engine` is a SQLite file database whose file does not exist yet (or is empty)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        return False
    path = Path(database)
    return not path.exists() or path.stat().st_size == 0


def _is_current(engine: Engine) -> bool:
    head = shipped_head()
    if head is None:
        return _is_current_by_alembic(engine)
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        stored = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return stored == [head]


def _is_current_by_alembic(engine: Engine) -> bool:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.connect() as conn:
        if "alembic_version" not in inspect(conn).get_table_names():
            return False
        return MigrationContext.configure(conn).get_current_revision() == head
