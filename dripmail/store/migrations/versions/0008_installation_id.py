"""A random installation id per database, part of every Message-ID.

Revision ID: 0008
Revises: 0007
"""

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if "installation" not in sa.inspect(bind).get_table_names():
        op.create_table(
            "installation",
            sa.Column("name", sa.String(32), nullable=False),
            sa.Column("id", sa.String(64), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.PrimaryKeyConstraint("name", name="pk_installation"),
        )
    table = sa.table("installation", sa.column("name"), sa.column("id"), sa.column("created_at"))
    if bind.execute(sa.select(table.c.id).where(table.c.name == "this")).first() is None:
        # Stored naive UTC, like every UTCDateTime column.
        now = datetime.now(UTC).replace(tzinfo=None)
        bind.execute(table.insert().values(name="this", id=secrets.token_hex(8), created_at=now))


def downgrade() -> None:
    op.drop_table("installation")
