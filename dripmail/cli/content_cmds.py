"""`check`, `render`, `preview`, `test-send` and `init`: the commands marketers use."""

from __future__ import annotations

from pathlib import Path

import typer

from dripmail.cli import state
from dripmail.cli.help_text import paragraphs


def check() -> None:
    """Check course.toml, every lesson, the templates and the rendered emails.

    One line per problem, `file:line: field: message`. Errors exit 1; warnings alone exit 0.
    """
    from dripmail.checks import check_project

    problems, checked = check_project(state.project)
    for line in dict.fromkeys(problems.errors):
        typer.echo(f"error: {line}", err=True)
    for line in dict.fromkeys(problems.warnings):
        typer.echo(f"warning: {line}", err=True)
    errors, warnings = len(set(problems.errors)), len(set(problems.warnings))
    if errors:
        typer.echo(f"{errors} error(s), {warnings} warning(s): fix the errors and run check again")
        raise typer.Exit(1)
    typer.echo(f"ok: {checked} emails checked, {warnings} warning(s)")


def render(
    out: Path = typer.Option(
        Path("build/preview"), "--out", help="Folder to write into (relative to the project)."
    ),
) -> None:
    """Write every email for a sample reader as .html, .txt and .eml, plus an index.html."""
    from dripmail.content import load_course
    from dripmail.output_files import kept_files
    from dripmail.preview_files import write_preview

    course = load_course(state.project)
    folder = out if out.is_absolute() else state.root / out
    keep = kept_files(state.settings.database_url, state.root, state.settings.outbox_dir)
    written = write_preview(state.project, course, folder, keep)
    typer.echo(f"wrote {len(written)} emails to {folder}; open {folder / 'index.html'}")


def preview(
    port: int = typer.Option(
        8025, "--port", min=0, max=65535, help="Port on localhost (0: any free port)."
    ),
) -> None:
    """Serve a live preview on localhost; it re-renders and reloads when a file changes.

    Every lesson, the welcome email, the confirmation email and each newsletter, at desktop
    and mobile widths, in dark mode and as plain text; the page reloads by itself when a file
    in course/, emails/ or newsletters/ changes. --port 0 picks a free port (printed).
    """
    from dripmail.errors import InputError

    try:
        from dripmail.web.app import create_app
    except ModuleNotFoundError as exc:  # an install without the web edge
        if not (exc.name or "").startswith("dripmail.web"):
            raise
        raise InputError(
            "the preview server is not part of this install: use `render` and open "
            "build/preview/index.html"
        ) from None
    from dripmail.cli.exits import stopped_by_ctrl_c
    from dripmail.web import serving

    # Bound here, not by uvicorn: a port in use is one line, and port 0 prints the real one.
    sock = serving.bind("127.0.0.1", port)
    port = serving.port_of(sock)
    app = create_app(state.project, state.settings, preview=True)
    typer.echo(
        f"preview on http://127.0.0.1:{port}/preview, report on http://127.0.0.1:{port}/report"
        "  (Ctrl-C to stop)"
    )
    with stopped_by_ctrl_c():
        serving.run(app, sock)


preview.__doc__ = paragraphs(preview.__doc__)


def test_send(
    # No range here: the course decides which days exist, and says so in one line (exit 1).
    day: int = typer.Argument(..., help="Which lesson (a day of the course, e.g. 1-7)."),
    to: str = typer.Option(..., "--to", help="Your own address."),
) -> None:
    """Send one lesson to yourself through the configured provider (default: outbox/)."""
    from dripmail.app import Dripmail

    core = Dripmail(state.project, state.settings)
    try:
        sent = core.test_send(day, to)
    finally:
        core.close()
    if not sent.accepted:
        raise typer.Exit(_failed(sent.result))
    typer.echo(f"sent day {day} ({sent.subject!r}) to {sent.address} via {sent.where}")


def _failed(result) -> int:
    typer.echo(f"error: not sent ({result.outcome}): {result.error}", err=True)
    return 1


def init(
    folder: Path = typer.Argument(..., help="Where to create the new course project."),
) -> None:
    """Create a course project (course/, emails/, newsletters/, .env.example) from the sample."""
    from dripmail.scaffold import init_project

    created = init_project(folder.resolve())
    for path in created:
        typer.echo(f"created {path}")
    from dripmail.cli import command_name

    cmd = command_name()
    if cmd != "dripmail":
        # From a checkout: send.py stays where it is, so point it at the new folder.
        cmd = f"{cmd} --root {folder}"
        typer.echo(f"next: {cmd} check && {cmd} preview")
    else:
        typer.echo(f"next: cd {folder} && dripmail check && dripmail preview")


def register(app: typer.Typer) -> None:
    """Attach the content commands."""
    app.command("check")(check)
    app.command("render")(render)
    app.command("preview")(preview)
    app.command("test-send")(test_send)
    app.command("init")(init)
