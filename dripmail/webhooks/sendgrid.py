"""SendGrid's signed Event Webhook: ECDSA P-256 / SHA-256 over timestamp + raw body.

Headers `X-Twilio-Email-Event-Webhook-Signature` (base64 DER signature) and
`X-Twilio-Email-Event-Webhook-Timestamp`; the verification key is the base64 DER public key
shown under Mail Settings (SENDGRID_WEBHOOK_PUBLIC_KEY; a PEM key is accepted too). The body is
a JSON array of events; `custom_args` sent with the message appear as top-level keys of each.
SendGrid documents no freshness window, so DRIPMAIL_WEBHOOK_TOLERANCE_SECONDS applies.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dripmail.errors import ConfigError, InputError, WebhookAuthError
from dripmail.webhooks.common import (
    KEY_FIELD,
    Rule,
    Table,
    WebhookEvent,
    canonical_hash,
    check_fresh,
    load_json,
    lookup,
    lower_headers,
    optional_str,
    parse_time,
    raw_json,
    require_object,
    require_str,
    tolerance_of,
)

NAME = "sendgrid"
SIGNATURE_HEADER = "x-twilio-email-event-webhook-signature"
TIMESTAMP_HEADER = "x-twilio-email-event-webhook-timestamp"

# Fields that may differ between two deliveries of the same event: sg_event_id is not stable
# across SendGrid's retries (PROVIDERS.md), so the dedupe hash leaves it out.
VOLATILE = frozenset({"sg_event_id"})


# `dropped` means SendGrid refused to send because the address is on one of its lists.
def _reason(item: Mapping[str, Any]) -> Any:
    return item.get("reason") or item.get("response") or ""


# A drop for one of these reasons means SendGrid will not mail the address (bounced before,
# marked invalid, reported spam, unsubscribed); other drops say nothing about the person.
DROP_REASONS: dict[str, Rule] = {
    "bounced address": Rule("bounced", hard=True, detail=_reason),
    "invalid": Rule("bounced", hard=True, detail=_reason),
    "spam reporting address": Rule("complained", detail=_reason),
    "unsubscribed address": Rule("unsubscribed", detail=_reason),
}

# SendGrid `event` -> how it is recorded; kinds not listed (processed...) are not tracked.
EVENTS: Table = {
    "delivered": Rule("delivered", detail=_reason),
    "open": Rule("opened"),
    "click": Rule("clicked", detail=lambda item: item.get("url")),
    # type "bounce" is a permanent rejection; "blocked" a temporary (reputation) one.
    "bounce": Rule(
        "bounced", hard=lambda item: item.get("type", "bounce") != "blocked", detail=_reason
    ),
    "deferred": Rule("bounced", hard=False, detail=_reason),
    "spamreport": Rule("complained"),
    "unsubscribe": Rule("unsubscribed", detail="unsubscribe"),
    "group_unsubscribe": Rule("unsubscribed", detail="group_unsubscribe"),
    "dropped": lambda item: DROP_REASONS.get(str(item.get("reason", "")).strip().lower()),
}


@lru_cache(maxsize=4)
def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The P-256 verification key from base64 DER (as SendGrid shows it) or PEM."""
    try:
        if "BEGIN PUBLIC KEY" in text:
            key = serialization.load_pem_public_key(text.encode())
        else:
            der = base64.b64decode("".join(text.split()), validate=True)
            key = serialization.load_der_public_key(der)
    except (ValueError, binascii.Error, TypeError):
        raise ConfigError(
            "SENDGRID_WEBHOOK_PUBLIC_KEY is not a public key: paste the verification key from "
            "SendGrid's Mail Settings > Signed Event Webhook"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ConfigError("SENDGRID_WEBHOOK_PUBLIC_KEY is not an ECDSA P-256 key")
    return key


def verify(headers: Mapping[str, str], body: bytes, settings: Any, now: datetime) -> None:
    """Check the ECDSA signature over timestamp + body and the timestamp's freshness."""
    key_text = (getattr(settings, "sendgrid_webhook_public_key", None) or "").strip()
    if not key_text:
        raise WebhookAuthError(NAME, "SENDGRID_WEBHOOK_PUBLIC_KEY is not set")
    key = load_public_key(key_text)
    h = lower_headers(headers)
    signature, stamp = h.get(SIGNATURE_HEADER, ""), h.get(TIMESTAMP_HEADER, "")
    if not signature or not stamp:
        raise WebhookAuthError(NAME, "unsigned request (no signature or timestamp header)")
    try:
        der_signature = base64.b64decode(signature.strip(), validate=True)
    except binascii.Error:
        raise WebhookAuthError(NAME, "the signature is not base64") from None
    try:
        key.verify(der_signature, stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise WebhookAuthError(NAME, "the signature does not match") from None
    # After the signature: the timestamp is then known to be SendGrid's own.
    check_fresh(NAME, stamp, now, tolerance_of(settings))


def parse(headers: Mapping[str, str], body: bytes, settings: Any, now: datetime) -> list:
    """Verify, then normalise a SendGrid event batch."""
    verify(headers, body, settings, now)
    batch = load_json(NAME, body)
    if not isinstance(batch, list):
        raise InputError(f"{NAME} webhook: the body must be a JSON array of events")
    out = []
    for i, item in enumerate(batch):
        event = normalise(require_object(NAME, item, f"event {i}"), now)
        if event:
            out.append(event)
    return out


def _message_id(value: Any) -> str | None:
    # sg_message_id is the X-Message-Id of the send plus ".filter...": keep the send's id.
    text = optional_str(value)
    return text.split(".filter", 1)[0] if text else None


def normalise(item: dict[str, Any], now: datetime) -> WebhookEvent | None:
    """One SendGrid event; None for kinds dripmail does not track (processed, ...)."""
    kind = require_str(NAME, item, "event")
    email = require_str(NAME, item, "email")
    stable = {k: v for k, v in item.items() if k not in VOLATILE}
    base: dict[str, Any] = {
        "provider": NAME,
        "dedupe_key": canonical_hash(stable),
        "email": email,
        "delivery_key": optional_str(item.get(KEY_FIELD)),
        "provider_message_id": _message_id(item.get("sg_message_id")),
        "at": parse_time(item.get("timestamp"), now),
        "raw": raw_json(item),
    }
    fields = lookup(EVENTS, kind, item)
    return WebhookEvent(**base, **fields) if fields else None
