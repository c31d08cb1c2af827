"""Broadcasts keep the newsletter file's own segment when they were scheduled (`file_segment`).

A broadcast scheduled for everyone whose file was then narrowed to one tag went to everyone:
`run` sent it to the stored segment. With the file's segment of the time kept beside the one
chosen (an explicit `--segment` may differ), `run` can tell an edited file from an override.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # 0001 builds its tables from the current schema.py, so a fresh database has the column.
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("broadcasts")}
    if "file_segment" not in have:
        op.add_column("broadcasts", sa.Column("file_segment", sa.String(100)))


def downgrade() -> None:
    op.drop_column("broadcasts", "file_segment")
