"""The links in every email: confirm, unsubscribe (RFC 8058 one-click) and preferences.

Each URL carries a signed token (`dripmail.tokens`): the subscriber id and the purpose, never
the address. A bad, expired or wrong-purpose token raises TokenError, which the app answers
with a clear page and a 400. A GET never changes anything except `/confirm` (the double
opt-in click); unsubscribing needs a POST, because mail scanners prefetch links.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, time
from zoneinfo import ZoneInfo, available_timezones

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from dripmail.errors import InputError, TokenError
from dripmail.tokens import Purpose
from dripmail.web.context import WebContext, ctx, log
from dripmail.web.forms import read_fields

NO_STORE = {"Cache-Control": "no-store"}
ACTIVE_STATES = ("planned", "claimed", "sending", "handed")
_ZONES: list[str] | None = None


def _zones() -> list[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = sorted(z for z in available_timezones() if "/" in z or z == "UTC")
    return _ZONES


def _token_id(request: Request, purpose: Purpose) -> int:
    token = request.path_params["token"]
    if len(token) > 200:  # real tokens are ~40 characters: do not even try to verify more
        raise TokenError(f"this {purpose} link is not valid")
    return ctx(request).runner.signer.read(token, purpose)


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
    from dripmail.store.schema import deliveries

    with c.engine.connect() as conn:
        row = conn.execute(
            select(deliveries.c.lesson_day, deliveries.c.due_at)
            .where(
                deliveries.c.subscriber_id == subscriber_id,
                deliveries.c.state.in_(ACTIVE_STATES),
            )
            .order_by(deliveries.c.lesson_day)
            .limit(1)
        ).first()
    return (row.lesson_day, row.due_at) if row else None


def _lesson_sentence(c: WebContext, sub, first: bool) -> str:
    found = next_lesson(c, sub["id"])
    if found is None:
        return ""
    day, due = found
    try:
        subject = c.course().lesson(day).subject
    except Exception:
        subject = f"Day {day}"
    which = "Your first lesson" if first else "Your next lesson"
    return f"{which}, “{subject}”, arrives on {local_when(due, sub['timezone'])}."


# -- confirm -----------------------------------------------------------------------------


async def confirm(request: Request) -> Response:
    """``GET /confirm/{token}``: activate, plan the week by the start rule, say when it starts."""
    from dripmail.subscribers import STOPPED, activate, get_subscriber

    c = ctx(request)
    sid = _token_id(request, "confirm")
    course = c.course()
    now = c.now()

    def work():
        sub = get_subscriber(c.engine, sid)
        confirmed_now = False
        if sub["status"] == "pending":
            # A second click at the same instant may plan the lessons first.
            with contextlib.suppress(IntegrityError):
                activate(c.engine, sid, course, now)
            confirmed_now = True
            sub = get_subscriber(c.engine, sid)
        return sub, confirmed_now, _lesson_sentence(c, sub, first=confirmed_now)

    sub, confirmed_now, sentence = await c.db(work)
    prefs = c.runner.signer.make(sid, "preferences")
    if sub["status"] in STOPPED:
        return c.message(
            request,
            200,
            "Nothing to confirm",
            f"{mask(sub['email'])} was unsubscribed earlier, so nothing was restarted.",
            headers=NO_STORE,
        )
    if confirmed_now:
        title, text = "You are in!", f"Welcome to {course.title}."
    else:
        title, text = "Already confirmed", "This address was confirmed before; nothing changed."
    if not sentence and sub["status"] == "completed":
        sentence = "You have had every lesson of the course."
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
    from dripmail.subscribers import STOPPED, get_subscriber

    c = ctx(request)
    sid = _token_id(request, "unsubscribe")
    sub = await c.db(get_subscriber, c.engine, sid)
    if sub["status"] in STOPPED:
        return c.render(
            request, "unsubscribed.html", headers=NO_STORE, masked=mask(sub["email"]),
            still_arriving="", title="Unsubscribed",
        )  # fmt: skip
    prefs = c.runner.signer.make(sid, "preferences")
    return c.render(
        request,
        "unsubscribe.html",
        headers=NO_STORE,
        title="Unsubscribe",
        masked=mask(sub["email"]),
        action=request.url.path,
        preferences_url=f"/preferences/{prefs}",
    )


def _cancel_handed(c: WebContext, provider_ids: list[str]) -> list[str]:
    """Cancel lessons already scheduled at the provider; returns the ids really cancelled."""
    if not provider_ids:
        return []
    try:
        return c.provider_call_sync(lambda: c.runner.cancel_handed(provider_ids))
    except Exception as exc:
        log.error("could not cancel %d scheduled lessons: %s", len(provider_ids), exc)
        return []


async def unsubscribe(request: Request) -> Response:
    """``POST /unsubscribe/{token}``: RFC 8058 one-click, or the button on the page.

    One-click (body ``List-Unsubscribe=One-Click``) gets a bare 200; the button a page.
    Lessons already scheduled at a provider that can cancel are cancelled there.
    """
    from dripmail.subscribers import STOPPED, get_subscriber
    from dripmail.subscribers import unsubscribe as stop

    c = ctx(request)
    sid = _token_id(request, "unsubscribe")
    fields = await read_fields(request)
    one_click = fields.get("List-Unsubscribe") == "One-Click"
    if not one_click and fields.get("confirm") != "yes":
        raise InputError("nothing was changed: use the Unsubscribe button on the page")
    now = c.now()

    def work() -> tuple[dict, int]:
        sub = get_subscriber(c.engine, sid)
        if sub["status"] in STOPPED:
            return dict(sub), 0
        handed = stop(c.engine, sid, now, source="one-click" if one_click else "link")
        cancelled = _cancel_handed(c, handed)
        return dict(get_subscriber(c.engine, sid)), len(handed) - len(cancelled)

    sub, arriving = await c.db(work)
    if one_click and fields.get("confirm") != "yes":
        return PlainTextResponse("Unsubscribed.\n", headers=NO_STORE)
    still = (
        f"{arriving} lesson(s) already handed to the mail service will still arrive."
        if arriving
        else ""
    )
    return c.render(
        request, "unsubscribed.html", headers=NO_STORE, title="Unsubscribed",
        masked=mask(sub["email"]), still_arriving=still,
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
    from dripmail.subscribers import get_subscriber

    c = ctx(request)
    sid = _token_id(request, "preferences")

    def work():
        sub = get_subscriber(c.engine, sid)
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
    from dripmail.subscribers import STOPPED

    course = c.course()
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
        stopped=sub["status"] in STOPPED,
        can_pause=sub["status"] in ("active", "paused"),
        newsletters=bool(sub["newsletters"]),
        send_time=_effective_time(sub, course),
        default_time=course.send_time.strftime("%H:%M"),
        timezone=sub["timezone"],
        zones=_zones(),
        action=request.url.path,
        unsubscribe_url="/unsubscribe/" + c.runner.signer.make(sid, "unsubscribe"),
    )


def _parse_send_time(value: str) -> str:
    try:
        parsed = time.fromisoformat(value.strip())
    except ValueError:
        raise InputError(f"send time: {value[:20]!r} is not a time like 07:00") from None
    return parsed.strftime("%H:%M")


def _handed_ids(c: WebContext, subscriber_id: int) -> list[str]:
    from dripmail.subscribers import handed_ids

    with c.engine.connect() as conn:
        return handed_ids(conn, subscriber_id)


async def preferences(request: Request) -> Response:
    """``POST /preferences/{token}``: save; a new time or zone re-plans the lessons left.

    Everything is validated before anything is written. Lessons already scheduled at a
    provider that can cancel are taken back and re-planned; others still arrive as planned.
    """
    from dripmail import subscribers as subs
    from dripmail.store.schema import subscribers as table

    c = ctx(request)
    sid = _token_id(request, "preferences")
    fields = await read_fields(request)
    course = c.course()
    now = c.now()

    def work() -> Response | None:
        sub = subs.get_subscriber(c.engine, sid)
        if sub["status"] in subs.STOPPED:
            return _preferences(
                c, request, sub, _status_line(c, sub),
                error="This address is unsubscribed: nothing was changed.", status_code=409,
            )  # fmt: skip
        try:
            zone = subs.validate_timezone(fields.get("timezone", "").strip() or sub["timezone"])
            wanted_time = _parse_send_time(
                fields.get("send_time", "") or _effective_time(sub, course)
            )
            wanted_course = fields.get("course", "")
            if wanted_course not in ("", "active", "paused"):
                raise InputError(f"course: {wanted_course[:20]!r} is not active or paused")
        except InputError as exc:
            return _preferences(
                c, request, sub, _status_line(c, sub), error=str(exc), status_code=400
            )
        newsletters = fields.get("newsletters", "") in ("on", "yes", "true", "1")
        timing_changed = zone != sub["timezone"] or wanted_time != _effective_time(sub, course)
        default = course.send_time.strftime("%H:%M")
        stored_time = None if wanted_time == default and not sub["send_time"] else wanted_time
        with c.engine.begin() as conn:
            conn.execute(
                update(table)
                .where(table.c.id == sid)
                .values(
                    newsletters=newsletters, timezone=zone, send_time=stored_time, updated_at=now
                )
            )
        status = sub["status"]
        if status == "active" and wanted_course == "paused":
            handed = subs.pause(c.engine, sid, now)
            subs.unhand(c.engine, _cancel_handed(c, handed), now)
        elif status == "paused" and wanted_course == "active":
            subs.resume(c.engine, sid, course, now)
        elif status == "active" and timing_changed:
            subs.unhand(c.engine, _cancel_handed(c, _handed_ids(c, sid)), now)
            subs.reschedule(c.engine, sid, course, now)
        return None

    answer = await c.db(work)
    if answer is not None:
        return answer
    return RedirectResponse(f"{request.url.path}?saved=1", status_code=303, headers=NO_STORE)
