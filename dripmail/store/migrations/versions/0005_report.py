"""The report: raw provider events, confirmation times, indexes by time, and day rollups.

- `events.raw`: the provider's event as it came, so a report can say which link was clicked
  and new figures can be computed from history later.
- `subscribers.confirmed_at`: when the double opt-in was confirmed (the funnel's median time
  to confirm). Older rows stay NULL: they count as confirmed by their status, without a time.
- Indexes on the time each fact was recorded (sign-up, confirmation, send, event receipt) so
  the report reads one day at a time, and on a reader's newsletters.
- `report_days`: the report's counts of each finished day, computed once.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from dripmail.store.schema import UTCDateTime, metadata

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = {
    "events": (sa.Column("raw", sa.Text()),),
    "subscribers": (sa.Column("confirmed_at", UTCDateTime()),),
}
INDEXES = {
    "subscribers": (("ix_subscribers_confirmed_at", ["confirmed_at"]),
                    ("ix_subscribers_created_at", ["created_at"])),
    "deliveries": (("ix_deliveries_sent_at", ["sent_at"]),),
    "events": (("ix_events_received_at", ["received_at"]),),
    "broadcast_deliveries": (
        ("ix_broadcast_deliveries_sent_at", ["sent_at"]),
        ("ix_broadcast_deliveries_subscriber", ["subscriber_id"]),
    ),
}  # fmt: skip


def upgrade() -> None:
    # 0001 builds its tables from the current schema.py, so a fresh database already has these
    # columns and indexes: add only what an older database lacks.
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    for table, columns in COLUMNS.items():
        have = {c["name"] for c in inspector.get_columns(table)}
        for column in columns:
            if column.name not in have:
                op.add_column(table, column)
    for table, indexes in INDEXES.items():
        have = {str(i["name"]) for i in inspector.get_indexes(table)}
        for name, cols in indexes:
            if name not in have:
                op.create_index(name, table, cols)
    metadata.tables["report_days"].create(bind, checkfirst=True)


def downgrade() -> None:
    op.drop_table("report_days")
    for table, indexes in INDEXES.items():
        for name, _cols in indexes:
            op.drop_index(name, table_name=table)
    for table, columns in COLUMNS.items():
        for column in columns:
            op.drop_column(table, column.name)
