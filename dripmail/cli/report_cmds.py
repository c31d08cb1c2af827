"""`report`: the sign-up funnel, each lesson, each newsletter, by send hour and time zone."""

from __future__ import annotations

import csv
import json
import sys
from datetime import UTC, date, datetime

import typer

from dripmail.cli import state
from dripmail.cli.help_text import paragraphs
from dripmail.errors import InputError

HELP = """\
The sign-up funnel, each lesson and newsletter issue, by send hour and by time zone.

Counts are for the UTC days --since..--until (inclusive; default: all history): sign-ups and
confirmations made then, copies sent then, and each copy's first delivery, open, click,
bounce, complaint and unsubscribe received then. Rates are fractions of the copies sent.

Opens are approximate: Apple Mail Privacy Protection loads every email when it arrives
(counted as opened, read or not), and clients that block images never count. Clicks within
30 seconds of delivery come from link scanners: they are left out of "clicked" and shown as
"scanner clicks" unless --count-scanner-clicks. The counts of finished days are stored once
(`subscribers forget` drops the days that counted the person; --rebuild counts every day
again, e.g. after writing history with a simulated clock).

--csv prints one row per figure: section,key,title,metric,value. --serve shows the page at
http://127.0.0.1:PORT/report until Ctrl-C or SIGTERM (it says "stopped", exit 130).
"""


def _date(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    if not value.strip():
        raise InputError(f"{option} is empty: give a day as YYYY-MM-DD, or leave {option} out")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InputError(f"{option} {value!r} is not a date: use YYYY-MM-DD") from None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def _table(title: str, first: str, columns: list[str]):  # -> rich.table.Table
    """A narrow table: short headers, number columns never wrapped nor shrunk (fits 80 columns)."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    # The name column is the only one rich may wrap: numbers and rates always show whole.
    table.add_column(first, min_width=3, max_width=24, overflow="fold")
    for col in columns:
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    return table


def _drop(row, figure: str) -> str:  # row: dripmail.report.MailRow
    """The drop cell: "not due" for a lesson nobody has reached yet, "-" where none applies."""
    if row.not_yet_due:
        return "not due"
    return "-" if row.drop is None else figure


def mail_tables(title: str, rows, lessons: bool) -> list:  # rows: list[dripmail.report.MailRow]
    """Lessons or newsletter issues as three tables that each fit 80 columns: who was
    reached, what was clicked and lost (counts), then every rate."""
    name = "lesson" if lessons else "issue"

    def label(r, short: bool = False) -> str:  # newsletters: the slug (subject in --json)
        if short and r.key == WELCOME_DAY:
            return "welcome"
        return r.title if lessons and not short else r.key

    from dripmail.report import WELCOME_DAY

    reach = _table(f"{title}: copies", name, ["sent", "delivered", "opened*", "clicked"])
    losses_cols = (["video", "other"] if lessons else []) + ["scanner", "unsub.", "bounced"]
    losses_cols += ["complaint"] + (["drop"] if lessons else [])
    # Lesson titles are in the first table; the wider ones name lessons by day number.
    short = "day" if lessons else name
    losses = _table(f"{title}: clicks by link, and losses", short, losses_cols)
    rate_cols = ["delivered", "opened*", "clicked", "unsub.", "bounced", "complaint"]
    rates_title = f"{title}: rates, % of sent"
    if lessons:
        rate_cols.append("drop")
        rates_title += " (drop: % of the previous lesson's sent)"
    rates = _table(rates_title, short, rate_cols)
    for r in rows:
        reach.add_row(label(r), str(r.sent), str(r.delivered), str(r.opened), str(r.clicked))
        cells = [str(r.video_clicks), str(r.other_clicks)] if lessons else []
        cells += [str(r.scanner_clicks), str(r.unsubscribed), str(r.bounced), str(r.complained)]
        if lessons:
            cells.append(_drop(r, str(r.drop)))
        losses.add_row(label(r, True), *cells)
        pcts = [r.delivered_rate, r.open_rate, r.click_rate, r.unsubscribe_rate]
        pcts += [r.bounce_rate, r.complaint_rate] + ([r.drop_rate] if lessons else [])
        cells = [_pct(v) for v in pcts]
        if lessons:
            cells[-1] = _drop(r, cells[-1])
        rates.add_row(label(r, True), *cells)
    return [reach, losses, rates]


def print_report(report, width: int | None = None) -> None:  # report: dripmail.report.Report
    """The report as rich tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    from dripmail.report import confirm_note

    console = Console()
    if width or not console.is_terminal:  # piped into a file or a pager: wide, unwrapped
        console = Console(width=width or 170)
    span = "all history"
    if report.since or report.until:
        span = f"{report.since or 'the start'} to {report.until or 'now'} (UTC days)"
    f = report.funnel
    funnel = Table(title=f"Sign-up funnel, {span}", title_justify="left")
    for col in ("step", "people", "rate", "note"):
        funnel.add_column(col, justify="left" if col in ("step", "note") else "right")
    funnel.add_row("signed up", str(f.signups), "", "")
    funnel.add_row("confirmed", str(f.confirmed), _pct(f.confirm_rate), "of sign-ups")
    funnel.add_row("started (lesson 1 sent)", str(f.started), _pct(f.start_rate), "of confirmed")
    funnel.add_row(
        "completed (last lesson sent)", str(f.completed), _pct(f.completion_rate), "of started"
    )
    console.print(funnel)
    median = f.median_confirm_seconds
    console.print(
        "Median time to confirm by the emailed link: "
        + (_duration(median) if median is not None else "- (nobody confirmed by link)"),
        highlight=False,
    )
    console.print(confirm_note(f), highlight=False)

    for table in mail_tables("Lessons", report.lessons, lessons=True):
        console.print(table)
    if report.newsletters:
        for table in mail_tables("Newsletter issues", report.newsletters, lessons=False):
            console.print(table)
    else:
        console.print("Newsletter issues: none sent in this span.")
    for title, rows in (
        ("By the reader's local send hour", report.hours),
        ("By the reader's time zone", report.zones),
    ):
        table = Table(title=title, title_justify="left")
        for col in ("", "sent", "opened*", "clicked"):
            table.add_column(col, justify="left" if not col else "right")
        for s in rows:
            key = f"{s.key}:00" if title.endswith("hour") else s.key
            table.add_row(
                key,
                str(s.sent),
                f"{s.opened} ({_pct(s.open_rate)})",
                f"{s.clicked} ({_pct(s.click_rate)})",
            )
        console.print(table)
    for note in report.notes:
        console.print(("* " if note.startswith("Opens") else "") + note, highlight=False)


def report(
    since: str | None = typer.Option(None, "--since", help="First UTC day, YYYY-MM-DD."),
    until: str | None = typer.Option(None, "--until", help="Last UTC day, YYYY-MM-DD."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    as_csv: bool = typer.Option(
        False, "--csv", help="Print every figure as one CSV row (see above)."
    ),
    count_scanner_clicks: bool = typer.Option(
        False, "--count-scanner-clicks", help="Count clicks within 30 s of delivery as clicks."
    ),
    rebuild: bool = typer.Option(
        False, "--rebuild", help="Count the stored finished days again from the tables."
    ),
    demo: bool = typer.Option(
        False, "--demo", help="The figures of the last `demo` (its own database in demo/)."
    ),
    serve: bool = typer.Option(
        False, "--serve", help="Show the report page with charts, on 127.0.0.1 only."
    ),
    port: int = typer.Option(
        8001, "--port", min=0, max=65535, help="Port for --serve (0: any free port, printed)."
    ),
) -> None:
    if as_json and as_csv:
        raise InputError("--json and --csv: choose one")
    from dripmail.report import build, lessons_of
    from dripmail.runner import Runner

    runner = _demo_runner() if demo else Runner(state.project, state.settings)
    if serve:
        _serve(runner, port)
        return
    lessons = []
    warning = None
    try:
        lessons = lessons_of(runner.course)
    except Exception as exc:  # a broken course must not hide the history
        from dripmail.errors import DripmailError

        if not isinstance(exc, DripmailError):
            raise
        warning = (
            f"the course files did not load ({str(exc).splitlines()[0]}): lessons by day number"
        )
    if rebuild:
        runner.forget_stored_report()
    result = build(
        runner.engine,
        datetime.now(UTC),
        since=_date(since, "--since"),
        until=_date(until, "--until"),
        lessons=lessons,
        count_scanner_clicks=count_scanner_clicks,
    )
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        from dripmail.subscriber_io import safe_cell

        writer.writerows([safe_cell(c) for c in row] for row in result.csv_rows())
    else:
        if demo:
            typer.echo(
                "Simulated figures: the last `demo` (sample readers and simulated provider "
                "events), not real readers."
            )
        print_report(result)
        nothing = not (result.funnel.signups or result.newsletters)
        if nothing and not any(r.sent for r in result.lessons):
            typer.echo(
                "Nothing recorded in this span yet (no sign-ups, no emails sent). To see a "
                "report with figures: run `demo`, then `report --demo`."
            )


report.__doc__ = paragraphs(HELP)


def _demo_runner():  # -> dripmail.runner.Runner
    """A Runner on the demo's own database (demo/), with the course the demo used."""
    from dripmail.config import Project
    from dripmail.demo import DATABASE, DEMO_DIR
    from dripmail.runner import Runner

    folder = state.root / DEMO_DIR
    if not (folder / DATABASE).is_file():
        raise InputError(f"no demo has run in {state.root}: run `demo` first")
    content = state.folder
    if not (content.course_dir / "course.toml").is_file():
        from dripmail.scaffold import sample_root

        content = Project(sample_root())
    settings = state.settings.model_copy(
        update={
            "provider": "outbox",
            "database_url": f"sqlite:///{folder / DATABASE}",
            "outbox_dir": str(folder / "outbox"),
        }
    )
    return Runner(content, settings)


def _serve(runner, port: int) -> None:
    """The report page (and the preview) on 127.0.0.1 only, until Ctrl-C."""
    from dripmail.cli.exits import stopped_by_ctrl_c
    from dripmail.web import serving
    from dripmail.web.app import create_app

    # Bound here, not by uvicorn: a port in use is one line, and port 0 prints the real one.
    sock = serving.bind("127.0.0.1", port)
    port = serving.port_of(sock)
    app = create_app(runner.project, runner.settings, preview=True)
    typer.echo(
        f"report on http://127.0.0.1:{port}/report, preview on http://127.0.0.1:{port}/preview"
        " (Ctrl-C stops)"
    )
    # Ctrl-C or SIGTERM: "stopped", exit 130, as `serve` and `preview` stop.
    with stopped_by_ctrl_c():
        serving.run(app, sock, access_log=False)


def register(app: typer.Typer) -> None:
    """Attach `report`."""
    app.command("report")(report)
