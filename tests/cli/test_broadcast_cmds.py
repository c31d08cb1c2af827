"""`broadcast` and `broadcasts ...` through the entry point (in process), and as real
subprocesses where the process matters: a SIGKILL midway, a prompt on a terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dripmail.store.db import open_store
from dripmail.store.schema import broadcast_deliveries, broadcasts
from dripmail.store.schema import subscribers as subscribers_table
from tests.broadcast_fixture import eligible_emails, insert_sent_to_nobody, seed
from tests.cli_in_process import run_cli
from tests.course_fixture import copy_real_project, make_project
from tests.terminal import read_to_end, read_until, run_with_stderr_on_a_terminal

REPO = Path(__file__).resolve().parents[2]
ISSUE = "---\nsubject: Hips at the desk\npreheader: Three habits for long days\n---\nHello.\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = make_project(tmp_path)
    (root / "newsletters").mkdir()
    (root / "newsletters" / "hips.md").write_text(ISSUE)
    return root


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIPMAIL_", "POSTMARK_"))}
    return {**env, **extra}


def _postmark_env(fake) -> dict[str, str]:
    return _env(
        DRIPMAIL_PROVIDER="postmark",
        POSTMARK_SERVER_TOKEN=fake.POSTMARK_TOKEN,
        DRIPMAIL_POSTMARK_BASE_URL=fake.base("postmark"),
        DRIPMAIL_SECRET_KEY="a-test-secret-that-is-long-enough",
        DRIPMAIL_PUBLIC_URL="https://join.studio.example.com",
        # An explicit rate replaces Postmark's default 10 requests/s, so looking up the
        # copies a killed run left in flight takes seconds, not minutes.
        DRIPMAIL_RATE_PER_SECOND="3000",
    )


def _argv(root: Path, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "send.py"), "--root", str(root), *args]


def _cli(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """The command in process (no terminal on stdin; settings from `env` alone)."""
    return run_cli(root, *args, env=env or _env())


def _subprocess(
    root: Path, *args: str, env: dict | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _argv(root, *args),
        capture_output=True,
        text=True,
        cwd=root,
        stdin=subprocess.DEVNULL,
        env=env or _env(),
        timeout=300,
    )


def _outbox(root: Path) -> Counter:
    """Copies in the outbox per address. Read while a broadcast may be appending a batch's
    lines: a line without its newline yet is not counted (nor parsed half-written)."""
    path = root / "outbox" / "index.jsonl"
    data = path.read_bytes() if path.exists() else b""
    complete = data[: data.rfind(b"\n") + 1]
    return Counter(json.loads(x)["to"] for x in complete.splitlines())


def _count(root: Path, table) -> int:
    with open_store("sqlite:///dripmail.db", root).connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_large_send_needs_yes_when_not_interactive_and_dry_run_writes_nothing(
    root: Path,
) -> None:
    seed(open_store("sqlite:///dripmail.db", root), 200)
    out = _cli(root, "broadcast", "newsletters/hips.md")
    assert out.returncode == 1 and "above DRIPMAIL_CONFIRM_THRESHOLD (100)" in out.stderr
    assert "re-run with --yes" in out.stderr and "Traceback" not in out.stderr
    dry = _cli(root, "broadcast", "newsletters/hips.md", "--dry-run")
    assert dry.returncode == 0 and "160 recipient(s)" in dry.stdout
    assert "P0 <p0@example.org>" in dry.stdout and "nothing was written" in dry.stdout
    assert not _outbox(root) and _count(root, broadcasts) == 0


def test_answering_no_at_the_prompt_sends_nothing(root: Path) -> None:
    seed(open_store("sqlite:///dripmail.db", root), 200)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        _argv(root, "broadcast", "newsletters/hips.md"),
        stdin=follower,
        stdout=follower,
        stderr=follower,
        cwd=root,
        env=_env(),
    )
    os.close(follower)
    seen = read_until(leader, b"Send it to 160 subscribers?")
    os.write(leader, b"n\n")
    assert proc.wait(timeout=300) == 1
    said = (seen + read_to_end(leader)).decode()
    assert "nothing was sent" in said and "Aborted" not in said, said
    assert not _outbox(root) and _count(root, broadcast_deliveries) == 0


# A broadcast of several chunks (4,000 subscribers, 3,200 eligible): long enough to be stopped
# midway on any machine.
BIG_LIST = 4000


@pytest.fixture
def big_list(root: Path) -> set[str]:
    """`root` with `BIG_LIST` subscribers; returns the addresses a broadcast goes to."""
    seed(open_store("sqlite:///dripmail.db", root), BIG_LIST)
    return eligible_emails(BIG_LIST)


@pytest.fixture
def volume_fake() -> Iterator:
    """The loopback fake without its contract check, for trials of thousands of copies.

    Checking every 500-message batch against Postmark's OpenAPI file is most of such a
    trial's time (about 10 of 19 s for the kill trial). What these trials test is what a kill
    or a stop leaves behind; every request kind they make (batch sends, the lookups of a
    re-run) is checked against the contract by tests/providers/ and tests/test_broadcast.py,
    which keep the checking fake.
    """
    from fakes.provider_server import FakeProviders

    with FakeProviders(validate=False) as fake:
        yield fake


def _broadcast_until(
    root: Path,
    env: dict[str, str],
    reached: Callable[[], bool],
    pipe: bool = False,
    sigint: signal.Handlers = signal.SIG_DFL,
) -> subprocess.Popen[str]:
    """`broadcast --yes -q` as a real process, returned once `reached()` holds (looked at
    every 10 ms, for two minutes at most) and still running: ready to be stopped. `sigint`:
    how it starts with SIGINT (SIG_IGN: as a script's background job `broadcast ... &`)."""
    out = subprocess.PIPE if pipe else subprocess.DEVNULL
    proc = subprocess.Popen(
        _argv(root, "broadcast", "newsletters/hips.md", "--yes", "-q"),
        cwd=root,
        env=env,
        stdout=out,
        stderr=out,
        text=True,
        # SIG_DFL: Ctrl-C as from a terminal (a suite started in the background, `cmd &` in a
        # script as CI runners may do, passes SIGINT on ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not reached():
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be stopped: raise BIG_LIST"
    return proc


def _copies(root: Path, provider: str, fake) -> Callable[[], Counter]:
    """Copies received so far per address: by the fake Postmark, or in the outbox."""
    if provider == "outbox":
        return lambda: _outbox(root)
    return lambda: Counter(a.to for a in fake.accepted("postmark"))


@pytest.mark.slow  # 4,000 subscribers (3,200 eligible) through the validating fake
def test_killed_broadcast_resumes_and_each_reader_gets_one_copy(
    root: Path, big_list: set[str], volume_fake
) -> None:
    # Killed once 1,500 copies are accepted: the second chunk of 1,000 is in flight then.
    fake_providers = volume_fake
    env = _postmark_env(fake_providers)
    proc = _broadcast_until(root, env, lambda: fake_providers.count("postmark") >= 1500)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(fake_providers.accepted("postmark"))
    assert 0 < before < len(big_list)
    # Run it again at once: the dead process's claims are taken over (same host, pid gone),
    # batches it had in flight are looked up at the provider, the rest is sent. In process:
    # the kill is what needs a process of its own, not the re-run.
    again = _cli(root, "broadcast", "newsletters/hips.md", "--yes", "-q", env=env)
    assert again.returncode == 0, again.stderr
    # Copies the kill left in flight are among those accepted, said as "of these" (the
    # summary's parts add up), never as one more count beside them.
    summary = again.stdout.splitlines()[-1]
    assert ", recovered" not in summary and not re.search(r", \d+ recovered", summary), summary
    if "recovered" in summary:
        assert re.search(r"\(\d+ of these recovered after a crash\)$", summary), summary
    accepted = fake_providers.accepted("postmark")
    assert Counter(a.to for a in accepted) == Counter(dict.fromkeys(big_list, 1))
    assert len({a.key for a in accepted}) == len(accepted)
    with open_store("sqlite:///dripmail.db", root).connect() as conn:
        rows = conn.execute(select(broadcast_deliveries.c.state, broadcast_deliveries.c.attempts))
        states = Counter((state, attempts) for state, attempts in rows)
    # Every copy recorded as sent; a second attempt only for a batch the kill left in flight
    # that the provider did not have (at most one chunk), never a second copy.
    assert sum(n for (state, _), n in states.items() if state == "sent") == len(big_list)
    assert set(a for _, a in states) <= {1, 2} and states.get(("sent", 2), 0) <= 1000
    shown = _cli(root, "broadcasts", "show", "1", env=env)
    assert f"accepted{len(big_list):>11}" in shown.stdout and "sent" in shown.stdout


# Each signal and each kind of provider once: Ctrl-C at a terminal into the quick start's
# outbox, SIGTERM (systemd, docker stop) to an HTTP provider. After its handler both take the
# same path, so the other two pairings would cost the suite ~20 s and test nothing more. And
# `kill -INT` to a broadcast a script started in the background (SIGINT inherited ignored).
@pytest.mark.slow  # 4,000 subscribers (3,200 eligible), through the fake or into the outbox
@pytest.mark.parametrize(
    ("stop", "provider", "sigint"),
    [
        (signal.SIGINT, "outbox", signal.SIG_DFL),
        (signal.SIGTERM, "postmark", signal.SIG_DFL),
        (signal.SIGINT, "postmark", signal.SIG_IGN),
    ],
    ids=["ctrl-c-outbox", "sigterm-postmark", "kill-int-to-a-background-job-postmark"],
)
def test_ctrl_c_stops_a_broadcast_after_the_chunk_at_the_provider(
    root: Path,
    big_list: set[str],
    request: pytest.FixtureRequest,
    provider: str,
    stop,
    sigint: signal.Handlers,
) -> None:
    """A whole broadcast is one call on the provider loop: Ctrl-C (or SIGTERM, as systemd
    sends it, or `kill -INT` to a background job, which starts with SIGINT ignored) must
    stop it at the next chunk, not after the last reader, whatever the provider (the
    outbox, the quick start's default, writes the chunk's files itself). The chunk at the
    provider is recorded, the one prepared meanwhile goes back to the queue, and the next
    run sends the rest once."""
    from dripmail.broadcast import CHUNK

    fake = request.getfixturevalue("volume_fake") if provider == "postmark" else None
    env = _postmark_env(fake) if fake else _env()
    copies = _copies(root, provider, fake)
    # Stopped within the first chunk: its first batch is at the provider (or being written).
    proc = _broadcast_until(
        root, env, lambda: sum(copies().values()) >= 300, pipe=True, sigint=sigint
    )
    proc.send_signal(stop)
    at_signal = sum(copies().values())
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    stopped_at = sum(copies().values())
    # Soon: no more than the rest of the chunk that was at the provider went out.
    assert 0 < stopped_at < len(big_list) and stopped_at - at_signal <= CHUNK
    # It says it stopped, as `run` does, and what remains (one line, no traceback).
    assert out.splitlines()[-1] == (
        f"stopped: {stopped_at} of about {len(big_list)} copies accepted so far; the rest go"
        " out when you run the same command again (nobody gets a second copy)"
    )
    assert "Traceback" not in err
    with open_store("sqlite:///dripmail.db", root).connect() as conn:
        rows = conn.execute(select(broadcast_deliveries.c.state, broadcast_deliveries.c.claimed_by))
        states = Counter(state for state, _ in rows)
    # Nothing left in flight or held: what went out is recorded, the rest is in the queue.
    assert states["sent"] == stopped_at and set(states) <= {"sent", "planned"}
    # `broadcasts show` says this stop, not a reason kept from an earlier one, and that
    # running it again sends the rest (nothing to fix).
    shown = _cli(root, "broadcasts", "show", "1", env=env).stdout
    assert "UTC: interrupted by Ctrl-C or SIGTERM\n" in shown, shown
    assert "again sends the rest: it continues where it stopped" in shown
    assert "fix what it names" not in shown
    again = _cli(root, "broadcast", "newsletters/hips.md", "--yes", "-q", env=env)  # in process
    assert again.returncode == 0, again.stderr
    assert copies() == Counter(dict.fromkeys(big_list, 1))
    assert "interrupted" not in _cli(root, "broadcasts", "show", "1", env=env).stdout


def test_a_dry_run_shows_a_reader_without_a_name_by_address_alone(root: Path) -> None:
    engine = open_store("sqlite:///dripmail.db", root)
    seed(engine, 1)
    with engine.begin() as conn:
        conn.execute(subscribers_table.update().values(first_name=""))
    engine.dispose()
    out = _cli(root, "broadcast", "newsletters/hips.md", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "  e.g. p0@example.org (no name)\n" in out.stdout


def test_show_says_why_copies_failed_and_stored_text_cannot_break_the_terminal(
    root: Path,
) -> None:
    engine = open_store("sqlite:///dripmail.db", root)
    seed(engine, 6)
    with engine.begin() as conn:
        # Stored by an older version: a line break and a terminal escape in a name.
        conn.execute(
            subscribers_table.update()
            .where(subscribers_table.c.email == "p5@example.org")
            .values(first_name="Zo\u00eb\u2028\x1b[31mx")
        )
    engine.dispose()

    sent = _cli(root, "broadcast", "newsletters/hips.md", "--yes")
    assert sent.returncode == 3, sent.stderr  # some copies failed
    assert "\x1b" not in sent.stdout and "\u2028" not in sent.stdout
    assert "e.g. Zo\u00eb\\u2028\\u001b[31mx <p5@example.org>" in sent.stdout

    shown = _cli(root, "broadcasts", "show", "1")
    assert shown.returncode == 0, shown.stderr
    assert "why copies failed or wait for review (1):" in shown.stdout
    failure = next(line for line in shown.stdout.splitlines() if line.startswith("    failed"))
    assert "line break (U+2028)" in failure and "p5@example.org" in failure


def test_a_schedule_already_past_is_refused_not_sent_at_once(root: Path) -> None:
    """A year typo (2025 for 2026) must not mail everyone on the spot."""
    seed(open_store("sqlite:///dripmail.db", root), 3)
    args = ("broadcast", "newsletters/hips.md", "--now", "2026-12-01T09:00Z")
    out = _cli(root, *args, "--schedule", "2025-12-01T08:00Z")
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr == (
        "error: --schedule 2025-12-01 08:00 UTC is in the past (it is 2026-12-01 09:00 UTC): "
        "give a later time, or leave --schedule out to send now\n"
    )
    assert not _outbox(root) and _count(root, broadcasts) == 0


def test_rescheduling_without_segment_never_changes_who_gets_it(root: Path) -> None:
    seed(open_store("sqlite:///dripmail.db", root), 10)  # desk: p0, p6, p9 (and p3: no news)
    first = ("broadcast", "newsletters/hips.md", "--schedule")
    assert _cli(root, *first, "2099-01-01T09:00Z", "--segment", "tag:desk").returncode == 0
    moved = _cli(root, *first, "2099-01-02T09:00Z")
    assert moved.returncode == 1
    assert moved.stderr == (
        "error: hips.md (broadcast 1) is scheduled for segment tag:desk, the file says all: "
        "give --segment tag:desk to keep it, or --segment all to change it\n"
    )
    kept = _cli(root, *first, "2099-01-02T09:00Z", "--segment", "tag:desk")
    assert kept.returncode == 0, kept.stderr
    assert "to segment tag:desk: 3 recipient(s)" in kept.stdout
    assert _cli(root, "run", "--now", "2099-01-02T09:05Z", "-q").returncode == 0
    assert set(_outbox(root)) == {"p0@example.org", "p6@example.org", "p9@example.org"}


def test_a_dry_run_says_a_due_broadcast_would_not_be_sent_when_its_file_is_broken(
    root: Path,
) -> None:
    """The dry run said the broadcast would go out; the real run then refused its file."""
    seed(open_store("sqlite:///dripmail.db", root), 10)
    issue = root / "newsletters" / "hips.md"
    scheduled = _cli(root, "broadcast", "newsletters/hips.md", "--schedule", "2099-01-01T09:00Z")
    assert scheduled.returncode == 0, scheduled.stderr
    issue.write_text(ISSUE.replace("preheader:", "segmnt: tag:desk\npreheader:"))
    dry = _cli(root, "run", "--now", "2099-01-01T09:05Z", "--dry-run")
    line = next(x for x in dry.stdout.splitlines() if "scheduled broadcast 1" in x)
    assert line.startswith("and scheduled broadcast 1 (hips) would not be sent: ")
    assert "segmnt: unknown field (did you mean 'segment'?)" in line
    real = _cli(root, "run", "--now", "2099-01-01T09:05Z", "-q")
    assert real.returncode == 3 and "scheduled broadcast 1 not sent: " in real.stdout
    assert not _outbox(root)


def test_a_file_whose_segment_changed_after_scheduling_is_not_sent_to_either(
    root: Path,
) -> None:
    """Scheduled for everyone, then the file narrowed to tag:desk: `run` sent it to everyone
    (the stored segment). An explicit --segment over an unchanged file still wins (the
    rescheduling test above)."""
    seed(open_store("sqlite:///dripmail.db", root), 10)  # desk: p0, p6, p9
    issue = root / "newsletters" / "hips.md"
    issue.write_text(ISSUE.replace("preheader:", "segment: all\npreheader:"))
    schedule = ("broadcast", "newsletters/hips.md", "--schedule", "2099-01-01T09:00Z")
    assert _cli(root, *schedule).returncode == 0
    issue.write_text(ISSUE.replace("preheader:", "segment: tag:desk\npreheader:"))
    why = (
        "newsletters/hips.md now says segment tag:desk (it said all when scheduled for all): "
        "schedule it again with --segment tag:desk or --segment all"
    )
    dry = _cli(root, "run", "--now", "2099-01-01T09:05Z", "--dry-run")
    assert f"and scheduled broadcast 1 (hips) would not be sent: {why}\n" in dry.stdout
    real = _cli(root, "run", "--now", "2099-01-01T09:05Z", "-q")
    assert real.returncode == 3 and why in real.stdout, real.stdout + real.stderr
    assert not _outbox(root)
    again = _cli(root, *schedule[:3], "2099-01-02T09:00Z", "--segment", "tag:desk")
    assert again.returncode == 0, again.stderr
    assert _cli(root, "run", "--now", "2099-01-02T09:05Z", "-q").returncode == 0
    assert set(_outbox(root)) == {"p0@example.org", "p6@example.org", "p9@example.org"}


def test_schedule_run_then_list_and_show(root: Path) -> None:
    seed(open_store("sqlite:///dripmail.db", root), 10)
    out = _cli(root, "broadcast", "newsletters/hips.md", "--schedule", "2099-01-01T09:00+00:00")
    assert out.returncode == 0 and "scheduled for 2099-01-01 09:00 UTC" in out.stdout
    early = _cli(root, "run", "--now", "2099-01-01T08:00Z", "-q")
    assert early.returncode == 0 and not _outbox(root)
    # A dry run at the time shows the broadcast a real run then sends, and sends nothing.
    dry = _cli(root, "run", "--now", "2099-01-01T09:05Z", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "and scheduled broadcast 1 (hips) to segment all: 8 recipient(s)\n" in dry.stdout
    assert dry.stdout.endswith("nothing was written\n") and not _outbox(root)
    due = _cli(root, "run", "--now", "2099-01-01T09:05Z", "-q")
    assert due.returncode == 0, due.stderr
    assert set(_outbox(root)) == eligible_emails(10) and set(_outbox(root).values()) == {1}
    assert "broadcast 1 (hips): 8 of 8 accepted" in due.stdout
    listed = _cli(root, "broadcasts", "list")
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[1].split()[:3] == ["1", "sent", "hips"]
    shown = _cli(root, "broadcasts", "show", "hips")
    for line in ("recipients", "accepted", "failed", "bounced", "opened", "clicked"):
        assert line in shown.stdout
    assert _cli(root, "run", "--now", "2099-01-02T09:05Z", "-q").returncode == 0
    assert set(_outbox(root).values()) == {1}


def test_a_broadcast_stopped_before_its_start_is_listed_as_not_started(root: Path) -> None:
    # What a kill in the broadcast's first second leaves: opened by hand, never started.
    from dripmail.app import Dripmail
    from dripmail.broadcast import open_broadcast
    from dripmail.config import Project, load_settings
    from dripmail.content import load_newsletter

    seed(open_store("sqlite:///dripmail.db", root), 10)
    project = Project(root)
    core = Dripmail(project, load_settings(root))
    issue = load_newsletter(project, root / "newsletters" / "hips.md")
    open_broadcast(core.engine, issue, "all", datetime.now(UTC))
    core.close()
    listed = _cli(root, "broadcasts", "list")
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[1].split()[:4] == ["1", "not", "started", "hips"]
    shown = _cli(root, "broadcasts", "show", "1")
    assert "(hips), not started" in shown.stdout and "broadcast FILE` starts it" in shown.stdout
    sent = _cli(root, "broadcast", "newsletters/hips.md", "--yes", "-q")
    assert sent.returncode == 0 and set(_outbox(root)) == eligible_emails(10)
    assert _cli(root, "broadcasts", "list").stdout.splitlines()[1].split()[1] == "sent"


def test_cancel_before_start_then_nothing_goes_out(root: Path) -> None:
    seed(open_store("sqlite:///dripmail.db", root), 10)
    _cli(root, "broadcast", "newsletters/hips.md", "--schedule", "2099-01-01T09:00")
    cancelled = _cli(root, "broadcasts", "cancel", "1")
    assert cancelled.returncode == 0 and "cancelled broadcast 1 (hips)" in cancelled.stdout
    assert _cli(root, "run", "--now", "2099-01-02T00:00Z", "-q").returncode == 0
    assert not _outbox(root)
    again = _cli(root, "broadcast", "newsletters/hips.md")
    assert again.returncode == 1 and "was cancelled" in again.stderr
    missing = _cli(root, "broadcasts", "show", "9")
    assert missing.returncode == 1 and "no broadcast 9" in missing.stderr


def test_scheduled_broadcast_goes_out_with_run_after_its_time(root: Path) -> None:
    seed(open_store("sqlite:///dripmail.db", root), 10)
    _cli(root, "broadcast", "newsletters/hips.md", "--schedule", "2099-01-01T09:00Z")
    early = _cli(root, "run", "--now", "2099-01-01T08:00Z")
    assert early.returncode == 0 and not _outbox(root)
    on_time = _cli(root, "run", "--now", "2099-01-01T09:05Z")
    assert on_time.returncode == 0, on_time.stderr
    assert "scheduled broadcast 1 (hips): 8 of 8 accepted" in on_time.stdout
    assert set(_outbox(root)) == eligible_emails(10)


def test_edited_after_start_is_one_line_error(root: Path) -> None:
    seed(open_store("sqlite:///dripmail.db", root), 10)
    assert _cli(root, "broadcast", "newsletters/hips.md").returncode == 0
    (root / "newsletters" / "hips.md").write_text(ISSUE.replace("Hello.", "Hello again."))
    out = _cli(root, "broadcast", "newsletters/hips.md")
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "hips.md (broadcast 1) was edited after it started sending" in out.stderr
    bad = _cli(root, "broadcast", "newsletters/hips.md", "--segment", "tag:")
    assert bad.returncode == 1 and "segment 'tag:'" in bad.stderr


def test_a_broadcast_to_nobody_is_refused_and_the_file_stays_usable(root: Path) -> None:
    """Issue: with nobody eligible (no one imported yet, a tag typo) a broadcast was marked
    sent for good: the same file later said "already sent", or was refused for the right
    segment. Now nothing is written; the later, correct command sends."""
    before = _cli(root, "broadcast", "newsletters/hips.md")
    assert before.returncode == 1 and len(before.stderr.strip().splitlines()) == 1
    assert "segment 'all' has no subscriber who can receive newsletters now" in before.stderr
    assert "nothing was started" in before.stderr and "add subscribers first" in before.stderr
    assert _count(root, broadcasts) == 0
    seed(open_store("sqlite:///dripmail.db", root), 30)
    typo = _cli(root, "broadcast", "newsletters/hips.md", "--segment", "tag:dsk")
    assert typo.returncode == 1 and "segment 'tag:dsk' has no subscriber" in typo.stderr
    assert "check the tag" in typo.stderr and _count(root, broadcasts) == 0
    dry = _cli(root, "broadcast", "newsletters/hips.md", "--segment", "tag:dsk", "--dry-run")
    assert dry.returncode == 0 and "warning: segment 'tag:dsk' has no subscriber" in dry.stderr
    later = _cli(root, "broadcast", "newsletters/hips.md", "--segment", "tag:desk", "--yes")
    assert later.returncode == 0, later.stderr
    desk = {f"p{i}@example.org" for i in range(30) if i % 3 == 0} & eligible_emails(30)
    assert set(_outbox(root)) == desk and set(_outbox(root).values()) == {1}


def test_scheduling_for_nobody_is_refused_and_a_due_one_that_finds_nobody_says_so(
    root: Path,
) -> None:
    refused = _cli(root, "broadcast", "newsletters/hips.md", "--schedule", "2099-01-01T09:00Z")
    assert refused.returncode == 1 and "has no subscriber" in refused.stderr
    assert _count(root, broadcasts) == 0
    # Scheduled while readers were there; by its time none is eligible any more.
    seed(open_store("sqlite:///dripmail.db", root), 10)
    _cli(root, "broadcast", "newsletters/hips.md", "--schedule", "2099-01-01T09:00Z")
    with open_store("sqlite:///dripmail.db", root).begin() as conn:
        conn.execute(subscribers_table.update().values(newsletters=False))
    due = _cli(root, "run", "--now", "2099-01-01T09:05Z", "-q")
    assert due.returncode == 3, due.stdout + due.stderr
    assert "scheduled broadcast 1 not sent: segment 'all' has no subscriber" in due.stdout
    shown = _cli(root, "broadcasts", "show", "1")
    assert "scheduled" in shown.stdout and not _outbox(root)


def test_run_loop_says_once_that_a_due_broadcast_finds_nobody_until_that_changes(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue: `run --loop` printed "scheduled broadcast 1 not sent: ... no subscriber ..."
    on every pass, once a minute, burying every other line. It is said once per broadcast,
    and the broadcast's own line comes when it can go out after all."""
    import dripmail.cli.engine_cmds as engine_cmds

    seed(open_store("sqlite:///dripmail.db", root), 10)
    _cli(root, "broadcast", "newsletters/hips.md", "--schedule", "2099-01-01T09:00Z")
    engine = open_store("sqlite:///dripmail.db", root)
    with engine.begin() as conn:  # its time has come, and nobody takes newsletters now
        conn.execute(broadcasts.update().values(scheduled_at=datetime(2026, 1, 1, tzinfo=UTC)))
        conn.execute(subscribers_table.update().values(newsletters=False))
    naps: list[float] = []

    class Clock:
        """The loop's sleep: readers opt in again after the second pass; Ctrl-C on the fifth."""

        @staticmethod
        def sleep(seconds: float) -> None:
            naps.append(seconds)
            if len(naps) == 2:
                with engine.begin() as conn:
                    conn.execute(subscribers_table.update().values(newsletters=True))
            if len(naps) == 5:
                raise KeyboardInterrupt

    monkeypatch.setattr(engine_cmds, "wallclock", Clock)
    out = _cli(root, "run", "--loop", "-q")
    lines = out.stdout.splitlines()
    nobody = [line for line in lines if line.startswith("scheduled broadcast 1 not sent:")]
    assert len(nobody) == 1 and "segment 'all' has no subscriber" in nobody[0], lines
    # Everyone active opted in again (the one who had never opted in, too: 9 readers).
    assert "scheduled broadcast 1 (hips): 9 of 9 accepted (9 now)" in lines
    assert lines[-1].startswith("stopped: ") and len(naps) == 5
    # A stop is 130, though an earlier pass needed attention (the broadcast found nobody).
    assert out.returncode == 130, out.stderr
    assert len(_outbox(root)) == 9 and set(_outbox(root).values()) == {1}


def test_a_piped_broadcast_prints_no_bar_and_a_terminal_stderr_gets_it(root: Path) -> None:
    """Issue: `broadcast ... | cat` (or to a log file) got the planning and sending bars'
    last frames on stdout among the summary lines. Piped, stdout holds the summary lines
    alone and stderr no bar; with stderr on a terminal the bars are drawn there."""
    seed(open_store("sqlite:///dripmail.db", root), 90)  # 72 copies: above BAR_FROM
    env = {k: v for k, v in _env().items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    piped = _subprocess(root, "broadcast", "newsletters/hips.md", "--yes", env=env)
    assert piped.returncode == 0, piped.stderr
    lines = piped.stdout.splitlines()
    assert lines[0] == "'Hips at the desk' to segment all: 72 recipient(s)", lines
    assert all(line.startswith("  e.g. P") for line in lines[1:-1]), lines
    assert lines[-1] == "broadcast 1 (hips): 72 of 72 accepted (72 now)", lines
    assert "planning" not in piped.stderr and "sending" not in piped.stderr, piped.stderr
    (root / "newsletters" / "later.md").write_text(ISSUE.replace("Hello.", "Later."))
    code, stdout, terminal = run_with_stderr_on_a_terminal(
        _argv(root, "broadcast", "newsletters/later.md", "--yes"), cwd=root, env=env
    )
    assert code == 0, terminal
    assert stdout.splitlines()[0] == lines[0] and stdout.splitlines()[1:-1] == lines[1:-1]
    assert stdout.splitlines()[-1] == "broadcast 2 (later): 72 of 72 accepted (72 now)"
    assert "planning" in terminal and "sending" in terminal and "72/72" in terminal, terminal


def test_a_provider_it_cannot_reach_is_named_and_exits_3(root: Path) -> None:
    """Issue: connection refused gave "0 of N accepted ... run the same command again later"
    with exit 0 and no reason. The reason is printed and the exit code says attention."""
    seed(open_store("sqlite:///dripmail.db", root), 30)
    with socket.socket() as dead:  # bound, never listening: connections are refused
        dead.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{dead.getsockname()[1]}"
        env = _env(
            DRIPMAIL_PROVIDER="postmark",
            POSTMARK_SERVER_TOKEN="test-token",
            DRIPMAIL_POSTMARK_BASE_URL=base,
            DRIPMAIL_SECRET_KEY="a-test-secret-that-is-long-enough",
            DRIPMAIL_PUBLIC_URL="https://join.studio.example.com",
        )
        out = _cli(root, "broadcast", "newsletters/hips.md", "--yes", "-q", env=env)
        # The same through `run`, for a scheduled broadcast whose time has come.
        (root / "newsletters" / "later.md").write_text(ISSUE.replace("Hello.", "Later."))
        _cli(root, "broadcast", "newsletters/later.md", "--schedule", "2099-01-01T09:00Z")
        due = _cli(root, "run", "--now", "2099-01-01T09:05Z", "--yes", "-q", env=env)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "0 of 24 accepted (0 now), 24 to retry later" in out.stdout
    # A sentence about the copies, with the reason in words: no "not sent: " cut out of a
    # message's error, no "could not reach ...: ...: ..." run of colons.
    unreached = f"the provider at {base} could not be reached (connection refused)"
    assert out.stderr.splitlines() == [
        f"24 copies were not sent this time: {unreached}; run the same command again later "
        "to send them"
    ]
    assert due.returncode == 3, due.stdout + due.stderr
    assert "scheduled broadcast 2 (later): 0 of 24 accepted" in due.stdout
    assert f"scheduled broadcast 2: {unreached}" in due.stdout.splitlines()


def test_a_broadcast_an_older_version_marked_sent_to_nobody_can_be_sent(root: Path) -> None:
    """Databases from before the fix above hold the burned row: `sent`, not one copy
    planned. Nobody got it, so the same file goes out (to the corrected segment)."""
    engine = open_store("sqlite:///dripmail.db", root)
    at = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    insert_sent_to_nobody(engine, at, "Hips at the desk", "from-an-older-text")
    seed(engine, 30)
    out = _cli(root, "broadcast", "newsletters/hips.md", "--segment", "tag:desk", "--yes")
    assert out.returncode == 0, out.stderr
    assert "already sent" not in out.stdout and "broadcast 1 (hips): 8 of 8 accepted" in out.stdout
    desk = {f"p{i}@example.org" for i in range(30) if i % 3 == 0} & eligible_emails(30)
    assert set(_outbox(root)) == desk and _count(root, broadcasts) == 1
    again = _cli(root, "broadcast", "newsletters/hips.md", "--segment", "tag:desk")
    assert again.returncode == 0 and "was already sent; nothing to do" in again.stdout


def test_a_broadcast_stopped_by_a_template_error_says_so_why_and_what_to_do(root: Path) -> None:
    """The template error stops the send with one line (exit 1) and the row keeps its status
    (re-running continues it); `broadcasts list/show` say it stopped, why and what to do,
    until a run after the fix sends it (once) and the stop is forgotten."""
    seed(open_store("sqlite:///dripmail.db", root), 10)
    template = root / "emails" / "newsletter.txt.j2"
    good = template.read_text()
    template.write_text(good + "\n{{ issue.subject | nosuchfilter }}\n")
    out = _cli(root, "broadcast", "newsletters/hips.md", "--yes", "-q")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "emails/newsletter.txt.j2" in out.stderr and not _outbox(root)
    listed = _cli(root, "broadcasts", "list").stdout.splitlines()
    assert listed[1].split()[:3] == ["1", "stopped", "hips"], listed
    assert listed[2].startswith("broadcast 1 stopped: ") and "newsletter.txt.j2" in listed[2]
    assert "broadcasts show 1` says how" in listed[2]
    shown = _cli(root, "broadcasts", "show", "1").stdout.splitlines()
    assert shown[0].endswith("(hips), stopped"), shown
    assert shown[1].startswith("  stopped ") and "emails/newsletter.txt.j2" in shown[1]
    assert shown[2].startswith("  fix what it names, then `")
    assert "broadcast newsletters/hips.md` again sends it: it continues" in shown[2]

    template.write_text(good)
    again = _cli(root, "broadcast", "newsletters/hips.md", "--yes", "-q")
    assert again.returncode == 0, again.stderr
    assert set(_outbox(root)) == eligible_emails(10) and set(_outbox(root).values()) == {1}
    shown = _cli(root, "broadcasts", "show", "1").stdout
    assert "(hips), sent" in shown and "stopped" not in shown


def test_a_scheduled_broadcast_stopped_by_a_template_error_is_shown_stopped(root: Path) -> None:
    seed(open_store("sqlite:///dripmail.db", root), 10)
    scheduled = _cli(root, "broadcast", "newsletters/hips.md", "--schedule", "2099-01-01T09:00Z")
    assert scheduled.returncode == 0, scheduled.stderr
    template = root / "emails" / "newsletter.txt.j2"
    good = template.read_text()
    template.write_text(good + "\n{% if %}\n")
    due = _cli(root, "run", "--now", "2099-01-01T09:05Z", "-q")
    assert due.returncode == 3 and "scheduled broadcast 1 not sent: " in due.stdout
    shown = _cli(root, "broadcasts", "show", "1").stdout.splitlines()
    assert shown[0].endswith("(hips), stopped"), shown
    assert shown[1].startswith("  stopped 2099-01-01 09:05 UTC: emails/newsletter.txt.j2")
    assert shown[2].startswith("  fix what it names, then the next `run` (it is scheduled) or `")
    template.write_text(good)
    assert _cli(root, "run", "--now", "2099-01-01T09:10Z", "-q").returncode == 0
    assert set(_outbox(root)) == eligible_emails(10)
    assert _cli(root, "broadcasts", "list").stdout.splitlines()[1].split()[1] == "sent"


def test_a_halted_broadcast_says_its_reason_once_in_list_and_show(
    root: Path, fake_providers
) -> None:
    """Postmark refuses every copy (an unconfirmed sender): the failure streak stops the
    broadcast. `broadcasts list` and `show` name the reason once, with their own advice."""
    seed(open_store("sqlite:///dripmail.db", root), 10)
    env = {**_postmark_env(fake_providers), "DRIPMAIL_HALT_AFTER_FAILURES": "3"}
    fake_providers.refuse_all("postmark", "The From address is not a confirmed signature")
    out = _cli(root, "broadcast", "newsletters/hips.md", "--yes", "-q", env=env)
    assert out.returncode != 0
    assert "in a row failed with the same reason" in out.stdout + out.stderr
    listed = [x for x in _cli(root, "broadcasts", "list", env=env).stdout.splitlines()]
    line = next(x for x in listed if x.startswith("broadcast 1 stopped: "))
    assert line.count("stopped") == 1 and "Fix the cause" not in line, line
    assert line.count("run it again") == 1 and "in a row failed with the same reason" in line
    shown = _cli(root, "broadcasts", "show", "1", env=env).stdout
    said = next(x for x in shown.splitlines() if x.startswith("  stopped 2"))
    assert said.count("stopped") == 1 and "Fix the cause" not in said, said
    assert re.search(r"UTC: \d+ deliveries in a row failed with the same reason", said), said
    # A reason stored by the version that kept it doubled is printed once too.
    engine = open_store("sqlite:///dripmail.db", root)
    with engine.begin() as conn:
        old = conn.execute(select(broadcasts.c.stopped_reason)).scalar_one()
        conn.execute(
            broadcasts.update().values(
                stopped_reason=f"stopped: {old}. Fix the cause and run again"
            )
        )
    engine.dispose()
    again = _cli(root, "broadcasts", "list", env=env).stdout
    assert next(x for x in again.splitlines() if x.startswith("broadcast 1 ")) == line


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        ("segment: all\n", "segmnt: tag:vip\n", "segmnt: unknown field (did you mean 'segment'?)"),
        (
            'preheader: "Why',
            'subject: "An older draft"\npreheader: "Why',
            "subject: written twice, on lines 2 and 3",
        ),
    ],
    ids=["misspelt-segment", "subject-twice"],
)
def test_a_newsletter_with_a_misspelt_or_doubled_key_is_refused_by_check_and_broadcast(
    tmp_path: Path, old: str, new: str, said: str
) -> None:
    """Tester's report: `segmnt: tag:vip` passed check and `broadcast --dry-run` targeted
    everyone (segment fell back to all); a second `subject:` sent the older draft. A
    broadcast cannot be recalled: both are errors in check and refuse the broadcast, the
    dry run included, and nothing is written."""
    root = copy_real_project(tmp_path)
    path = root / "newsletters" / "hips-at-the-desk.md"
    path.write_text(path.read_text().replace(old, new, 1))
    seed(open_store("sqlite:///dripmail.db", root), 30)
    check = _cli(root, "check")
    assert check.returncode == 1
    (error,) = [x for x in check.stderr.splitlines() if x.startswith("error:")]
    assert error.startswith("error: newsletters/hips-at-the-desk.md:") and said in error
    for extra in (["--dry-run"], ["--yes"]):
        out = _cli(root, "broadcast", "newsletters/hips-at-the-desk.md", *extra)
        assert out.returncode == 1 and said in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and "recipient(s)" not in out.stdout
    assert _count(root, broadcasts) == 0 and not _outbox(root)
