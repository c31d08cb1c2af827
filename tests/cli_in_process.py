"""`python send.py ...` run inside the test process: the same entry point, argv, environment,
working folder and exit code, without a new interpreter's start-up.

Tests whose point is not the process boundary use this (a Python start-up with dripmail's
imports costs a second or two of CPU each, and the suite makes hundreds of such calls). Kill
trials, signals, prompts on a terminal and the byte-identical-across-processes checks keep
real subprocesses.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock


def run_cli(
    root: Path,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    program: str = "send.py",
) -> subprocess.CompletedProcess[str]:
    """`send.py --root ROOT ARGS` in process, as `subprocess.run(..., capture_output=True,
    text=True)` would report it. `env` replaces the whole environment (default: unchanged);
    the working folder is `cwd` (default: `root`) for the call; `program` is `sys.argv[0]`
    (hints name the command from it: a path to send.py, as `python /path/send.py` gives).
    """
    from dripmail.cli import main

    argv = [program, "--root", str(root), *args]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    here = Path.cwd()
    environ = dict(os.environ if env is None else env)
    with (
        mock.patch.object(sys, "argv", argv),
        mock.patch.dict(os.environ, environ, clear=True),
        mock.patch.object(sys, "stdin", io.StringIO("")),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        os.chdir(cwd or root)
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            os.chdir(here)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
