"""Broadcast deliveries record when their batch key was first used (`handed_at`).

Lessons have it already: after a crash mid-hand-over, a provider that keeps idempotency keys
for a while (Resend: 24 h) gets the interrupted batch again as it was, under the same key,
instead of the copies being set aside for review. Newsletters now recover the same way.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from dripmail.store.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # 0001 builds its tables from the current schema.py, so a fresh database has the column.
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("broadcast_deliveries")}
    if "handed_at" not in have:
        op.add_column("broadcast_deliveries", sa.Column("handed_at", UTCDateTime()))


def downgrade() -> None:
    op.drop_column("broadcast_deliveries", "handed_at")
