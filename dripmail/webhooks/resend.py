"""Resend webhooks, signed the Svix / Standard Webhooks way.

Headers `svix-id`, `svix-timestamp`, `svix-signature` (``webhook-*`` accepted too). The signed
content is ``{id}.{timestamp}.{raw body}``, HMAC-SHA256 keyed with the base64-decoded part of
RESEND_WEBHOOK_SECRET after ``whsec_``; the header holds space-separated ``v1,<base64>``
signatures (several during a secret rotation). Timestamps older or newer than five minutes are
refused (Svix's documented tolerance). The `svix-id` stays the same when Svix retries, so it
is the dedupe key; it is also stored with a digest of the body (see `apply_events`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from dripmail.errors import ConfigError, InputError, WebhookAuthError
from dripmail.webhooks.common import (
    KEY_FIELD,
    WebhookEvent,
    check_fresh,
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

NAME = "resend"
PREFIX = "whsec_"
TOLERANCE = timedelta(minutes=5)


def secret_bytes(secret: str) -> bytes:
    """The HMAC key: the base64 part of a ``whsec_`` secret, decoded."""
    encoded = secret[len(PREFIX) :] if secret.startswith(PREFIX) else secret
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ConfigError(
            "RESEND_WEBHOOK_SECRET is not a signing secret: copy the whsec_... value from "
            "the webhook's page in Resend"
        ) from None


def verify(headers: Mapping[str, str], body: bytes, settings: Any, now: datetime) -> str:
    """Check the Svix signature and timestamp; returns the message id."""
    secret = secret_value(getattr(settings, "resend_webhook_secret", None))
    if not secret:
        raise WebhookAuthError(NAME, "RESEND_WEBHOOK_SECRET is not set")
    key = secret_bytes(secret)
    h = lower_headers(headers)
    prefix = "svix-" if "svix-id" in h else "webhook-"
    msg_id, stamp, signatures = (h.get(prefix + k, "") for k in ("id", "timestamp", "signature"))
    if not (msg_id and stamp and signatures):
        raise WebhookAuthError(NAME, "unsigned request (svix-id/-timestamp/-signature missing)")
    expected = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    matched = False
    for versioned in signatures.split():
        version, _, value = versioned.partition(",")
        if version != "v1":
            continue  # other schemes (e.g. v1a asymmetric) are not ours to check
        try:
            given = base64.b64decode(value, validate=True)
        except binascii.Error:
            continue
        # Check every listed signature (no early exit) so timing says nothing about which.
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise WebhookAuthError(NAME, "the signature does not match")
    check_fresh(NAME, stamp, now, TOLERANCE)
    return msg_id


def parse(headers: Mapping[str, str], body: bytes, settings: Any, now: datetime) -> list:
    """Verify, then normalise one Resend event (one per request)."""
    msg_id = verify(headers, body, settings, now)
    payload = require_object(NAME, load_json(NAME, body), "the body")
    digest = hashlib.sha256(body).hexdigest()
    return normalise(payload, msg_id, digest, now)


def _delivery_key(data: Mapping[str, Any]) -> str | None:
    tags = data.get("tags")
    if isinstance(tags, dict) and optional_str(tags.get(KEY_FIELD)):
        return optional_str(tags.get(KEY_FIELD))
    if isinstance(tags, list):  # older payloads: [{"name": ..., "value": ...}]
        for tag in tags:
            if isinstance(tag, dict) and tag.get("name") == KEY_FIELD:
                return optional_str(tag.get("value"))
    return None


def normalise(
    payload: dict[str, Any], msg_id: str, digest: str, now: datetime
) -> list[WebhookEvent]:
    """A Resend event as WebhookEvents (one per recipient in `data.to`)."""
    kind = require_str(NAME, payload, "type", "the body")
    data = require_object(NAME, payload.get("data"), "data")
    mapped = _map(kind, data)
    if mapped is None:
        return []
    type_, hard, detail = mapped
    to = data.get("to")
    recipients = [to] if isinstance(to, str) else to
    if not isinstance(recipients, list) or not all(
        isinstance(r, str) and r.strip() for r in recipients
    ):
        raise InputError(f"{NAME} webhook: data field 'to' must list recipient addresses")
    # `to` may read "Name <a@b>": keep the address.
    addresses = [r.strip().rpartition("<")[2].rstrip(">").strip() for r in recipients]
    at = parse_time(payload.get("created_at"), now)
    return [
        WebhookEvent(
            provider=NAME,
            dedupe_key=msg_id if len(addresses) == 1 else f"{msg_id}:{address.lower()}",
            type=type_,  # type: ignore[arg-type]
            email=address,
            delivery_key=_delivery_key(data),
            provider_message_id=optional_str(data.get("email_id")),
            at=at,
            detail=detail,
            hard=hard,
            replay_id=msg_id,
            replay_digest=digest,
            raw=raw_json(payload),
        )
        for address in addresses
    ]


def _map(kind: str, data: Mapping[str, Any]) -> tuple[str, bool, str] | None:
    """(type, hard, detail) for a Resend event type; None when not tracked."""
    if kind == "email.delivered":
        return "delivered", False, ""
    if kind == "email.opened":
        return "opened", False, ""
    if kind == "email.clicked":
        click = data.get("click")
        return "clicked", False, clip(click.get("link") if isinstance(click, dict) else "")
    if kind == "email.complained":
        return "complained", False, ""
    if kind == "email.bounced":
        found = data.get("bounce")
        bounce: Mapping[str, Any] = found if isinstance(found, dict) else {}
        hard = bounce.get("type") == "Permanent"  # Transient / Undetermined stay soft
        return "bounced", hard, clip(f"{bounce.get('type', '')}: {bounce.get('message', '')}")
    if kind == "email.delivery_delayed":
        return "bounced", False, "delivery delayed"
    if kind == "email.suppressed":
        found = data.get("suppressed")
        sup: Mapping[str, Any] = found if isinstance(found, dict) else {}
        if sup.get("reason") == "previous_complaint":
            return "complained", False, clip(sup.get("message", ""))
        return "bounced", True, clip(sup.get("message", "") or sup.get("reason", ""))
    return None
