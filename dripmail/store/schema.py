"""The tables, as SQLAlchemy Core. Alembic migrations in ``store/migrations`` create them.

Conventions: every timestamp is UTC and timezone-aware in Python (`UTCDateTime`); keys that
make "exactly once" true are unique constraints, not application checks.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC (portable across SQLite and PostgreSQL), returns aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store: pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


# The in-flight states (see `dripmail.states.IN_FLIGHT`) as SQL literals, for partial indexes.
IN_FLIGHT_SQL = "state IN ('claimed', 'sending')"


def in_flight(table: Table) -> ColumnElement[bool]:
    """`table.state` is claimed or sending, written with literal states so that the planner
    uses the partial in-flight index (a bound parameter would not match its condition)."""
    return table.c.state.in_([literal_column("'claimed'"), literal_column("'sending'")])


def back_in_queue(now: datetime, last_error: str | None) -> dict[str, object]:
    """The column values that put a lesson or newsletter copy (`deliveries` and
    `broadcast_deliveries` alike) back in the queue as if never handed over: `planned`, due at
    once, no batch key, hand-over time, provider, provider id or claim; `last_error` as given
    (an operator's note, or None). A stop's unsent rows, review's resend and retry's requeue
    all use it, so "never handed over" means one thing."""
    return {
        "state": "planned",
        "batch_key": None,
        "handed_at": None,
        "provider": None,
        "provider_message_id": None,
        "claimed_by": None,
        "lease_expires_at": None,
        "next_attempt_at": None,
        "last_error": last_error,
        "updated_at": now,
    }


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# status: pending, active, paused, completed, unsubscribed, bounced, complained
subscribers = Table(
    "subscribers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(320), nullable=False, unique=True),  # normalised, lower-cased
    Column("first_name", String(200), nullable=False, default=""),
    Column("timezone", String(64), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("consent_source", String(64), nullable=False),
    Column("consent_at", UTCDateTime, nullable=False),
    Column("consent_ip", String(64)),
    Column("consent_user_agent", String(512)),
    Column("consent_page", String(512)),
    Column("start_date", Date),  # local date of lesson 1
    Column("send_time", String(5)),  # "HH:MM" override of the course send time
    Column("newsletters", Boolean, nullable=False, default=True),
    Column("tags", Text, nullable=False, default=""),  # comma-separated
    Column("confirm_sent_at", UTCDateTime),
    Column("confirm_count", Integer, nullable=False, default=0),
    # The confirmation slot's hand-over (migration 0009): who is handing it to the provider
    # (`host:pid`, with a lease) and when the provider accepted it. A slot taken but never
    # handed over (a crash between the two) is offered again under the same key.
    Column("confirm_handed_at", UTCDateTime),
    Column("confirm_claimed_by", String(128)),
    Column("confirm_lease_expires_at", UTCDateTime),
    # When the reader confirmed (double opt-in) or was added as active; NULL while pending.
    Column("confirmed_at", UTCDateTime, index=True),
    Column("created_at", UTCDateTime, nullable=False, index=True),
    Column("updated_at", UTCDateTime, nullable=False),
    # Ids are never reused after a subscriber is forgotten: they are in delivery keys and link
    # tokens (PostgreSQL sequences never go back; SQLite needs AUTOINCREMENT, migration 0006).
    sqlite_autoincrement=True,
)

# state: planned, claimed, sending (in flight: recorded before the provider call), handed (to a
# provider that will deliver it at due_at), sent, failed, cancelled, skipped, review (the
# hand-over was ambiguous and the provider cannot tell: never resent automatically)
deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("subscriber_id", ForeignKey("subscribers.id", ondelete="CASCADE"), nullable=False),
    Column("lesson_day", Integer, nullable=False),
    Column("key", String(128), nullable=False, unique=True),
    Column("due_at", UTCDateTime, nullable=False),
    Column("state", String(16), nullable=False),
    Column("provider", String(16)),
    Column("provider_message_id", String(256)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("next_attempt_at", UTCDateTime),
    Column("claimed_by", String(128)),
    Column("lease_expires_at", UTCDateTime),
    # The batch this delivery was first sent in, recorded before the call, so a retry after a
    # crash resends the very same batch under the same idempotency key.
    Column("batch_key", String(128), index=True),
    Column("handed_at", UTCDateTime),
    Column("sent_at", UTCDateTime, index=True),  # the report reads one day's sends at a time
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("subscriber_id", "lesson_day"),
    # The engine's due pages, in (due_at, id) order: with the id in the index, PostgreSQL
    # seeks to the keyset and stops after a page (SQLite's indexes end with the rowid anyway).
    Index("ix_deliveries_state_due", "state", "due_at", "id"),
    # Only rows held by a worker (usually none): finding expired or dead claims reads this
    # tiny index whatever ANALYZE recorded. Queries must spell the states as literals
    # (`in_flight`) for the planner to match the index's condition.
    Index(
        "ix_deliveries_in_flight",
        "lease_expires_at",
        sqlite_where=text(IN_FLIGHT_SQL),
        postgresql_where=text(IN_FLIGHT_SQL),
    ),
)

# type: delivered, bounced, soft_bounced, complained, opened, clicked, unsubscribed, ...
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("subscriber_id", ForeignKey("subscribers.id", ondelete="CASCADE"), index=True),
    Column("delivery_key", String(128), index=True),
    Column("provider", String(16), nullable=False),
    # A stable id for the event so a provider's retry is stored once.
    Column("dedupe_key", String(256), nullable=False),
    Column("type", String(32), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    # The provider's own event as it came (JSON text, capped): which link, which client, and
    # figures nobody thought of yet can be computed from history later. Erasure scrubs it.
    Column("raw", Text),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False, index=True),
    UniqueConstraint("provider", "dedupe_key"),
)

# Per-request webhook nonces (Mailgun tokens, Svix message ids) with a digest of what they came
# with: a nonce seen again with other content is a replay and is refused. Rows older than the
# freshness window are useless (the timestamp check refuses them first) and are pruned.
webhook_nonces = Table(
    "webhook_nonces",
    metadata,
    Column("provider", String(16), primary_key=True),
    Column("nonce", String(256), primary_key=True),
    Column("digest", String(64), nullable=False),
    Column("seen_at", UTCDateTime, nullable=False, index=True),
)

# Hashed addresses that must never be mailed or re-imported (forget, bounces, complaints).
suppressions = Table(
    "suppressions",
    metadata,
    Column("email_hash", String(64), primary_key=True),
    Column("reason", String(32), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# status: scheduled, sending, sent, cancelled
broadcasts = Table(
    "broadcasts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("slug", String(200), nullable=False, unique=True),  # from the newsletter file
    Column("subject", String(500), nullable=False),
    Column("segment", String(100), nullable=False),
    Column("status", String(16), nullable=False),
    Column("scheduled_at", UTCDateTime),
    Column("content_hash", String(64)),  # of the file when it started: edits are refused
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    # Why the last attempt to send it stopped (a template error naming its file and line, a
    # halt, a missing file...) and when (migration 0011); cleared by a pass that ends well.
    # The status stays what it was (scheduled or sending): running it again continues it.
    Column("stopped_reason", Text),
    Column("stopped_at", UTCDateTime),
    # The file's own `segment:` when the row was last written (migration 0012): a file whose
    # segment changed since it was scheduled is not sent to the stored one (`run` asks),
    # while an explicit `--segment` (stored in `segment`) still wins over an unchanged file.
    Column("file_segment", String(100)),
)

broadcast_deliveries = Table(
    "broadcast_deliveries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("broadcast_id", ForeignKey("broadcasts.id", ondelete="CASCADE"), nullable=False),
    Column("subscriber_id", ForeignKey("subscribers.id", ondelete="CASCADE"), nullable=False),
    Column("key", String(128), nullable=False, unique=True),
    Column("state", String(16), nullable=False),
    Column("provider_message_id", String(256)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("claimed_by", String(128)),
    Column("lease_expires_at", UTCDateTime),
    Column("batch_key", String(128), index=True),
    Column("provider", String(16)),
    Column("next_attempt_at", UTCDateTime),
    Column("handed_at", UTCDateTime),  # when its batch key was first used (see deliveries)
    Column("sent_at", UTCDateTime, index=True),
    Column("updated_at", UTCDateTime),
    UniqueConstraint("broadcast_id", "subscriber_id"),
    Index("ix_broadcast_deliveries_state", "broadcast_id", "state"),
    Index(
        "ix_broadcast_deliveries_in_flight",
        "lease_expires_at",
        sqlite_where=text(IN_FLIGHT_SQL),
        postgresql_where=text(IN_FLIGHT_SQL),
    ),
    # A reader's newsletters (which mail came last before an unsubscribe; erasure).
    Index("ix_broadcast_deliveries_subscriber", "subscriber_id"),
)

# The report's counts for whole UTC days that are over (dripmail.report): each figure of a
# day is computed once from the rows of that day, so a report over years of history reads a
# few thousand rows here plus today's. `section` / `item` / `metric` name the figure (e.g.
# lesson / 3 / opened); a day that is done has a ("_done", "", "") row.
report_days = Table(
    "report_days",
    metadata,
    Column("day", Date, primary_key=True),
    Column("section", String(16), primary_key=True),
    Column("item", String(600), primary_key=True),
    Column("metric", String(32), primary_key=True),
    Column("value", Integer, nullable=False),
)

# One row: this database's random installation id. It goes into every Message-ID
# (`dripmail.message.message_id`), so a staging and a production database never give two
# people the same Message-ID, while a retry of one delivery keeps its own.
installation = Table(
    "installation",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("id", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
