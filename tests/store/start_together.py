"""Start several real processes at one moment: each waits for a go-file, so they race for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_together(
    script: str, args: list[str], workers: int, folder: Path
) -> list[tuple[int, str, str]]:
    """Run `python -c script *args` `workers` times, released together once all have started
    (the script waits for `folder / "go"`, passed as its last argument); returns each process's
    (exit code, stdout, stderr). Generous wait: a loaded machine is slow, never wrong."""
    go = folder / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=folder,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for _ in range(workers)
    ]
    go.touch()
    results = [p.communicate(timeout=600) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, results, strict=True)]
