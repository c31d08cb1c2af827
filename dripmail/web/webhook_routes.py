"""``POST /webhooks/{postmark|sendgrid|mailgun|resend}``: verify, store once, stop, cancel.

Verification and normalisation are `dripmail.webhooks.verify_and_parse` (each provider's own
documented scheme); storing is `ingest` (once per provider event id, replayed nonces refused,
mail stopped on hard bounce / complaint / unsubscribe). Answers are short JSON: 401 for any
authentication failure, 400 for a body that is not the documented shape, 500 (one line) when
the configured key itself is unusable. Providers retry on 5xx, so a database outage is a 503.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dripmail.errors import ConfigError, InputError, StoreError, WebhookAuthError
from dripmail.web.context import ctx, log

# SendGrid posts batches of up to a few thousand events; a few MB is plenty.
MAX_BODY = 5 * 1024 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def webhook(request: Request) -> Response:
    """Receive one provider's webhook request."""
    from dripmail.webhooks import PROVIDERS

    c = ctx(request)
    provider = request.path_params["provider"]
    if provider not in PROVIDERS:
        return _error(404, f"no webhook for {provider[:30]!r}: use one of {', '.join(PROVIDERS)}")
    body = await request.body()
    headers = dict(request.headers)
    try:
        applied = await c.db(c.app.apply_events, provider, headers, body)
    except WebhookAuthError as exc:
        log.warning("%s", exc)  # names the provider and the reason, never a secret
        return _error(401, str(exc))
    except InputError as exc:
        log.warning("%s webhook refused: %s", provider, exc)
        return _error(400, str(exc))
    except ConfigError as exc:
        log.error("%s webhook: %s", provider, exc)
        return _error(500, str(exc).splitlines()[0])
    except StoreError as exc:
        log.error("%s webhook not stored: %s", provider, exc)
        return _error(503, "storage unavailable, retry later")
    return JSONResponse(
        {
            "stored": applied.new,
            "duplicates": applied.duplicates,
            "stopped": len(applied.stopped),
            "cancelled": applied.recall.cancelled,
        }
    )
