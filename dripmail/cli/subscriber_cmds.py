"""`subscribers ...`: add, list, show, pause/resume, unsubscribe."""

from __future__ import annotations

from datetime import UTC, date, datetime

import typer

from dripmail.cli import state

sub = typer.Typer(help="Manage subscribers: add, list, unsubscribe.", no_args_is_help=True)


def _now(now: str | None) -> datetime:
    from dripmail.errors import InputError

    if not now:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(now)
    except ValueError:
        raise InputError(
            f"--now {now!r} is not an ISO-8601 time (e.g. 2026-12-01T07:00Z)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


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
    subs.unsubscribe(engine, row["id"], datetime.now(UTC), source="cli")
    typer.echo(f"unsubscribed {row['email']}")


def register(app: typer.Typer) -> None:
    """Attach the `subscribers` group."""
    app.add_typer(sub, name="subscribers")
