"""`providers check` and `providers list`: is the configured provider usable, what can each do."""

from __future__ import annotations

import typer

from dripmail.cli import state

providers_app = typer.Typer(help="Email providers: check credentials, compare capabilities.")

NAMES = ("outbox", "smtp", "postmark", "sendgrid", "mailgun", "resend")


@providers_app.command("check")
def check() -> None:
    """Verify the configured provider with a harmless authenticated call (sends nothing).

    Settings a real provider refuses to send with (public URL not https or not public, a
    short secret key) are reported too, one line each, and make the exit code 1.
    """
    import asyncio

    from dripmail.config import deployment_problems, unused_credentials
    from dripmail.providers import get_provider

    settings = state.settings
    problems = deployment_problems(settings) if settings.provider != "outbox" else []
    provider = get_provider(settings, state.folder)

    async def run() -> str:
        try:
            return await provider.check()
        finally:
            await provider.aclose()

    # Settings problems come first: they stand whatever the provider answers, and a failed
    # check call (no network, a refused token) must not hide them.
    for problem in problems:
        typer.echo(f"refused: {problem}", err=True)
    unused = unused_credentials(settings)
    if unused:
        typer.echo(
            f"warning: DRIPMAIL_PROVIDER is {settings.provider}, yet {', '.join(unused)} "
            "is set: set DRIPMAIL_PROVIDER to the provider you mean to send with",
            err=True,
        )
    typer.echo(asyncio.run(run()))
    if problems:
        raise typer.Exit(1)


def _capabilities(name: str):
    from importlib import import_module

    if name == "outbox":
        from dripmail.providers.outbox import OutboxProvider

        return OutboxProvider.capabilities
    return import_module(f"dripmail.providers.{name}").CAPABILITIES


def _window(ahead) -> str:
    if not ahead:
        return "none (handed over when due)"
    hours = ahead.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours >= 48 else f"{hours:g} h"


@providers_app.command("list")
def list_() -> None:
    """What each provider can do: batch size, scheduling window, cancel, idempotency key."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Providers (DRIPMAIL_PROVIDER)")
    for col in ("provider", "batch", "schedule ahead", "cancel", "idempotency key", ""):
        table.add_column(col)
    current = state.settings.provider
    for name in NAMES:
        caps = _capabilities(name)
        table.add_row(
            name,
            str(caps.max_batch),
            _window(caps.schedule_ahead),
            "yes" if caps.can_cancel else "no",
            "yes" if caps.idempotency_key else "no",
            "configured" if name == current else "",
        )
    Console(width=100).print(table)


def register(app: typer.Typer) -> None:
    """Attach the `providers` group."""
    app.add_typer(providers_app, name="providers")
