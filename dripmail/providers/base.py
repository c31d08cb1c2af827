"""The provider protocol: capabilities, per-message results and the send call."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import ClassVar, Protocol, runtime_checkable

from dripmail.message import AddressError, Message


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
    # Not asked: a stop (Ctrl-C, SIGTERM) came before this look-up's request went out. Nothing
    # is known either way: the delivery stays `sending` for the next run's recovery.
    NOT_ASKED = "not_asked"


# How a message's error begins when the provider could not be reached at all (connection
# refused, no connection set up in time, a host name that does not resolve): nothing left
# this machine. `run` and `broadcast` tell an operator so (exit 3): unlike a rate limit, it
# does not pass by itself.
NOT_SENT = "not sent: "
UNREACHABLE = f"{NOT_SENT}could not reach the provider at "
# How a message's error begins when a stop (Ctrl-C, SIGTERM) came before its request went out:
# surely not sent, and owed at once to the next run (no retry delay, see `handover`).
STOPPED = f"{NOT_SENT}stopped before the request to "

# Errors that are stored on each message of a batch but happened to the batch (its
# connection or its request). Written and read here alone, so `summary_reason` can word
# them as the batch's (`where` is a URL or host:port: it has no space).
_BROKE_OFF = re.compile(
    re.escape(NOT_SENT) + r"the connection to (?P<where>\S+) broke off before this message "
    r"\((?P<detail>.*)\)",
    re.DOTALL,
)
_NEVER_WENT_OUT = re.compile(
    re.escape(NOT_SENT) + r"the request to (?P<where>\S+) never went out \((?P<detail>.*)\)",
    re.DOTALL,
)


def unreachable_error(where: str, detail: str) -> str:
    """The error for messages not sent because the provider at `where` (a URL or host:port)
    could not be reached; `detail` says how (e.g. "connection refused")."""
    return f"{UNREACHABLE}{where}: {detail}"


def broke_off_error(where: str, detail: str) -> str:
    """The error for a message not sent because the connection to `where` (host:port; an
    SMTP session that carries a batch message by message) broke off before it; `detail`
    says how (e.g. "no answer to a message's DATA"). Surely not sent: retried later."""
    return f"{NOT_SENT}the connection to {where} broke off before this message ({detail})"


def never_went_out_error(where: str, detail: str) -> str:
    """The error for the messages of a request to `where` (a base URL) that never left this
    machine (e.g. no pooled connection in time); `detail` is the exception as
    "Name: text". Surely not sent: retried later."""
    return f"{NOT_SENT}the request to {where} never went out ({detail})"


def stopped_error(where: str) -> str:
    """The error for the messages of a request to `where` (a base URL) that a stop (Ctrl-C
    or SIGTERM) kept from going out: it had not started, or was waiting for its rate-limiter
    slot or for a retry. Surely not sent: the next run sends it at once."""
    return f"{STOPPED}{where} went out (the run was stopped)"


def is_stopped(error: str | None) -> bool:
    """Whether a message's error says a stop kept its request from going out
    (`stopped_error`)."""
    return bool(error) and str(error).startswith(STOPPED)


def summary_reason(error: str) -> str:
    """One message's error (as stored: "not sent: ...") as the reason in a line about many
    (`run`'s and `broadcast`'s summaries, which say how many messages wait): "the provider
    at URL could not be reached (connection refused)" for `unreachable_error`, a sentence
    about the batch for `broke_off_error` and `never_went_out_error` (their stored wording
    is one message's: "before this message"), else the cause without "not sent: ".

    Read here, beside the functions that write these errors, so the wording of a summary
    never depends on a command slicing text it did not make.
    """
    if is_unreachable(error):
        where, _, detail = error.removeprefix(UNREACHABLE).partition(": ")
        return f"the provider at {where} could not be reached ({detail})"
    if broke := _BROKE_OFF.fullmatch(error):
        return (
            f"the connection to {broke['where']} broke off partway through a batch "
            f"({broke['detail']})"
        )
    if never := _NEVER_WENT_OUT.fullmatch(error):
        return f"a batch's request to {never['where']} never went out ({never['detail']})"
    return error.removeprefix(NOT_SENT)


# A rate limit as the HTTP layer records it ("HTTP 429 ...") or inside Postmark's answer to a
# whole batch ("HTTP 422 ErrorCode 429: ..."): a pause that passes by itself.
_RATE_LIMITED = re.compile(r"HTTP 429\b|\bErrorCode 429\b")


def is_rate_limited(error: str | None) -> bool:
    """Whether a message's error says the provider asked us to slow down (HTTP 429, or
    Postmark's ErrorCode 429): routine, the next run sends it."""
    return bool(error) and _RATE_LIMITED.search(str(error)) is not None


def is_unreachable(error: str | None) -> bool:
    """Whether a message's error says the provider could not be reached (`unreachable_error`)."""
    return bool(error) and str(error).startswith(UNREACHABLE)


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
    # This database's random id, part of each Message-ID the provider writes.
    installation_id: str

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
        ACCEPTED, TRANSIENT (surely not sent: the caller retries later; `is_stopped` on its
        error when a stop kept the request from going out: the caller sends it on its next
        run, without a delay), PERMANENT, or REVIEW (maybe sent and the provider cannot tell).
        Raises `ProviderAuthError` when the credential is refused: nothing in the batch counts
        as sent.
        """
        ...

    async def reconcile(self, messages: Sequence[Message]) -> dict[str, Lookup]:
        """After a crash mid-hand-over: does the provider already hold these messages (by key)?
        NOT_ASKED for a key whose look-up a stop (`BaseProvider.stop_on`) kept from going out."""
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


class BaseProvider:
    """What every provider shares, written once; subclasses fill in small hooks.

    Like django-anymail's backends: `send_batch` first fails, alone, each message whose
    addresses this provider cannot carry (`carries_utf8_local_part`: RFC 6531 addresses;
    international domains always go in IDNA form), then hands the rest to the `_send` hook
    and puts the answers back in the batch's order. `reconcile`, `cancel` and `aclose` have
    the defaults of a provider that can neither look up, cancel nor hold connections.
    """

    name: str
    capabilities: Capabilities
    # Whether the provider documents carrying a non-ASCII local part (kim@ ok, kïm@ not).
    carries_utf8_local_part: ClassVar[bool] = False
    # This database's random id, part of each Message-ID (set by the runner; see message.py).
    installation_id: str = ""

    def address_problem(self, message: Message) -> str | None:
        """Why this provider cannot carry the message's addresses, or None."""
        boxes = [message.sender, message.to] + ([message.reply_to] if message.reply_to else [])
        try:
            for box in boxes:
                box.ascii_address(self.carries_utf8_local_part)
        except AddressError as exc:
            return f"{self.name}: {exc}"
        return None

    async def send_batch(
        self,
        messages: Sequence[Message],
        send_at: datetime | None = None,
        batch_key: str | None = None,
    ) -> list[SendResult]:
        """See `Provider.send_batch`. Uncarriable addresses are PERMANENT for their message."""
        results: dict[int, SendResult] = {}
        keep: list[int] = []
        for i, message in enumerate(messages):
            problem = self.address_problem(message)
            if problem:
                results[i] = SendResult(message.key, Outcome.PERMANENT, error=problem)
            else:
                keep.append(i)
        if keep:
            answers = await self._send([messages[i] for i in keep], send_at, batch_key)
            results.update(zip(keep, answers, strict=True))
        return [results[i] for i in range(len(messages))]

    async def _send(
        self, messages: Sequence[Message], send_at: datetime | None, batch_key: str | None
    ) -> list[SendResult]:
        """The hook: hand over messages whose addresses are known to be carriable."""
        raise NotImplementedError

    def prepare_batch(self, messages: Sequence[Message], batch_key: str) -> None:
        """Optional: do the CPU work of the request for this batch now, ahead of its
        `send_batch(messages, batch_key=batch_key)`, which then only sends it. Called from a
        worker thread while another batch is at the provider (`broadcast.send`); a batch
        prepared and never sent is forgotten after a few others. Default: nothing."""

    def stop_on(self, stop: threading.Event) -> None:
        """Let `stop` (set on Ctrl-C or SIGTERM: `Dripmail.interrupted`) end a hand-over
        between requests: a request not yet on the wire when it is set is not sent (TRANSIENT,
        `stopped_error`), a look-up not yet asked is `Lookup.NOT_ASKED`. Default: nothing
        (the outbox writes files, SMTP sends over one session: both finish a chunk quickly)."""

    async def reconcile(self, messages: Sequence[Message]) -> dict[str, Lookup]:
        """Default: the provider cannot be asked, so UNKNOWN (reported for review)."""
        return {m.key: Lookup.UNKNOWN for m in messages}

    async def cancel(self, provider_ids: Sequence[str]) -> list[str]:
        """Default: nothing can be cancelled."""
        return []

    async def check(self) -> str:
        """A harmless authenticated call; returns a one-line description of the account."""
        raise NotImplementedError

    def forget(self, addresses: Sequence[str]) -> int:
        """Erase what this provider keeps *on this machine* for `addresses` (an erasure
        request); returns how many messages were erased. Default: nothing is kept here (an
        HTTP provider's own logs and suppression lists are erased in its dashboard or API,
        see README "Erasure")."""
        return 0

    async def aclose(self) -> None:
        """Default: nothing to release."""
