"""The links in every email: confirm, unsubscribe (RFC 8058 one-click) and preferences.

Each URL carries a signed token (`dripmail.tokens`): the subscriber id and the purpose, never
the address. A bad, expired or wrong-purpose token raises TokenError, which the app answers
with a clear page and a 400. A GET never changes anything: confirming and unsubscribing need a
POST (a button on the page, or RFC 8058 one-click), because mail scanners prefetch links.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from dripmail.errors import InputError, TokenError
from dripmail.states import STOPPED as STOPPED_STATUSES
from dripmail.tokens import Purpose
from dripmail.validation import canonical_zones
from dripmail.web.context import WebContext, ctx
from dripmail.web.forms import read_fields

NO_STORE = {"Cache-Control": "no-store"}


def _token_id(request: Request, purpose: Purpose) -> int:
    token = request.path_params["token"]
    if len(token) > 200:  # real tokens are ~40 characters: do not even try to verify more
        raise TokenError(f"this {purpose} link is not valid")
    c = ctx(request)
    # Aged by the app's clock (as its links are stamped), not the wall clock.
    return c.runner.signer.read(token, purpose, now=c.now())


def mask(address: str) -> str:
    """``j***@example.com``: enough for a reader to recognise their address, not to harvest it."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"


def local_when(due: datetime, zone: str) -> str:
    """A due time as the subscriber reads it: ``Tuesday 2 June 2026 at 07:00 (Europe/Berlin)``."""
    at = due.astimezone(ZoneInfo(zone))
    return f"{at:%A} {at.day} {at:%B %Y} at {at:%H:%M} ({zone})"


def next_lesson(c: WebContext, subscriber_id: int) -> tuple[int, datetime] | None:
    """(day, due time) of the next lesson still to go out, or None."""
    return c.app.next_lesson(subscriber_id)


def _sentence(c: WebContext, found: tuple[int, datetime] | None, zone: str, first: bool) -> str:
    if found is None:
        return ""
    day, due = found
    try:
        subject = c.course().lesson(day).subject
    except Exception:
        subject = f"Day {day}"
    which = "Your first lesson" if first else "Your next lesson"
    return f"{which}, “{subject}”, arrives on {local_when(due, zone)}."


def _lesson_sentence(c: WebContext, sub, first: bool) -> str:
    return _sentence(c, next_lesson(c, sub["id"]), sub["timezone"], first)


# -- confirm -----------------------------------------------------------------------------


async def confirm_page(request: Request) -> Response:
    """``GET /confirm/{token}``: a page with one button. A GET alone never confirms.

    Mail scanners and link previews open every link in an email; confirming on their GET
    would start a course nobody asked for.
    """
    c = ctx(request)
    sid = _token_id(request, "confirm")
    sub = await c.db(c.app.subscriber, sid)
    if sub["status"] != "pending":
        return await _confirmed(request, sid)
    return c.render(
        request,
        "confirm.html",
        headers=NO_STORE,
        title="Confirm your address",
        masked=mask(sub["email"]),
        send_time=(sub["send_time"] or c.rules().send_time.strftime("%H:%M")),
        action=request.url.path,
    )


async def confirm(request: Request) -> Response:
    """``POST /confirm/{token}``: activate, plan the week by the start rule, say when it starts."""
    return await _confirmed(request, _token_id(request, "confirm"))


async def _confirmed(request: Request, sid: int) -> Response:
    c = ctx(request)
    course = c.rules()
    result = await c.db(c.app.confirm, sid) if request.method == "POST" else None
    if result is None:  # the GET of an address confirmed before: show where it stands
        sub = await c.db(c.app.subscriber, sid)
        found = await c.db(next_lesson, c, sid)
        status, email, zone, confirmed_now = sub["status"], sub["email"], sub["timezone"], False
    else:
        status, email, zone = result.status, result.email, result.timezone
        found, confirmed_now = result.next_lesson, result.confirmed_now
    if status in STOPPED_STATUSES:
        return c.message(
            request,
            200,
            "Nothing to confirm",
            f"{mask(email)} was unsubscribed earlier, so nothing was restarted.",
            headers=NO_STORE,
        )
    if confirmed_now:
        title, text = "You are in!", f"Welcome to {course.title}."
    else:
        title, text = "Already confirmed", "This address was confirmed before; nothing changed."
    sentence = _sentence(c, found, zone, first=confirmed_now)
    if not sentence and status == "completed":
        sentence = "You have had every lesson of the course."
    prefs = c.app.signer.make(sid, "preferences", issued_at=c.now())
    return c.render(
        request,
        "confirmed.html",
        headers=NO_STORE,
        title=title,
        text=text,
        next_lesson=sentence,
        preferences_url=f"/preferences/{prefs}",
    )


# -- unsubscribe ---------------------------------------------------------------------------


async def unsubscribe_page(request: Request) -> Response:
    """``GET /unsubscribe/{token}``: a page with one button. A GET alone never unsubscribes."""
    c = ctx(request)
    sid = _token_id(request, "unsubscribe")
    sub = await c.db(c.app.subscriber, sid)
    if sub["status"] in STOPPED_STATUSES:
        return c.render(
            request, "unsubscribed.html", headers=NO_STORE, masked=mask(sub["email"]),
            still_arriving="", title="Unsubscribed",
        )  # fmt: skip
    prefs = c.app.signer.make(sid, "preferences", issued_at=c.now())
    return c.render(
        request,
        "unsubscribe.html",
        headers=NO_STORE,
        title="Unsubscribe",
        masked=mask(sub["email"]),
        action=request.url.path,
        preferences_url=f"/preferences/{prefs}",
    )


async def unsubscribe(request: Request) -> Response:
    """``POST /unsubscribe/{token}``: RFC 8058 one-click, or the button on the page.

    One-click (body ``List-Unsubscribe=One-Click``) gets a bare 200; the button a page.
    Lessons already scheduled at a provider that can cancel are cancelled there.
    """
    c = ctx(request)
    sid = _token_id(request, "unsubscribe")
    fields = await read_fields(request)
    one_click = fields.get("List-Unsubscribe") == "One-Click"
    if not one_click and fields.get("confirm") != "yes":
        raise InputError("nothing was changed: use the Unsubscribe button on the page")
    result = await c.db(c.app.unsubscribe, sid, "one-click" if one_click else "link")
    if one_click and fields.get("confirm") != "yes":
        return PlainTextResponse("Unsubscribed.\n", headers=NO_STORE)
    arriving = result.recall.still_arriving
    still = (
        f"{arriving} lesson(s) already handed to the mail service will still arrive."
        if arriving
        else ""
    )
    return c.render(
        request, "unsubscribed.html", headers=NO_STORE, title="Unsubscribed",
        masked=mask(result.email), still_arriving=still,
    )  # fmt: skip


# -- preferences ---------------------------------------------------------------------------


def _effective_time(sub, course) -> str:
    return sub["send_time"] or course.send_time.strftime("%H:%M")


def _status_line(c: WebContext, sub) -> str:
    status = sub["status"]
    if status == "pending":
        return "You have not confirmed your address yet: open the link in the confirmation email."
    if status == "paused":
        return "The course is paused. Choose “Keep sending” to continue with the next lesson."
    if status == "completed":
        return "You have finished the course."
    if status in ("unsubscribed", "bounced", "complained"):
        return "This address gets no emails from us."
    return _lesson_sentence(c, sub, first=False) or "The course is running."


async def preferences_page(request: Request) -> Response:
    """``GET /preferences/{token}``: pause/resume, newsletter, send time and time zone."""
    c = ctx(request)
    sid = _token_id(request, "preferences")

    def work():
        sub = c.app.subscriber(sid)
        return sub, _status_line(c, sub)

    sub, line = await c.db(work)
    saved = "" if request.query_params.get("saved") != "1" else "Your preferences are updated."
    return _preferences(c, request, sub, line, saved=saved)


def _preferences(
    c: WebContext,
    request: Request,
    sub,
    line: str,
    *,
    saved: str = "",
    error: str = "",
    status_code: int = 200,
) -> Response:
    course = c.rules()  # send time only: the page works while a lesson is broken
    sid = sub["id"]
    return c.render(
        request,
        "preferences.html",
        status_code,
        headers=NO_STORE,
        title="Your preferences",
        masked=mask(sub["email"]),
        saved=saved,
        error=error,
        status_line=line,
        status=sub["status"],
        stopped=sub["status"] in STOPPED_STATUSES,
        can_pause=sub["status"] in ("active", "paused"),
        newsletters=bool(sub["newsletters"]),
        send_time=_effective_time(sub, course),
        default_time=course.send_time.strftime("%H:%M"),
        timezone=sub["timezone"],
        zones=canonical_zones(),
        action=request.url.path,
        unsubscribe_url="/unsubscribe/"
        + c.runner.signer.make(sid, "unsubscribe", issued_at=c.now()),
    )


async def preferences(request: Request) -> Response:
    """``POST /preferences/{token}``: save; a new time or zone re-plans the lessons left.

    Everything is validated before anything is written (`Dripmail.set_preferences`); a
    refused value shows the page again with the reason and a 400, a stopped subscriber 409.
    """
    c = ctx(request)
    sid = _token_id(request, "preferences")
    fields = await read_fields(request)

    def work() -> Response | None:
        try:
            c.app.set_preferences(
                sid,
                newsletters=fields.get("newsletters", "") in ("on", "yes", "true", "1"),
                timezone=fields.get("timezone", ""),
                send_time=fields.get("send_time", ""),
                course=fields.get("course", ""),
            )
        except InputError as exc:
            sub = c.app.subscriber(sid)
            code = 409 if sub["status"] in STOPPED_STATUSES else 400
            return _preferences(
                c, request, sub, _status_line(c, sub), error=str(exc).rstrip(".") + ".",
                status_code=code,
            )  # fmt: skip
        return None

    answer = await c.db(work)
    if answer is not None:
        return answer
    return RedirectResponse(f"{request.url.path}?saved=1", status_code=303, headers=NO_STORE)
