"""Start several real processes at one moment: each waits for a go-file, so they race for real.

The processes are forked from one Python process that has already run the scripts' imports
(`prelude`): each is a process of its own (own pid, own connections and locks, own crash), but
the imports are paid once instead of once per process (1.5-2 s of CPU each: sqlalchemy,
alembic). The go-file is made only once every process waits for it, so none is still starting
up when the others race.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Run as `python -c LAUNCHER PRELUDE BODY WORKERS FOLDER ARGS...`: the prelude once, then
# WORKERS forks, each with its own stdout/stderr files, that say they are ready, wait for
# FOLDER/go and run BODY with sys.argv = ["-c", *ARGS, FOLDER/go]. Prints each child's exit
# code as JSON once all have ended.
LAUNCHER = """
import json, os, sys, time, traceback
from pathlib import Path

prelude, body, workers, folder, args = (
    sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5:]
)
go = folder / "go"
sys.argv = ["-c", *args, str(go)]
scope = {"__name__": "__main__"}
exec(compile(prelude, "<prelude>", "exec"), scope)
sys.stdout.flush()
sys.stderr.flush()
pids = []
for n in range(workers):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for fd, name in ((1, "out"), (2, "err")):
                os.dup2(os.open(folder / f"{name}{n}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            (folder / f"ready{n}").touch()
            while not go.exists():
                time.sleep(0.002)
            exec(compile(body, "<body>", "exec"), scope)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    pids.append(pid)
while not all((folder / f"ready{n}").exists() for n in range(workers)):
    time.sleep(0.002)
go.touch()
print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]))
"""


def run_together(
    prelude: str, body: str, args: list[str], workers: int, folder: Path
) -> list[tuple[int, str, str]]:
    """Run `body` in `workers` processes forked after `prelude` (both Python source, run as
    `python -c` scripts with `args` and then the go-file's path in sys.argv), released together
    once all of them wait; returns each process's (exit code, stdout, stderr). Generous wait:
    a loaded machine is slow, never wrong."""
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, prelude, body, str(workers), str(folder), *args],
        capture_output=True,
        text=True,
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    codes = json.loads(done.stdout.splitlines()[-1])
    return [
        (
            code,
            (folder / f"out{n}").read_text(),
            (folder / f"err{n}").read_text(),
        )
        for n, code in enumerate(codes)
    ]
