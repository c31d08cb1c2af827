"""Initial schema: subscribers, deliveries, events, suppressions, broadcasts.

Revision ID: 0001
Revises:
"""

from alembic import op

from dripmail.store.schema import metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


# Only the tables of this revision: later tables are created by their own revisions (create_all
# with every table would make their op.create_table fail on a fresh database).
INITIAL_TABLES = (
    "subscribers",
    "deliveries",
    "events",
    "suppressions",
    "broadcasts",
    "broadcast_deliveries",
)


def upgrade() -> None:
    # The first revision creates the tables as schema.py defines them at this revision; later
    # revisions must use explicit op.* calls (tests/store/test_db.py checks nothing drifts).
    metadata.create_all(op.get_bind(), tables=[metadata.tables[name] for name in INITIAL_TABLES])


def downgrade() -> None:
    metadata.drop_all(op.get_bind(), tables=[metadata.tables[name] for name in INITIAL_TABLES])
