"""Who holds a claim or slot, and whether that process still runs (on this host).

A holder id is `host:pid:start` where `start` is the process's start time in clock ticks
since boot (`/proc/<pid>/stat`, field 22, see proc(5)): a pid the OS gave to a new process
after the holder died then no longer matches, so the dead holder's work is not mistaken for
live work. Where `/proc` is missing (macOS, Windows) the id is `host:pid` and only a pid
that no longer exists is judged gone; a reused pid then waits for the lease to run out.
Ids of the older `host:pid` form (rows written before) are judged the same way.

A zombie (a process killed but not yet reaped by its parent, state `Z`) is gone: it can no
longer hand anything over, though `os.kill(pid, 0)` still succeeds on it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

_PROC = Path("/proc")


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of `pid` from /proc, or None when it has no entry (no process)."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': the fields
    # after the last ')' start at field 3 (state); the start time is field 22.
    fields = raw.rpartition(")")[2].split()
    return fields[0], fields[19]


def this_process() -> str:
    """This process as a holder: `host:pid:start` (Linux), `host:pid` without /proc."""
    host, pid = socket.gethostname(), os.getpid()
    if _PROC.is_dir():
        found = _stat(pid)
        if found is not None:
            return f"{host}:{pid}:{found[1]}"
    return f"{host}:{pid}"


def _parse(holder: str) -> tuple[str, int | None, str | None]:
    parts = holder.split(":")
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return parts[0], int(parts[1]), parts[2]
    name, _, pid = holder.rpartition(":")
    return name, (int(pid) if pid.isdigit() else None), None


def holder_alive(holder: str, host: str) -> bool:
    """Whether `holder` may still be working: False only for a process of `host` known gone.

    Gone: no such pid, a zombie, or (with a start time in the id) another process now under
    that pid. Holders of other hosts and ids of another form are alive here: only their lease
    can free their work. A pid of another user's process counts as alive.
    """
    name, pid, start = _parse(holder)
    if name != host or pid is None:
        return True
    if _PROC.is_dir():
        found = _stat(pid)
        if found is None:
            return False
        state, started = found
        if state in ("Z", "X"):
            return False
        return start is None or start == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # Windows and others: cannot tell, wait for the lease
    return True


def holder_pid(holder: str) -> int | None:
    """The pid in a holder id (for messages), or None."""
    return _parse(holder)[1]
