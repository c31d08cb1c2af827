"""Reading what a command wrote to a pseudo-terminal (`pty.openpty`), for prompt tests and
for what a command shows on a terminal only."""

from __future__ import annotations

import os
import pty
import subprocess
from typing import Any


def read_until(leader: int, marker: bytes) -> bytes:
    """Everything read from `leader` up to and including `marker` (raises OSError, EIO, if
    the child is gone before it prints `marker`: the test then fails instead of hanging)."""
    seen = b""
    while marker not in seen:
        chunk = os.read(leader, 1024)
        if not chunk:
            raise OSError(f"the terminal closed before {marker!r}; it printed {seen!r}")
        seen += chunk
    return seen


def read_to_end(leader: int) -> bytes:
    """The rest of what the child writes to `leader`, until it is gone (EIO or end of file),
    and close `leader`."""
    rest = b""
    while True:
        try:
            chunk = os.read(leader, 1024)
        except OSError:
            break
        if not chunk:
            break
        rest += chunk
    os.close(leader)
    return rest


def run_with_stderr_on_a_terminal(argv: list[str], **popen: Any) -> tuple[int, str, str]:
    """Run `argv` with stdout piped and stderr on a pseudo-terminal (an operator's
    `command | less` or `command > log`); return its exit code, stdout and what reached the
    terminal. stdin is /dev/null; `popen` adds `cwd`, `env`..."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower, **popen
    )
    os.close(follower)
    # The terminal is drained while the child runs (a full pty would block it); stdout is
    # a few summary lines, well within the pipe's buffer until it is read below.
    terminal = read_to_end(leader)
    stdout, _ = proc.communicate(timeout=300)
    return proc.returncode, stdout.decode(), terminal.decode()
