"""Webhook nonces: Mailgun tokens and Svix ids seen, for replay protection.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from dripmail.store.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_nonces",
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("nonce", sa.String(256), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("seen_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("provider", "nonce", name="pk_webhook_nonces"),
    )
    op.create_index("ix_webhook_nonces_seen_at", "webhook_nonces", ["seen_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_nonces_seen_at", table_name="webhook_nonces")
    op.drop_table("webhook_nonces")
