"""`subscribers ...`: add, import, list, show, rename, pause/resume, unsubscribe, export,
forget."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from dripmail.cli import parse_now, state
from dripmail.cli.exits import EXIT_ATTENTION
from dripmail.cli.printing import visible

if TYPE_CHECKING:
    import threading

    from dripmail.app import Dripmail, Recall
    from dripmail.subscriber_io import ImportReport

sub = typer.Typer(
    help="Manage subscribers: add, import, list, show, rename, pause, resume, unsubscribe, "
    "export, forget.",
    no_args_is_help=True,
)


def _now(now: str | None) -> datetime:
    return parse_now(now) or datetime.now(UTC)


def _app(now: str | None = None) -> Dripmail:
    """The application core, with the simulated clock when --now is given."""
    from dripmail.app import Dripmail

    clock = parse_now(now)
    if clock is None:
        return Dripmail(state.project, state.settings)
    return Dripmail(state.project, state.settings, clock=lambda: clock)


@sub.command("add")
def add(
    email: str = typer.Argument(..., help="The subscriber's address."),
    name: str = typer.Option("", "--name", help="First name used in greetings."),
    timezone: str | None = typer.Option(
        None, "--timezone", help="IANA zone, e.g. Europe/Berlin (default: the course's)."
    ),
    start: str | None = typer.Option(
        None, "--start", help="Local date of lesson 1, YYYY-MM-DD (a year back to a year ahead)."
    ),
    tags: str = typer.Option("", "--tags", help='Segments, e.g. "desk, runners".'),
    now: str | None = typer.Option(None, "--now", help="Simulated clock (ISO-8601)."),
) -> None:
    """Add an active subscriber (consent source `cli`) and plan their seven lessons."""
    added = _app(now).add_subscriber(email, name=name, timezone=timezone, start=start, tags=tags)
    for warning in added.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if not added.created:
        if added.status.stopped:
            from dripmail.errors import InputError

            # An operator cannot undo a reader's own stop: only an unsubscribed reader comes
            # back, by signing up again and confirming (`Dripmail.subscribe`, `rejoin`).
            why = {
                "unsubscribed": "unsubscribed: only they can sign up again (the sign-up form "
                "asks them to confirm)",
                "bounced": "bounced: their address does not take mail, and is not mailed again",
                "complained": "complained (marked mail as spam): they are not mailed again",
            }[added.status.value]
            raise InputError(f"{added.email} (id {added.id}) {why}; nothing changed")
        if added.status == "pending":
            typer.echo(
                f"{added.email} is already signed up and has not confirmed yet (id {added.id}, "
                "pending): nothing changed"
            )
            return
        typer.echo(f"{added.email} is already subscribed (id {added.id}, {added.status}).")
        return
    typer.echo(f"added {added.email} (id {added.id}); lesson 1 on {added.first_lesson} local time")


@sub.command("list")
def list_(
    status: str | None = typer.Option(None, "--status", help="Only this status."),
) -> None:
    """List subscribers: id, email, status, zone, start date."""
    shown = 0
    for row in _app().list_subscribers(status):
        if not shown:
            typer.echo(f"{'id':>6}  {'email':<36} {'status':<12} {'timezone':<22} start")
        shown += 1
        typer.echo(
            f"{row['id']:>6}  {row['email']:<36} {row['status']:<12} "
            f"{row['timezone']:<22} {row['start_date'] or '-'}"
        )
    if not shown:
        which = f" with status {status}" if status else ""
        typer.echo(f"no subscribers{which}")


def _recalled(recall: Recall) -> str:
    """A note on lessons the provider held: cancelled there, or still arriving."""
    if not recall.handed:
        return ""
    provider = state.settings.provider
    if recall.still_arriving:
        return (
            f" ({recall.still_arriving} lesson(s) already scheduled at {provider} "
            "cannot be recalled)"
        )
    return f" ({recall.cancelled} scheduled lesson(s) cancelled at {provider})"


@sub.command("unsubscribe")
def unsubscribe(email: str = typer.Argument(..., help="The subscriber's address.")) -> None:
    """Unsubscribe at once: every lesson not yet delivered is cancelled."""
    result = _app().unsubscribe(email, source="cli")
    if not result.changed:
        typer.echo(f"{result.email} is already {result.status}: nothing changed")
        return
    typer.echo(f"unsubscribed {result.email}" + _recalled(result.recall))


@sub.command("show")
def show(email: str = typer.Argument(..., help="The subscriber's address.")) -> None:
    """A subscriber's timeline: every lesson (local and UTC time, state) and every event.

    Events are what happened to the address: confirmed, preference changes, unsubscribed,
    and what the provider reported (delivered, opened, clicked, bounced, complained).
    """
    from zoneinfo import ZoneInfo

    found = _app().timeline(email)
    row = found.subscriber
    zone = ZoneInfo(row["timezone"])
    typer.echo(f"{visible(row['email'])}  (id {row['id']}, {row['status']})")
    typer.echo(f"  name: {visible(row['first_name'] or '-')}   zone: {row['timezone']}")
    typer.echo(f"  consent: {row['consent_source']} at {row['consent_at']:%Y-%m-%d %H:%M} UTC")
    typer.echo("Lessons")
    for d in found.lessons:
        when = d["sent_at"] or d["due_at"]
        local = when.astimezone(zone)
        verb = "sent" if d["sent_at"] else "due"
        extra = f"  ({visible(d['last_error'])})" if d["last_error"] else ""
        if d["last_error"] and d["state"] == "sent":
            # What stood in the way before it went (or was settled as sent) is history now.
            extra = f"  (resolved: {visible(d['last_error'])})"
        typer.echo(
            f"  {'welcome' if d['lesson_day'] == 0 else 'day ' + str(d['lesson_day'])}"
            f"  {d['state']:<10} {verb} {local:%a %Y-%m-%d %H:%M} local"
            f" = {when:%Y-%m-%d %H:%M} UTC{extra}"
        )
    if not found.lessons:
        # Why, by status: an imported reader who had unsubscribed has none, and never will.
        why = {
            "pending": " (not confirmed yet: lessons are planned when they confirm)",
            "unsubscribed": " (unsubscribed: nothing more is sent)",
            "bounced": " (bounced: nothing more is sent)",
            "complained": " (complained: nothing more is sent)",
        }.get(str(row["status"]), "")
        typer.echo(f"  none planned{why}")
    typer.echo("Events")
    for e in found.events:
        # Stored text (a provider's words, a note typed by someone): one line each, always.
        detail = f"  {visible(e['detail'])}" if e["detail"] else ""
        typer.echo(
            f"  {e['occurred_at']:%Y-%m-%d %H:%M} UTC  {e['type']:<13} {e['provider']}{detail}"
        )
    if not found.events:
        typer.echo("  none yet")


@sub.command("rename")
def rename(
    email: str = typer.Argument(..., help="The subscriber's address."),
    name: str = typer.Argument(..., metavar="NAME", help="The first name to use in greetings."),
) -> None:
    """Correct a reader's first name (e.g. one with a line break no email header can carry).

    The name is cleaned as a sign-up's is (control and line-break characters become a space)
    and the change is recorded as an event. A pending reader's owed confirmation email is
    offered again at once; lessons that failed for good go back with `deliveries retry`.
    """
    from dripmail.cli import command_name

    app = _app()
    done = app.rename(email, name)
    if not done.changed:
        typer.echo(
            f"{done.email} is already named {visible(done.new) or '(no name)'}: nothing changed"
        )
    else:
        typer.echo(
            f"renamed {done.email}: {visible(done.old) or '(no name)'} -> "
            f"{visible(done.new) or '(no name)'}"
        )
    if done.failed_days:
        days = ", ".join(str(d) for d in done.failed_days)
        lessons = "lesson" if len(done.failed_days) == 1 else "lessons"
        them = "it" if len(done.failed_days) == 1 else "them"
        typer.echo(
            f"{len(done.failed_days)} failed {lessons} ({days}): `{command_name()} deliveries "
            f"retry --address {done.email}` puts {them} back in the queue"
        )
    if done.owes_confirmation:
        mailed = app.confirm_subscribers([done.id])
        if mailed.accepted:
            typer.echo("confirmation email offered again: the provider accepted it")
        elif mailed.held_elsewhere:
            typer.echo(
                "its confirmation email is being sent by another process: run "
                f"`{command_name()} subscribers rename` again after it ends",
                err=True,
            )
        elif mailed.failed:
            typer.echo(f"confirmation email not sent: {visible(mailed.failure_reason)}", err=True)
            raise typer.Exit(EXIT_ATTENTION)
        else:
            typer.echo(
                "confirmation email not offered again now (sent too recently or too often); "
                "the reader's next sign-up offers it"
            )


@sub.command("pause")
def pause(email: str = typer.Argument(..., help="The subscriber's address.")) -> None:
    """Freeze the course; `resume` continues with the next lesson on the next local morning."""
    result = _app().pause(email)
    typer.echo(f"paused {result.email}" + _recalled(result.recall))


@sub.command("resume")
def resume(
    email: str = typer.Argument(..., help="The subscriber's address."),
    now: str | None = typer.Option(None, "--now", help="Simulated clock (ISO-8601)."),
) -> None:
    """Continue a paused course: the next lesson at the next local send time."""
    result = _app(now).resume(email)
    if not result.changed:
        typer.echo(f"{result.email} is already active: nothing to resume")
        return
    first = result.next_lesson_date
    when = f"next lesson on {first} local time" if first else "no lessons left"
    typer.echo(f"resumed {result.email}: {when}")


@sub.command("forget")
def forget(
    email: str = typer.Argument(..., help="The subscriber's address."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Erase a subscriber (GDPR): personal data deleted, a hashed suppression kept.

    The hash stops the address from being added again by an import or a sign-up.
    """
    import sys

    from dripmail.errors import InputError

    app = _app()
    if not yes:
        found = app.timeline(email)
        if not sys.stdin.isatty():
            # No one to answer the question: say how to erase without it.
            raise InputError(
                f"erasing {found.subscriber['email']} needs a yes: run it in a terminal, or "
                "pass --yes to erase without asking"
            )
        from dripmail.cli.exits import ask_or_stop

        ask_or_stop(
            f"Erase {found.subscriber['email']} with {len(found.lessons)} lesson(s) and "
            f"{len(found.events)} event(s)?",
            "nothing was erased",
        )
    result = app.forget(email)
    typer.echo(
        f"forgot {result.email}: 1 subscriber, {result.lessons} lesson(s), {result.events} "
        "event(s) deleted; a hashed suppression kept" + _recalled(result.recall)
    )
    if result.provider_messages:
        typer.echo(f"erased {result.provider_messages} message(s) to them from the outbox")
    if not result.flushed:
        typer.echo(
            "note: another process kept reading the database, so SQLite's write-ahead log "
            "(the database file ending in -wal) still holds the old pages; the next forget, "
            "or stopping the other process, clears them"
        )


def _import_help() -> str:
    from dripmail.subscriber_columns import COLUMNS

    return (
        "CSV with a header row; columns (any case, spaces, hyphens or underscores; comma, "
        "semicolon or tab): " + "; ".join(f"{name}: {what}" for name, what in COLUMNS.items())
    )


@sub.command("import")
def import_(
    file: Path = typer.Argument(..., help=_import_help()),
    confirm: bool = typer.Option(
        False, "--confirm", help="Ask each new subscriber to confirm by the double opt-in email."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Check the file against the database; change nothing."
    ),
    now: str | None = typer.Option(None, "--now", help="Simulated clock (ISO-8601)."),
) -> None:
    """Import subscribers from CSV. Re-importing the same file changes nothing.

    Imported subscribers are active (consent source `import`) and start by the course's start
    rule (or their start_date), unless --confirm. The file is checked to be UTF-8 before
    anything is written. Every refused row is listed with its line number and reason, the
    other rows are imported, and the exit code is 3 when some rows were refused. Ctrl-C or
    SIGTERM stops it between two batches of rows (exit 130) and says how many went in;
    running the same import again continues safely.
    """
    import threading

    from dripmail.cli.exits import EXIT_STOPPED, stop_signals_as_ctrl_c, stop_signals_set

    app = _app(now)
    stop = threading.Event()
    try:
        with stop_signals_set(stop):  # Ctrl-C, `kill`, systemd: stop between two batches
            report = _import_rows(app, file, confirm, dry_run, stop)
        _print_import(report, file, confirm, dry_run)
        if report.stopped:
            typer.echo(_stopped_line(report, file, dry_run))
            raise typer.Exit(EXIT_STOPPED)
        if confirm and report.to_confirm and not dry_run:
            try:
                with stop_signals_as_ctrl_c():
                    _send_confirmations(app, report)
            except KeyboardInterrupt:
                typer.echo(_stopped_line(report, file, dry_run, confirming=True))
                raise typer.Exit(EXIT_STOPPED) from None
        if report.rejected:
            raise typer.Exit(EXIT_ATTENTION)
    finally:
        app.close()


def _stopped_line(
    report: ImportReport, file: Path, dry_run: bool, *, confirming: bool = False
) -> str:
    """What a stopped import says, as `run` and `broadcast` do: how far it got, and that the
    same command again continues (an address already in is counted and left alone)."""
    from dripmail.cli import command_name

    again = f"`{command_name()} subscribers import {file}"
    if dry_run:
        return f"stopped: a dry run, nothing was written; {again} --dry-run` checks the whole file"
    if confirming:
        return (
            f"stopped: every row was imported, but some confirmation emails may not have gone "
            f"out; {again} --confirm` offers them (under the same key: nobody gets two)"
        )
    # The counts were just printed: say how far the file was read and what to do.
    through = (
        f"after line {report.committed_line} of {file}: the rows up to it are in, the rest "
        "was not read"
        if report.committed_line
        else f"before any row of {file} was written"
    )
    return (
        f"stopped {through}; "
        f"{again}` again continues safely: rows already in are left as they are, nothing is "
        "added twice"
    )


def _import_rows(
    app: Dripmail, file: Path, confirm: bool, dry_run: bool, stop: threading.Event
) -> ImportReport:
    """The import itself, with a progress bar on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from dripmail.cli.progress import terminal_bar

    columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # Piped or redirected, a bar on stdout left an empty line before the summary or even
    # before an error: `terminal_bar` draws on stderr, only on a terminal.
    with terminal_bar(*Progress.get_default_columns()[:1], *columns, transient=True) as bar:
        task = bar.add_task("importing lines", total=None)
        return app.import_subscribers(
            file,
            confirm=confirm,
            dry_run=dry_run,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            stop=stop,
        )


def _print_import(report: ImportReport, file: Path, confirm: bool, dry_run: bool) -> None:
    """Refused rows and warnings by FILE:LINE on stderr; the counts on stdout."""
    for line, reason in report.rejected:
        typer.echo(f"{file}:{line}: {reason}", err=True)
    for line, warning in report.warnings:
        typer.echo(f"{file}:{line}: warning: {warning}", err=True)
    if report.ignored_columns:
        typer.echo(f"ignored columns: {', '.join(report.ignored_columns)}", err=True)
    verb = "would add" if dry_run else "added"
    typer.echo(
        f"{verb} {report.added}, already there {report.existing}, rejected {len(report.rejected)}"
    )
    for said in _kept_lines(report, file, confirm):
        typer.echo(said)
    for line_no, address, status in report.stopped_existing:
        done = "would stop" if dry_run else "stopped"
        typer.echo(f"{file}:{line_no}: {done} {address}: {status} in the file (no more mail)")
    if report.newsletters_off:
        done = "would turn" if dry_run else "turned"
        typer.echo(
            f"{done} newsletters off for {report.newsletters_off} reader(s) already here "
            "(newsletters: no in the file)"
        )


def _send_confirmations(app: Dripmail, report: ImportReport) -> None:
    """The double opt-in emails of `import --confirm`; exit 3 when some were not sent."""
    mailed = app.confirm_subscribers(report.to_confirm)
    typer.echo(f"sent {mailed.sent} confirmation email(s)")
    if mailed.offered_again:
        typer.echo(
            f"offered again {mailed.offered_again} confirmation email(s) a killed run had"
            " not recorded as handed over (same key: a provider that deduplicates, like the"
            " outbox, keeps one copy)"
        )
    for holder, (count, until) in sorted(mailed.held_elsewhere.items()):
        host, _, pid = holder.partition(":")
        typer.echo(
            f"{count} confirmation email(s) still being sent by another process"
            f" (pid {pid.partition(':')[0]} on {host}); run again after it ends, or after"
            f" {until:%Y-%m-%d %H:%M:%S} UTC when its hold runs out",
            err=True,
        )
    if mailed.failed:
        # As `run` reports them: the count, the first reason with its address.
        first = "the first" if mailed.failed > 1 else "it"
        typer.echo(
            f"{mailed.failed} confirmation email(s) not sent ({first}: "
            f"{visible(mailed.failure_reason)}); `status` lists them",
            err=True,
        )
        raise typer.Exit(EXIT_ATTENTION)


# What the status column made of the rows added (README, "Moving subscribers").
_KEPT = {
    "unsubscribed": "unsubscribed (never mailed; only they can sign up again)",
    "bounced": "bounced (never mailed; the address stays suppressed)",
    "complained": "complained (never mailed; the address stays suppressed)",
    "completed": "completed (newsletters only: the course is not sent again)",
    "paused": "paused (lessons planned; `subscribers resume EMAIL` continues them)",
}


def _kept_lines(report: ImportReport, file: Path, confirm: bool) -> list[str]:
    """One line for the rows the file's status column kept from becoming active."""
    from dripmail.cli import command_name

    lines = []
    parts = [f"{count} {_KEPT[status]}" for status, count in sorted(report.kept_status.items())
             if status in _KEPT]  # fmt: skip
    if parts:
        lines.append("kept as the file says: " + "; ".join(parts))
    pending = report.kept_status.get("pending", 0)
    if pending and not confirm:
        lines.append(
            f"{pending} pending in the file: added as pending, not mailed until they confirm; "
            f"`{command_name()} subscribers import {file} --confirm` sends them the "
            "confirmation email"
        )
    elif pending:
        lines.append(f"{pending} pending in the file: added as pending, asked to confirm")
    return lines


@sub.command("export")
def export(
    out: Path | None = typer.Option(None, "--out", "-o", help="File to write (default: stdout)."),
    status: str | None = typer.Option(None, "--status", help="Only this status."),
) -> None:
    """Export subscribers as CSV: flags as yes/no, dates and times as ISO 8601 (UTC).

    Cells a spreadsheet would run as formulas are neutralised with a leading apostrophe.
    --out is written whole or not at all (a temporary file renamed into place); the
    database's own files are refused.
    """
    import sys

    from dripmail.output_files import kept_files
    from dripmail.subscriber_io import export_file, export_rows

    rows = _app().list_subscribers(status)
    if out is None:
        export_rows(rows, sys.stdout)
        return
    keep = kept_files(state.settings.database_url, state.root, state.settings.outbox_dir)
    count = export_file(rows, out, keep)
    typer.echo(f"exported {count} subscriber(s) to {out}", err=True)


def register(app: typer.Typer) -> None:
    """Attach the `subscribers` group."""
    app.add_typer(sub, name="subscribers")
