"""`deliveries review`, `deliveries settle` and `deliveries retry`: the operator's answer to
ambiguous hand-overs and to lessons that failed for good."""

from __future__ import annotations

import getpass
import os
import sys
from datetime import date, datetime
from enum import StrEnum

import typer

from dripmail.cli import command_name, state
from dripmail.cli.exits import EXIT_ATTENTION
from dripmail.cli.printing import visible
from dripmail.errors import InputError

group = typer.Typer(
    help="Deliveries that need a person: settle ambiguous hand-overs (review, settle), put "
    "failed lessons back in the queue (retry).",
    no_args_is_help=True,
)


class As(StrEnum):
    sent = "sent"
    resend = "resend"


def _core():
    from dripmail.app import Dripmail

    return Dripmail(state.project, state.settings)


def _who(by: str | None, note: str) -> str:
    """Who decides (`--by`, default $USER), once `--by` and `--note` are known to fit on one
    line (they are recorded and printed so); InputError naming the option otherwise."""
    from dripmail.errors import InputError
    from dripmail.validation import one_line

    if by is not None:
        one_line(by, "--by")
        if not by.strip():
            # The record would say nobody decided: who did matters when it is read later.
            raise InputError("--by is empty: give who decides, or leave --by out for $USER")
    one_line(note, "--note")
    return by if by is not None else (os.environ.get("USER") or getpass.getuser())


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
        None,
        "--by",
        metavar="NAME",
        help="Who decides (recorded with the time; one line). Default: $USER.",
    ),
    note: str = typer.Option(
        "", "--note", metavar="TEXT", help="Why, e.g. what the activity log showed (one line)."
    ),
) -> None:
    """Settle deliveries waiting for review: as sent, or send them again.

    Recorded with who and when (an event row, shown by `subscribers show`).
    """
    if bool(keys) == all_:
        # A command line that cannot mean anything: click's usage error (exit 2, with usage).
        ctx.fail("name the delivery keys to settle, or --all (not both)")
    who = _who(by, note)
    result = _core().settle_review(None if all_ else keys, as_.value, who, note)
    if not result.done and not result.refused:
        typer.echo("nothing waits for review")
        return
    for row in result.done:
        if as_ is As.sent:
            typer.echo(f"{row.key}: settled as sent by {visible(who.strip())}")
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


def _day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise InputError(f"{option} {value!r} is not a date: use YYYY-MM-DD (a UTC day)") from None


def _lesson(day: int) -> str:
    return "welcome" if day == 0 else f"day {day}"


def _goes_out(item, now: datetime) -> str:
    if item.goes_out is None:
        return item.waits
    if item.goes_out <= now:
        return "goes out on the next `run`"
    return f"goes out at {item.goes_out:%Y-%m-%d %H:%M} UTC (one lesson a day)"


def _show(items, now: datetime, limit: int = 50) -> None:
    for item in items[:limit]:
        row = item.lesson
        typer.echo(
            f"  {row.key:<28} {_lesson(row.lesson_day):<8} to {visible(row.email)}: "
            f"{_goes_out(item, now)}"
        )
        typer.echo(
            f"      failed {row.failed_at:%Y-%m-%d %H:%M} UTC: {visible(row.last_error or '-')}"
        )
    if len(items) > limit:
        typer.echo(f"  ... and {len(items) - limit} more")


def _show_left(plan, everything: bool = False, limit: int = 50) -> None:
    """The lessons left as they are, on stderr, one line each with why. With `everything`
    (--all), those no retry will ever requeue (`Left.final`) are one line on stdout instead:
    a sweep over every failed lesson is not a request for them."""
    left = plan.open if everything else plan.left
    if everything and plan.final:
        final = plan.final
        kinds = ", ".join(f"{count} {kind}" for kind, count in plan.left_by_kind(final=True))
        lessons = "lesson is" if len(final) == 1 else "lessons are"
        typer.echo(
            f"left out {len(final)} failed {lessons} final ({kinds}): the reader stopped mail "
            "or already got a later lesson, so no retry requeues them"
        )
    if not left:
        return
    counts = plan.left_by_kind(final=False) if everything else plan.left_by_kind()
    kinds = ", ".join(f"{count} {kind}" for kind, count in counts)
    lessons = "lesson" if len(left) == 1 else "lessons"
    typer.echo(f"left {len(left)} failed {lessons} as they are ({kinds}):", err=True)
    for item in left[:limit]:
        row = item.lesson
        typer.echo(f"  {row.key}: {visible(item.why)}", err=True)
    if len(left) > limit:
        typer.echo(f"  ... and {len(left) - limit} more", err=True)


@group.command("retry")
def retry(
    ctx: typer.Context,
    address: list[str] = typer.Option(
        None, "--address", metavar="EMAIL", help="A reader's address (repeat for several)."
    ),
    reason: str = typer.Option(
        "",
        "--reason",
        metavar="TEXT",
        help="Only lessons whose failure reason contains this text (any case).",
    ),
    since: str | None = typer.Option(
        None,
        "--since",
        metavar="DAY",
        help="Only lessons that failed on or after this UTC day (YYYY-MM-DD).",
    ),
    until: str | None = typer.Option(
        None,
        "--until",
        metavar="DAY",
        help="Only lessons that failed on or before this UTC day (YYYY-MM-DD).",
    ),
    all_: bool = typer.Option(False, "--all", help="Every failed lesson (no filter)."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what would go back in the queue; write nothing."
    ),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Do not ask, above DRIPMAIL_CONFIRM_THRESHOLD lessons."
    ),
    by: str = typer.Option(
        None,
        "--by",
        metavar="NAME",
        help="Who asks (recorded with the time; one line). Default: $USER.",
    ),
    note: str = typer.Option(
        "", "--note", metavar="TEXT", help="Why, e.g. what was fixed (one line)."
    ),
) -> None:
    """Put lessons that failed for good back in the queue, once their cause is fixed.

    A lesson fails for good when the provider refuses it (e.g. an unverified sender) or its
    email cannot be built from the reader's stored data; `status` lists them. Fix the cause,
    look with --dry-run, then retry: the lessons go back to planned and go out on the next
    `run`, in order and one a day (a lesson is never sent on the same local day as the one
    before it, and the lessons after it wait for it). Nothing is sent by this command.

    Select with --address (repeatable), --reason TEXT, --since/--until DAY, or --all;
    filters combine. Lessons of readers who are unsubscribed, bounced, complained, suppressed
    or erased are never requeued, nor a lesson whose reader already got a later one (it would
    arrive out of order): each is listed on stderr with why.

    Above DRIPMAIL_CONFIRM_THRESHOLD lessons it asks first (--yes skips that; without a
    terminal it needs --yes). Recorded with who (--by, default $USER) and when.

    Examples: `deliveries retry --reason "sender signature" --dry-run`, then without
    --dry-run; `deliveries retry --address ann@example.org --note "name fixed"`.

    Exit code 0: done (or nothing matched, or --dry-run); 1: an error (an address that is
    not a subscriber or was erased, a bad date, the question answered no); 2: a usage error;
    3: done, but some selected lessons were left as they are (listed on stderr). With --all,
    lessons no retry will ever requeue (the reader stopped mail or already got a later lesson)
    are left out in one line on stdout, without exit 3.
    """
    if all_ and (address or reason or since or until):
        ctx.fail("--all means every failed lesson: leave out the filters, or --all")
    if not all_ and not (address or reason.strip() or since or until):
        ctx.fail("say which failed lessons to retry: --address, --reason, --since, --until, "
                 "or --all for every one")  # fmt: skip
    from dripmail.retry import Selection

    who = _who(by, note)  # refused before anything is looked up
    selection = Selection(
        addresses=tuple(address or ()),
        reason=reason,
        since=_day(since, "--since"),
        until=_day(until, "--until"),
        everything=all_,
    )
    core = _core()
    plan = core.plan_retry(selection)
    now = plan.now
    if not plan.requeue and not plan.left:
        typer.echo(f"nothing to retry: no failed lesson {selection.describe()}")
        return
    lessons = "lesson" if len(plan.requeue) == 1 else "lessons"
    if dry_run:
        typer.echo(
            f"dry run: {len(plan.requeue)} failed {lessons} would go back in the queue"
            + (":" if plan.requeue else "")
        )
        _show(plan.requeue, now)
        _show_left(plan, all_)
        typer.echo("nothing was written")
        return
    if not plan.requeue:
        _show_left(plan, all_)
        typer.echo("nothing was requeued")
        if plan.open or not all_:
            raise typer.Exit(EXIT_ATTENTION)
        return
    _confirm_retry(plan, core.settings.confirm_threshold, yes)
    done = core.retry_failed(plan, who, note)
    lessons = "lesson" if len(done.requeue) == 1 else "lessons"
    them = "it" if len(done.requeue) == 1 else "them"
    typer.echo(
        f"put {len(done.requeue)} failed {lessons} back in the queue (asked by "
        f"{visible(who.strip())}); "
        f"`{command_name()} run` sends {them}" + (":" if done.requeue else "")
    )
    _show(done.requeue, now)
    _show_left(done, all_)
    if done.open if all_ else done.left:
        raise typer.Exit(EXIT_ATTENTION)


def _confirm_retry(plan, threshold: int, yes: bool) -> None:
    """Ask before a large retry, as a large broadcast asks (`DRIPMAIL_CONFIRM_THRESHOLD`),
    after listing the lessons it would requeue (the first 50), so the answer is informed."""
    count = len(plan.requeue)
    if count <= threshold or yes:
        return
    if not sys.stdin.isatty():
        raise InputError(
            f"{count} lessons is above DRIPMAIL_CONFIRM_THRESHOLD ({threshold}): re-run with "
            "--yes to requeue them (--dry-run lists them)"
        )
    from dripmail.cli.exits import ask_or_stop

    lessons = "lesson" if count == 1 else "lessons"
    typer.echo(f"{count} failed {lessons} would go back in the queue:")
    _show(plan.requeue, plan.now)
    ask_or_stop(f"Put {count} failed {lessons} back in the queue?", "nothing was requeued")


def register(app: typer.Typer) -> None:
    """Attach the `deliveries` group."""
    app.add_typer(group, name="deliveries")
