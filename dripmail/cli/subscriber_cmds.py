"""`subscribers ...`: add, import, list, show, pause/resume, unsubscribe, export, forget."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import typer

from dripmail.cli import parse_now, state

sub = typer.Typer(
    help="Manage subscribers: add, import, list, show, pause, resume, unsubscribe, export, forget.",
    no_args_is_help=True,
)


def _now(now: str | None) -> datetime:
    return parse_now(now) or datetime.now(UTC)


def _engine():
    from dripmail.store.db import open_store

    return open_store(state.settings.database_url, state.root)


@sub.command("add")
def add(
    email: str = typer.Argument(..., help="The subscriber's address."),
    name: str = typer.Option("", "--name", help="First name used in greetings."),
    timezone: str | None = typer.Option(
        None, "--timezone", help="IANA zone, e.g. Europe/Berlin (default: the course's)."
    ),
    start: str | None = typer.Option(None, "--start", help="Local date of lesson 1, YYYY-MM-DD."),
    now: str | None = typer.Option(None, "--now", help="Simulated clock (ISO-8601)."),
) -> None:
    """Add an active subscriber (consent source `cli`) and plan their seven lessons."""
    from dripmail import subscribers as subs
    from dripmail.content import load_course
    from dripmail.errors import InputError

    course = load_course(state.project)
    clock = _now(now)
    try:
        first = date.fromisoformat(start) if start else None
    except ValueError:
        raise InputError(f"--start {start!r} is not a date (YYYY-MM-DD)") from None
    engine = _engine()
    sid, created = subs.add_subscriber(
        engine,
        email,
        first_name=name,
        timezone=timezone or course.timezone,
        status="pending",
        consent_source="cli",
        now=clock,
        start_date=first,
    )
    if not created:
        typer.echo(f"{subs.normalise_email(email)} is already subscribed (id {sid}).")
        return
    begins = subs.activate(engine, sid, course, clock)
    typer.echo(f"added {subs.normalise_email(email)} (id {sid}); lesson 1 on {begins} local time")


@sub.command("list")
def list_(
    status: str | None = typer.Option(None, "--status", help="Only this status."),
) -> None:
    """List subscribers: id, email, status, zone, start date."""
    from sqlalchemy import select

    from dripmail.store.schema import subscribers

    query = select(subscribers).order_by(subscribers.c.id)
    if status:
        query = query.where(subscribers.c.status == status)
    with _engine().connect() as conn:
        for row in conn.execute(query).mappings():
            typer.echo(
                f"{row['id']:>6}  {row['email']:<36} {row['status']:<12} "
                f"{row['timezone']:<22} {row['start_date'] or '-'}"
            )


@sub.command("unsubscribe")
def unsubscribe(email: str = typer.Argument(..., help="The subscriber's address.")) -> None:
    """Unsubscribe at once: every lesson not yet delivered is cancelled."""
    from dripmail import subscribers as subs

    engine = _engine()
    row = subs.get_subscriber(engine, email)
    now = datetime.now(UTC)
    handed = subs.unsubscribe(engine, row["id"], now, source="cli")
    typer.echo(f"unsubscribed {row['email']}" + _cancel(handed, now))


def _cancel(provider_ids: list[str], now: datetime) -> str:
    """Cancel scheduled sends at the provider; a note on what could not be taken back."""
    if not provider_ids:
        return ""
    import asyncio

    from dripmail import subscribers as subs
    from dripmail.runner import Runner

    runner = Runner(state.project, state.settings)
    cancelled = asyncio.run(runner.cancel_handed(provider_ids))
    subs.unhand(runner.engine, cancelled, now)
    left = len(provider_ids) - len(cancelled)
    if left:
        return (
            f" ({left} lesson(s) already scheduled at {state.settings.provider} cannot be recalled)"
        )
    return f" ({len(cancelled)} scheduled lesson(s) cancelled at {state.settings.provider})"


@sub.command("show")
def show(email: str = typer.Argument(..., help="The subscriber's address.")) -> None:
    """A subscriber's timeline: every lesson (local and UTC time, state) and every event."""
    from zoneinfo import ZoneInfo

    from dripmail import subscribers as subs

    engine = _engine()
    row = subs.get_subscriber(engine, email)
    zone = ZoneInfo(row["timezone"])
    typer.echo(f"{row['email']}  (id {row['id']}, {row['status']})")
    typer.echo(f"  name: {row['first_name'] or '-'}   zone: {row['timezone']}")
    typer.echo(f"  consent: {row['consent_source']} at {row['consent_at']:%Y-%m-%d %H:%M} UTC")
    lessons, happened = subs.timeline(engine, row["id"])
    typer.echo("Lessons")
    for d in lessons:
        when = d["sent_at"] or d["due_at"]
        local = when.astimezone(zone)
        verb = "sent" if d["sent_at"] else "due"
        extra = f"  ({d['last_error']})" if d["last_error"] else ""
        typer.echo(
            f"  day {d['lesson_day']}  {d['state']:<10} {verb} {local:%a %Y-%m-%d %H:%M} local"
            f" = {when:%Y-%m-%d %H:%M} UTC{extra}"
        )
    if not lessons:
        typer.echo("  none planned (pending confirmation?)")
    if happened:
        typer.echo("Events")
        for e in happened:
            typer.echo(f"  {e['occurred_at']:%Y-%m-%d %H:%M} UTC  {e['type']:<13} {e['detail']}")


@sub.command("pause")
def pause(email: str = typer.Argument(..., help="The subscriber's address.")) -> None:
    """Freeze the course; `resume` continues with the next lesson on the next local morning."""
    from dripmail import subscribers as subs

    engine = _engine()
    now = datetime.now(UTC)
    row = subs.get_subscriber(engine, email)
    handed = subs.pause(engine, row["id"], now)
    typer.echo(f"paused {row['email']}" + _cancel(handed, now))


@sub.command("resume")
def resume(
    email: str = typer.Argument(..., help="The subscriber's address."),
    now: str | None = typer.Option(None, "--now", help="Simulated clock (ISO-8601)."),
) -> None:
    """Continue a paused course: the next lesson at the next local send time."""
    from dripmail import subscribers as subs
    from dripmail.content import load_course

    engine = _engine()
    row = subs.get_subscriber(engine, email)
    first = subs.resume(engine, row["id"], load_course(state.project), _now(now))
    when = f"next lesson on {first} local time" if first else "no lessons left"
    typer.echo(f"resumed {row['email']}: {when}")


@sub.command("forget")
def forget(
    email: str = typer.Argument(..., help="The subscriber's address."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Erase a subscriber (GDPR): personal data deleted, a hashed suppression kept.

    The hash stops the address from being added again by an import or a sign-up.
    """
    from dripmail import subscribers as subs

    engine = _engine()
    row = subs.get_subscriber(engine, email)
    lessons, happened = subs.timeline(engine, row["id"])
    if not yes:
        typer.confirm(
            f"Erase {row['email']} with {len(lessons)} lesson(s) and {len(happened)} event(s)?",
            abort=True,
        )
    now = datetime.now(UTC)
    handed = subs.forget(engine, row["id"], now)
    typer.echo(
        f"forgot {row['email']}: 1 subscriber, {len(lessons)} lesson(s), {len(happened)} "
        "event(s) deleted; a hashed suppression kept" + _cancel(handed, now)
    )


@sub.command("import")
def import_(
    file: Path = typer.Argument(
        ..., help="CSV with a header row: email, first_name, timezone, start_date."
    ),
    confirm: bool = typer.Option(
        False, "--confirm", help="Ask each new subscriber to confirm by the double opt-in email."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the file; change nothing."),
    now: str | None = typer.Option(None, "--now", help="Simulated clock (ISO-8601)."),
) -> None:
    """Import subscribers from CSV. Re-importing the same file changes nothing.

    Imported subscribers are active (consent source `import`) and start by the course's start
    rule, unless --confirm. Rejected rows are listed with their line number and reason.
    """
    from rich.progress import Progress

    from dripmail.content import load_course
    from dripmail.subscriber_io import import_csv

    course = load_course(state.project)
    engine = _engine()
    with Progress(transient=True) as bar:
        task = bar.add_task("importing", total=None)
        report = import_csv(
            engine,
            file,
            course,
            course.timezone,
            _now(now),
            confirm=confirm,
            dry_run=dry_run,
            progress=lambda n: bar.advance(task, n),
        )
    for line, reason in report.rejected:
        typer.echo(f"{file}:{line}: {reason}", err=True)
    if report.ignored_columns:
        typer.echo(f"ignored columns: {', '.join(report.ignored_columns)}", err=True)
    verb = "would add" if dry_run else "added"
    typer.echo(
        f"{verb} {report.added}, already there {report.existing}, rejected {len(report.rejected)}"
    )
    if confirm and report.added_ids and not dry_run:
        from dripmail.confirmations import send_confirmations

        sent = send_confirmations(state.project, state.settings, report.added_ids, _now(now))
        typer.echo(f"sent {sent} confirmation email(s)")


@sub.command("export")
def export(
    out: Path | None = typer.Option(None, "--out", "-o", help="File to write (default: stdout)."),
    status: str | None = typer.Option(None, "--status", help="Only this status."),
) -> None:
    """Export subscribers as CSV (cells a spreadsheet would run as formulas are neutralised)."""
    import sys

    from dripmail.subscriber_io import export_csv

    engine = _engine()
    if out is None:
        export_csv(engine, sys.stdout, status)
        return
    with out.open("w", newline="", encoding="utf-8") as handle:
        count = export_csv(engine, handle, status)
    typer.echo(f"exported {count} subscriber(s) to {out}", err=True)


def register(app: typer.Typer) -> None:
    """Attach the `subscribers` group."""
    app.add_typer(sub, name="subscribers")
