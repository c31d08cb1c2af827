"""`run` through the entry point (in process): a simulated clock never mails readers by
surprise, one bad stored name fails alone (exit 3, named by `status`), and the progress bar
(a real process, its stderr on a pseudo-terminal) ends at the truth."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy import update

from dripmail.store.db import open_store
from dripmail.store.schema import subscribers
from tests.cli_in_process import run_cli
from tests.course_fixture import make_project
from tests.terminal import run_with_stderr_on_a_terminal

REPO = Path(__file__).resolve().parents[2]
JOINED = "2026-06-01T12:00:00+00:00"
DUE = "2026-06-02T05:30:00+00:00"  # 07:30 in Berlin on Tuesday


def _cli(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(root, *args, env={**os.environ, "COLUMNS": "120", **env})


def _import(root: Path, count: int) -> None:
    rows = [f"p{i}@example.org,P{i},Europe/Berlin" for i in range(count)]
    (root / "people.csv").write_text("email,first_name,timezone\n" + "\n".join(rows) + "\n")
    out = _cli(root, "subscribers", "import", "people.csv", "--now", JOINED)
    assert out.returncode == 0, out.stderr


def test_now_with_a_real_provider_is_refused_unless_dry_run_or_yes(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    real = {
        "DRIPMAIL_PROVIDER": "postmark",
        "POSTMARK_SERVER_TOKEN": "pm-token",
        # Nothing may be contacted: the refusal comes before any provider call.
        "DRIPMAIL_POSTMARK_BASE_URL": "http://127.0.0.1:9",
        "DRIPMAIL_SECRET_KEY": "a-long-random-test-secret-0123456789",
        # A real provider refuses an http or localhost public address (issue 12); this test
        # is about --now, so the rest of the deployment is fit.
        "DRIPMAIL_PUBLIC_URL": "https://subscriptions.example.org",
    }
    refused = _cli(root, "run", "--now", DUE, **real)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "--now with DRIPMAIL_PROVIDER=postmark" in (
        refused.stderr
    )
    assert "--dry-run" in refused.stderr and "--yes" in refused.stderr
    assert _cli(root, "run", "--now", DUE, "--dry-run", **real).returncode == 0
    assert _cli(root, "run", "--now", DUE).returncode == 0  # the outbox: nothing leaves
    assert "--dry-run or the outbox" in " ".join(_cli(root, "run", "--help").stdout.split())


def test_one_bad_stored_name_fails_alone_exit_3_and_status_names_it(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    _import(root, 60)
    engine = open_store("sqlite:///dripmail.db", root)
    with engine.begin() as conn:
        conn.execute(
            update(subscribers)
            .where(subscribers.c.email == "p7@example.org")
            .values(first_name="Dan\nBcc: eve@example.com")
        )
    engine.dispose()
    # A day late: lessons 1 and 2 are both planned and due (120), but lesson 2 waits a day.
    late = "2026-06-03T05:30:00+00:00"
    # A real process with stderr on a terminal: the bar is drawn there, and only there.
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    code, stdout, terminal = run_with_stderr_on_a_terminal(
        [sys.executable, str(REPO / "send.py"), "--root", str(root), "run", "--now", late],
        cwd=root,
        env={**env, "COLUMNS": "120"},
    )
    assert code == 3, terminal
    assert "59 sent" in stdout and "1 failed" in stdout
    # The bar ends at what was really handled (59 sent + 1 failed), not at the estimate.
    assert re.search(r"(?<!\d)60/60(?!\d)", terminal) and "/120" not in terminal, terminal
    # Why, in one line beside the count: the reason, the address, where to see them all.
    said = " ".join(terminal.split())
    assert "1 failed for good (it: cannot build the message: the recipient's name" in said
    assert (
        "(to p7@example.org); correct it with `subscribers rename p7@example.org NAME`, then "
        "`deliveries retry --address p7@example.org`); `"
    ) in said and "status` lists them" in said
    status = _cli(root, "status")
    assert "failed" in status.stdout and "p7@example.org" in status.stdout
    assert "line break" in status.stdout
    assert len(list((root / "outbox").glob("*.eml"))) == 59


def test_a_confirmation_email_that_cannot_be_built_makes_run_exit_3_and_status_show_it(
    tmp_path: Path,
) -> None:
    """A sign-up killed before its confirmation email went out, whose stored name (from an
    older version) no header can carry: `run` offers the email again, it cannot be built.
    Reported like a lesson failed for good: stderr names it, exit 3, `status` shows it."""
    root = make_project(tmp_path)
    (root / "people.csv").write_text(
        "email,first_name,timezone\nok@example.org,Ok,Europe/Berlin\n"
        "dan@example.org,Dan,Europe/Berlin\n"
    )
    imported = _cli(root, "subscribers", "import", "people.csv", "--confirm", "--now", JOINED)
    assert imported.returncode == 0, imported.stderr
    engine = open_store("sqlite:///dripmail.db", root)
    with engine.begin() as conn:
        conn.execute(
            update(subscribers)
            .where(subscribers.c.email == "dan@example.org")
            .values(
                first_name="Dan\nBcc: eve@example.com",
                confirm_handed_at=None,
                confirm_claimed_by="elsewhere:1",  # its lease ran out long ago
                confirm_lease_expires_at=subscribers.c.confirm_sent_at,
            )
        )
    engine.dispose()
    assert "confirmation email" not in _cli(root, "status").stdout

    out = _cli(root, "run", "--now", DUE, "-q")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "0 confirmation email(s) sent after a crash, 1 not sent" in out.stdout.splitlines()
    assert (
        "1 confirmation email(s) not sent (it: cannot build the confirmation email: the "
        "recipient's name contains a line break (U+000A) (to dan@example.org); correct it "
        "with `subscribers rename dan@example.org NAME`, which offers the email again); "
        "`python send.py status` lists them"
    ) in out.stderr.splitlines(), out.stderr
    status = _cli(root, "status")
    line = next(x for x in status.stdout.splitlines() if "confirmation email(s) not sent" in x)
    assert line.startswith("1 confirmation email(s) not sent (it: cannot build the confirmation")
    assert "(to dan@example.org)" in line and "subscribers show ADDRESS" in line
    shown = _cli(root, "subscribers", "show", "dan@example.org")
    assert "confirm_not_sent" in shown.stdout
    # Not offered again every pass (a refusal waits for a new sign-up or import): exit 0.
    assert _cli(root, "run", "--now", DUE, "-q").returncode == 0
    # Importing the address again offers the owed email again: the same report, exit 3.
    again = _cli(root, "subscribers", "import", "people.csv", "--confirm", "--now", DUE)
    assert again.returncode == 3, again.stdout + again.stderr
    assert "1 confirmation email(s) not sent (it: cannot build the confirmation email" in (
        again.stderr
    )
