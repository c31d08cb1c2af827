"""`deliveries review` and `deliveries settle`: the operator's answer to ambiguous hand-overs."""

from __future__ import annotations

import getpass
import os
from datetime import datetime
from enum import StrEnum

import typer

from dripmail.cli import command_name, state
from dripmail.cli.printing import visible

group = typer.Typer(
    help="Deliveries whose hand-over was ambiguous: list them, settle them.",
    no_args_is_help=True,
)


class As(StrEnum):
    sent = "sent"
    resend = "resend"


def _core():
    from dripmail.app import Dripmail

    return Dripmail(state.project, state.settings)


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value else "-"


@group.command("review")
def review() -> None:
    """List deliveries waiting for review, with what is known about each.

    Subscriber, lesson or newsletter, provider, batch, when it was handed over, the
    provider's answer and any webhook events received for it since.
    """
    rows = _core().deliveries_for_review()
    if not rows:
        typer.echo("nothing waits for review")
        return
    typer.echo(
        f"{len(rows)} deliver{'y waits' if len(rows) == 1 else 'ies wait'} for review "
        "(the provider may or may not have delivered them):"
    )
    for row in rows:
        what = f"lesson {row.what}" if row.kind == "lesson" else f"newsletter {row.what}"
        typer.echo(f"{row.key}  {what}  to {visible(row.email)} ({row.subscriber_status})")
        typer.echo(
            f"    provider {row.provider or '-'}, batch {row.batch_key or '-'}, "
            f"handed over {_when(row.handed_at)}, {row.attempts} attempt(s)"
        )
        typer.echo(f"    known: {visible(row.last_error or 'no answer recorded')}")
        if row.events:
            seen = ", ".join(f"{t} {_when(at)} ({p})" for t, at, p in row.events)
            typer.echo(f"    events: {seen}")
        else:
            typer.echo("    events: none from the provider for this key")
    cmd = command_name()
    typer.echo(
        "Check the provider's activity log, then settle: "
        f"`{cmd} deliveries settle KEY --as sent` (it arrived) or `--as resend` "
        "(it did not); `--all` instead of keys settles every one."
    )


@group.command("settle")
def settle(
    ctx: typer.Context,
    keys: list[str] = typer.Argument(None, help="Delivery keys, as `deliveries review` shows."),
    all_: bool = typer.Option(False, "--all", help="Every delivery waiting for review."),
    as_: As = typer.Option(
        ..., "--as", help="sent: it did arrive; resend: it did not, send it again."
    ),
    by: str = typer.Option(
        None, "--by", help="Who decides (recorded with the time). Default: $USER."
    ),
    note: str = typer.Option("", "--note", help="Why, e.g. what the activity log showed."),
) -> None:
    """Settle deliveries waiting for review: as sent, or send them again.

    Recorded with who and when (an event row, shown by `subscribers show`).
    """
    if bool(keys) == all_:
        # A command line that cannot mean anything: click's usage error (exit 2, with usage).
        ctx.fail("name the delivery keys to settle, or --all (not both)")
    who = by if by is not None else (os.environ.get("USER") or getpass.getuser())
    result = _core().settle_review(None if all_ else keys, as_.value, who, note)
    if not result.done and not result.refused:
        typer.echo("nothing waits for review")
        return
    for row in result.done:
        if as_ is As.sent:
            typer.echo(f"{row.key}: settled as sent by {who.strip()}")
        elif row.kind == "lesson":
            typer.echo(f"{row.key}: back in the queue, goes out on the next `run`")
        else:
            typer.echo(
                f"{row.key}: back in the queue; `{command_name()} broadcast "
                f"newsletters/{row.what}.md` sends it (a scheduled one: the next `run`)"
            )
    for key, reason in result.refused:
        typer.echo(f"{key}: left for review: {reason}", err=True)
    if result.refused:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Attach the `deliveries` group."""
    app.add_typer(group, name="deliveries")
