import subprocess
from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy import Engine

from dripmail import subscribers as subs
from dripmail.store.db import open_store
from tests.cli_in_process import run_cli
from tests.terminal import read_to_end, read_until


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`send.py ARGS` through its entry point `main()`, in process."""
    return run_cli(tmp_path, *args)


def _with_ana(tmp_path: Path) -> Engine:
    """A store in `tmp_path` with one active subscriber, ana@example.org."""
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    subs.add_subscriber(
        engine,
        "ana@example.org",
        timezone="Europe/Berlin",
        status="active",
        consent_source="import",
        now=datetime(2026, 6, 1, tzinfo=UTC),
    )
    return engine


def test_list_and_unsubscribe_through_the_real_cli(tmp_path: Path) -> None:
    engine = _with_ana(tmp_path)
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


def test_list_show_and_export_through_typers_runner(tmp_path: Path) -> None:
    import csv
    import io

    from typer.testing import CliRunner

    from dripmail.cli import app
    from tests.course_fixture import make_project

    project = make_project(tmp_path / "p")
    runner = CliRunner()
    root = ["--root", str(project)]
    empty = runner.invoke(app, [*root, "subscribers", "list"])
    assert empty.exit_code == 0 and empty.output.strip() == "no subscribers"
    add = [*root, "subscribers", "add", "ana@example.org", "--timezone", "US/Pacific"]
    assert runner.invoke(app, add).exit_code == 0
    listed = runner.invoke(app, [*root, "subscribers", "list"])
    header, row = listed.output.splitlines()
    assert header.split() == ["id", "email", "status", "timezone", "start"]
    assert "America/Los_Angeles" in row  # the alias stored canonical
    none = runner.invoke(app, [*root, "subscribers", "list", "--status", "paused"])
    assert none.output.strip() == "no subscribers with status paused"
    wrong = runner.invoke(app, [*root, "subscribers", "list", "--status", "gone"])
    assert wrong.exit_code == 1
    assert runner.invoke(app, [*root, "subscribers", "pause", "ana@example.org"]).exit_code == 0
    assert runner.invoke(app, [*root, "subscribers", "resume", "ana@example.org"]).exit_code == 0
    stop = runner.invoke(app, [*root, "subscribers", "unsubscribe", "ana@example.org"])
    assert stop.exit_code == 0
    shown = runner.invoke(app, [*root, "subscribers", "show", "ana@example.org"])
    events = shown.output.split("Events", 1)[1]
    for kind in ("paused", "resumed", "unsubscribed"):
        assert kind in events
    exported = runner.invoke(app, [*root, "subscribers", "export"])
    (record,) = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert record["newsletters"] == "yes"
    assert datetime.fromisoformat(record["consent_at"]).tzinfo is not None
    assert record["start_date"] == date.fromisoformat(record["start_date"]).isoformat()


def test_forget_without_a_terminal_says_to_pass_yes_and_erases_nothing(tmp_path: Path) -> None:
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    subs.add_subscriber(
        engine, "quinn@example.com", timezone="UTC", status="active", consent_source="import",
        now=datetime(2026, 6, 1, tzinfo=UTC),
    )  # fmt: skip
    out = _run(tmp_path, "subscribers", "forget", "quinn@example.com")
    assert out.returncode != 0
    assert "pass --yes" in out.stderr and "Aborted" not in out.stderr + out.stdout
    assert subs.get_subscriber(engine, "quinn@example.com")["status"] == "active"
    done = _run(tmp_path, "subscribers", "forget", "quinn@example.com", "--yes")
    assert done.returncode == 0, done.stderr


def test_answering_no_to_forget_says_nothing_was_erased(tmp_path: Path) -> None:
    """On a terminal, "n" at the question ends in the command's own words, exit 1 (it was
    click's bare "Aborted.")."""
    import os
    import pty
    import sys

    engine = open_store("sqlite:///dripmail.db", tmp_path)
    subs.add_subscriber(
        engine, "quinn@example.com", timezone="UTC", status="active", consent_source="import",
        now=datetime(2026, 6, 1, tzinfo=UTC),
    )  # fmt: skip
    send = Path(__file__).resolve().parents[2] / "send.py"
    leader, follower = pty.openpty()
    argv = [sys.executable, str(send), "--root", str(tmp_path), "subscribers", "forget"]
    proc = subprocess.Popen(
        [*argv, "quinn@example.com"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={k: v for k, v in os.environ.items() if not k.startswith("DRIPMAIL_")},
    )
    os.close(follower)
    seen = read_until(leader, b"Erase quinn@example.com")
    os.write(leader, b"n\n")
    assert proc.wait(timeout=300) == 1
    said = (seen + read_to_end(leader)).decode()
    assert "nothing was erased" in said and "Aborted" not in said, said
    assert subs.get_subscriber(engine, "quinn@example.com")["status"] == "active"


def test_show_prints_a_stored_name_with_control_characters_escaped(tmp_path: Path) -> None:
    from sqlalchemy import update

    from dripmail.store.schema import subscribers

    engine = _with_ana(tmp_path)
    with engine.begin() as conn:
        # As an older version or a hand edit could store it: a line break and a colour code.
        conn.execute(update(subscribers).values(first_name="N\nL\x1b[31m"))
    shown = _run(tmp_path, "subscribers", "show", "ana@example.org")
    assert shown.returncode == 0, shown.stderr
    assert "  name: N\\u000aL\\u001b[31m   zone: Europe/Berlin" in shown.stdout
    assert "\x1b" not in shown.stdout
