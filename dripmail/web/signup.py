"""Sign-up with double opt-in: the form page, ``POST /subscribe`` and the embeddable form.

Every accepted request gets the same friendly answer whether the address was new, pending,
already active or suppressed, so the endpoint cannot be used to find out who is subscribed.
The confirmation email goes out after the answer (a background task): the answer takes the
same time either way, and `send_confirmations` throttles repeats (one per quiet period, a few
in all), so a form submitted ten times sends one email.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dripmail.web.context import WebContext, ctx, log
from dripmail.web.forms import read_fields, wants_json

HONEYPOT = "website"
THANKS = (
    "Thank you! If this address can join, a confirmation link is on its way to it: "
    "open it to start the course."
)
MAX_SOURCE = 512


def client_ip(request: Request) -> str:
    """The client's address (behind a proxy, uvicorn's --proxy-headers puts the real one here)."""
    return request.client.host if request.client else "unknown"


def _source(fields: dict[str, str], request: Request) -> str | None:
    """The page the form was on: the form's `source` field, else the Referer; http(s) only."""
    for candidate in (fields.get("source", ""), request.headers.get("referer", "")):
        candidate = candidate.strip()
        parts = urlsplit(candidate) if candidate else None
        if parts and parts.scheme in ("http", "https") and parts.netloc:
            return candidate[:MAX_SOURCE]
    return None


async def signup_page(request: Request) -> Response:
    """``GET /``: the sign-up form on a page of its own."""
    c = ctx(request)
    course = c.rules()  # no lesson text: the form stays up while a lesson is broken
    return c.render(
        request,
        "signup.html",
        title=course.title,
        action="/subscribe",
        timezone=course.timezone,
        send_time=course.send_time.strftime("%H:%M"),
    )


def _thanks(c: WebContext, request: Request, as_json: bool, task=None) -> Response:
    if as_json:
        return JSONResponse({"ok": True, "message": THANKS}, background=task)
    response = c.render(request, "subscribed.html", text=THANKS, title="Check your inbox")
    response.background = task
    return response


async def subscribe(request: Request) -> Response:
    """``POST /subscribe``: a pending subscriber with a consent record, and the confirm email.

    Validation and storing are `Dripmail.subscribe` (the same checks as every other door); a
    bad address is a 400 naming the field, a bad hidden time-zone field falls back to the
    course's zone.
    """
    c = ctx(request)
    as_json = wants_json(request)
    ip = client_ip(request)
    wait = c.limiter.take(ip)
    if wait is not None:
        retry = str(max(1, round(wait)))
        text = "Too many sign-ups from your network just now. Please try again in a minute."
        if as_json:
            return JSONResponse(
                {"ok": False, "error": text}, status_code=429, headers={"Retry-After": retry}
            )
        return c.message(request, 429, "Slow down a little", text, headers={"Retry-After": retry})
    fields = await read_fields(request)
    if fields.get(HONEYPOT, "").strip():
        # A bot filled the invisible field: answer as usual, store nothing.
        log.info("sign-up from %s dropped: honeypot filled", ip)
        return _thanks(c, request, as_json)
    signed = await c.db(
        c.app.subscribe,
        fields.get("email", ""),
        name=fields.get("first_name", ""),
        timezone=fields.get("timezone", ""),
        ip=ip,
        user_agent=request.headers.get("user-agent", "")[:512] or None,
        page=_source(fields, request),
    )
    sid = signed.subscriber_id
    task = BackgroundTask(send_confirmation, c, sid) if sid is not None else None
    return _thanks(c, request, as_json, task)


def send_confirmation(c: WebContext, subscriber_id: int) -> int:
    """Send the double opt-in email if the subscriber is pending and was not mailed recently.

    Runs after the answer went out (in a worker thread). Failures are logged in one line: the
    visitor already has their answer, and signing up again retries after the quiet period.
    """
    try:
        return c.app.send_confirmations([subscriber_id])
    except Exception as exc:
        log.error("confirmation email for subscriber %s not sent: %s", subscriber_id, exc)
        return 0


_BLANK_LINES = re.compile(r"\n\s*\n+")


def embed_form(c: WebContext) -> str:
    """The HTML sign-up form to paste into the blog (posts to DRIPMAIL_PUBLIC_URL/subscribe)."""
    course = c.course()
    html = c.pages.get_template("embed_form.html").render(
        course_title=course.title,
        action=c.settings.public_url.rstrip("/") + "/subscribe",
        timezone=course.timezone,
        send_time=course.send_time.strftime("%H:%M"),
        primary=course.brand.primary,
    )
    return _BLANK_LINES.sub("\n", html).strip() + "\n"
