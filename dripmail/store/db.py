"""Opening the database: URL resolution, SQLite pragmas, and migrations on first use."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from dripmail.errors import StoreError

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
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


# Any constant shared by every dripmail process: the key of the PostgreSQL advisory lock
# that serialises schema upgrades ("dripmail" in ASCII, as a signed 64-bit number).
MIGRATION_LOCK = 0x64726970_6D61696C


def upgrade(engine: Engine) -> None:
    """Apply every Alembic migration shipped in the package (a no-op when up to date).

    Several workers may start at once against a new or older database. On PostgreSQL the
    upgrade runs under a transaction-scoped advisory lock: the first one upgrades, the others
    wait for it and then find the schema current (Alembic reads the version inside the same
    locked transaction). On SQLite the write lock of the first DDL statement does the same.
    """
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    sqlite = engine.dialect.name == "sqlite"
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
        if migrate and not _is_current(engine):
            upgrade(engine)
    except OperationalError as exc:
        reason = redact(str(exc.orig).splitlines()[0] if exc.orig else str(exc))
        safe = make_url(resolved).render_as_string(hide_password=True)
        raise StoreError(f"cannot reach the database at {safe}: {reason}") from None
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
