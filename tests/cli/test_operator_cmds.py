"""Operator-facing CLI behaviour: --version, usage errors, test-send days, overdue status.

Through the real entry point (`main()`, where errors become one line and an exit code: in
process, and as `send.py` subprocesses for the help's terminal width) and through typer's
CliRunner where the exit code alone matters.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

import dripmail
from dripmail.cli import app
from tests.cli_in_process import run_cli
from tests.course_fixture import make_project

REPO = Path(__file__).resolve().parents[2]


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(root, *args)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    out = _cli(tmp_path, "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"dripmail {dripmail.__version__}"
    from importlib.metadata import version

    # One source of truth: the installed metadata is read from dripmail/__init__.py.
    assert version("dripmail") == dripmail.__version__


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("bogus",), "No such command 'bogus'"),
        (("run", "--bogus"), "No such option: --bogus"),
        (("subscribers", "nope"), "No such command 'nope'"),
        (("test-send", "three", "--to", "a@example.org"), "Invalid value for 'day'"),
    ],
)
def test_unknown_command_or_option_is_clicks_usage_message_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], said: str
) -> None:
    out = _cli(tmp_path, *args)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("Usage: ")
    assert "-h' for help." in out.stderr and f"Error: {said}" in out.stderr
    assert "unexpected" not in out.stderr and "Traceback" not in out.stderr


def test_test_send_day_outside_the_course_is_one_line_and_exit_1(project: Path) -> None:
    for day in ("9", "0"):
        out = _cli(project, "test-send", day, "--to", "me@example.org")
        assert out.returncode == 1
        assert out.stderr.strip().splitlines() == [
            f"error: no lesson for day {day}: the course has days 1, 2, 3, 4, 5, 6, 7"
        ]
    assert not (project / "outbox").exists()


def _add(root: Path, email: str, start: date) -> None:
    added = CliRunner().invoke(
        app,
        ["--root", str(root), "subscribers", "add", email, "--timezone", "Asia/Kolkata",
         "--start", start.isoformat()],
    )  # fmt: skip
    assert added.exit_code == 0, added.output


def test_status_says_when_the_next_due_time_is_past(project: Path) -> None:
    start = datetime.now(UTC).date() - timedelta(days=30)
    _add(project, "late@example.org", start)
    out = CliRunner().invoke(app, ["--root", str(project), "status"])
    assert out.exit_code == 0, out.output
    line = next(x for x in out.output.splitlines() if x.startswith("Next due:"))
    # Lesson 1 was due at 07:00 in Kolkata (01:30 UTC) 30 days ago; nobody ran `run` since.
    assert line.startswith(f"Next due: {start} 01:30 UTC: OVERDUE by ")
    assert "7 lesson(s) past their planned time. `run` sends them" in line


def test_status_next_due_in_the_future_is_plain(project: Path) -> None:
    start = datetime.now(UTC).date() + timedelta(days=30)
    _add(project, "early@example.org", start)
    out = CliRunner().invoke(app, ["--root", str(project), "status"])
    assert f"Next due: {start} 01:30 UTC\n" in out.output and "OVERDUE" not in out.output


def test_status_next_due_counts_the_one_lesson_per_day_rule(project: Path) -> None:
    """A reader 8 days in gets lesson 1 now; lesson 2, planned a week ago, is held to their
    next local morning: that is when it is due, not OVERDUE (as `run --loop` sleeps to it)."""
    _add(project, "held@example.org", datetime.now(UTC).date() - timedelta(days=8))

    def kolkata_tomorrow() -> str:
        return str((datetime.now(ZoneInfo("Asia/Kolkata")) + timedelta(days=1)).date())

    before = kolkata_tomorrow()  # a run just before local midnight may send on either side
    sent = CliRunner().invoke(app, ["--root", str(project), "run", "-q"])
    assert sent.exit_code == 0 and "1 sent" in sent.output, sent.output
    out = CliRunner().invoke(app, ["--root", str(project), "status"])
    assert out.exit_code == 0, out.output
    line = next(x for x in out.output.splitlines() if x.startswith("Next due:"))
    assert line in {
        f"Next due: {day} 01:30 UTC (6 lesson(s) planned earlier wait for it: at most one "
        "lesson per reader per local day)"
        for day in (before, kolkata_tomorrow())
    }, line


def test_status_of_an_empty_project_says_how_to_add_subscribers(project: Path) -> None:
    out = CliRunner().invoke(app, ["--root", str(project), "status"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == [
        "no subscribers yet (add one with `subscribers add` or `subscribers import`)",
        "Next due: nothing planned",
    ], out.output


@pytest.mark.parametrize("args", [("run",), ("subscribers", "import")])
def test_help_paragraphs_wrap_at_the_terminal_not_mid_sentence(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    width = 72
    out = subprocess.run(
        [sys.executable, str(REPO / "send.py"), *args, "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": str(width)},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    prose = out.stdout.split("╭")[0].splitlines()
    # A line followed by more of its paragraph was filled to the width: no broken sentences.
    for line, following in pairwise(prose):
        if line.strip() and following.strip() and not line.lstrip().startswith("Usage:"):
            assert len(line.rstrip()) > width - 20, out.stdout


def test_help_shows_flags_as_flags(tmp_path: Path) -> None:
    """`--dry-run` takes no value: help that showed `--dry-run <bool>` had operators typing
    `run --dry-run true`, which is refused."""
    out = subprocess.run(
        [sys.executable, str(REPO / "send.py"), "run", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "100"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    flags = [line for line in out.stdout.splitlines() if "--dry-run" in line or "--loop" in line]
    assert flags and not any("<bool>" in line for line in flags), out.stdout
