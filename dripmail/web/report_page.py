"""``/report`` and ``/report.json``: the report as a page with charts (local use only).

Added with the preview (``send.py preview``, ``serve --preview``), never on the public server
by default: the figures are the studio's own business. Query: ``since``, ``until``
(YYYY-MM-DD, UTC days) and ``scanners=count`` to count link-scanner clicks as clicks.
"""

from __future__ import annotations

from datetime import date

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dripmail.errors import DripmailError, InputError
from dripmail.report import WELCOME_DAY, WELCOME_TITLE
from dripmail.web import charts
from dripmail.web.context import WebContext, ctx


def _date(request: Request, name: str) -> date | None:
    value = request.query_params.get(name, "").strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InputError(f"{name} {value!r} is not a date: use YYYY-MM-DD") from None


async def _report(request: Request):  # -> dripmail.report.Report
    from dripmail.report import build, lessons_of

    c = ctx(request)
    since, until = _date(request, "since"), _date(request, "until")
    count = request.query_params.get("scanners") == "count"
    try:
        lessons = lessons_of(c.course())
    except DripmailError:  # a broken course must not hide the history: lessons by number
        lessons = []
    return await c.db(
        build, c.engine, c.now(), since=since, until=until, lessons=lessons,
        count_scanner_clicks=count,
    )  # fmt: skip


async def report_json(request: Request) -> Response:
    """``GET /report.json``: the same figures as ``send.py report --json``."""
    try:
        report = await _report(request)
    except InputError as exc:  # a program asked: answer in JSON, not the HTML error page
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse(report.to_dict(), headers={"Cache-Control": "no-store"})


def _charts(c: WebContext, report) -> dict:
    f = report.funnel
    funnel = charts.funnel(
        [
            ("Signed up", f.signups, "sign-ups"),
            ("Confirmed", f.confirmed, "confirmed"),
            ("Started (lesson 1 sent)", f.started, "started"),
            ("Completed (last lesson sent)", f.completed, "completed"),
        ],
        c.brand()["primary"],
    )
    lessons = charts.grouped_rates(
        [
            (
                WELCOME_TITLE if r.key == WELCOME_DAY else f"Day {r.key}",
                (r.open_rate, r.click_rate, r.unsubscribe_rate),
            )
            for r in report.lessons
        ],
        ("opened*", "clicked", "unsubscribed"),
    )
    over_time = charts.over_time(
        [date.fromisoformat(d.day) for d in report.days],
        [
            ("sign-ups", [d.signups for d in report.days]),
            ("unsubscribes", [d.unsubscribed for d in report.days]),
        ],
    )
    return {"funnel_chart": funnel, "lessons_chart": lessons, "time_chart": over_time}


async def report_page(request: Request) -> Response:
    """``GET /report``: funnel, lessons, newsletters, over time, send hour and time zone."""
    from dripmail.demo import is_demo_database
    from dripmail.report import confirm_note

    c = ctx(request)
    report = await _report(request)
    query = request.url.query
    return c.render(
        request,
        "report.html",
        headers={"Cache-Control": "no-store"},
        title="Report",
        report=report,
        confirm_note=confirm_note(report.funnel),
        simulated=is_demo_database(c.settings.database_url),
        json_url="/report.json" + (f"?{query}" if query else ""),
        **_charts(c, report),
    )


def routes() -> list[Route]:
    """The report's routes (added with the preview, never by default)."""
    return [
        Route("/report", report_page, name="report"),
        Route("/report.json", report_json, name="report-json"),
    ]
