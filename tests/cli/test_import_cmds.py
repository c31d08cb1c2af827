"""`subscribers import` and `subscribers add` with the inputs of issue 11, through the entry
point in process; the kill trials run `send.py` as real processes (SIGKILL is their point)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dripmail.store.db import open_store
from dripmail.store.schema import deliveries, subscribers
from tests.cli_in_process import run_cli
from tests.course_fixture import make_project

REPO = Path(__file__).resolve().parents[2]
JOINED = "2026-06-01T12:00:00+00:00"  # a Monday; lesson 1 on Tuesday 07:00 local
AFTER_LESSON_1 = "2026-06-02T23:00:00+00:00"


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`send.py --root ROOT ARGS` in process (`tests.cli_in_process.run_cli`), 200 columns wide."""
    return run_cli(root, *args, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def _rows(root: Path) -> dict[str, dict]:
    engine = open_store("sqlite:///dripmail.db", root)
    with engine.connect() as conn:
        found = {r["email"]: dict(r) for r in conn.execute(select(subscribers)).mappings()}
    engine.dispose()
    return found


def _sent(root: Path) -> Counter[tuple[str, str]]:
    path = root / "outbox" / "index.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return Counter((r["to"], r["ref"]) for r in map(json.loads, lines) if r["kind"] == "lesson")


def test_newline_in_a_name_does_not_stop_anyone(project: Path) -> None:
    """A name over two lines is refused by its line (it may be a quote left open); everyone
    else is imported and mailed, and nobody else is."""
    (project / "people.csv").write_text(
        'email,first_name\ndan@example.com,"Dan\nBcc: eve@example.com"\nann@example.com,Ann\n'
    )
    out = _cli(project, "subscribers", "import", "people.csv", "--now", JOINED)
    assert out.returncode == 3, out.stderr
    assert "added 1" in out.stdout
    assert out.stderr.startswith(
        "people.csv:2: first_name: the quoted cell that starts on this line runs over a line"
    )
    assert "dan@example.com" not in _rows(project)
    run = _cli(project, "run", "--now", AFTER_LESSON_1)
    assert run.returncode == 0, run.stderr
    sent = _sent(project)
    assert sent[("ann@example.com", "1")] == 1
    assert not any(to in ("eve@example.com", "dan@example.com") for to, _ in sent)
    # The same name through `subscribers add` is cleaned the same way.
    added = _cli(project, "subscribers", "add", "cy@example.com", "--name", "Cy\r\nBcc: x@y.z")
    assert added.returncode == 0, added.stderr
    assert _rows(project)["cy@example.com"]["first_name"] == "Cy Bcc: x@y.z"


def test_start_dates_far_out_are_refused_by_line_and_the_rest_imported(project: Path) -> None:
    (project / "people.csv").write_text(
        "email,start_date\n"
        "far@example.com,9999-12-31\n"
        "old@example.com,0001-01-01\n"
        "ok@example.com,2026-06-03\n"
        "late@example.com,2026-01-05\n"
    )
    out = _cli(project, "subscribers", "import", "people.csv", "--now", JOINED)
    assert out.returncode == 3, out.stderr  # some rows were refused
    assert "people.csv:2: start_date: 9999-12-31 is outside" in out.stderr
    assert "people.csv:3: start_date: 0001-01-01 is outside" in out.stderr
    assert "people.csv:5: warning: start_date 2026-01-05" in out.stderr
    assert "added 2, already there 0, rejected 2" in out.stdout
    rows = _rows(project)
    assert set(rows) == {"ok@example.com", "late@example.com"}
    assert all(r["status"] == "active" for r in rows.values())
    for address in ("9999-12-31", "0001-01-01"):
        add = _cli(project, "subscribers", "add", "x@example.com", "--start", address)
        assert add.returncode == 1 and "--start: " in add.stderr and "Traceback" not in add.stderr
    assert "x@example.com" not in _rows(project)


def test_a_latin1_byte_at_line_2502_stops_before_anything_is_written(project: Path) -> None:
    lines = ["email,first_name"] + [f"p{i}@example.org,P{i}" for i in range(2, 3001)]
    data = "\n".join(lines).encode() + b"\n"
    data = data.replace(b"p2502@example.org,P2502", b"p2502@example.org,Ren\xe9")
    (project / "people.csv").write_bytes(data)
    out = _cli(project, "subscribers", "import", "people.csv", "--now", JOINED)
    assert out.returncode == 1
    assert "people.csv:2502: byte 0xe9 is not UTF-8" in out.stderr
    assert "nothing was imported" in out.stderr and "Traceback" not in out.stderr
    assert _rows(project) == {}


def test_headers_match_any_case_and_semicolons_are_sniffed(project: Path) -> None:
    (project / "a.csv").write_text(
        "email,First_Name,Timezone,Start_Date\nkei@example.com,Kei,Asia/Tokyo,2026-06-04\n"
    )
    (project / "b.csv").write_text("Email;First Name;TAGS\nana@example.com;Ana;Desk\n")
    (project / "c.tsv").write_text("EMAIL\ttimezone\nbo@example.com\tUS/Pacific\n")
    for name in ("a.csv", "b.csv", "c.tsv"):
        out = _cli(project, "subscribers", "import", name, "--now", JOINED)
        assert out.returncode == 0 and "added 1" in out.stdout, out.stdout + out.stderr
        assert "ignored columns" not in out.stderr
    # The alias is not taken silently: the line says what was stored.
    assert "c.tsv:2: warning: timezone 'US/Pacific' is an old alias: stored as" in out.stderr
    rows = _rows(project)
    kei = rows["kei@example.com"]
    assert (kei["first_name"], kei["timezone"], str(kei["start_date"])) == (
        "Kei",
        "Asia/Tokyo",
        "2026-06-04",
    )
    assert (rows["ana@example.com"]["first_name"], rows["ana@example.com"]["tags"]) == (
        "Ana",
        "desk",
    )
    assert rows["bo@example.com"]["timezone"] == "America/Los_Angeles"


def test_dry_run_reports_what_the_import_then_does_and_help_lists_columns(
    project: Path,
) -> None:
    (project / "seed.csv").write_text("email\nold@example.com\n")
    assert _cli(project, "subscribers", "import", "seed.csv", "--now", JOINED).returncode == 0
    (project / "people.csv").write_text(
        "email,timezone\n"
        "old@example.com,UTC\n"
        "new@example.com,EST\n"
        "two@example.com,america/new_york\n"
        "Two@example.com,UTC\n"
        "three@example.com,Europe/Paris\n"
    )
    dry = _cli(project, "subscribers", "import", "people.csv", "--dry-run", "--now", JOINED)
    real = _cli(project, "subscribers", "import", "people.csv", "--now", JOINED)
    assert dry.returncode == real.returncode == 3
    assert "would add 2, already there 1, rejected 2" in dry.stdout
    assert "added 2, already there 1, rejected 2" in real.stdout
    assert dry.stderr == real.stderr
    assert "people.csv:3: timezone: 'EST' is an abbreviation" in real.stderr
    assert "people.csv:4: timezone: 'america/new_york'" in real.stderr
    assert "did you mean America/New_York" in real.stderr
    assert "people.csv:5: two@example.com is already on line 4" not in real.stderr  # line 4 bad
    helped = _cli(project, "subscribers", "import", "--help")
    for column in ("email", "first_name", "timezone", "start_date", "tags"):
        assert column in helped.stdout


@pytest.mark.parametrize("confirm", [False, True])
def test_import_killed_at_random_moments_and_rerun_leaves_nobody_pending(
    project: Path, confirm: bool
) -> None:
    count = 1500  # three 500-row transactions: a kill can land between or inside them
    lines = ["email,timezone"] + [f"k{i}@example.org,Europe/Berlin" for i in range(count)]
    (project / "people.csv").write_text("\n".join(lines) + "\n")
    args = ["subscribers", "import", "people.csv", "--now", JOINED]
    args += ["--confirm"] if confirm else []
    chance = random.Random(11 + confirm)
    engine = open_store("sqlite:///dripmail.db", project)
    for _attempt in range(2):
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "send.py"), "--root", str(project), *args],
            cwd=project,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Wait until it is writing (or done), then kill it a random moment later.
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(select(func.count()).select_from(subscribers)).scalar_one():
                    break
            time.sleep(0.05)
        time.sleep(chance.uniform(0, 0.5))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    final = _cli(project, *args)
    assert final.returncode == 0, final.stderr
    with engine.connect() as conn:
        people = list(conn.execute(select(subscribers)).mappings())
        planned = conn.execute(select(func.count()).select_from(deliveries)).scalar_one()
    assert len(people) == count
    if confirm:
        # Pending is right here, but each has had exactly one confirmation email, handed
        # over: a slot a kill interrupted was offered again under its own key, not a new one.
        assert all(p["status"] == "pending" and p["confirm_count"] == 1 for p in people)
        assert all(p["confirm_handed_at"] is not None for p in people)
        assert all(p["confirm_claimed_by"] is None for p in people)
        mailed = [p.name for p in (project / "outbox").glob("confirm-*.eml")]
        assert sorted(name.split("-")[1] for name in mailed) == sorted(
            f"s{p['id']}" for p in people
        )
    else:
        assert all(p["status"] == "active" for p in people) and planned == 7 * count
    engine.dispose()


@pytest.mark.parametrize(
    "header",
    [
        "Email,First Name,Time Zone,Start Date",
        "e-mail,first-name,time-zone,start-date",
        "EMAIL,first_name,time_zone,START_DATE",
        "Email,FirstName,TZ,StartDate",
    ],
)
def test_every_column_matches_with_spaces_hyphens_or_underscores(
    project: Path, header: str
) -> None:
    (project / "p.csv").write_text(f"{header}\nkei@example.com,Kei,Asia/Tokyo,2026-06-04\n")
    out = _cli(project, "subscribers", "import", "p.csv", "--now", JOINED)
    assert out.returncode == 0 and "added 1" in out.stdout, out.stdout + out.stderr
    assert "ignored columns" not in out.stderr, out.stderr
    kei = _rows(project)["kei@example.com"]
    assert (kei["first_name"], kei["timezone"], str(kei["start_date"])) == (
        "Kei",
        "Asia/Tokyo",
        "2026-06-04",
    )


def test_a_rerun_says_what_it_offered_again_and_what_another_process_still_holds(
    project: Path,
) -> None:
    import socket
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    (project / "k.csv").write_text("email\na@example.org\nb@example.org\n", encoding="utf-8")
    first = _cli(project, "subscribers", "import", "k.csv", "--confirm")
    assert "sent 2 confirmation email(s)" in first.stdout, first.stderr
    host, far = socket.gethostname(), datetime.now(UTC) + timedelta(hours=1)
    engine = open_store("sqlite:///dripmail.db", project)
    with engine.begin() as conn:
        # a: its holder was killed before recording the hand-over (no such process now);
        # b: another live process (this test's parent) is handing it over, its lease running.
        for email, holder in (("a@example.org", f"{host}:4194399:1"), ("b@example.org", None)):
            conn.execute(
                update(subscribers)
                .where(subscribers.c.email == email)
                .values(
                    confirm_handed_at=None,
                    confirm_claimed_by=holder or f"{host}:{os.getppid()}",
                    confirm_lease_expires_at=far,
                )
            )
    engine.dispose()
    again = _cli(project, "subscribers", "import", "k.csv", "--confirm")
    assert again.returncode == 0, again.stderr
    assert "sent 0 confirmation email(s)" in again.stdout
    assert "offered again 1 confirmation email(s)" in again.stdout
    assert (
        f"1 confirmation email(s) still being sent by another process (pid {os.getppid()}"
        in again.stderr
    )


def test_import_prints_nothing_but_its_summary_on_stdout(project: Path) -> None:
    """Issue: piped or redirected, the progress bar left an empty first line on stdout, even
    before an error. stdout holds the summary alone (a script can read it), errors stderr."""
    send = [sys.executable, str(REPO / "send.py"), "--root", str(project)]
    missing = subprocess.run(
        [*send, "subscribers", "import", "nope.csv"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 1 and missing.stdout == "", repr(missing.stdout)
    assert missing.stderr.startswith("error: nope.csv: cannot read"), missing.stderr
    (project / "people.csv").write_text("email,first_name\na@example.org,A\n")
    added = _cli(project, "subscribers", "import", "people.csv", "--now", JOINED)
    assert added.returncode == 0, added.stderr
    assert added.stdout == "added 1, already there 0, rejected 0\n", repr(added.stdout)
