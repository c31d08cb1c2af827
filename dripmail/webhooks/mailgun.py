"""Mailgun webhooks: HMAC-SHA256(signing key, timestamp + token), hex, inside the JSON body.

Body: ``{"signature": {"timestamp", "token", "signature"}, "event-data": {...}}``. The signature
covers only timestamp and token, not the event, so two more checks guard against a captured
signature being reused: the timestamp must be fresh (DRIPMAIL_WEBHOOK_TOLERANCE_SECONDS) and
the token is bound to the event it came with (`replay_id`/`replay_digest`, checked against
stored tokens by `apply_events`): the same token with a different event is refused.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from dripmail.errors import InputError, WebhookAuthError
from dripmail.webhooks.common import (
    KEY_FIELD,
    Rule,
    Table,
    WebhookEvent,
    canonical_hash,
    check_fresh,
    load_json,
    lookup,
    optional_str,
    parse_time,
    raw_json,
    require_object,
    require_str,
    secret_value,
    tolerance_of,
)

NAME = "mailgun"


# Permanent failures caused by Mailgun's own suppression lists say *why* it refused.
def _failure_detail(data: Mapping[str, Any]) -> str:
    found = data.get("delivery-status")
    status: Mapping[str, Any] = found if isinstance(found, dict) else {}
    reason = str(data.get("reason", "")).lower()
    return f"{reason}: {status.get('description') or status.get('message') or ''}".strip(": ")


def _permanent(data: Mapping[str, Any]) -> bool:
    return str(data.get("severity", "")).lower() == "permanent"


# A permanent failure for one of these reasons is the person's own complaint or unsubscribe
# (Mailgun suppressed the address for it), not a bounce.
SUPPRESS_REASONS: dict[str, Rule] = {
    "suppress-complaint": Rule("complained", detail=_failure_detail),
    "suppress-unsubscribe": Rule("unsubscribed", detail=_failure_detail),
}


def _failed(data: Mapping[str, Any]) -> Rule:
    reason = str(data.get("reason", "")).lower()
    if _permanent(data) and reason in SUPPRESS_REASONS:
        return SUPPRESS_REASONS[reason]
    return Rule("bounced", hard=_permanent, detail=_failure_detail)


# Mailgun `event` -> how it is recorded; kinds not listed (accepted, stored...) are not tracked.
EVENTS: Table = {
    "delivered": Rule("delivered"),
    "opened": Rule("opened"),
    "clicked": Rule("clicked", detail=lambda data: data.get("url")),
    "complained": Rule("complained"),
    "unsubscribed": Rule("unsubscribed"),
    "failed": _failed,
}


def verify(signature: Mapping[str, Any], settings: Any, now: datetime) -> str:
    """Check the HMAC and the freshness; returns the token."""
    key = secret_value(getattr(settings, "mailgun_webhook_signing_key", None))
    if not key:
        raise WebhookAuthError(NAME, "MAILGUN_WEBHOOK_SIGNING_KEY is not set")
    stamp, token, given = (signature.get(k) for k in ("timestamp", "token", "signature"))
    if isinstance(stamp, int) and not isinstance(stamp, bool):
        stamp = str(stamp)
    if not all(isinstance(v, str) and v for v in (stamp, token, given)):
        raise WebhookAuthError(NAME, "unsigned request (signature timestamp/token/signature)")
    expected = hmac.new(key.encode(), f"{stamp}{token}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), str(given).strip().lower().encode()):
        raise WebhookAuthError(NAME, "the signature does not match")
    check_fresh(NAME, str(stamp), now, tolerance_of(settings))
    return str(token)


def parse(headers: Mapping[str, str], body: bytes, settings: Any, now: datetime) -> list:
    """Verify, then normalise one Mailgun event (the signature lives in the JSON body)."""
    payload = load_json(NAME, body)
    if not isinstance(payload, dict) or not isinstance(payload.get("signature"), dict):
        # Nothing to verify against: refuse as unsigned rather than as malformed.
        raise WebhookAuthError(NAME, "unsigned request (no signature object in the body)")
    token = verify(payload["signature"], settings, now)
    data = require_object(NAME, payload.get("event-data"), "event-data")
    event = normalise(data, now)
    if event is None:
        return []
    # Bind the token to this exact event: the same token with other content is a replay.
    return [_with_replay(event, token, canonical_hash(data))]


def _with_replay(event: WebhookEvent, token: str, digest: str) -> WebhookEvent:
    return replace(event, replay_id=token, replay_digest=digest)


def _message_id(data: Mapping[str, Any]) -> str | None:
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    raw = optional_str(headers.get("message-id")) if isinstance(headers, dict) else None
    # The send answers "<id>", events carry "id": keep the bare form.
    return raw.strip("<>") if raw else None


def normalise(data: dict[str, Any], now: datetime) -> WebhookEvent | None:
    """One Mailgun event-data object; None for kinds not tracked (accepted, stored...)."""
    kind = require_str(NAME, data, "event", "event-data")
    email = require_str(NAME, data, "recipient", "event-data")
    variables = data.get("user-variables")
    if variables is not None and not isinstance(variables, dict):
        raise InputError(f"{NAME} webhook: event-data field 'user-variables' must be an object")
    event_id = optional_str(data.get("id"))
    base: dict[str, Any] = {
        "provider": NAME,
        # Mailgun's event id is unique per event and kept on retries.
        "dedupe_key": event_id or canonical_hash(data),
        "email": email,
        "delivery_key": optional_str((variables or {}).get(KEY_FIELD)),
        "provider_message_id": _message_id(data),
        "at": parse_time(data.get("timestamp"), now),
        "raw": raw_json(data),
    }
    fields = lookup(EVENTS, kind, data)
    return WebhookEvent(**base, **fields) if fields else None
