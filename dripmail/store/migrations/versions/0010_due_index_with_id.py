"""The due-lessons index ends with the id: `(state, due_at, id)`.

The engine pages through due lessons in `(due_at, id)` order with a row-value keyset
(`delivery_queries.due_page`). SQLite's index carried the rowid already; PostgreSQL's did not,
so every page read every remaining row of the day and sorted them (180 ms a page at 100,000
subscribers, quadratic in the day's size; 14 ms with the id in the index, linear).

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

NAME = "ix_deliveries_state_due"


def _columns() -> list[str | None] | None:
    found = [i for i in sa.inspect(op.get_bind()).get_indexes("deliveries") if i["name"] == NAME]
    return list(found[0]["column_names"]) if found else None


def upgrade() -> None:
    # 0001 builds its tables from the current schema.py: rebuild only an older index.
    columns = _columns()
    if columns == ["state", "due_at", "id"]:
        return
    if columns is not None:
        op.drop_index(NAME, table_name="deliveries")
    op.create_index(NAME, "deliveries", ["state", "due_at", "id"])


def downgrade() -> None:
    op.drop_index(NAME, table_name="deliveries")
    op.create_index(NAME, "deliveries", ["state", "due_at"])
