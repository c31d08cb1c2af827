"""`run`, `status`, `db upgrade` and the subscriber commands through the entry point; `run`
as a real process where the process is the point (SIGKILL mid-run, Ctrl-C in --loop)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from datetime import time as dt_time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dripmail import stats
from dripmail.store.db import open_store
from dripmail.store.schema import deliveries
from tests.cli_in_process import run_cli
from tests.course_fixture import make_project
from tests.terminal import run_with_stderr_on_a_terminal

REPO = Path(__file__).resolve().parents[2]
# Monday 1 June 2026, 12:00 UTC: everyone imported now starts on Tuesday at 07:00 local.
JOINED = "2026-06-01T12:00:00+00:00"


def _cli(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """The command through the entry point, in process (the kill and loop trials below run
    `send.py` as real processes)."""
    return run_cli(root, *args, env={**os.environ, **(env or {})})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small course project (the real templates) with an empty database."""
    return make_project(tmp_path)


def _import(root: Path, count: int, zone: str = "Europe/Berlin") -> None:
    lines = ["email,first_name,timezone"] + [f"p{i}@example.org,P{i},{zone}" for i in range(count)]
    (root / "people.csv").write_text("\n".join(lines) + "\n")
    out = _cli(root, "subscribers", "import", "people.csv", "--now", JOINED)
    assert out.returncode == 0, out.stderr
    assert f"added {count}" in out.stdout


def _index(root: Path) -> list[dict]:
    path = root / "outbox" / "index.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_run_dry_run_then_run_then_rerun_is_a_no_op(project: Path) -> None:
    _import(project, 3)
    due = "2026-06-02T05:30:00+00:00"  # 07:30 in Berlin on Tuesday
    dry = _cli(project, "run", "--now", due, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "3 lesson(s) would go out" in dry.stdout and not (project / "outbox").exists()
    first = _cli(project, "run", "--now", due)
    assert first.returncode == 0, first.stderr
    assert "3 sent" in first.stdout
    again = _cli(project, "run", "--now", due)
    assert "0 sent" in again.stdout
    lines = _index(project)
    assert len(lines) == 3 and {x["ref"] for x in lines} == {"1"}
    eml = (project / "outbox" / f"{lines[0]['key']}.eml").read_text()
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in eml
    status = _cli(project, "status")
    assert status.returncode == 0 and "active" in status.stdout
    assert "day 1" in status.stdout and "Next due: 2026-06-03 05:00 UTC" in status.stdout
    shown = _cli(project, "subscribers", "show", "p0@example.org")
    # Sent when the run happened (07:30 local), half an hour after it was due.
    assert "day 1  sent" in shown.stdout and "07:30 local = 2026-06-02 05:30 UTC" in shown.stdout


def test_a_dry_run_says_what_a_stopped_run_left_in_flight_is_settled_first(
    project: Path,
) -> None:
    _import(project, 4)
    due = "2026-06-02T05:30:00+00:00"
    engine = open_store(f"sqlite:///{project / 'dripmail.db'}", project)
    with engine.begin() as conn:
        # A run killed mid-call left two lessons `sending` under a worker that is gone.
        first_two = select(deliveries.c.id).order_by(deliveries.c.id).limit(2).scalar_subquery()
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id.in_(first_two))
            .values(state="sending", batch_key="b-gone", claimed_by="elsewhere:1", attempts=1)
        )
    engine.dispose()

    dry = _cli(project, "run", "--now", due, "--dry-run", "--limit", "1")
    assert dry.returncode == 0, dry.stderr
    assert "1 lesson(s) would go out" in dry.stdout
    assert "also 2 lesson(s) held in flight by a worker" in dry.stdout
    assert "whatever --limit says" in dry.stdout and "nothing was written" in dry.stdout


def test_bad_now_and_unreachable_database_are_one_line_errors(tmp_path: Path) -> None:
    project = tmp_path
    bad = _cli(project, "run", "--now", "tuesday")
    assert bad.returncode == 1 and "--now 'tuesday' is not an ISO-8601 time" in bad.stderr
    db = _cli(
        project,
        "status",
        env={"DRIPMAIL_DATABASE_URL": "postgresql+psycopg://u:secret@127.0.0.1:1/x"},
    )
    assert db.returncode == 1 and "Traceback" not in db.stderr
    assert "secret" not in db.stderr


def test_run_killed_mid_run_and_rerun_delivers_each_lesson_once(project: Path) -> None:
    count = 1500
    _import(project, count)
    due = "2026-06-02T06:00:00+00:00"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "send.py"), "--root", str(project), "run", "--now", due, "-q"],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    outbox = project / "outbox"
    index = outbox / "index.jsonl"
    deadline = time.monotonic() + 300
    # Kill it once some, but not all, emails are written: mid-run by construction. Progress is
    # read from the index (one line per email written, a small file) rather than by listing
    # the outbox folder 50 times a second, which cost more CPU than the run itself.
    while time.monotonic() < deadline and proc.poll() is None:
        written = index.read_bytes().count(b"\n") if index.exists() else 0
        if written >= count // 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be killed: raise `count`"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(list(outbox.glob("*.eml")))
    assert 0 < written < count
    # The killed run's claims are freed at once (its pid is gone on this host): a re-run
    # right away picks up the rest and reconciles what was in flight.
    later = "2026-06-02T06:00:30+00:00"
    rerun = _cli(project, "run", "--now", later, "-q")
    assert rerun.returncode == 0, rerun.stderr
    keys = Counter(x["key"] for x in _index(project))
    assert len(keys) == count and set(keys.values()) == {1}
    assert len(list(outbox.glob("*.eml"))) == count
    engine = open_store("sqlite:///dripmail.db", project)
    with engine.connect() as conn:
        states = dict(
            conn.execute(
                select(deliveries.c.state, func.count())
                .where(deliveries.c.lesson_day == 1)
                .group_by(deliveries.c.state)
            ).all()
        )
        attempts = conn.execute(
            select(func.sum(deliveries.c.attempts)).where(deliveries.c.lesson_day == 1)
        ).scalar_one()
    assert states == {"sent": count}
    # One attempt each, plus at most the chunk in flight at the kill (1,000 rows, marked
    # `sending` before the calls): reconcile found those already written or sent them once.
    assert count <= attempts <= count + 1000


def test_run_says_an_smtp_connection_broke_off_as_the_batch_s_reason(project: Path) -> None:
    """Issue: "4 lessons wait for the next run: the SMTP session broke off before this
    message": one message's words in a line about four. The summary names the connection
    and the batch."""
    from aiosmtpd.controller import Controller

    class HangsUpAfterOneData:
        """Takes p1's DATA, then closes the session without answering (maybe queued)."""

        async def handle_DATA(self, server, session, envelope):
            if "p1@example.org" in envelope.rcpt_tos:
                server.transport.close()
            return "250 2.0.0 queued"

    _import(project, 6)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Controller(HangsUpAfterOneData(), hostname="127.0.0.1", port=port)
    server.start()
    try:
        env = {
            "DRIPMAIL_PROVIDER": "smtp",
            "DRIPMAIL_SMTP_HOST": "127.0.0.1",
            "DRIPMAIL_SMTP_PORT": str(port),
            "DRIPMAIL_SMTP_TLS": "none",
            "DRIPMAIL_SECRET_KEY": "a-test-secret-that-is-long-enough",
            "DRIPMAIL_PUBLIC_URL": "https://join.studio.example.com",
        }
        out = _cli(project, "run", "--now", "2026-06-02T05:30:00+00:00", "--yes", "-q", env=env)
    finally:
        server.stop()
    assert out.returncode == 3, out.stdout + out.stderr  # one lesson for review
    assert "4 to retry later, 1 for review" in out.stdout, out.stdout
    assert out.stderr.splitlines() == [
        f"4 lessons wait for the next run: the connection to 127.0.0.1:{port} broke off "
        "partway through a batch (no answer to a message's DATA)"
    ], out.stderr


@pytest.mark.slow  # 4,000 lessons written into the outbox, twice started
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_run_after_the_chunk_in_the_outbox(project: Path, stop) -> None:
    """Ctrl-C (or SIGTERM) mid-pass with the outbox, the quick start's provider: the chunk
    being written is finished and recorded, nothing after it; "stopped", exit 130; the
    next run writes the rest, each lesson once."""
    from datetime import UTC, datetime

    from dripmail.engine import run_once
    from tests.due_fixture import seed_due

    count, now = 4000, datetime(2026, 6, 1, 12, tzinfo=UTC)
    seed_due(open_store("sqlite:///dripmail.db", project), count, now)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "send.py"),
            "--root",
            str(project),
            "run",
            "--now",
            now.isoformat(),
            "-q",
        ],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal
    )
    index = project / "outbox" / "index.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if index.exists() and index.read_bytes().count(b"\n") >= 300:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be stopped: raise `count`"
    proc.send_signal(stop)
    at_signal = index.read_bytes().count(b"\n")
    out, err = _stop(proc)
    assert proc.returncode == 130, err
    written = len(_index(project))
    # Like `broadcast`: how far the pass got (each lesson in the outbox counted), and that a
    # re-run sends the rest once.
    assert out.splitlines()[-1] == (
        f"stopped: {written} lessons handed over and recorded in this pass; the rest go out "
        "when you run the same command again (nobody gets a lesson twice)"
    )
    assert "Traceback" not in err
    # Soon: at most the rest of the chunk being written when the signal came.
    chunk = run_once.__kwdefaults__["chunk"]
    assert 0 < written < count and written - at_signal <= chunk
    with open_store("sqlite:///dripmail.db", project).connect() as conn:
        states = dict(
            conn.execute(
                select(deliveries.c.state, func.count()).group_by(deliveries.c.state)
            ).all()
        )
    assert states == {"sent": written, "planned": count - written}  # nothing left held
    rerun = _cli(project, "run", "--now", now.isoformat(), "-q")
    assert rerun.returncode == 0, rerun.stderr
    keys = Counter(x["key"] for x in _index(project))
    assert len(keys) == count and set(keys.values()) == {1}


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_resend_scheduled_sends_between_requests(
    project: Path, fake_providers, stop
) -> None:
    """Readers who joined now get lesson 1 scheduled at Resend, one request each at two a
    second (the loopback fake, Resend's default pacing): the pass would take 20 s. Ctrl-C
    (or SIGTERM) after the third request: the requests out are answered and recorded, no
    other goes out, "stopped", exit 130; the lessons not sent are back in the queue due at
    once with no error, and the next run schedules each of them once."""
    env = {
        **os.environ,
        "DRIPMAIL_PROVIDER": "resend",
        "RESEND_API_KEY": fake_providers.RESEND_KEY,
        "DRIPMAIL_RESEND_BASE_URL": fake_providers.base("resend"),
        "DRIPMAIL_SECRET_KEY": "a-test-secret-that-is-long-enough",
        "DRIPMAIL_PUBLIC_URL": "https://join.studio.example.com",
    }
    count = 40
    lines = ["email,first_name,timezone"] + [
        f"p{i}@example.org,P{i},Europe/Berlin" for i in range(count)
    ]
    (project / "people.csv").write_text("\n".join(lines) + "\n")
    added = run_cli(project, "subscribers", "import", "people.csv", env=env)  # the real clock
    assert added.returncode == 0 and f"added {count}" in added.stdout, added.stderr
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "send.py"), "--root", str(project), "run", "-q"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if fake_providers.send_requests["resend"] >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be stopped: raise `count`"
    proc.send_signal(stop)
    out, err = _stop(proc)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    scheduled = {r.key: r.provider_id for r in fake_providers.accepted("resend", "scheduled")}
    assert 3 <= len(scheduled) < count  # what was on the wire, nothing after the stop
    assert out.splitlines()[-1] == (
        f"stopped: {len(scheduled)} lessons handed over and recorded in this pass; the rest go "
        "out when you run the same command again (nobody gets a lesson twice)"
    )
    with open_store("sqlite:///dripmail.db", project).connect() as conn:
        rows = conn.execute(select(deliveries).where(deliveries.c.lesson_day == 1)).mappings()
        day_one = {r["key"]: dict(r) for r in rows}
    assert {k: r["provider_message_id"] for k, r in day_one.items() if k in scheduled} == scheduled
    assert {day_one[k]["state"] for k in scheduled} == {"handed"}
    back = [r for k, r in day_one.items() if k not in scheduled]
    assert len(back) == count - len(scheduled)
    assert all(r["state"] == "planned" and r["claimed_by"] is None for r in back)
    assert all(r["next_attempt_at"] is None and r["last_error"] is None for r in back)
    # The rest at once (an explicit rate replaces Resend's default pacing).
    rerun = run_cli(project, "run", "-q", env={**env, "DRIPMAIL_RATE_PER_SECOND": "1000"})
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    keys = Counter(fake_providers.keys("resend"))
    assert set(keys.values()) == {1}  # nobody got anything twice
    assert set(day_one) <= set(keys)


def test_db_upgrade_reports_the_database(tmp_path: Path) -> None:
    out = _cli(tmp_path, "db", "upgrade")
    assert out.returncode == 0 and "up to date" in out.stdout
    assert (tmp_path / "dripmail.db").exists()


# How long a stopped loop may take to end on a loaded machine (a slow stop is not a wrong
# one); under the test's own timeout below, so a real hang fails with every thread's stack.
STOP_WAIT = 400


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for `proc` to end (generously: a loaded machine is slow, never wrong); if it does
    not, its threads' stacks (faulthandler, on SIGABRT) are returned in stderr."""
    try:
        return proc.communicate(timeout=STOP_WAIT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate()
        return out, f"still running {STOP_WAIT} s after the stop signal:\n" + err


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("stop", "inherited"),
    [
        (signal.SIGINT, signal.SIG_DFL),
        (signal.SIGTERM, signal.SIG_DFL),
        (signal.SIGINT, signal.SIG_IGN),
    ],
    ids=["ctrl-c", "sigterm", "kill-int-to-a-background-job"],
)
def test_run_loop_sends_what_is_due_then_sleeps_until_stopped(
    project: Path, stop: signal.Signals, inherited: signal.Handlers
) -> None:
    """Ctrl-C, or SIGTERM as a service manager sends it, ends the loop cleanly (exit 130,
    the README's code for a stop). So does `kill -INT` to a job a script started in the
    background (`dripmail run --loop > out 2>&1 &`), which inherits SIGINT ignored: it was
    ignored. Stopped while it sleeps, the loop says the pass it stopped handed over nothing
    (the lesson the first pass sent was said by that pass's line)."""
    from datetime import UTC, datetime, timedelta

    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    added = _cli(
        project, "subscribers", "add", "loop@example.org", "--timezone", "UTC", "--start", yesterday
    )
    assert added.returncode == 0, added.stderr
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "send.py"), "--root", str(project), "run", "--loop", "-q"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A stuck process prints every thread's stack on SIGABRT (see `_stop`).
        env={**os.environ, "PYTHONFAULTHANDLER": "1", "PYTHONUNBUFFERED": "1"},
        # SIG_DFL: Ctrl-C as a terminal delivers it (a suite started in the background
        # inherits SIGINT ignored); SIG_IGN: as a script's background job starts.
        preexec_fn=lambda: signal.signal(signal.SIGINT, inherited),
    )
    # Readiness, not a clock: the first pass has printed its report line, so it is over and
    # the loop goes on (sleeping, or checking again) until it is stopped.
    first = proc.stdout.readline() if proc.stdout else ""
    assert "1 sent" in first, first + _stop(proc)[1]
    assert proc.poll() is None, "the loop should keep running"
    proc.send_signal(stop)
    out, err = _stop(proc)
    out = first + out
    assert proc.returncode == 130, err
    assert "1 sent" in out and "Traceback" not in err
    assert out.splitlines()[-1].startswith(
        "stopped: 0 lessons handed over and recorded in this pass"
    ), out
    assert [x["ref"] for x in _index(project)] == ["1"]


def test_run_loop_with_a_held_lesson_sleeps_a_full_minute_and_prints_no_empty_passes(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime, timedelta

    import dripmail.cli.engine_cmds as engine_cmds

    # Started eight days ago: every lesson is overdue. The first pass sends lesson 1; lesson 2
    # is held to tomorrow 07:00 UTC by the one-lesson-per-local-day rule, at least 7 h away.
    start = (datetime.now(UTC) - timedelta(days=8)).date().isoformat()
    added = _cli(
        project, "subscribers", "add", "held@example.org", "--timezone", "UTC", "--start", start
    )
    assert added.returncode == 0, added.stderr
    naps: list[float] = []

    class Clock:
        """The loop's sleep, recorded; Ctrl-C on the fourth (the loop's own way out)."""

        @staticmethod
        def sleep(seconds: float) -> None:
            naps.append(seconds)
            if len(naps) == 4:
                raise KeyboardInterrupt

    monkeypatch.setattr(engine_cmds, "wallclock", Clock)
    out = _cli(project, "run", "--loop", "-q")
    assert out.returncode == 130, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and "1 sent" in lines[0], lines
    assert lines[1].startswith("stopped: 0 lessons handed over and recorded in this pass"), lines
    assert naps == [60.0] * 4  # the longest nap, not 1 s at a time until tomorrow
    assert [x["ref"] for x in _index(project)] == ["1"]


def test_a_stopped_loop_exits_130_even_after_a_pass_that_needed_attention(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue: a loop whose earlier pass needed attention (here: the provider could not be
    reached) exited 3 when stopped, hours later; a stop is 130, as documented."""
    import dripmail.cli.engine_cmds as engine_cmds

    _import(project, 2)

    class Clock:
        """The loop's first sleep is interrupted, as Ctrl-C would."""

        @staticmethod
        def sleep(seconds: float) -> None:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine_cmds, "wallclock", Clock)
    with socket.socket() as dead:  # bound, never listening: connections are refused
        dead.bind(("127.0.0.1", 0))
        env = {
            "DRIPMAIL_PROVIDER": "postmark",
            "POSTMARK_SERVER_TOKEN": "test-token",
            "DRIPMAIL_POSTMARK_BASE_URL": f"http://127.0.0.1:{dead.getsockname()[1]}",
            "DRIPMAIL_SECRET_KEY": "a-test-secret-that-is-long-enough",
            "DRIPMAIL_PUBLIC_URL": "https://join.studio.example.com",
        }
        out = _cli(project, "run", "--loop", "-q", env=env)
    assert "2 lessons wait for the next run" in out.stderr  # the pass needed attention
    assert out.returncode == 130, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1].startswith("stopped: ")


def _env_without_forced_terminal() -> dict[str, str]:
    """This environment without rich's overrides of "is a terminal" (FORCE_COLOR,
    TTY_COMPATIBLE), so each stream counts as a terminal exactly when it is one."""
    return {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}


def test_run_piped_prints_its_summary_alone_and_the_bar_only_on_a_terminal_stderr(
    project: Path,
) -> None:
    """Issue: `run | cat` (or cron writing to a file) got the progress bar's last frame on
    stdout before the summary. Piped, stdout holds the summary alone and stderr no bar;
    with stderr on a terminal the bar is drawn there, and stdout still holds the summary."""
    _import(project, 60)  # above the 50 lessons from which `run` shows a bar
    argv = [sys.executable, str(REPO / "send.py"), "--root", str(project), "run", "--now"]
    env = _env_without_forced_terminal()
    piped = subprocess.run(
        [*argv, "2026-06-02T05:30:00+00:00"],  # lesson 1, 07:30 in Berlin
        capture_output=True,
        text=True,
        cwd=project,
        stdin=subprocess.DEVNULL,
        env=env,
        timeout=300,
    )
    assert piped.returncode == 0, piped.stderr
    summary = "2026-06-02 05:30 UTC: 60 sent, 0 scheduled at the provider\n"
    assert piped.stdout == summary, repr(piped.stdout)
    assert "sending lessons" not in piped.stderr, piped.stderr
    lesson_2 = [*argv, "2026-06-03T05:30:00+00:00"]
    code, stdout, terminal = run_with_stderr_on_a_terminal(lesson_2, cwd=project, env=env)
    assert code == 0, terminal
    assert stdout == summary.replace("06-02", "06-03"), repr(stdout)
    assert "sending lessons" in terminal and "60/60" in terminal, terminal


def test_run_with_a_provider_it_cannot_reach_says_why_and_exits_3(project: Path) -> None:
    """Issue: a provider that refused connections left every lesson "to retry later" with
    exit 0 and no reason, so cron saw success. The reason is printed, exit 3 (attention)."""
    _import(project, 3)
    with socket.socket() as dead:  # bound, never listening: connections are refused
        dead.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{dead.getsockname()[1]}"
        env = {
            "DRIPMAIL_PROVIDER": "postmark",
            "POSTMARK_SERVER_TOKEN": "test-token",
            "DRIPMAIL_POSTMARK_BASE_URL": base,
            "DRIPMAIL_SECRET_KEY": "a-test-secret-that-is-long-enough",
            "DRIPMAIL_PUBLIC_URL": "https://join.studio.example.com",
        }
        out = _cli(project, "run", "--now", "2026-06-02T05:30:00+00:00", "--yes", "-q", env=env)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "0 sent" in out.stdout and "3 to retry later" in out.stdout
    assert (
        f"3 lessons wait for the next run: the provider at {base} could not be reached "
        "(connection refused)" in out.stderr.splitlines()
    )
    assert "Traceback" not in out.stderr


def test_run_summary_adds_up_when_lessons_were_recovered_after_a_crash(project: Path) -> None:
    """Issue: lessons a crash left in flight were counted in "sent" and again in "recovered",
    so the parts added up to more than was handled. They are now said as "of them"."""
    from sqlalchemy import update

    _import(project, 4)
    due = "2026-06-02T05:30:00+00:00"
    engine = open_store("sqlite:///dripmail.db", project)
    with engine.begin() as conn:
        # What a worker killed mid-call leaves: three lessons `sending`, its lease run out.
        conn.execute(
            update(deliveries)
            .where(deliveries.c.lesson_day == 1, deliveries.c.subscriber_id <= 3)
            .values(
                state="sending",
                batch_key="b-lost",
                attempts=1,
                claimed_by="elsewhere:1",
                lease_expires_at=deliveries.c.due_at,
                handed_at=deliveries.c.due_at,
            )
        )
    engine.dispose()
    out = _cli(project, "run", "--now", due, "-q")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == (
        "2026-06-02 05:30 UTC: 4 sent, 0 scheduled at the provider "
        "(4 lessons; 3 of them recovered after a crash)\n"
    )


def _postmark_env(fake) -> dict[str, str]:
    return {
        "DRIPMAIL_PROVIDER": "postmark",
        "POSTMARK_SERVER_TOKEN": fake.POSTMARK_TOKEN,
        "DRIPMAIL_POSTMARK_BASE_URL": fake.base("postmark"),
        "DRIPMAIL_SECRET_KEY": "a-test-secret-that-is-long-enough",
        "DRIPMAIL_PUBLIC_URL": "https://join.studio.example.com",
    }


def test_run_summary_adds_up_when_the_provider_suppresses_an_address(
    project: Path, fake_providers
) -> None:
    """Issue: a reader Postmark refused (406, inactive) was counted as failed and again as
    suppressed: "2 sent, 1 failed, 1 suppressed" for 3 lessons. Suppressions are addresses,
    said apart; the parts add up to the lessons."""
    _import(project, 3)
    fake_providers.reject("p1@example.org")
    env = _postmark_env(fake_providers)
    out = _cli(project, "run", "--now", "2026-06-02T05:30:00+00:00", "--yes", "-q", env=env)
    assert out.returncode == 3, out.stdout + out.stderr
    assert out.stdout.splitlines()[0] == (
        "2026-06-02 05:30 UTC: 2 sent, 0 scheduled at the provider, 1 failed (1 address suppressed)"
    ), out.stdout


@pytest.mark.parametrize(
    ("fault", "code"), [("503", 3), ("429", 0)], ids=["5xx-every-attempt", "rate-limited"]
)
def test_run_exits_3_when_the_provider_took_none_of_the_lessons(
    project: Path, fake_providers, fault: str, code: int
) -> None:
    """Issue: Postmark answering 503 to every attempt left the lessons waiting with exit 0,
    while a refused connection, the same summary, exited 3. The rule: exit 3 when the
    provider took none of a pass's lessons for a reason other than a rate limit; a 429
    pause passes by itself (exit 0), like a pass where some went out."""
    _import(project, 3)
    fake_providers.chaos("postmark", 1.0, (fault,))
    env = _postmark_env(fake_providers)
    out = _cli(project, "run", "--now", "2026-06-02T05:30:00+00:00", "--yes", "-q", env=env)
    assert out.returncode == code, out.stdout + out.stderr
    assert "0 sent" in out.stdout and "3 to retry later" in out.stdout, out.stdout
    assert f"3 lessons wait for the next run: HTTP {fault}" in out.stderr, out.stderr
    assert not fake_providers.accepted("postmark")
    # Status says they wait for their retry, and when; not for the day rule (it did).
    store = open_store("sqlite:///dripmail.db", project)
    line = stats.collect(
        store, now=datetime(2026, 6, 2, 5, 31, tzinfo=UTC), send_time=dt_time(7)
    ).next_due_line()
    store.dispose()
    assert "3 lesson(s) wait to be tried again after a provider error, the first at" in line
    assert "per local day" not in line, line
    # The provider is back: a pass where some (here all) go out is 0.
    fake_providers.calm()
    again = _cli(project, "run", "--now", "2026-06-02T09:00:00+00:00", "--yes", "-q", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "3 sent" in again.stdout, again.stdout
