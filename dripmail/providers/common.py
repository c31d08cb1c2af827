"""Small helpers the provider modules share: the key field, tags, send times, settings."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from dripmail.errors import ConfigError, ProviderAuthError, ProviderError
from dripmail.message import Message
from dripmail.providers.base import Outcome, SendResult, is_unreachable, summary_reason
from dripmail.providers.http import Answer, Limits, RetryPolicy

# The metadata name the delivery key travels under at every provider (Postmark Metadata,
# SendGrid custom_args, Mailgun v:dripmail_key, Resend tags). dripmail.webhooks reads it back.
KEY_FIELD = "dripmail_key"

# A send time closer than this is sent at once: scheduling a few seconds ahead gains nothing
# and some providers refuse a time that has passed by the time the request arrives.
SCHEDULE_MARGIN = timedelta(minutes=1)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The real clock (providers work in real time, whatever `run --now` simulates)."""
    return datetime.now(UTC)


def category(message: Message) -> str:
    """One label naming the course and lesson (or newsletter), e.g. ``psoas-week-day-3``."""
    return "-".join(message.tags) if message.tags else message.kind


def scheduled_for(
    message: Message, send_at: datetime | None, now: datetime, window: timedelta | None
) -> datetime | None:
    """The send time to give the provider, or None to send at once.

    The batch's `send_at` wins over the message's own. A time already (nearly) due is sent at
    once; a time beyond the provider's window is clamped by the caller's contract (the engine
    never hands over earlier than the window), so here it is an error.
    """
    when = send_at or message.send_at
    if when is None or window is None or when <= now + SCHEDULE_MARGIN:
        return None
    if when > now + window:
        raise ValueError(f"send time {when.isoformat()} is beyond the provider's window {window}")
    return when.astimezone(UTC)


def schedule_all(
    messages: Sequence[Message], send_at: datetime | None, now: datetime, window: timedelta | None
) -> tuple[dict[int, datetime | None], dict[int, SendResult]]:
    """`scheduled_for` of each message by index, and a TRANSIENT result for those it refused.

    A message whose time lies beyond the window is not sent now; the engine offers it again
    when the window reaches it.
    """
    when: dict[int, datetime | None] = {}
    refused: dict[int, SendResult] = {}
    for i, message in enumerate(messages):
        try:
            when[i] = scheduled_for(message, send_at, now, window)
        except ValueError as exc:
            refused[i] = SendResult(message.key, Outcome.TRANSIENT, error=str(exc))
    return when, refused


def require(value: object, variable: str, provider: str, what: str) -> str:
    """A credential's value, or a one-line ConfigError naming the variable to set."""
    if value is None:
        raise ConfigError(f"{variable} is not set: DRIPMAIL_PROVIDER={provider} needs {what}")
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    if not text.strip():
        raise ConfigError(f"{variable} is empty: DRIPMAIL_PROVIDER={provider} needs {what}")
    return text.strip()


def limits_for(settings, default: Limits) -> Limits:
    """The provider's default limits, overridden by DRIPMAIL_RATE_PER_SECOND / _MAX_CONCURRENCY.

    An explicit message rate replaces the default pacing altogether (also the request rate,
    which for Resend is the documented limit): the operator knows their account's limits.
    """
    rate = getattr(settings, "rate_per_second", None)
    concurrency = getattr(settings, "max_concurrency", None)
    return Limits(
        messages_per_second=rate if rate else default.messages_per_second,
        requests_per_second=None if rate else default.requests_per_second,
        max_concurrency=concurrency or default.max_concurrency,
    )


def retry_policy() -> RetryPolicy:
    """The production retry policy (tests build their own with short delays)."""
    return RetryPolicy()


_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def tag_value(value: str) -> str:
    """A value Resend accepts in a tag (ASCII letters, digits, ``_`` and ``-``, <= 256)."""
    return _TAG_UNSAFE.sub("_", value)[:256]


def base_url(value: str, variable: str) -> str:
    """A base URL override, checked so a typo fails before anything is sent."""
    if not re.match(r"^https?://[^/\s]+", value or ""):
        raise ConfigError(f"{variable}={value!r} is not an http(s) URL")
    return value.rstrip("/")


def check_failed(provider: str, answer: Answer) -> ProviderError:
    """The error for a `check` call that got no usable answer (not a credential problem).

    A provider it could not reach names the setting that says where it is
    (``DRIPMAIL_<PROVIDER>_BASE_URL``, README "Providers"); nothing is sent by a check, so
    the reason is worded without the "not sent" of a message's error (`summary_reason`).
    """
    if answer.error and is_unreachable(answer.error):
        return ProviderError(
            f"{provider}: {summary_reason(answer.error)}; check DRIPMAIL_{provider.upper()}"
            "_BASE_URL (or leave it unset for the provider's own address) and the network, "
            "then try again"
        )
    detail = summary_reason(answer.error) if answer.error else f"HTTP {answer.status}"
    return ProviderError(f"{provider}: the check call failed ({detail}); try again later")


class ProviderRefused(ProviderAuthError):
    """The provider refuses the whole account or sender (not one recipient).

    A child of `ProviderAuthError` so the engine treats it the same way: stop at once, put
    every claimed delivery back unchanged, nothing marked failed.
    """

    def __init__(self, provider: str, variable: str, message: str) -> None:
        super().__init__(provider, variable)
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])
