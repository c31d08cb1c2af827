import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from dripmail import subscribers as subs
from dripmail.store.db import open_store

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "send.py"), "--root", str(tmp_path), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )


def test_list_and_unsubscribe_through_the_real_cli(tmp_path: Path) -> None:
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    subs.add_subscriber(
        engine,
        "ana@example.org",
        timezone="Europe/Berlin",
        status="active",
        consent_source="import",
        now=datetime(2026, 6, 1, tzinfo=UTC),
    )
    listed = _run(tmp_path, "subscribers", "list")
    assert listed.returncode == 0 and "ana@example.org" in listed.stdout
    done = _run(tmp_path, "subscribers", "unsubscribe", "ANA@example.org")
    assert done.returncode == 0, done.stderr
    assert subs.get_subscriber(engine, "ana@example.org")["status"] == "unsubscribed"


def test_unknown_subscriber_is_one_line_error_without_traceback(tmp_path: Path) -> None:
    out = _run(tmp_path, "subscribers", "unsubscribe", "nobody@example.org")
    assert out.returncode == 1
    assert "no subscriber 'nobody@example.org'" in out.stderr
    assert "Traceback" not in out.stderr
