"""Broadcasts keep why their last send stopped (`stopped_reason`, `stopped_at`).

A template error, a halt or a missing file stops a broadcast and leaves it `scheduled` or
`sending` (running it again continues it, nobody gets a second copy); `broadcasts show` and
`list` now say that it stopped, when and why, instead of looking merely scheduled.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

from dripmail.store.schema import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # 0001 builds its tables from the current schema.py, so a fresh database has the columns.
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("broadcasts")}
    if "stopped_reason" not in have:
        op.add_column("broadcasts", sa.Column("stopped_reason", sa.Text()))
    if "stopped_at" not in have:
        op.add_column("broadcasts", sa.Column("stopped_at", UTCDateTime()))


def downgrade() -> None:
    op.drop_column("broadcasts", "stopped_at")
    op.drop_column("broadcasts", "stopped_reason")
