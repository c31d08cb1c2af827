"""`subscribers rename`: the way out of a stored name no mail header can carry (a line break,
U+2028, a control character an older version or a hand edit stored), through the real entry
point (in process) on a real SQLite database and the outbox provider."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select, update

from dripmail.store.db import open_store
from dripmail.store.schema import deliveries, events, subscribers
from tests.cli_in_process import run_cli
from tests.course_fixture import make_project

JOINED = "2026-06-01T12:00:00+00:00"  # Monday: lesson 1 on Tuesday 07:00 in Berlin
DAY_1 = "2026-06-02T05:30:00+00:00"
DAY_2 = "2026-06-03T05:30:00+00:00"
BAD = "Ivy\u2028Z"


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DRIPMAIL_")}
    return run_cli(root, *args, env={**base, "COLUMNS": "200", "USER": "ann"})


def _set(root: Path, email: str, **values: object) -> None:
    engine = open_store("sqlite:///dripmail.db", root)
    with engine.begin() as conn:
        conn.execute(update(subscribers).where(subscribers.c.email == email).values(**values))
    engine.dispose()


def _row(root: Path, email: str) -> dict:
    engine = open_store("sqlite:///dripmail.db", root)
    with engine.connect() as conn:
        row = conn.execute(select(subscribers).where(subscribers.c.email == email)).mappings()
        found = dict(row.one())
        found["lessons"] = dict(
            conn.execute(
                select(deliveries.c.lesson_day, deliveries.c.state).where(
                    deliveries.c.subscriber_id == found["id"]
                )
            ).all()
        )
        found["events"] = [
            tuple(e)
            for e in conn.execute(
                select(events.c.type, events.c.detail).where(events.c.subscriber_id == found["id"])
            )
        ]
    engine.dispose()
    return found


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = make_project(tmp_path)
    (root / "people.csv").write_text(
        "email,first_name,timezone\nivy@example.org,Ivy,Europe/Berlin\n"
        "ok@example.org,Ok,Europe/Berlin\n"
    )
    out = _cli(root, "subscribers", "import", "people.csv", "--now", JOINED)
    assert out.returncode == 0, out.stderr
    return root


def test_a_failed_lesson_names_rename_and_rename_then_retry_sends_it(project: Path) -> None:
    _set(project, "ivy@example.org", first_name=BAD)
    run = _cli(project, "run", "--now", DAY_1, "-q")
    assert run.returncode == 3, run.stdout + run.stderr
    advice = (
        "(to ivy@example.org); correct it with `subscribers rename ivy@example.org NAME`, "
        "then `deliveries retry --address ivy@example.org`"
    )
    assert advice in run.stdout + run.stderr
    assert advice in _cli(project, "status").stdout

    out = _cli(project, "subscribers", "rename", "IVY@example.org", "Ivy\nRose")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # The stored name printed visibly (no line split); the new one cleaned as a sign-up's.
    assert lines[0] == "renamed ivy@example.org: Ivy\\u2028Z -> Ivy Rose", lines
    assert lines[1].startswith("1 failed lesson (1): `")
    assert lines[1].endswith(
        "deliveries retry --address ivy@example.org` puts it back in the queue"
    )
    row = _row(project, "ivy@example.org")
    assert row["first_name"] == "Ivy Rose"
    assert ("renamed", "first name corrected by the operator (cli)") in row["events"]
    shown = _cli(project, "subscribers", "show", "ivy@example.org")
    assert "renamed" in shown.stdout and "name: Ivy Rose" in shown.stdout

    same = _cli(project, "subscribers", "rename", "ivy@example.org", "Ivy Rose")
    assert same.returncode == 0 and "already named Ivy Rose: nothing changed" in same.stdout
    assert [e for e in _row(project, "ivy@example.org")["events"] if e[0] == "renamed"] == [
        ("renamed", "first name corrected by the operator (cli)")
    ]

    assert _cli(project, "deliveries", "retry", "--address", "ivy@example.org").returncode == 0
    sent = _cli(project, "run", "--now", DAY_2, "-q")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert _row(project, "ivy@example.org")["lessons"][1] == "sent"
    mails = [p.read_text() for p in (project / "outbox").glob("*.eml")]
    assert sum("Ivy Rose" in m and "ivy@example.org" in m for m in mails) == 1


def test_rename_of_a_reader_who_unsubscribed_offers_no_retry(project: Path) -> None:
    # Her lesson failed for the name, then she unsubscribed: the lesson is final, and
    # rename must not point at a retry that would leave it (and exit 3).
    _set(project, "ivy@example.org", first_name=BAD)
    assert _cli(project, "run", "--now", DAY_1, "-q").returncode == 3
    _set(project, "ivy@example.org", status="unsubscribed")
    out = _cli(project, "subscribers", "rename", "ivy@example.org", "Ivy")
    assert out.returncode == 0, out.stderr
    assert "renamed ivy@example.org" in out.stdout
    assert "deliveries retry" not in out.stdout + out.stderr


def test_rename_refuses_a_name_too_long_and_an_unknown_address(project: Path) -> None:
    long = _cli(project, "subscribers", "rename", "ivy@example.org", "x" * 500)
    assert long.returncode == 1 and long.stderr.count("\n") == 1
    assert "first_name: longer than" in long.stderr and "Traceback" not in long.stderr
    assert _row(project, "ivy@example.org")["first_name"] == "Ivy"
    nobody = _cli(project, "subscribers", "rename", "nobody@example.org", "X")
    assert nobody.returncode == 1 and "no subscriber 'nobody@example.org'" in nobody.stderr


def test_rename_of_a_pending_reader_offers_the_owed_confirmation_again(tmp_path: Path) -> None:
    """The repro: a pending reader's confirmation cannot be built from the stored name; a new
    import of the address fails again; `subscribers rename` corrects it and sends it."""
    root = make_project(tmp_path)
    (root / "people.csv").write_text(
        "email,first_name,timezone\nivy@example.org,Ivy,Europe/Berlin\n"
    )
    first = _cli(root, "subscribers", "import", "people.csv", "--confirm", "--now", JOINED)
    assert first.returncode == 0, first.stderr
    # As a crash mid hand-over leaves it, with a name from a hand edit.
    _set(
        root,
        "ivy@example.org",
        first_name=BAD,
        confirm_handed_at=None,
        confirm_claimed_by="elsewhere:1",
        confirm_lease_expires_at=subscribers.c.confirm_sent_at,
    )
    run = _cli(root, "run", "--now", DAY_1, "-q")
    assert run.returncode == 3, run.stdout + run.stderr
    assert (
        "(to ivy@example.org); correct it with `subscribers rename ivy@example.org NAME`, which "
        "offers the email again"
    ) in run.stderr
    status = _cli(root, "status").stdout
    assert "subscribers rename ADDRESS NAME" in status
    again = _cli(root, "subscribers", "import", "people.csv", "--confirm", "--now", DAY_1)
    assert again.returncode == 3  # the CSV's name does not replace the stored one

    out = _cli(root, "subscribers", "rename", "ivy@example.org", "Ivy")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "renamed ivy@example.org: Ivy\\u2028Z -> Ivy" in out.stdout
    assert "confirmation email offered again: the provider accepted it" in out.stdout
    row = _row(root, "ivy@example.org")
    assert row["confirm_handed_at"] is not None and row["status"] == "pending"
    # The same slot, under its first key: the outbox (which deduplicates) holds one copy.
    assert [p.name for p in (root / "outbox").glob("*.eml")] == ["confirm-s1-20260601120000-n1.eml"]
    assert "confirmation email" not in _cli(root, "status").stdout
    # Handed over now: a second rename offers nothing more.
    later = _cli(root, "subscribers", "rename", "ivy@example.org", "Ivy R")
    assert "confirmation" not in later.stdout + later.stderr
    assert _row(root, "ivy@example.org")["confirm_count"] == row["confirm_count"]


def test_status_lists_every_reader_owed_a_confirmation_up_to_twenty(tmp_path: Path) -> None:
    """`run` says "`status` lists them": it does, each with its reason, the rest counted."""
    root = make_project(tmp_path)
    rows = [f"r{i:02d}@example.org,R{i},Europe/Berlin" for i in range(22)]
    (root / "people.csv").write_text("email,first_name,timezone\n" + "\n".join(rows) + "\n")
    first = _cli(root, "subscribers", "import", "people.csv", "--confirm", "--now", JOINED)
    assert first.returncode == 0, first.stderr
    engine = open_store("sqlite:///dripmail.db", root)
    with engine.begin() as conn:
        conn.execute(
            update(subscribers).values(
                first_name=BAD,
                confirm_handed_at=None,
                confirm_claimed_by="elsewhere:1",
                confirm_lease_expires_at=subscribers.c.confirm_sent_at,
            )
        )
    engine.dispose()
    run = _cli(root, "run", "--now", DAY_1, "-q")
    assert run.returncode == 3 and "22 confirmation email(s) not sent" in run.stderr
    assert "status` lists them" in run.stderr
    lines = _cli(root, "status").stdout.splitlines()
    at = lines.index("Confirmation emails not sent (22)")
    listed = lines[at + 1 : at + 21]
    for i, line in enumerate(listed):
        assert line.startswith("  cannot build the confirmation email: the recipient's name")
        assert f"(to r{i:02d}@example.org); correct it with `subscribers rename" in line
    assert lines[at + 21] == "  ... and 2 more"
    assert lines[at + 22].startswith("22 confirmation email(s) not sent (the first: ")
