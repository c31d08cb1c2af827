"""Provider webhooks: verify each provider's documented authentication, normalise its events.

`verify_and_parse` is pure (no database): it raises `WebhookAuthError` for unsigned,
mis-signed or stale requests and `InputError` for a body that is not the documented shape.
`apply_events` / `ingest` store each event once (unique provider + dedupe key), refuse reused
nonces, and stop mail on hard bounces, complaints and provider-side unsubscribes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from dripmail.errors import InputError
from dripmail.webhooks.apply import Applied, apply_events, ingest
from dripmail.webhooks.common import EVENT_TYPES, KEY_FIELD, WebhookEvent

PROVIDERS = ("postmark", "sendgrid", "mailgun", "resend")

__all__ = [
    "EVENT_TYPES",
    "KEY_FIELD",
    "PROVIDERS",
    "Applied",
    "WebhookEvent",
    "apply_events",
    "ingest",
    "verify_and_parse",
]


def verify_and_parse(
    provider: str, headers: Mapping[str, str], body: bytes, settings: Any, now: datetime
) -> list[WebhookEvent]:
    """Authenticate one webhook request as `provider` documents it and normalise its events.

    `body` must be the raw request body (signatures cover the exact bytes). Events of kinds
    dripmail does not track (processed, accepted, sent...) are left out, so the list may be
    empty. Raises WebhookAuthError (answer 401), InputError (answer 400), or ConfigError when
    the configured key itself is unusable.
    """
    if provider == "postmark":
        from dripmail.webhooks import postmark as module
    elif provider == "sendgrid":
        from dripmail.webhooks import sendgrid as module  # type: ignore[no-redef]
    elif provider == "mailgun":
        from dripmail.webhooks import mailgun as module  # type: ignore[no-redef]
    elif provider == "resend":
        from dripmail.webhooks import resend as module  # type: ignore[no-redef]
    else:
        raise InputError(
            f"unknown webhook provider {provider!r}: use one of {', '.join(PROVIDERS)}"
        )
    return module.parse(headers, body, settings, now)
