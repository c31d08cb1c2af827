"""Broadcast deliveries get the lesson deliveries' state columns; broadcasts a content hash.

The two tables now share one hand-over implementation (`dripmail.handover`). The content hash
lets `broadcast FILE` refuse to continue a broadcast whose file was edited after it started.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from dripmail.store.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NEW = {
    "broadcast_deliveries": (
        sa.Column("provider", sa.String(16)),
        sa.Column("next_attempt_at", UTCDateTime()),
        sa.Column("updated_at", UTCDateTime()),
    ),
    "broadcasts": (sa.Column("content_hash", sa.String(64)),),
}


def upgrade() -> None:
    # 0001 builds its tables from the current schema.py, so on a fresh database these columns
    # already exist; add only what an older database lacks.
    inspector = sa.inspect(op.get_bind())
    for table, columns in NEW.items():
        have = {c["name"] for c in inspector.get_columns(table)}
        for column in columns:
            if column.name not in have:
                op.add_column(table, column)


def downgrade() -> None:
    for table, columns in NEW.items():
        for column in columns:
            op.drop_column(table, column.name)
