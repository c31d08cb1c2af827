import subprocess
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from dripmail import subscribers as subs
from dripmail.store.db import open_store
from tests.cli_in_process import run_cli
from tests.course_fixture import make_project
from tests.terminal import read_to_end, read_until


@pytest.fixture(autouse=True)
def _project(tmp_path: Path) -> None:
    """Every test here runs in a course project (commands refuse a folder without one)."""
    make_project(tmp_path)


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
    # Asked twice, like a second pause: the second finds it done and says so (exit 0).
    again = runner.invoke(app, [*root, "subscribers", "resume", "ana@example.org"])
    assert again.exit_code == 0, again.output
    assert again.output == "ana@example.org is already active: nothing to resume\n"
    stop = runner.invoke(app, [*root, "subscribers", "unsubscribe", "ana@example.org"])
    assert stop.exit_code == 0
    gone = runner.invoke(app, [*root, "subscribers", "resume", "ana@example.org"])
    assert gone.exit_code == 1 and "is unsubscribed, not paused" in str(gone.exception)
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


def test_export_never_overwrites_the_database_and_says_what_to_do(tmp_path: Path) -> None:
    """The tester's repro: `export --out dripmail.db` truncated the live database before
    reading it; afterwards every command failed "file is not a database"."""
    _with_ana(tmp_path).dispose()
    (tmp_path / "plain").write_text("x")
    refused = {
        "dripmail.db": "that is the SQLite database (dripmail.db)",
        "dripmail.db-wal": "part of the SQLite database (dripmail.db-wal)",
        "dripmail.db-shm": "part of the SQLite database (dripmail.db-shm)",
        "dripmail.db-journal": "part of the SQLite database (dripmail.db-journal)",
        str(tmp_path / "nofolder" / "x.csv"): "does not exist; create it or choose another path",
        str(tmp_path): "is a folder: give a file name in it",
        "plain/x.csv": "plain is a file, not a folder",
    }
    for target, said in refused.items():
        out = _run(tmp_path, "subscribers", "export", "--out", target)
        assert out.returncode == 1, (target, out.stdout)
        (line,) = out.stderr.splitlines()
        assert line.startswith(f"error: --out {target}") and said in line, line
    listed = _run(tmp_path, "subscribers", "list")
    assert listed.returncode == 0 and "ana@example.org" in listed.stdout
    done = _run(tmp_path, "subscribers", "export", "--out", "people.csv")
    assert done.returncode == 0 and "exported 1 subscriber(s) to people.csv" in done.stderr
    assert "ana@example.org" in (tmp_path / "people.csv").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_export_imported_on_a_new_machine_mails_nobody_who_left(tmp_path: Path) -> None:
    """The tester's repro: import, unsubscribe one reader, export, a new project, import the
    export: that reader came back active with 7 lessons planned."""
    from tests.course_fixture import make_project

    old, new = make_project(tmp_path / "old"), make_project(tmp_path / "new")
    people = tmp_path / "people.csv"
    people.write_text("email,first_name\nx@example.com,X\ny@example.com,Y\np@example.com,P\n")
    assert run_cli(old, "subscribers", "import", str(people)).returncode == 0
    assert run_cli(old, "subscribers", "unsubscribe", "y@example.com").returncode == 0
    assert run_cli(old, "subscribers", "pause", "p@example.com").returncode == 0
    moved = tmp_path / "moved.csv"
    assert run_cli(old, "subscribers", "export", "--out", str(moved)).returncode == 0
    done = run_cli(new, "subscribers", "import", str(moved))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "added 3, already there 0, rejected 0",
        "kept as the file says: 1 paused (lessons planned; `subscribers resume EMAIL` continues"
        " them); 1 unsubscribed (never mailed; only they can sign up again)",
    ]
    assert "ignored columns: consent_source, consent_at, created_at" in done.stderr
    engine = open_store("sqlite:///dripmail.db", new)
    assert subs.get_subscriber(engine, "y@example.com")["status"] == "unsubscribed"
    assert subs.get_subscriber(engine, "p@example.com")["status"] == "paused"
    assert subs.get_subscriber(engine, "x@example.com")["status"] == "active"
    # The original list imported again later leaves them as they are.
    again = run_cli(new, "subscribers", "import", str(people))
    assert again.stdout.splitlines() == ["added 0, already there 3, rejected 0"]
    assert subs.get_subscriber(engine, "y@example.com")["status"] == "unsubscribed"


def test_an_unclosed_quote_is_a_refused_row_by_its_line_exit_3(tmp_path: Path) -> None:
    from tests.course_fixture import make_project

    root = make_project(tmp_path / "p")
    (root / "bq.csv").write_text(
        'email,first_name\nk@example.com,Kay\nl@example.com,"Ell\nm2@example.com,Em\n'
        "n@example.com,En\n"
    )
    out = run_cli(root, "subscribers", "import", "bq.csv")
    assert out.returncode == 3
    assert out.stdout == "added 1, already there 0, rejected 1\n"
    assert out.stderr == (
        "bq.csv:3: a quote opened on this line is never closed: the cell runs over the line "
        "breaks to the end of the file, so lines 3-5 were read as one row and not imported; "
        "close the quote and import again\n"
    )
    twice = root / "twice.csv"
    twice.write_text("email,timezone,tz\nk@example.com,UTC,UTC\n")
    refused = run_cli(root, "subscribers", "import", str(twice))
    assert refused.returncode == 1 and refused.stderr == (
        f"error: {twice}:1: columns 2 ('timezone') and 3 ('tz') both name `timezone`: keep one "
        "of them and import again\n"
    )


def test_adding_a_reader_who_unsubscribed_says_only_they_can_sign_up_again(
    tmp_path: Path,
) -> None:
    from tests.course_fixture import make_project

    root = make_project(tmp_path / "p")
    assert run_cli(root, "subscribers", "add", "y@example.com").returncode == 0
    again = run_cli(root, "subscribers", "add", "y@example.com")
    assert again.returncode == 0 and "is already subscribed (id 1, active)" in again.stdout
    assert run_cli(root, "subscribers", "unsubscribe", "y@example.com").returncode == 0
    out = run_cli(root, "subscribers", "add", "Y@example.com")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (
        "error: y@example.com (id 1) unsubscribed: only they can sign up again (the sign-up "
        "form asks them to confirm); nothing changed\n"
    )
    engine = open_store("sqlite:///dripmail.db", root)
    assert subs.get_subscriber(engine, "y@example.com")["status"] == "unsubscribed"


def _stopped_import(root: Path, sig: int) -> tuple[subprocess.CompletedProcess[str], int]:
    """`subscribers import people.csv` as a real process, sent `sig` once its first batch
    of rows is in; returns what it said and how many subscribers were in at the end."""
    import os
    import sys
    import time

    from sqlalchemy import func, select

    from dripmail.store.schema import subscribers

    send = Path(__file__).resolve().parents[2] / "send.py"
    engine = open_store("sqlite:///dripmail.db", root)
    proc = subprocess.Popen(
        [sys.executable, str(send), "--root", str(root), "subscribers", "import", "people.csv"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def count() -> int:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(subscribers)).scalar_one()

    before = count()
    while proc.poll() is None and count() == before:
        time.sleep(0.05)  # until the first batch of this run is committed
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=600)
    done = count()
    engine.dispose()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), done


def test_ctrl_c_or_sigterm_during_an_import_says_how_far_it_got_and_a_rerun_continues(
    tmp_path: Path,
) -> None:
    """The tester's repro: a stopped import exited 130 or 143 without a word."""
    import signal

    from tests.course_fixture import make_project

    root = make_project(tmp_path / "p")
    total = 10_000  # 20 batches: the signal lands while most are still to come
    (root / "people.csv").write_text(
        "email\n" + "".join(f"k{i}@example.org\n" for i in range(total))
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        out, inside = _stopped_import(root, sig)
        assert out.returncode == 130, (sig, out.stdout, out.stderr)
        assert out.stderr == ""
        summary, stopped = out.stdout.splitlines()
        assert summary.startswith("added ") and summary.endswith(", rejected 0")
        assert stopped.startswith(f"stopped after line {inside + 1} of people.csv: the rows up to")
        assert "subscribers import people.csv` again continues safely" in stopped
        assert inside < total
    final = run_cli(root, "subscribers", "import", "people.csv")
    assert final.returncode == 0
    assert final.stdout == f"added {total - inside}, already there {inside}, rejected 0\n"


def test_show_says_why_a_reader_has_no_lessons(tmp_path: Path) -> None:
    """An exported reader who had unsubscribed comes in with no lessons: `show` said
    "pending confirmation?" for them."""
    (tmp_path / "people.csv").write_text(
        "email,status\nuna@example.org,unsubscribed\npia@example.org,pending\n"
    )
    assert _run(tmp_path, "subscribers", "import", "people.csv").returncode == 0
    una = _run(tmp_path, "subscribers", "show", "una@example.org").stdout
    assert "  none planned (unsubscribed: nothing more is sent)\n" in una
    pia = _run(tmp_path, "subscribers", "show", "pia@example.org").stdout
    assert "  none planned (not confirmed yet: lessons are planned when they confirm)\n" in pia
