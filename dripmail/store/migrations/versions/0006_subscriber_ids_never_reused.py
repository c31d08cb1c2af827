"""Subscriber ids are never reused on SQLite (AUTOINCREMENT).

Without AUTOINCREMENT SQLite hands out max(id)+1, so after `subscribers forget` of the newest
subscriber the next one got the same id, and with it the same delivery keys and link tokens:
the forgotten reader's old unsubscribe link unsubscribed the new one. PostgreSQL sequences
never go back, so only SQLite changes. The table is rebuilt in Alembic's batch mode (copy,
drop, rename) with foreign keys off (`dripmail.store.db.upgrade` turns them off around every
upgrade): dropping the old table must not cascade into deliveries and events.

An id forgotten before this upgrade may still be handed out once more: SQLite kept no record of
it. Ids from then on are never reused.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    ddl = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'subscribers'"
    ).scalar()
    if ddl and "AUTOINCREMENT" in ddl.upper():
        return  # a fresh database: 0001 built it from schema.py, which has it
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError(
            "migration 0006 needs SQLite foreign keys off (dropping the old subscribers table "
            "would delete every delivery): run `python send.py db upgrade`"
        )
    with op.batch_alter_table(
        "subscribers", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass
    problems = bind.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if problems:
        raise RuntimeError(f"migration 0006 left {len(problems)} broken references: not applied")


def downgrade() -> None:
    pass  # AUTOINCREMENT is harmless to keep
