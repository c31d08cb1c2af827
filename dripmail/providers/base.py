"""The provider protocol: capabilities, per-message results and the send call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol, runtime_checkable

from dripmail.message import Message


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider can do; the engine plans around these, never around provider names."""

    max_batch: int
    # How far ahead a send time may be given; None means "hand it over when it is due".
    schedule_ahead: timedelta | None
    can_cancel: bool
    idempotency_key: bool
    # How long the provider remembers an idempotency key (Resend: 24 h). Within it, a batch
    # interrupted by a crash is sent again as it was instead of being reported for review.
    idempotency_ttl: timedelta | None = None


class Outcome(StrEnum):
    """How the provider answered for one message."""

    ACCEPTED = "accepted"
    TRANSIENT = "transient"  # try again later (429, 5xx, timeout before acceptance)
    PERMANENT = "permanent"  # this message will never be accepted as it is
    REVIEW = "review"  # ambiguous and the provider cannot tell: never resend automatically


class Lookup(StrEnum):
    """Whether the provider already holds a message whose earlier hand-over was ambiguous."""

    FOUND = "found"  # it has it: record as accepted, do not send again
    ABSENT = "absent"  # it surely does not (or a resend is deduplicated): safe to send
    UNKNOWN = "unknown"  # its API cannot tell: report for review, never resend automatically


@dataclass(frozen=True, slots=True)
class SendResult:
    """The answer for one message of a batch, in the order the batch was given."""

    key: str
    outcome: Outcome
    provider_id: str | None = None
    error: str | None = None
    suppress: bool = False  # the provider says this address must not be mailed again

    @property
    def accepted(self) -> bool:
        return self.outcome is Outcome.ACCEPTED


@runtime_checkable
class Provider(Protocol):
    """One email provider. Implementations live one per module in this package."""

    name: str
    capabilities: Capabilities

    async def send_batch(
        self,
        messages: Sequence[Message],
        send_at: datetime | None = None,
        batch_key: str | None = None,
    ) -> list[SendResult]:
        """Hand over a batch (at most `capabilities.max_batch`); one result per message, in order.

        `send_at` (UTC) asks for delivery later, within `capabilities.schedule_ahead`; each
        message's own `send_at` is used when this is None. `batch_key` is a stable key for this
        exact batch (the idempotency key where the provider honours one); the caller records it
        before the first call and passes the same key and messages when resending.

        Retries of transient failures happen inside; what comes back is final for this call:
        ACCEPTED, TRANSIENT (surely not sent: the caller retries later), PERMANENT, or REVIEW
        (maybe sent and the provider cannot tell). Raises `ProviderAuthError` when the
        credential is refused: nothing in the batch counts as sent.
        """
        ...

    async def reconcile(self, messages: Sequence[Message]) -> dict[str, Lookup]:
        """After a crash mid-hand-over: does the provider already hold these messages (by key)?"""
        ...

    async def cancel(self, provider_ids: Sequence[str]) -> list[str]:
        """Cancel scheduled sends; returns the ids actually cancelled (empty if it cannot)."""
        ...

    async def check(self) -> str:
        """A harmless authenticated call; returns a one-line description of the account."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
