"""Confirmation emails record their hand-over, so a crash before it is offered again.

`confirm_count` / `confirm_sent_at` were the whole record: the slot was committed before the
email reached the provider, and a process killed in between left the reader counted as mailed
with no email. Now taking a slot also records who holds it (`confirm_claimed_by`, a lease),
and `confirm_handed_at` is set only once the provider accepted the email. A slot taken but
never handed over is offered again, under the same key (see `dripmail.confirmations`).

Existing slots are taken as handed over (their time is `confirm_sent_at`): nothing tells which
of them a crash interrupted, and offering all of them again could mail a reader twice.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

from dripmail.store.schema import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

COLUMNS = (
    ("confirm_handed_at", UTCDateTime()),
    ("confirm_claimed_by", sa.String(128)),
    ("confirm_lease_expires_at", UTCDateTime()),
)


def upgrade() -> None:
    # 0001 builds its tables from the current schema.py, so a fresh database has the columns.
    bind = op.get_bind()
    have = {c["name"] for c in sa.inspect(bind).get_columns("subscribers")}
    added = [name for name, _ in COLUMNS if name not in have]
    for name, kind in COLUMNS:
        if name in added:
            op.add_column("subscribers", sa.Column(name, kind))
    if "confirm_handed_at" in added:
        bind.execute(
            sa.text(
                "UPDATE subscribers SET confirm_handed_at = confirm_sent_at "
                "WHERE confirm_count > 0 AND confirm_sent_at IS NOT NULL"
            )
        )


def downgrade() -> None:
    for name, _ in reversed(COLUMNS):
        op.drop_column("subscribers", name)
