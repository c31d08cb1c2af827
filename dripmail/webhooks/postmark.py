"""Postmark webhooks: HTTP basic auth on the webhook URL, one JSON object per request.

Postmark signs nothing; it documents basic-auth credentials configured on the webhook (plus an
IP allowlist, left to the deployment). Both parts are compared in constant time. Record types:
Delivery, Bounce, SpamComplaint, Open, Click, SubscriptionChange.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dripmail.errors import WebhookAuthError
from dripmail.webhooks.common import (
    KEY_FIELD,
    Rule,
    Table,
    WebhookEvent,
    canonical_hash,
    clip,
    load_json,
    lookup,
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


def _bounce(record: Mapping[str, Any]) -> Rule:
    """A Bounce record: its `Type` says whether it is a bounce, a complaint or an unsubscribe."""
    bounce_type = optional_str(record.get("Type")) or ""
    said = clip(record.get("Description") or record.get("Details") or "")
    detail = said or bounce_type
    if bounce_type == "SpamComplaint":
        return Rule("complained", detail=detail)
    if bounce_type == "Unsubscribe":  # a "please unsubscribe me" reply, classed as bounce
        return Rule("unsubscribed", detail=detail)
    # `Inactive` means Postmark deactivated the address: it will not deliver there again.
    hard = bounce_type in HARD_TYPES or record.get("Inactive") is True
    # The type, then Postmark's words when it gave any (never "HardBounce: HardBounce").
    typed = f"{bounce_type}: {said}" if bounce_type and said else detail
    return Rule("bounced", hard=hard, detail=typed)


def _complaint(record: Mapping[str, Any]) -> Rule:
    bounce_type = optional_str(record.get("Type")) or ""
    return Rule(
        "complained", detail=record.get("Description") or record.get("Details") or bounce_type
    )


def _suppression_detail(record: Mapping[str, Any]) -> str:
    """ "HardBounce (origin: Recipient)": the reason, and who asked when Postmark says."""
    reason = optional_str(record.get("SuppressionReason")) or "suppressed"
    origin = optional_str(record.get("Origin"))
    return f"{reason} (origin: {origin})" if origin else reason


# SubscriptionChange `SuppressionReason` -> what it means for the person.
SUPPRESSIONS: dict[str, Rule] = {
    "HardBounce": Rule("bounced", hard=True, detail=_suppression_detail),
    "SpamComplaint": Rule("complained", detail=_suppression_detail),
}


def _subscription_change(record: Mapping[str, Any]) -> Rule | None:
    if record.get("SuppressSending") is not True:
        return None  # a reactivation: nothing to stop (re-subscribing is the person's call)
    reason = optional_str(record.get("SuppressionReason")) or ""
    return SUPPRESSIONS.get(reason, Rule("unsubscribed", detail=_suppression_detail))


# Postmark `RecordType` -> how it is recorded; record types not listed are not tracked.
EVENTS: Table = {
    "Bounce": _bounce,
    "SpamComplaint": _complaint,
    "Delivery": Rule("delivered", detail=lambda r: r.get("Details")),
    "Open": Rule("opened"),
    "Click": Rule("clicked", detail=lambda r: optional_str(r.get("OriginalLink")) or ""),
    "SubscriptionChange": _subscription_change,
}


@dataclass(frozen=True, slots=True)
class _Shape:
    """Where a record type keeps the address and the time, and what makes it unique."""

    email: str
    at: str
    # Fields hashed (beside type, message id, address and time) into the dedupe key.
    extra: Callable[[Mapping[str, Any]], tuple[Any, ...]] = lambda r: ()
    # Bounce and complaint records carry Postmark's own unique ID.
    by_id: bool = False


SHAPES: dict[str, _Shape] = {
    "Bounce": _Shape("Email", "BouncedAt", by_id=True),
    "SpamComplaint": _Shape("Email", "BouncedAt", by_id=True),
    "Delivery": _Shape("Recipient", "DeliveredAt"),
    "Open": _Shape("Recipient", "ReceivedAt", lambda r: (None,)),
    "Click": _Shape("Recipient", "ReceivedAt", lambda r: (optional_str(r.get("OriginalLink")),)),
    "SubscriptionChange": _Shape(
        "Recipient",
        "ChangedAt",
        lambda r: (optional_str(r.get("SuppressionReason")) or "",),
    ),
}


def normalise(record: dict[str, Any], now: datetime) -> WebhookEvent | None:
    """One Postmark record as a WebhookEvent; None for record types dripmail does not track."""
    kind = require_str(NAME, record, "RecordType")
    shape = SHAPES.get(kind)
    if shape is None:
        return None
    fields = lookup(EVENTS, kind, record)
    if fields is None:
        return None
    email = require_str(NAME, record, shape.email)
    message_id = optional_str(record.get("MessageID"))
    at_raw = record.get(shape.at)
    rid = optional_str(record.get("ID")) if shape.by_id else None
    if shape.by_id:
        dedupe = f"{kind.lower()}-{rid}" if rid else canonical_hash(kind, record)
    else:
        dedupe = canonical_hash(kind, message_id, email, at_raw, *shape.extra(record))
    return WebhookEvent(
        provider=NAME,
        dedupe_key=dedupe,
        email=email,
        delivery_key=_key(record),
        provider_message_id=message_id,
        at=parse_time(at_raw, now),
        raw=raw_json(record),
        **fields,
    )
