"""`broadcast FILE` and `broadcasts list|show|cancel`: the newsletter from the command line."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import typer

from dripmail.cli import command_name, parse_now, state
from dripmail.cli.exits import EXIT_ATTENTION, EXIT_STOPPED, stop_signals_as_ctrl_c
from dripmail.cli.printing import visible
from dripmail.errors import InputError

group = typer.Typer(help="Inspect and cancel newsletter broadcasts.", no_args_is_help=True)

# Below this many deliveries a progress bar is more noise than help.
BAR_FROM = 50


def _parse_schedule(value: str, zone_name: str) -> datetime:
    """`--schedule` as aware UTC; a time without an offset is in the course's time zone."""
    from zoneinfo import ZoneInfo

    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(
            f"--schedule {value!r} is not an ISO-8601 time (e.g. 2026-12-01T09:00, taken in "
            f"{zone_name}, or 2026-12-01T09:00+00:00)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(zone_name))
    return parsed.astimezone(UTC)


def _progress():
    """A progress bar with count, percentage, rate (messages/s) and time left (on stderr,
    only on a terminal: `terminal_bar`)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TaskProgressColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    from dripmail.cli.progress import terminal_bar

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f}/s" if speed else "-/s", style="progress.data.speed")

    return terminal_bar(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeRemainingColumn(),
    )


def send_broadcast(core, newsletter, row, now: datetime, quiet: bool = False):
    """`core.send_broadcast` with progress bars (planning and sending) for larger lists."""
    total = core.count_eligible(row["segment"])
    if quiet or total < BAR_FROM:
        return core.send_broadcast(newsletter, row, now)
    before = core.broadcast_stats(row["id"])
    # Copies left: planned and not handed over yet, plus the readers not planned yet (the
    # list is planned as the copies go out, so both bars move together).
    left = before.pending + max(0, total - before.recipients - before.skipped)
    with _progress() as bar:
        planning = bar.add_task("planning", total=total)
        sending = bar.add_task("sending", total=left)

        def planned(n: int) -> None:
            bar.advance(planning, n)

        def sent(n: int) -> None:
            bar.advance(sending, n)

        report = core.send_broadcast(newsletter, row, now, planned=planned, sent=sent)
        bar.update(planning, completed=total)
        done = bar.tasks[sending].completed
        bar.update(sending, total=done, completed=done)
        return report


def _summary(core, row, report) -> bool:
    """Print one line about a broadcast after sending; True when something needs attention."""
    from dripmail.broadcast import needs_attention

    s = core.broadcast_stats(row["id"])
    parts = [f"{s.accepted} of {s.recipients} accepted ({report.sent + report.handed} now)"]
    for label, value in (
        ("failed or for review", s.failed),
        ("to retry later", s.pending),
        ("skipped (left or stopped newsletters)", report.skipped),
    ):
        if value:
            parts.append(f"{value} {label}")
    line = f"broadcast {row['id']} ({row['slug']}): " + ", ".join(parts)
    if report.recovered:
        # Copies a crash left in flight are among the counts above, not more of them.
        line += f" ({report.recovered} of these recovered after a crash)"
    typer.echo(line)
    if report.halted:
        typer.echo(report.halted, err=True)
    elif s.pending:
        from dripmail.providers.base import summary_reason

        why = report.unreachable or report.retry_reason
        because = f": {summary_reason(why)}" if why else ""
        were = "copy was" if s.pending == 1 else "copies were"
        typer.echo(
            f"{s.pending} {were} not sent this time{because}; run the same command "
            "again later to send them",
            err=True,
        )
    return needs_attention(s)


def _confirm(count: int, threshold: int, yes: bool, what: str) -> None:
    if count <= threshold or yes:
        return
    if not sys.stdin.isatty():
        raise InputError(
            f"{count} recipients is above DRIPMAIL_CONFIRM_THRESHOLD ({threshold}): "
            "re-run with --yes to send"
        )
    from dripmail.cli.exits import ask_or_stop

    done = "nothing was sent" if what == "Send it" else "nothing was scheduled"
    ask_or_stop(f"{what} to {count} subscribers?", done)


def broadcast(
    file: Path = typer.Argument(..., help="The newsletter, e.g. newsletters/hips-at-the-desk.md."),
    segment: str | None = typer.Option(
        None, "--segment", help="all | in-course | graduates | tag:NAME (default: the file's)."
    ),
    schedule: str | None = typer.Option(
        None,
        "--schedule",
        help="Send at this time (ISO-8601; no offset = the course's time zone). `run` sends it "
        "then; `broadcasts cancel ID` stops it.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count and show a sample; send nothing."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before a large send."),
    now: str | None = typer.Option(None, "--now", help="Simulated clock (ISO-8601)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Send a newsletter to every eligible subscriber, once each.

    Eligible: active and completed subscribers who did not stop newsletters (never anyone
    unsubscribed, bounced or complained). Interrupted? Run the same command again: it continues
    where it stopped and nobody gets a second copy. Exit 3 when some copies failed or are left
    for later (e.g. the provider could not be reached: run it again then); exit 130 when
    stopped by Ctrl-C or SIGTERM (the rest goes out when the same command runs again).
    """
    from dripmail.app import Dripmail

    clock = parse_now(now) or datetime.now(UTC)
    core = Dripmail(state.project, state.settings, clock=lambda: clock)
    when = _parse_schedule(schedule, core.course.timezone) if schedule else None
    plan = core.plan_broadcast(file, segment, when)
    if plan.already_sent and plan.existing is not None:
        row = plan.existing
        typer.echo(f"broadcast {row['id']} ({row['slug']}) was already sent; nothing to do")
        return
    typer.echo(
        f"{plan.newsletter.subject!r} to segment {plan.segment}: {plan.recipients} recipient(s)"
    )
    for person in plan.sample:
        address = visible(person["email"])
        name = visible(person["first_name"] or "")
        typer.echo(f"  e.g. {name} <{address}>" if name else f"  e.g. {address} (no name)")
    if dry_run:
        core.check_broadcast_template(plan)
        if plan.nobody:
            typer.echo(f"warning: {plan.nobody}", err=True)
        typer.echo("dry run: nothing was written or sent")
        return
    threshold = core.settings.confirm_threshold
    if plan.when is not None:
        _confirm(plan.recipients, threshold, yes, "Schedule it")
        row = core.open_broadcast(plan)
        cmd = command_name()
        typer.echo(
            f"broadcast {row['id']} scheduled for {plan.when:%Y-%m-%d %H:%M} UTC; `{cmd} run` "
            f"(from cron) sends it then. Cancel it with `{cmd} broadcasts cancel {row['id']}`"
        )
        return
    if not plan.started:
        _confirm(plan.recipients, threshold, yes, "Send it")
    row = core.open_broadcast(plan)
    try:
        with stop_signals_as_ctrl_c():  # `kill [-INT]`, systemd, `docker stop`: as Ctrl-C
            report = send_broadcast(core, plan.newsletter, row, clock, quiet)
    except KeyboardInterrupt:
        # Safe to stop: the chunk at the provider was recorded, the rest went back to the
        # queue; say so as `run` does, with what remains.
        s = core.broadcast_stats(row["id"])
        typer.echo(
            f"stopped: {s.accepted} of about {max(plan.recipients, s.recipients)} copies "
            f"accepted so far; the rest go out when you run the same command again "
            f"(nobody gets a second copy)"
        )
        raise typer.Exit(EXIT_STOPPED) from None
    finally:
        core.close()
    attention = _summary(core, row, report)
    if report.halted:
        raise typer.Exit(1)
    if attention:
        raise typer.Exit(EXIT_ATTENTION)


def _ref(value: str) -> int | str:
    return int(value) if value.isdigit() else value


NOT_STARTED = "not started"
STOPPED = "stopped"


def _status(row) -> str:
    """The status to show: one whose last send stopped (a template error, a halt...) is
    `stopped` whatever it is stored as (scheduled or sending: running it again continues it);
    a broadcast opened by hand but stopped before it started (a kill in its first second) is
    stored as `scheduled` with no time, and "scheduled -" would mislead."""
    from dripmail.broadcast import stopped

    if stopped(row):
        return STOPPED
    if row["status"] == "scheduled" and row["scheduled_at"] is None and not row["started_at"]:
        return NOT_STARTED
    return str(row["status"])


def _stopped_lines(row) -> list[str]:
    """Why a stopped broadcast stopped, when, and what to do (for `broadcasts show`)."""
    from dripmail.broadcast import stopped

    why = stopped(row)
    if not why:
        return []
    cmd = command_name()
    when = f" {row['stopped_at']:%Y-%m-%d %H:%M} UTC" if row["stopped_at"] else ""
    again = f"`{cmd} broadcast newsletters/{row['slug']}.md` again"
    if row["scheduled_at"] is not None and not row["started_at"]:
        again = "the next `run` (it is scheduled) or " + again
    from dripmail.broadcast import INTERRUPTED

    then = (
        f"{again} sends the rest"
        if why == INTERRUPTED
        else f"fix what it names, then {again} sends it"
    )
    return [
        f"  stopped{when}: {visible(why)}",
        f"  {then}: it continues where it stopped and nobody gets a second copy",
    ]


@group.command("list")
def list_() -> None:
    """Every broadcast: id, status, recipients, accepted, failed."""
    from dripmail.app import Dripmail

    rows = Dripmail(state.project, state.settings).list_broadcasts()
    if not rows:
        typer.echo(f"no broadcasts yet: `{command_name()} broadcast newsletters/<file>.md`")
        return
    typer.echo(
        f"{'id':>4}  {'status':<11} {'slug':<32} {'when (UTC)':<16} {'recipients':>10}"
        f" {'accepted':>9} {'failed':>7}"
    )
    for row, s in rows:
        when = row["started_at"] or row["scheduled_at"]
        shown = f"{when:%Y-%m-%d %H:%M}" if when else "-"
        typer.echo(
            f"{row['id']:>4}  {_status(row):<11} {row['slug']:<32} {shown:<16}"
            f" {s.recipients:>10} {s.accepted:>9} {s.failed:>7}"
        )
    from dripmail.broadcast import INTERRUPTED, stopped

    for row, _ in rows:
        why = stopped(row)
        if why:
            # Nothing to fix after a Ctrl-C: running it again is all there is to do.
            then = "run it again" if why == INTERRUPTED else "fix it and run it again"
            typer.echo(
                f"broadcast {row['id']} stopped: {visible(why)}; {then} "
                f"(`{command_name()} broadcasts show {row['id']}` says how)"
            )


@group.command("show")
def show(
    ref: str = typer.Argument(..., metavar="ID", help="The broadcast's id (or slug)."),
) -> None:
    """One broadcast: recipients, accepted, failed, bounced, opened, clicked."""
    from dripmail.app import Dripmail

    core = Dripmail(state.project, state.settings)
    row = core.find_broadcast(_ref(ref))
    s = core.broadcast_stats(row["id"])
    typer.echo(f"broadcast {row['id']}: {row['subject']!r} ({row['slug']}), {_status(row)}")
    for line in _stopped_lines(row):
        typer.echo(line)
    if _status(row) == NOT_STARTED:
        typer.echo(f"  stopped before its first copy: `{command_name()} broadcast FILE` starts it")
    typer.echo(f"  segment    {row['segment']}")
    for label in ("scheduled_at", "started_at", "finished_at"):
        if row[label]:
            typer.echo(f"  {label.split('_')[0]:<11}{row[label]:%Y-%m-%d %H:%M} UTC")
    for label in ("recipients", "accepted", "failed", "pending", "bounced", "opened", "clicked"):
        typer.echo(f"  {label:<11}{getattr(s, label):>8}")
    for label in ("complained", "unsubscribed", "skipped"):
        if getattr(s, label):
            typer.echo(f"  {label:<11}{getattr(s, label):>8}")
    failed, total = core.broadcast_failures(row["id"])
    if failed:
        shown = f"the first {len(failed)} of {total}" if total > len(failed) else f"{total}"
        typer.echo(f"  why copies failed or wait for review ({shown}):")
        for copy in failed:
            typer.echo(
                f"    {copy['state']:<7} {visible(copy['last_error'] or 'no reason recorded')}"
            )


@group.command("cancel")
def cancel(
    ref: str = typer.Argument(..., metavar="ID", help="The broadcast's id (or slug)."),
) -> None:
    """Cancel a broadcast: before it starts, nobody gets it; mid-way, the rest is stopped."""
    from dripmail.app import Dripmail

    done = Dripmail(state.project, state.settings).cancel_broadcast(_ref(ref))
    row = done.broadcast
    line = f"cancelled broadcast {row['id']} ({row['slug']})"
    if done.accepted:
        line += f": {done.stopped} copies stopped, {done.accepted} had already gone out"
    typer.echo(line)


def register(app: typer.Typer) -> None:
    """Attach `broadcast` and `broadcasts`."""
    app.command("broadcast")(broadcast)
    app.add_typer(group, name="broadcasts")
