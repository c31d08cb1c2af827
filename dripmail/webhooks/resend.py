"""Resend webhooks, signed the Svix / Standard Webhooks way.

Headers `svix-id`, `svix-timestamp`, `svix-signature` (``webhook-*`` accepted too). The signed
content is ``{id}.{timestamp}.{raw body}``, HMAC-SHA256 keyed with the base64-decoded part of
RESEND_WEBHOOK_SECRET after ``whsec_``; the header holds space-separated ``v1,<base64>``
signatures (several during a secret rotation). Timestamps older or newer than five minutes are
refused (Svix's documented tolerance). The `svix-id` stays the same when Svix retries, so it
is the dedupe key; it is also stored with a digest of the body (see `apply_events`).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from dripmail.errors import ConfigError, InputError, WebhookAuthError
from dripmail.webhooks.common import (
    KEY_FIELD,
    Rule,
    Table,
    WebhookEvent,
    check_fresh,
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

NAME = "resend"
PREFIX = "whsec_"
TOLERANCE = timedelta(minutes=5)


def _webhook(secret: str) -> Webhook:
    """The Standard Webhooks verifier for a ``whsec_`` secret (ConfigError when malformed)."""
    try:
        return Webhook(secret.strip())
    except (binascii.Error, ValueError, EmptyWebhookSecretError):
        raise ConfigError(
            "RESEND_WEBHOOK_SECRET is not a signing secret: copy the whsec_... value from "
            "the webhook's page in Resend"
        ) from None


def verify(headers: Mapping[str, str], body: bytes, settings: Any, now: datetime) -> str:
    """Check the Svix signature and timestamp; returns the message id.

    The signature is computed by the `standardwebhooks` package (the reference
    implementation Svix publishes: secret decoding, signed content, HMAC-SHA256). Its
    `verify()` is not called because it reads the wall clock for the five-minute window;
    here the window is checked against `now`, the app's clock, after the signature matched.
    """
    secret = secret_value(getattr(settings, "resend_webhook_secret", None))
    if not secret:
        raise WebhookAuthError(NAME, "RESEND_WEBHOOK_SECRET is not set")
    webhook = _webhook(secret)
    h = lower_headers(headers)
    prefix = "svix-" if "svix-id" in h else "webhook-"
    msg_id, stamp, signatures = (h.get(prefix + k, "") for k in ("id", "timestamp", "signature"))
    if not (msg_id and stamp and signatures):
        raise WebhookAuthError(NAME, "unsigned request (svix-id/-timestamp/-signature missing)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        # Standard Webhooks payloads are UTF-8 text: this one cannot be a signed event.
        # Refused as malformed input (nothing stored), like any body that is not UTF-8 JSON.
        raise InputError(f"{NAME} webhook: body is not UTF-8 JSON") from None
    try:
        when = datetime.fromtimestamp(int(stamp), UTC)
    except (ValueError, OverflowError, OSError):
        raise WebhookAuthError(NAME, "the timestamp is not a number of seconds") from None
    expected = webhook.sign(msg_id, when, text).partition(",")[2].encode()
    matched = False
    for versioned in signatures.split():
        version, _, value = versioned.partition(",")
        # Other schemes (e.g. v1a asymmetric) are not ours to check. Every listed signature
        # is compared (no early exit) so timing says nothing about which one matched.
        matched |= version == "v1" and hmac.compare_digest(expected, value.encode())
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
    fields = lookup(EVENTS, kind, data)
    if fields is None:
        return []
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
            email=address,
            delivery_key=_delivery_key(data),
            provider_message_id=optional_str(data.get("email_id")),
            at=at,
            replay_id=msg_id,
            replay_digest=digest,
            raw=raw_json(payload),
            **fields,
        )
        for address in addresses
    ]


def _click(data: Mapping[str, Any]) -> Any:
    click = data.get("click")
    return click.get("link") if isinstance(click, dict) else ""


def _part(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    found = data.get(name)
    return found if isinstance(found, dict) else {}


def _bounce_detail(data: Mapping[str, Any]) -> str:
    bounce = _part(data, "bounce")
    return f"{bounce.get('type', '')}: {bounce.get('message', '')}"


def _suppressed(data: Mapping[str, Any]) -> Rule:
    sup = _part(data, "suppressed")
    if sup.get("reason") == "previous_complaint":
        return Rule("complained", detail=sup.get("message", ""))
    return Rule("bounced", hard=True, detail=sup.get("message", "") or sup.get("reason", ""))


# Resend event `type` -> how it is recorded; types not listed (sent, scheduled...) are not
# tracked. Resend sends no unsubscribe event.
EVENTS: Table = {
    "email.delivered": Rule("delivered"),
    "email.opened": Rule("opened"),
    "email.clicked": Rule("clicked", detail=_click),
    "email.complained": Rule("complained"),
    # Permanent is hard; Transient / Undetermined stay soft.
    "email.bounced": Rule(
        "bounced",
        hard=lambda data: _part(data, "bounce").get("type") == "Permanent",
        detail=_bounce_detail,
    ),
    "email.delivery_delayed": Rule("bounced", hard=False, detail="delivery delayed"),
    "email.suppressed": _suppressed,
}
