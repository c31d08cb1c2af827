"""The states a subscriber can be in, as stored (StrEnum: the column keeps the same strings)."""

from __future__ import annotations

from enum import StrEnum


class SubscriberStatus(StrEnum):
    """A subscriber's status.

    pending: signed up, not confirmed yet; active: in the course; paused: course frozen by the
    reader; completed: had every lesson; unsubscribed, bounced, complained: no mail at all.
    """

    PENDING = "pending"
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"

    @property
    def stopped(self) -> bool:
        """True when this status gets no mail at all (unsubscribed, bounced, complained)."""
        return self in STOPPED


STOPPED = frozenset(
    {SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED}
)
