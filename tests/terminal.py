"""Reading what a command wrote to a pseudo-terminal (`pty.openpty`), for prompt tests."""

from __future__ import annotations

import os


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
