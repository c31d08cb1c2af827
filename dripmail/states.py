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


class DeliveryState(StrEnum):
    """Where one delivery (a lesson or a newsletter copy) is on its way to a reader."""

    PLANNED = "planned"  # waiting for its time (or for a retry after `next_attempt_at`)
    CLAIMED = "claimed"  # held by one worker under a lease
    SENDING = "sending"  # recorded with its batch key before the provider call
    HANDED = "handed"  # accepted by a provider that will deliver it at its due time
    SENT = "sent"  # accepted for delivery now
    FAILED = "failed"  # refused for good, or cannot be built
    REVIEW = "review"  # the hand-over was ambiguous and the provider cannot tell
    SKIPPED = "skipped"  # the reader left before it went out
    CANCELLED = "cancelled"  # stopped by an operator or a pause


# Held by a worker right now: a crash leaves rows here until their lease runs out.
IN_FLIGHT: tuple[DeliveryState, ...] = (DeliveryState.CLAIMED, DeliveryState.SENDING)
# Finished for good: the next lesson may follow.
DONE: tuple[DeliveryState, ...] = (
    DeliveryState.SENT,
    DeliveryState.HANDED,
    DeliveryState.SKIPPED,
    DeliveryState.FAILED,
    DeliveryState.REVIEW,
    DeliveryState.CANCELLED,
)
# Still to reach the reader (the preferences page's "next lesson").
OPEN_FOR_READER: tuple[DeliveryState, ...] = (
    DeliveryState.PLANNED,
    DeliveryState.CLAIMED,
    DeliveryState.SENDING,
    DeliveryState.HANDED,
)
