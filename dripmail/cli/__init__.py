"""The `dripmail` / `python send.py` command line.

This module builds the typer app, handles the global options, and turns every `DripmailError`
into one line on stderr with exit code 1 (``--debug`` shows the traceback). The commands live
in sibling modules, one per area, each exposing ``register(app)``; they import heavy modules
inside the command functions so ``--help`` stays fast.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import typer

from dripmail.errors import DripmailError, InputError

HELP = """\
Run a seven-day email course and a newsletter from files in a git repo.

Content lives in course/ (one Markdown file per day) and emails/ (MJML + Jinja templates).
Start with `demo` to see a simulated week, `check` after editing, `preview` to look at emails.
"""

app = typer.Typer(
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class State:
    """What every command gets: the project folder, debug flag, and lazily loaded settings."""

    root: Path = field(default_factory=Path.cwd)
    debug: bool = False
    _settings: object | None = None

    @property
    def project(self):  # -> dripmail.config.Project
        """The course project at `root`; ConfigError when `root` holds none (no
        course/course.toml): a command run in the wrong folder, or a mistyped --root, would
        otherwise make an empty database there and report "no subscribers"."""
        from dripmail.config import Project
        from dripmail.errors import ConfigError

        project = Project(self.root)
        if not (project.course_dir / "course.toml").is_file():
            where = "this folder" if self.root == Path.cwd().resolve() else str(self.root)
            raise ConfigError(
                f"{where} is not a dripmail project (no course/course.toml in {self.root}): "
                f"cd to your project or give --root PATH; `{command_name()} init DIR` makes one"
            )
        return project

    @property
    def folder(self):  # -> dripmail.config.Project
        """`root` as a Project whether or not it holds a course (`demo` works anywhere)."""
        from dripmail.config import Project

        return Project(self.root)

    @property
    def settings(self):  # -> dripmail.config.Settings
        if self._settings is None:
            from dripmail.config import load_settings

            self._settings = load_settings(self.root)
        return self._settings


state = State()


def _print_version(value: bool) -> None:
    if value:
        from dripmail import __version__

        typer.echo(f"dripmail {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    root: Path = typer.Option(
        Path("."), "--root", help="The course project folder (holds course/ and emails/)."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks instead of one-line errors."
    ),
    version: bool = typer.Option(
        False,
        "--version",
        is_eager=True,
        callback=_print_version,
        help="Print the dripmail version and exit.",
    ),
) -> None:
    state.root = root.resolve()
    state.debug = debug
    state._settings = None


def _register_all() -> None:
    # Each area registers its own commands; a missing module means that area is not built yet.
    from importlib import import_module

    for name in (
        "content_cmds",
        "engine_cmds",
        "subscriber_cmds",
        "provider_cmds",
        "web_cmds",
        "broadcast_cmds",
        "report_cmds",
        "review_cmds",
    ):
        try:
            module = import_module(f"dripmail.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"dripmail.cli.{name}":
                continue
            raise
        module.register(app)
    _reflow_help(app)


def reflow(doc: str) -> str:
    """A docstring as click help: each paragraph one line, so the terminal wraps it cleanly.

    typer (0.29, rich markup) keeps a docstring's single line breaks, so a paragraph
    hard-wrapped at 95 columns breaks mid-sentence in a narrower terminal. A paragraph
    starting with click's ``\\b`` marker, and a line starting with "- ", keep their breaks.
    """
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    out = []
    for paragraph in paragraphs:
        if paragraph.startswith("\b"):
            out.append(paragraph)
            continue
        lines: list[str] = []
        for line in paragraph.splitlines():
            if lines and not line.startswith("- "):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line.strip())
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _reflow_help(group: typer.Typer) -> None:
    """Reflow the help of every command of `group` and its sub-groups (see `reflow`)."""
    for info in group.registered_commands:
        doc = info.help or (info.callback.__doc__ if info.callback else None)
        if doc:
            info.help = reflow(doc)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _reflow_help(sub.typer_instance)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one line to stderr and return an Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def command_name() -> str:
    """How the user started dripmail, for hints: `python send.py` from a checkout, else `dripmail`.

    Read from ``sys.argv[0]``, so a hint always names a command that exists in this install.
    """
    started = sys.argv[0] if sys.argv else ""
    if Path(started).name == "send.py":
        return f"python {started}"
    return "dripmail"


def parse_now(value: str | None) -> datetime | None:
    """A `--now` option as an aware UTC datetime (naive values are taken as UTC)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(
            f"--now {value!r} is not an ISO-8601 time (e.g. 2026-12-01T07:00Z)"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def _usage_errors() -> tuple[type[Exception], ...]:
    """click's exception classes: typer >= 0.16 vendors its own click, older typer uses click."""
    import click

    kinds: list[type[Exception]] = [click.ClickException]
    vendored = getattr(typer, "TyperException", None)
    if isinstance(vendored, type) and issubclass(vendored, Exception):
        kinds.append(vendored)
    return tuple(kinds)


def main() -> None:
    """Console-script entry point: run the app, one line per error, never a traceback."""
    debug = "--debug" in sys.argv
    try:
        code = app(standalone_mode=False)
        # Outside standalone mode click returns `typer.Exit(n)` codes instead of exiting.
        if isinstance(code, int) and code:
            sys.exit(code)
    except DripmailError as exc:
        if debug:
            raise
        for line in str(exc).splitlines() or [type(exc).__name__]:
            typer.echo(f"error: {line}", err=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:
        if isinstance(exc, _usage_errors()) and hasattr(exc, "show"):
            # click's own usage message: "Usage: ...", "Try ... --help", "Error: ...", exit 2.
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        if debug:
            raise
        typer.echo(f"error: {_unexpected(exc)}", err=True)
        sys.exit(1)


def _unexpected(exc: Exception) -> str:
    """One line for an error nobody planned for: the database's own message without the SQL
    and parameters SQLAlchemy appends (a thousand parameters of a batch made it 1.3 KB), and a
    plain word for a database another process kept locked past the busy timeout."""
    from sqlalchemy.exc import DBAPIError

    cause: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
    text = (str(cause).strip().splitlines() or [""])[0]
    if "database is locked" in text:
        return (
            "the database stayed locked by another process for longer than the busy timeout "
            "(30 s at a time); nothing already recorded is lost, and what was in flight is "
            "settled when you run the same command again"
        )
    return f"unexpected {type(cause).__name__}: {text} (re-run with --debug)"


# Last, so command modules can import the helpers defined above.
_register_all()
