"""Postmark webhooks: HTTP basic auth on the webhook URL, one JSON object per request.

Postmark signs nothing; it documents basic-auth credentials configured on the webhook (plus an
IP allowlist, left to the deployment). Both parts are compared in constant time. Record types:
Delivery, Bounce, SpamComplaint, Open, Click, SubscriptionChange.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from dripmail.errors import WebhookAuthError
from dripmail.webhooks.common import (
    KEY_FIELD,
    WebhookEvent,
    canonical_hash,
    clip,
    load_json,
    lower_headers,
    optional_str,
    parse_time,
    raw_json,
    require_object,
    require_str,
    secret_value,
)

NAME = "postmark"

# Bounce `Type`s after which Postmark will not deliver to the address again.
HARD_TYPES = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated", "Blocked"})


def verify(headers: Mapping[str, str], settings: Any) -> None:
    """Check the basic-auth credentials; WebhookAuthError when absent or wrong."""
    user = (getattr(settings, "postmark_webhook_user", None) or "").strip()
    password = secret_value(getattr(settings, "postmark_webhook_password", None))
    if not user or not password:
        raise WebhookAuthError(
            NAME, "POSTMARK_WEBHOOK_USER and POSTMARK_WEBHOOK_PASSWORD are not set"
        )
    auth = lower_headers(headers).get("authorization", "")
    scheme, _, encoded = auth.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise WebhookAuthError(NAME, "no basic-auth credentials")
    try:
        given_user, sep, given_password = (
            base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        )
    except (binascii.Error, UnicodeDecodeError):
        raise WebhookAuthError(NAME, "malformed basic-auth credentials") from None
    # Compare both parts even when the first differs, so timing tells nothing.
    ok_user = hmac.compare_digest(given_user.encode(), user.encode())
    ok_password = hmac.compare_digest(given_password.encode(), password.encode())
    if not (sep and ok_user and ok_password):
        raise WebhookAuthError(NAME, "wrong basic-auth credentials")


def parse(headers: Mapping[str, str], body: bytes, settings: Any, now: datetime) -> list:
    """Verify, then normalise one Postmark webhook body into zero or one events."""
    verify(headers, settings)
    record = require_object(NAME, load_json(NAME, body), "the body")
    event = normalise(record, now)
    return [event] if event else []


def _key(record: Mapping[str, Any]) -> str | None:
    metadata = record.get("Metadata")
    return optional_str(metadata.get(KEY_FIELD)) if isinstance(metadata, dict) else None


def normalise(record: dict[str, Any], now: datetime) -> WebhookEvent | None:
    """One Postmark record as a WebhookEvent; None for record types dripmail does not track."""
    kind = require_str(NAME, record, "RecordType")
    message_id = optional_str(record.get("MessageID"))
    common: dict[str, Any] = {
        "provider": NAME,
        "delivery_key": _key(record),
        "provider_message_id": message_id,
        "raw": raw_json(record),
    }
    if kind in ("Bounce", "SpamComplaint"):
        email = require_str(NAME, record, "Email")
        bounce_type = optional_str(record.get("Type")) or ""
        at = parse_time(record.get("BouncedAt"), now)
        # Bounce and complaint records carry Postmark's own unique ID.
        rid = optional_str(record.get("ID"))
        dedupe = f"{kind.lower()}-{rid}" if rid else canonical_hash(kind, record)
        detail = clip(record.get("Description") or record.get("Details") or bounce_type)
        if kind == "SpamComplaint" or bounce_type == "SpamComplaint":
            return WebhookEvent(
                **common, dedupe_key=dedupe, type="complained", email=email, at=at, detail=detail
            )
        if bounce_type == "Unsubscribe":  # a "please unsubscribe me" reply, classed as bounce
            return WebhookEvent(
                **common, dedupe_key=dedupe, type="unsubscribed", email=email, at=at, detail=detail
            )
        # `Inactive` means Postmark deactivated the address: it will not deliver there again.
        hard = bounce_type in HARD_TYPES or record.get("Inactive") is True
        return WebhookEvent(
            **common,
            dedupe_key=dedupe,
            type="bounced",
            email=email,
            at=at,
            detail=clip(f"{bounce_type}: {detail}"),
            hard=hard,
        )
    if kind == "Delivery":
        email = require_str(NAME, record, "Recipient")
        at_raw = record.get("DeliveredAt")
        return WebhookEvent(
            **common,
            dedupe_key=canonical_hash(kind, message_id, email, at_raw),
            type="delivered",
            email=email,
            at=parse_time(at_raw, now),
            detail=clip(record.get("Details")),
        )
    if kind in ("Open", "Click"):
        email = require_str(NAME, record, "Recipient")
        at_raw = record.get("ReceivedAt")
        link = optional_str(record.get("OriginalLink")) if kind == "Click" else None
        return WebhookEvent(
            **common,
            dedupe_key=canonical_hash(kind, message_id, email, at_raw, link),
            type="opened" if kind == "Open" else "clicked",
            email=email,
            at=parse_time(at_raw, now),
            detail=clip(link or ""),
        )
    if kind == "SubscriptionChange":
        email = require_str(NAME, record, "Recipient")
        if record.get("SuppressSending") is not True:
            return None  # a reactivation: nothing to stop (re-subscribing is the person's call)
        reason = optional_str(record.get("SuppressionReason")) or ""
        at_raw = record.get("ChangedAt")
        dedupe = canonical_hash(kind, message_id, email, at_raw, reason)
        at = parse_time(at_raw, now)
        detail = clip(f"{reason} ({record.get('Origin', '')})")
        if reason == "HardBounce":
            return WebhookEvent(
                **common,
                dedupe_key=dedupe,
                type="bounced",
                email=email,
                at=at,
                detail=detail,
                hard=True,
            )
        if reason == "SpamComplaint":
            return WebhookEvent(
                **common, dedupe_key=dedupe, type="complained", email=email, at=at, detail=detail
            )
        return WebhookEvent(
            **common, dedupe_key=dedupe, type="unsubscribed", email=email, at=at, detail=detail
        )
    return None
