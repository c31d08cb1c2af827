"""`run`, `status`, `demo` and `db upgrade`: the drip engine from the command line."""

from __future__ import annotations

import time as wallclock
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from dripmail.cli import parse_now, state
from dripmail.cli.exits import EXIT_ATTENTION, EXIT_STOPPED, stop_signals_as_ctrl_c
from dripmail.cli.printing import visible
from dripmail.errors import ContentError, InputError

db = typer.Typer(help="Database maintenance.", no_args_is_help=True)


def _core(clock=None):
    from dripmail.app import Dripmail

    if clock is None:
        return Dripmail(state.project, state.settings)
    return Dripmail(state.project, state.settings, clock=clock)


# Kept for the other commands that only need the store.
_runner = _core


def _one_pass(
    core, now: datetime, limit: int | None, dry_run: bool, quiet: bool, handled: list[int]
):
    """One `core.run`, with a progress bar (count and time left) when it is worth one.

    `handled[0]` counts the lessons handed over and recorded so far in this pass (the core
    reports each chunk once it is recorded), so a stop can say how far the pass got.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

    from dripmail.cli.progress import terminal_bar

    handled[0] = 0

    def count(n: int) -> None:
        handled[0] += n

    total = core.count_due(now)
    if limit:
        total = min(total, limit)
    if dry_run or quiet or total < 50:
        return core.run(now, limit=limit, dry_run=dry_run, progress=count)
    with terminal_bar(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    ) as bar:
        # `total` counts readers with a lesson due; some wait for their previous lesson (one
        # per local day), so the bar ends at what was really handled, not the estimate.
        task = bar.add_task("sending lessons", total=total)

        def advance(n: int) -> None:
            count(n)
            bar.advance(task, n)

        result = core.run(now, limit=limit, progress=advance)
        done = bar.tasks[0].completed
        bar.update(task, total=done, completed=done)
        return result


def _print_report(report, now: datetime, dry_run: bool, broadcasts: Sequence[Any] = ()) -> None:
    if dry_run:
        typer.echo(f"dry run at {now:%Y-%m-%d %H:%M} UTC: {len(report.due)} lesson(s) would go out")
        for row in report.due[:50]:
            typer.echo(f"  {row['key']:<28} day {row['lesson_day']}  to {visible(row['email'])}")
        if len(report.due) > 50:
            typer.echo(f"  ... and {len(report.due) - 50} more")
        if report.in_flight:
            typer.echo(
                f"also {report.in_flight} lesson(s) held in flight by a worker: a real run "
                "first settles those whose worker is gone (looked up at the provider or sent "
                "again as the same batch, never blindly), whatever --limit says"
            )
        for due in broadcasts:
            said = f"and scheduled broadcast {due.id} ({visible(due.slug)})"
            if due.problem:
                typer.echo(f"{said} would not be sent: {visible(due.problem)}")
                continue
            typer.echo(f"{said} to segment {due.segment}: {due.recipients} recipient(s)")
        typer.echo("nothing was written")
        return
    parts = [f"{report.sent} sent", f"{report.handed} scheduled at the provider"]
    for label, value in (
        ("to retry later", report.retry),
        ("failed", report.failed),
        ("for review", report.review),
    ):
        if value:
            parts.append(f"{value} {label}")
    line = f"{now:%Y-%m-%d %H:%M} UTC: " + ", ".join(parts)
    notes = []
    if report.recovered:
        # Lessons a crash left in flight are among the parts above (sent, for review...):
        # said apart as "of them", so the parts still add up to the total.
        notes.append(
            f"{report.settled()} lessons; {report.recovered} of them recovered after a crash"
        )
    if report.suppressed:
        # Addresses, not lessons: their refused lessons are among the failed above.
        addresses = "address" if report.suppressed == 1 else "addresses"
        notes.append(f"{report.suppressed} {addresses} suppressed")
    if notes:
        line += f" ({'; '.join(notes)})"
    typer.echo(line)
    if report.halted:
        typer.echo(report.halted, err=True)
        return
    if report.failed and report.failure_reason:
        from dripmail.cli import command_name

        first = "the first" if report.failed > 1 else "it"
        typer.echo(
            f"{report.failed} failed for good ({first}: {visible(report.failure_reason)}); "
            f"`{command_name()} status` lists them",
            err=True,
        )
    if report.retry and (report.unreachable or report.retry_reason):
        from dripmail.providers.base import summary_reason

        why = summary_reason(report.unreachable or report.retry_reason)
        waits = "lesson waits" if report.retry == 1 else "lessons wait"
        typer.echo(f"{report.retry} {waits} for the next run: {why}", err=True)


def _print_confirmations_failed(result) -> None:
    """Confirmation emails `run` could not send, as failed lessons are reported: the count,
    the first reason with its address, and where to see them all (exit 3 follows)."""
    failed = result.confirmations_failed
    if not failed:
        return
    from dripmail.cli import command_name

    first = "the first" if failed > 1 else "it"
    typer.echo(
        f"{failed} confirmation email(s) not sent ({first}: "
        f"{visible(result.confirmation_failure)}); `{command_name()} status` lists them",
        err=True,
    )


def _did_something(report) -> bool:
    """Whether a pass handled any lesson (sent, scheduled, retried, failed...) or halted."""
    counts = (report.sent, report.handed, report.retry, report.failed, report.review)
    return any(counts) or bool(report.recovered or report.suppressed or report.halted)


def run(
    now: str | None = typer.Option(
        None,
        "--now",
        help="Pretend it is this time (ISO-8601, UTC if no offset): test a schedule. Only with "
        "--dry-run or the outbox provider, unless --yes: a real provider would mail readers.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what would go out; write and send nothing."
    ),
    limit: int | None = typer.Option(
        None,
        "--limit",
        min=1,
        help="Hand over at most N new lessons (what a crash left in flight is always finished).",
    ),
    loop: bool = typer.Option(
        False, "--loop", help="Keep running: sleep until the next lesson is due, then send it."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar (for cron)."),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="With --now and a real provider: really send."
    ),
) -> None:
    """Send every lesson (and scheduled newsletter) that is due, once. Safe to re-run.

    Run it from cron every few minutes, or once with --loop.

    Exit code 0: all went out; 1: an error stopped the run (nothing half-done is lost; re-run
    after fixing it); 3: finished, but some deliveries failed or need review (see `status`), a
    confirmation email could not be sent, or the provider could not be reached or took none of
    the lessons for a reason other than a rate limit (they wait; the reason is printed); 130:
    stopped
    by Ctrl-C or SIGTERM, with or without --loop (it says how many lessons this pass handed
    over; claims not yet handed over go back to the queue; re-run).

    --loop reads the course's files again whenever they change; while they have errors it
    prints them (file:line) and sends nothing, and goes on once they are fixed.

    --now with a real provider needs --yes (or --dry-run).
    """
    clock_at = parse_now(now)
    if loop and clock_at:
        raise InputError("--loop runs on the real clock; drop --now (or run without --loop)")
    core = _core((lambda: clock_at) if clock_at else None)
    core.check_simulated_clock(clock_at, dry_run=dry_run, yes=yes)
    attention = False
    passes = 0
    handled = [0]  # lessons handed over and recorded in the current pass
    unsaid: tuple[Any, datetime] | None = None  # a finished pass's report, being printed
    # Why each scheduled broadcast could not be sent, as last printed: a loop says it once,
    # and again only when the reason changes, not every minute until someone looks.
    said: dict[int, str] = {}
    # The content errors a loop printed last: said once, again only when they change.
    broken: list[str] = []
    try:
        with stop_signals_as_ctrl_c():
            while True:
                current = clock_at or datetime.now(UTC)
                try:
                    result = _one_pass(core, current, limit, dry_run, quiet, handled)
                except ContentError as exc:
                    if not loop or dry_run:
                        raise  # one run: exit 1 with the problems (the error handler prints)
                    handled[0] = 0
                    _say_content_error(exc, current, broken)
                    passes += 1
                    wallclock.sleep(core.seconds_to_next())
                    continue
                if broken:
                    typer.echo(f"{current:%Y-%m-%d %H:%M} UTC: the course loads again; sending")
                    broken.clear()
                # The pass is over: a stop from here on stopped no pass (a stopped loop said
                # "1 lesson handed over" for what an earlier pass had handed over and said).
                handled[0] = 0
                if not passes or _did_something(result.lessons):
                    # A loop reports its first pass, then only passes that did something: a
                    # minute-by-minute "0 sent" all day would bury the lines that matter.
                    unsaid = (result.lessons, current)
                    _print_report(result.lessons, current, dry_run, result.would_broadcast)
                unsaid = None
                passes += 1
                if result.confirmations or result.confirmations_failed:
                    # Counted in the summary like lessons: sent, and not sent (stderr: why).
                    line = f"{result.confirmations} confirmation email(s) sent after a crash"
                    if result.confirmations_failed:
                        line += f", {result.confirmations_failed} not sent"
                    typer.echo(line)
                _print_confirmations_failed(result)
                for line in _broadcast_lines(result.broadcasts, said):
                    typer.echo(line)
                attention = attention or result.attention
                if result.halted:
                    raise typer.Exit(1)
                if not loop or dry_run:
                    break
                wallclock.sleep(core.seconds_to_next())
    except KeyboardInterrupt:
        # Ctrl-C mid-pass is safe: claims not yet handed over went back to the queue, and
        # anything in flight is reconciled by the next run. A loop stops the same way, with
        # the same code, whatever earlier passes reported: those were printed when they
        # happened, and a service manager reads 130 as "stopped as asked".
        if unsaid is not None:  # stopped between a finished pass and its line: say it first
            _print_report(unsaid[0], unsaid[1], dry_run)
        typer.echo(stopped_line(handled[0]))
        raise typer.Exit(EXIT_STOPPED) from None
    finally:
        core.close()
    if attention:
        raise typer.Exit(EXIT_ATTENTION)


def _say_content_error(exc: ContentError, now: datetime, said: list[str]) -> None:
    """A loop pass the course's files kept from sending: its problems on stderr, one per line
    as `check` prints them (``file:line: field: message``), unless the last pass said the same."""
    if exc.problems == said:
        return
    said[:] = exc.problems
    typer.echo(
        f"{now:%Y-%m-%d %H:%M} UTC: no lessons sent: the course has errors; fix them and the "
        "loop sends on its next pass (it looks again every minute):",
        err=True,
    )
    for line in exc.problems:
        typer.echo(f"  {visible(line)}", err=True)


def stopped_line(handled: int) -> str:
    """What `run` prints when Ctrl-C or SIGTERM stops it, in `broadcast`'s words: how many
    lessons this pass handed over and recorded, and that re-running sends the rest once."""
    lessons = "lesson" if handled == 1 else "lessons"
    return (
        f"stopped: {handled} {lessons} handed over and recorded in this pass; the rest go out "
        "when you run the same command again (nobody gets a lesson twice)"
    )


def _broadcast_lines(done, said: dict[int, str]) -> list[str]:
    """One line per scheduled broadcast `run` sent (or could not send).

    `said` maps a broadcast's id to the reason it could not be sent as printed last (kept
    across the passes of one `run --loop`): the same reason is not printed again.
    """
    lines = []
    for item in done:
        if item.error:
            if said.get(item.id) != item.error:
                lines.append(f"scheduled broadcast {item.id} not sent: {item.error}")
            said[item.id] = item.error
            continue
        said.pop(item.id, None)
        s, report = item.stats, item.report
        line = f"scheduled broadcast {item.id} ({item.slug}): {s.accepted} of {s.recipients}"
        line += f" accepted ({report.sent + report.handed} now)"
        if s.failed:
            line += f", {s.failed} failed or for review"
        if s.pending:
            line += f", {s.pending} to retry on a later run"
        lines.append(line)
        if report.halted:
            lines.append(f"scheduled broadcast {item.id} {report.halted}")
        elif report.unreachable:
            from dripmail.providers.base import summary_reason

            why = summary_reason(report.unreachable)
            lines.append(f"scheduled broadcast {item.id}: {why}")
    return lines


def status() -> None:
    """Subscribers by status and lesson, deliveries by state, next due time, recent failures."""
    report = _core().status()
    if not report.subscribers:
        # Bare headings with nothing under them read like a fault; say what to do instead.
        typer.echo("no subscribers yet (add one with `subscribers add` or `subscribers import`)")
    else:
        typer.echo("Subscribers")
        for name, count in report.subscribers.items():
            typer.echo(f"  {name:<14}{count:>8}")
    if report.lessons:
        typer.echo("Lessons delivered (sent or scheduled at the provider)")
        for day, count in report.lessons.items():
            label = "welcome" if day == 0 else f"day {day}"  # day 0: the welcome email
            typer.echo(f"  {label:<14}{count:>8}")
    if report.deliveries:
        typer.echo("Deliveries")
        for name, count in report.deliveries.items():
            typer.echo(f"  {name:<14}{count:>8}")
    typer.echo(report.next_due_line())
    if report.failures:
        typer.echo("Recent failures and reviews")
        for row in report.failures:
            typer.echo(f"  {row['key']:<28} {row['state']:<8} {visible(row['last_error'] or '')}")
    from dripmail.cli import command_name

    waiting = sum(count for _, count in report.failed_waiting)
    failed = report.deliveries.get("failed", 0) - report.failed_final - waiting
    if failed:
        typer.echo(
            f"{failed} lesson(s) failed for good: once the cause is fixed, "
            f"`{command_name()} deliveries retry --dry-run` shows what would go back in the queue"
        )
    if waiting:
        kinds = ", ".join(f"{count} {kind}" for kind, count in report.failed_waiting)
        typer.echo(
            f"{waiting} failed lesson(s) cannot go back in the queue yet ({kinds}): a retry "
            "requeues them once the reader confirms or the later lesson is settled"
        )
    if report.failed_final:
        typer.echo(
            f"{report.failed_final} failed lesson(s) are final: the reader stopped mail "
            "(unsubscribed, bounced, complained, suppressed) or already got a later lesson; "
            "no retry sends them"
        )
    stuck = report.unconfirmed
    if stuck.count:
        first = "the first" if stuck.count > 1 else "it"
        why = visible(stuck.reason or f"no reason recorded (to {stuck.email})")
        if stuck.count > 1:
            # Each reader owed one, with their own reason: `run` says "status lists them".
            typer.echo(f"Confirmation emails not sent ({stuck.count})")
            for email, reason in stuck.listed:
                # A recorded reason names its address already: "... (to ADDRESS)".
                line = reason if email in reason else f"{email}: {reason or 'no reason recorded'}"
                typer.echo(f"  {visible(line)}")
            if stuck.count > len(stuck.listed):
                typer.echo(f"  ... and {stuck.count - len(stuck.listed)} more")
        typer.echo(
            f"{stuck.count} confirmation email(s) not sent ({first}: {why}); "
            f"`{command_name()} subscribers show ADDRESS` shows each one's reason; once the "
            "cause is fixed (a bad stored name: `subscribers rename ADDRESS NAME`, which also "
            "offers the email again), the reader's next sign-up or `subscribers import "
            "--confirm` of the address offers it again"
        )
    waiting = report.deliveries.get("review", 0)
    if waiting:
        typer.echo(
            f"{waiting} lesson(s) wait for review: `{command_name()} deliveries review` shows "
            "them, `deliveries settle` settles them"
        )


def demo(
    subscribers: int = typer.Option(3, "--subscribers", min=1, max=300, hidden=True),
) -> None:
    """A simulated week for sample subscribers in three zones, in a folder of its own.

    Everything happens in demo/ (its own SQLite database and outbox, started afresh each
    time), whatever the settings say: the project's database, outbox and provider are never
    touched, and nothing leaves this machine. Uses this folder's course, or the sample
    course if there is none. Prints when each lesson went out, in local time and UTC.
    """
    from dripmail.cli import command_name
    from dripmail.demo import run_demo

    result = run_demo(state.root, state.settings, datetime.now(UTC), count=subscribers)
    for line in result.notes:
        typer.echo(line)
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="A simulated week (each lesson once, at 07:00 local time)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )
    for col in ("subscriber", "zone", "lesson", "local send time", "UTC"):
        table.add_column(col, no_wrap=True)
    for row in result.rows:
        table.add_row(*row)
    Console(width=80).print(table)
    for line in result.events:  # they describe the week above: printed after it
        typer.echo(line)
    typer.echo(f"{result.written} emails written to {state.folder.display(result.outbox)}")
    cmd = command_name()
    here = state.root == Path.cwd().resolve()
    if not here:  # the hint must work from the folder the user is in
        cmd = f"{cmd} --root {state.root}"
    if result.sample_course:
        folder = "." if here else str(state.root)
        typer.echo(
            f"Start your own course here: `{command_name()} init {folder}`, then `{cmd} preview`"
        )
    else:
        typer.echo("The project's own database, outbox and provider were not used.")
        typer.echo(f"Look at the emails live: `{cmd} preview` (or `{cmd} render`)")
    typer.echo(
        f"See the demo's figures: `{cmd} report --demo` (charts: `{cmd} report --demo --serve`)"
    )


@db.command("upgrade")
def upgrade() -> None:
    """Create or upgrade the database schema to this version (also done on first use)."""
    from dripmail.runner import Runner

    url = Runner(state.folder, state.settings).upgrade_database()
    typer.echo(f"database is up to date: {url}")


def register(app: typer.Typer) -> None:
    """Attach `run`, `status`, `demo` and `db`."""
    app.command("run")(run)
    app.command("status")(status)
    app.command("demo")(demo)
    app.add_typer(db, name="db")
