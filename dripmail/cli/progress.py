"""The one way a command shows a progress bar: on stderr, and only when stderr is a terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn


def terminal_bar(*columns: str | ProgressColumn, transient: bool = False) -> Progress:
    """A rich `Progress` with `columns` that draws on stderr, and not at all when stderr is
    not a terminal (piped, redirected to a file, cron).

    stdout is for the summary a script or a cron mail reads: rich's default console is stdout,
    and piped it printed the bar's last frame there, before the summary lines (`run | cat`,
    `broadcast > log`). Disabled, the bar still counts (its tasks' `completed`), so a command
    may read what it advanced either way. Rich's own overrides of "is a terminal"
    (FORCE_COLOR, TTY_COMPATIBLE) are the operator's to set and are honoured.
    """
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    return Progress(*columns, console=console, transient=transient, disable=not console.is_terminal)
