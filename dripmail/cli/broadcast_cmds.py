"""`broadcast FILE` and `broadcasts list|show|cancel`: the newsletter from the command line."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer

from dripmail.cli import parse_now, state
from dripmail.errors import InputError

group = typer.Typer(help="Inspect and cancel newsletter broadcasts.", no_args_is_help=True)


def _render_fn(runner, compiled, broadcast_id: int, send_at: datetime | None):
    from dripmail.render import recipient_for

    def render(row: dict):
        recipient = recipient_for(
            {"id": row["subscriber_id"], "email": row["email"], "first_name": row["first_name"]},
            runner.settings.public_url,
            runner.signer,
        )
        return compiled.personalise(
            recipient, key=row["key"], kind="broadcast", ref=str(broadcast_id), send_at=send_at
        )

    return render


def send_broadcast(runner, newsletter, row, now: datetime, quiet: bool = False):
    """Plan and hand over one broadcast (compiled once), with a progress bar."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from dripmail import broadcast as bc
    from dripmail.engine import default_worker_id

    compiled = runner.renderer.newsletter(newsletter)
    ahead = runner.provider.capabilities.schedule_ahead
    send_at = (
        row["scheduled_at"] if row["scheduled_at"] and ahead and row["scheduled_at"] > now else None
    )
    bc.plan(runner.engine, row["id"], row["segment"], now)
    total = bc.stats(runner.engine, row["id"]).pending
    render = _render_fn(runner, compiled, row["id"], send_at)
    if quiet or total < 50:
        return bc.send(runner.engine, runner.provider, row, render, now, worker=default_worker_id())
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    ) as bar:
        task = bar.add_task("sending", total=total)
        return bc.send(
            runner.engine,
            runner.provider,
            row,
            render,
            now,
            worker=default_worker_id(),
            progress=lambda n: bar.advance(task, n),
        )


def send_due_broadcasts(runner, now: datetime) -> list[str]:
    """Send scheduled broadcasts whose time has come (called by `run`); one line each."""
    from dripmail import broadcast as bc
    from dripmail.content import load_newsletter
    from dripmail.errors import DripmailError

    ahead = runner.provider.capabilities.schedule_ahead or timedelta(0)
    lines = []
    for row in bc.list_broadcasts(runner.engine):
        due = row["scheduled_at"]
        if row["status"] not in ("scheduled", "sending") or due is None or due > now + ahead:
            continue
        path = runner.project.newsletters_dir / f"{row['slug']}.md"
        try:
            newsletter = load_newsletter(runner.project, path)
            row = bc.open_broadcast(runner.engine, newsletter, row["segment"], now)
            send_broadcast(runner, newsletter, row, now, quiet=True)
        except DripmailError as exc:
            lines.append(f"scheduled broadcast {row['id']} not sent: {exc}")
            continue
        stats = bc.stats(runner.engine, row["id"])
        lines.append(
            f"scheduled broadcast {row['id']} ({row['slug']}): {stats.accepted} of "
            f"{stats.recipients} accepted"
        )
    return lines


def broadcast(
    file: Path = typer.Argument(..., help="The newsletter, e.g. newsletters/hips-at-the-desk.md."),
    segment: str | None = typer.Option(
        None, "--segment", help="all | in-course | graduates | tag:NAME (default: the file's)."
    ),
    schedule: str | None = typer.Option(
        None, "--schedule", help="Send at this time (ISO-8601); `broadcasts cancel ID` stops it."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count and show a sample; send nothing."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before a large send."),
    now: str | None = typer.Option(None, "--now", help="Simulated clock (ISO-8601)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Send a newsletter to every eligible subscriber, once each.

    Eligible: active and completed subscribers who did not stop newsletters (never anyone
    unsubscribed, bounced or complained). Interrupted? Run the same command again: it continues
    where it stopped and nobody gets a second copy.
    """
    from dripmail import broadcast as bc
    from dripmail.content import load_newsletter
    from dripmail.runner import Runner

    clock = parse_now(now) or datetime.now(UTC)
    when = parse_now(schedule) if schedule else None
    runner = Runner(state.project, state.settings, clock=lambda: clock)
    newsletter = load_newsletter(state.project, file)
    chosen = segment or newsletter.segment
    bc.eligible(chosen)  # validates the segment before anything is written
    count = bc.count_eligible(runner.engine, chosen)
    shown = ", ".join(bc.sample(runner.engine, chosen))
    typer.echo(f"{newsletter.subject!r} to segment {chosen}: {count} recipient(s)")
    if shown:
        typer.echo(f"  e.g. {shown}")
    if dry_run:
        runner.renderer.newsletter(newsletter)  # template errors show up in a dry run too
        typer.echo("dry run: nothing was written or sent")
        return
    row = bc.open_broadcast(runner.engine, newsletter, chosen, clock, when)
    if row["status"] == "sent":
        typer.echo(f"broadcast {row['id']} was already sent; nothing to do")
        return
    window = runner.provider.capabilities.schedule_ahead
    start = row["scheduled_at"]
    if start and start > clock and not (window and start - clock <= window):
        typer.echo(
            f"broadcast {row['id']} scheduled for {start:%Y-%m-%d %H:%M} UTC; it goes out when "
            "`run` (or this command) runs after that. Cancel: "
            f"`python send.py broadcasts cancel {row['id']}`"
        )
        return
    threshold = runner.settings.confirm_threshold
    if count > threshold and not yes and not row["started_at"]:
        if not sys.stdin.isatty():
            raise InputError(
                f"{count} recipients is above DRIPMAIL_CONFIRM_THRESHOLD ({threshold}): "
                "re-run with --yes to send"
            )
        typer.confirm(f"Send to {count} subscribers?", abort=True)
    report = send_broadcast(runner, newsletter, row, clock, quiet)
    stats = bc.stats(runner.engine, row["id"])
    typer.echo(
        f"broadcast {row['id']}: {stats.accepted} of {stats.recipients} accepted"
        f" ({report.sent + report.handed} now), {stats.failed} failed, {stats.pending} pending"
    )
    if stats.failed:
        raise typer.Exit(3)


@group.command("list")
def list_() -> None:
    """Every broadcast: id, status, recipients, accepted, failed."""
    from dripmail import broadcast as bc
    from dripmail.runner import Runner

    engine = Runner(state.project, state.settings).engine
    rows = bc.list_broadcasts(engine)
    if not rows:
        typer.echo("no broadcasts yet: `python send.py broadcast newsletters/<file>.md`")
    for row in rows:
        s = bc.stats(engine, row["id"])
        typer.echo(
            f"{row['id']:>4}  {row['status']:<10} {row['slug']:<32} recipients {s.recipients:>7}"
            f"  accepted {s.accepted:>7}  failed {s.failed:>5}"
        )


@group.command("show")
def show(broadcast_id: int = typer.Argument(..., help="The broadcast's id.")) -> None:
    """One broadcast: recipients, accepted, failed, bounced, opened, clicked."""
    from dripmail import broadcast as bc
    from dripmail.runner import Runner

    engine = Runner(state.project, state.settings).engine
    row = bc.find(engine, broadcast_id)
    s = bc.stats(engine, broadcast_id)
    typer.echo(f"broadcast {row['id']}: {row['subject']!r} ({row['slug']}), {row['status']}")
    typer.echo(f"  segment {row['segment']}")
    if row["scheduled_at"]:
        typer.echo(f"  scheduled {row['scheduled_at']:%Y-%m-%d %H:%M} UTC")
    for label in ("recipients", "accepted", "failed", "pending", "bounced", "opened", "clicked"):
        typer.echo(f"  {label:<11}{getattr(s, label):>8}")


@group.command("cancel")
def cancel(broadcast_id: int = typer.Argument(..., help="The broadcast's id.")) -> None:
    """Cancel a broadcast before it starts sending."""
    from dripmail import broadcast as bc
    from dripmail.runner import Runner

    engine = Runner(state.project, state.settings).engine
    row = bc.cancel(engine, broadcast_id, datetime.now(UTC))
    typer.echo(f"cancelled broadcast {row['id']} ({row['slug']})")


def register(app: typer.Typer) -> None:
    """Attach `broadcast` and `broadcasts`."""
    app.command("broadcast")(broadcast)
    app.add_typer(group, name="broadcasts")
