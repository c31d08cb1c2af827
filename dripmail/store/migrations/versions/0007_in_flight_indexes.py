"""Partial indexes on in-flight deliveries (claimed or sending), lessons and newsletters.

Finding claims left by dead workers then reads only the rows held right now (usually none),
instead of scanning every delivery when ANALYZE has seen a table of mostly planned or sent
rows. SQLite and PostgreSQL both support partial indexes.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from dripmail.store.schema import IN_FLIGHT_SQL

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

INDEXES = {
    "deliveries": "ix_deliveries_in_flight",
    "broadcast_deliveries": "ix_broadcast_deliveries_in_flight",
}


def upgrade() -> None:
    # 0001 builds its tables from the current schema.py: add only what an older one lacks.
    inspector = sa.inspect(op.get_bind())
    for table, name in INDEXES.items():
        if name not in {i["name"] for i in inspector.get_indexes(table)}:
            op.create_index(
                name,
                table,
                ["lease_expires_at"],
                sqlite_where=sa.text(IN_FLIGHT_SQL),
                postgresql_where=sa.text(IN_FLIGHT_SQL),
            )


def downgrade() -> None:
    for table, name in INDEXES.items():
        op.drop_index(name, table_name=table)
