"""`broadcast` and `broadcasts ...` as real subprocesses, including a SIGKILL midway."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from dripmail.store.db import open_store
from tests.broadcast_fixture import eligible_emails, seed
from tests.course_fixture import make_project

REPO = Path(__file__).resolve().parents[2]
ISSUE = "---\nsubject: Hips at the desk\npreheader: Three habits for long days\n---\nHello.\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = make_project(tmp_path)
    (root / "newsletters").mkdir()
    (root / "newsletters" / "hips.md").write_text(ISSUE)
    return root


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "send.py"), "--root", str(root), *args],
        capture_output=True,
        text=True,
        cwd=root,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def _sent(root: Path) -> Counter:
    path = root / "outbox" / "index.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(json.loads(x)["to"] for x in lines)


def test_large_send_needs_yes_when_not_interactive(root: Path) -> None:
    seed(open_store("sqlite:///dripmail.db", root), 200)
    out = _cli(root, "broadcast", "newsletters/hips.md")
    assert out.returncode == 1 and "re-run with --yes" in out.stderr
    assert not _sent(root)
    dry = _cli(root, "broadcast", "newsletters/hips.md", "--dry-run")
    assert dry.returncode == 0 and "160 recipient(s)" in dry.stdout and not _sent(root)


def test_killed_broadcast_resumes_and_sends_each_once(root: Path) -> None:
    count = 3000
    seed(open_store("sqlite:///dripmail.db", root), count)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "send.py"),
            "--root",
            str(root),
            "broadcast",
            "newsletters/hips.md",
            "--yes",
            "-q",
        ],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    outbox = root / "outbox"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if outbox.exists() and len(list(outbox.glob("*.eml"))) >= 300:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "finished before it could be killed: raise `count`"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < sum(_sent(root).values()) < len(eligible_emails(count))
    # The dead worker's claims hold for their lease; a re-run after it finishes the job.
    again = _cli(
        root, "broadcast", "newsletters/hips.md", "--yes", "-q", "--now", "2099-01-01T00:00:00Z"
    )
    assert again.returncode == 0, again.stderr
    sent = _sent(root)
    assert set(sent) == eligible_emails(count) and set(sent.values()) == {1}
    listed = _cli(root, "broadcasts", "list")
    assert "sent" in listed.stdout
    shown = _cli(root, "broadcasts", "show", "1")
    assert f"accepted{len(eligible_emails(count)):>11}" in shown.stdout


def test_schedule_then_cancel(root: Path) -> None:
    seed(open_store("sqlite:///dripmail.db", root), 10)
    out = _cli(root, "broadcast", "newsletters/hips.md", "--schedule", "2099-01-01T09:00Z")
    assert out.returncode == 0 and "scheduled for 2099-01-01 09:00 UTC" in out.stdout
    assert not _sent(root)
    cancelled = _cli(root, "broadcasts", "cancel", "1")
    assert cancelled.returncode == 0 and "cancelled broadcast 1" in cancelled.stdout
    missing = _cli(root, "broadcasts", "show", "9")
    assert missing.returncode == 1 and "no broadcast 9" in missing.stderr


def test_scheduled_broadcast_goes_out_with_run_after_its_time(root: Path) -> None:
    seed(open_store("sqlite:///dripmail.db", root), 10)
    _cli(root, "broadcast", "newsletters/hips.md", "--schedule", "2099-01-01T09:00Z")
    early = _cli(root, "run", "--now", "2099-01-01T08:00Z")
    assert early.returncode == 0 and not _sent(root)
    on_time = _cli(root, "run", "--now", "2099-01-01T09:05Z")
    assert on_time.returncode == 0, on_time.stderr
    assert "scheduled broadcast 1 (hips): 8 of 8 accepted" in on_time.stdout
    assert set(_sent(root)) == eligible_emails(10)
