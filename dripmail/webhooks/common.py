"""The normalised event every provider module returns, and the helpers they share.

Nothing here touches the database: verification and normalisation are pure functions of
(headers, body, settings, now), so they are easy to test and safe to run before any write.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from dripmail.errors import InputError, WebhookAuthError

EventType = Literal["delivered", "bounced", "complained", "unsubscribed", "opened", "clicked"]
EVENT_TYPES: tuple[str, ...] = (
    "delivered",
    "bounced",
    "complained",
    "unsubscribed",
    "opened",
    "clicked",
)

# The metadata name the delivery key travels under at every provider (Postmark Metadata,
# SendGrid custom_args, Mailgun v: variables, Resend tags). The providers package sets it.
KEY_FIELD = "dripmail_key"

# Default freshness window for signed timestamps. Svix (Resend) documents five minutes;
# SendGrid and Mailgun document none, so the same window applies (DRIPMAIL_WEBHOOK_TOLERANCE).
DEFAULT_TOLERANCE = timedelta(minutes=5)

DETAIL_MAX = 500
# The provider's raw event is kept up to this many characters of JSON (documented events are
# 1-3 KB; a larger one is stored as its first part, marked truncated, still valid JSON).
RAW_MAX = 16_000


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One provider event, normalised.

    `dedupe_key` is stable across the provider's retries of the same event (a provider event
    id, or a hash of the canonical event), so storing by (provider, dedupe_key) stores it once.
    `hard` is meaningful for bounces only: a hard bounce stops all mail to the address.
    `replay_id` / `replay_digest` carry a per-request nonce (Mailgun token, Svix message id) and
    a digest of what it signed for: `apply_events` refuses a nonce seen with other content.
    """

    provider: str
    dedupe_key: str
    type: EventType
    email: str
    delivery_key: str | None
    provider_message_id: str | None
    at: datetime
    detail: str = ""
    hard: bool = False
    replay_id: str | None = None
    replay_digest: str = ""
    raw: str = ""  # the provider's event as JSON text (`raw_json`), stored in `events.raw`

    @property
    def stored_type(self) -> str:
        """The `events.type` value: soft bounces are kept apart from hard ones."""
        if self.type == "bounced" and not self.hard:
            return "soft_bounced"
        return self.type

    @property
    def stops_mail(self) -> bool:
        """Hard bounce, complaint or provider-side unsubscribe: nothing more may be sent."""
        return (self.type == "bounced" and self.hard) or self.type in (
            "complained",
            "unsubscribed",
        )


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names are case-insensitive; providers and frameworks disagree on case."""
    return {str(k).lower(): str(v) for k, v in headers.items()}


def load_json(provider: str, body: bytes) -> Any:
    """The parsed body; InputError (never a traceback) when it is not UTF-8 JSON."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{provider} webhook: body is not UTF-8 JSON") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{provider} webhook: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise InputError(f"{provider} webhook: JSON nested too deeply") from None


def require_object(provider: str, value: Any, where: str) -> dict[str, Any]:
    """`value` as a JSON object, or InputError naming where it was expected."""
    if not isinstance(value, dict):
        raise InputError(f"{provider} webhook: {where} must be a JSON object")
    return value


def require_str(provider: str, obj: Mapping[str, Any], field: str, where: str = "event") -> str:
    """A non-empty string field, or InputError naming the field."""
    value = obj.get(field)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{provider} webhook: {where} field {field!r} must be a non-empty string")
    return value.strip()


def optional_str(value: Any) -> str | None:
    """A non-empty string or None (ids and keys that may be absent or of another type)."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def parse_time(value: Any, fallback: datetime) -> datetime:
    """An ISO 8601 string or Unix seconds as aware UTC; `fallback` when absent or unreadable.

    A provider's odd timestamp is not worth refusing an authenticated event for (it would
    only be retried forever), so it falls back to the time of receipt.
    """
    try:
        if isinstance(value, bool):
            return fallback
        if isinstance(value, int | float):
            return datetime.fromtimestamp(float(value), tz=UTC)
        if isinstance(value, str) and value.strip():
            parsed = datetime.fromisoformat(value.strip())
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        pass
    return fallback


def check_fresh(provider: str, stamp: str, now: datetime, tolerance: timedelta) -> datetime:
    """The signed Unix timestamp, if within `tolerance` of `now`; WebhookAuthError otherwise."""
    try:
        seconds = int(stamp.strip())
        when = datetime.fromtimestamp(seconds, tz=UTC)
    except (ValueError, OverflowError, OSError):
        raise WebhookAuthError(provider, "the signed timestamp is not Unix seconds") from None
    if when < now - tolerance:
        raise WebhookAuthError(provider, "the signed timestamp is too old (stale or replayed)")
    if when > now + tolerance:
        raise WebhookAuthError(provider, "the signed timestamp is in the future")
    return when


def canonical_hash(*parts: Any) -> str:
    """A stable digest of JSON-able parts (sorted keys), for events without a provider id."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def clip(text: Any) -> str:
    """A short one-line detail for the events table (never a whole payload)."""
    if text is None:
        return ""
    line = " ".join(str(text).split())
    return line[:DETAIL_MAX]


def raw_json(value: Any) -> str:
    """The provider's event as compact JSON text for `events.raw` (valid JSON, capped)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    if len(text) <= RAW_MAX:
        return text
    return json.dumps({"truncated": True, "head": text[: RAW_MAX - 100]}, ensure_ascii=False)


def tolerance_of(settings: Any) -> timedelta:
    """The freshness window from settings (DRIPMAIL_WEBHOOK_TOLERANCE_SECONDS)."""
    seconds = getattr(settings, "webhook_tolerance_seconds", None)
    return timedelta(seconds=seconds) if seconds else DEFAULT_TOLERANCE


def secret_value(value: Any) -> str | None:
    """A SecretStr / str setting as plain text, or None when unset or blank."""
    if value is None:
        return None
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return text.strip() or None


Field = Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Rule:
    """How one provider event kind becomes a `WebhookEvent`: an entry of a module's table.

    `hard` and `detail` are constants or functions of the provider's event object. A table
    value may also be a function returning a Rule (or None: not tracked) when the kind alone
    does not decide, e.g. a suppression whose reason says complaint or bounce.
    """

    type: EventType
    hard: bool | Field = False
    detail: str | Field = ""

    def fields(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """``type``, ``hard`` and ``detail`` for `item`, as WebhookEvent keyword arguments."""
        hard = self.hard(item) if callable(self.hard) else self.hard
        detail = self.detail(item) if callable(self.detail) else self.detail
        return {"type": self.type, "hard": bool(hard), "detail": clip(detail)}


Table = Mapping[str, Rule | Callable[[Mapping[str, Any]], Rule | None]]


def lookup(table: Table, kind: str, item: Mapping[str, Any]) -> dict[str, Any] | None:
    """The WebhookEvent fields for `kind` by `table`, or None when dripmail does not track it."""
    entry = table.get(kind)
    rule = entry(item) if entry is not None and not isinstance(entry, Rule) else entry
    return rule.fields(item) if rule is not None else None
