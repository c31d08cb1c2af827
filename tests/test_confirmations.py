"""The double opt-in email's crash window: a slot taken and never handed over is offered again.

A child process takes confirmation slots and is SIGKILLed at the worst moments: right after
the slot was committed and before the provider saw the email, and right after the provider
accepted it but before that was recorded. Then the door is called again (the import re-run,
a second sign-up, the `run` pass) and every reader has exactly one email, under one key.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from dripmail import subscribers as subs
from dripmail.app import Dripmail
from dripmail.config import Project, Settings
from dripmail.confirmations import LEASE, QUIET
from dripmail.store.db import open_store
from dripmail.store.schema import subscribers
from tests.course_fixture import make_project

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import datetime
    from dripmail.app import Dripmail
    from pathlib import Path
    from dripmail.config import Project, Settings

    root, work, url, when, mode, *ids = sys.argv[1:]
    now = datetime.fromisoformat(when)
    core = Dripmail(
        Project(Path(root)),
        Settings(_env_file=None, DRIPMAIL_DATABASE_URL=url,
                 DRIPMAIL_OUTBOX_DIR=f"{work}/outbox"),
        clock=lambda: now,
    )
    provider = core.provider
    real = provider.send_batch

    async def send_batch(messages, *args, **kwargs):
        if mode == "before":  # the slot is committed; the provider never sees the email
            os.kill(os.getpid(), signal.SIGKILL)
        results = await real(messages, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # accepted, but that is never recorded

    provider.send_batch = send_batch
    core.send_confirmations([int(i) for i in ids])
    """
)


def _url(work: Path) -> str:
    return os.environ.get("DRIPMAIL_CONFIRM_TEST_URL") or f"sqlite:///{work / 'app.db'}"


def _core(root: Path, work: Path, clock: datetime = NOW) -> Dripmail:
    values = {
        "DRIPMAIL_DATABASE_URL": _url(work),
        "DRIPMAIL_OUTBOX_DIR": str(work / "outbox"),
    }
    return Dripmail(
        Project(Path(root)),
        Settings(_env_file=None, **values),  # type: ignore[call-arg]
        clock=lambda: clock,
    )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def root(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A course project; the tests run on SQLite, and on PostgreSQL when one is configured
    (emptied first: each xdist worker has a schema of its own, see conftest)."""
    if request.param == "postgresql":
        url = os.environ.get("DRIPMAIL_TEST_DATABASE_URL")
        if not url:
            pytest.skip("DRIPMAIL_TEST_DATABASE_URL is not set (CI sets it; see README)")
        engine = open_store(url, tmp_path)
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE subscribers, deliveries, events, suppressions CASCADE"))
        engine.dispose()
        monkeypatch.setenv("DRIPMAIL_CONFIRM_TEST_URL", url)
    return make_project(tmp_path / "project")


def _pending(core: Dripmail, count: int) -> list[int]:
    ids = []
    for i in range(count):
        sid, _ = subs.add_subscriber(
            core.engine, f"p{i}@example.org", timezone="UTC", status="pending",
            consent_source="test", now=NOW,
        )  # fmt: skip
        ids.append(sid)
    return ids


def _killed_child(root: Path, work: Path, mode: str, ids: list[int]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(work), _url(work), NOW.isoformat(), mode]
        + [str(i) for i in ids],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _mailed(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "outbox").glob("confirm-*.eml"))


def _slots(core: Dripmail) -> dict[int, tuple]:
    with core.engine.connect() as conn:
        rows = conn.execute(
            select(
                subscribers.c.id,
                subscribers.c.confirm_count,
                subscribers.c.confirm_handed_at,
                subscribers.c.confirm_claimed_by,
            )
        )
        return {r.id: (r.confirm_count, r.confirm_handed_at, r.confirm_claimed_by) for r in rows}


@pytest.mark.parametrize("mode", ["before", "after"])
def test_a_kill_inside_the_hand_over_and_a_rerun_send_exactly_one_email_each(
    root: Path, tmp_path: Path, mode: str
) -> None:
    core = _core(root, tmp_path)
    ids = _pending(core, 3)
    _killed_child(root, tmp_path, mode, ids)
    # The slots are taken (the throttle counts them) but not handed over.
    for count, handed, holder in _slots(core).values():
        assert count == 1 and handed is None and holder is not None
    assert len(_mailed(tmp_path)) == (0 if mode == "before" else 3)

    # Same instant, so the quiet period forbids a new slot: only the owed one can go.
    assert core.send_confirmations(ids) == 3
    mailed = _mailed(tmp_path)
    assert sorted(name.split("-")[1] for name in mailed) == sorted(f"s{i}" for i in ids)
    for count, handed, holder in _slots(core).values():
        assert (count, handed, holder) == (1, NOW, None)
    # Handed over now: asking again within the quiet period sends nothing more.
    assert core.send_confirmations(ids) == 0
    assert _mailed(tmp_path) == mailed
    core.close()


@pytest.mark.skipif(not hasattr(os, "waitid"), reason="needs os.waitid(WNOWAIT) (POSIX)")
def test_a_killed_holder_not_yet_reaped_is_gone_and_its_slots_are_offered_again(
    root: Path, tmp_path: Path
) -> None:
    """`timeout -s KILL ... import --confirm` then a re-run at once: the killed process is a
    zombie (its parent has not reaped it) yet `os.kill(pid, 0)` still succeeds on it."""
    core = _core(root, tmp_path)
    ids = _pending(core, 3)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(tmp_path), _url(tmp_path)]
        + [NOW.isoformat(), "before"] + [str(i) for i in ids],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        # Wait for the child to die but leave it unreaped (WNOWAIT): a zombie.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        holders = {holder for _, _, holder in _slots(core).values()}
        assert len(holders) == 1 and f":{proc.pid}" in holders.pop()
        assert core.send_confirmations(ids) == 3
        assert len(_mailed(tmp_path)) == 3
    finally:
        assert proc.wait(timeout=300) == -signal.SIGKILL


def test_a_holder_id_names_the_process_start_so_a_reused_pid_is_not_the_holder() -> None:
    import socket

    from dripmail import holders

    host = socket.gethostname()
    me = holders.this_process()
    assert holders.holder_alive(me, host)
    assert holders.holder_alive(f"{host}:{os.getpid()}", host)  # ids written before
    assert holders.holder_alive(f"elsewhere:{os.getpid()}:1", host)  # only a lease tells
    if Path("/proc/self/stat").exists():
        name, pid, start = me.split(":")
        # Same pid, another start time: the holder died and the OS gave its pid away.
        assert not holders.holder_alive(f"{name}:{pid}:{int(start) + 1}", host)


def test_the_rerun_tells_emails_offered_again_and_slots_a_live_process_holds(
    root: Path, tmp_path: Path
) -> None:
    import socket

    core = _core(root, tmp_path)
    ids = _pending(core, 4)
    other = f"{socket.gethostname()}:{os.getppid()}"  # the parent: alive, not this process
    _killed_child(root, tmp_path, "after", ids[:3])  # accepted, never recorded
    # The fourth reader's slot is held by another live process, its lease running.
    with core.engine.begin() as conn:
        conn.execute(
            update(subscribers)
            .where(subscribers.c.id == ids[3])
            .values(
                confirm_count=1,
                confirm_sent_at=NOW,
                confirm_claimed_by=other,
                confirm_lease_expires_at=NOW + LEASE,
            )
        )
    report = core.confirm_subscribers(ids)
    # The three the outbox already held are not counted as new emails.
    assert (report.sent, report.offered_again) == (0, 3)
    assert report.held_elsewhere == {other: (1, NOW + LEASE)}
    assert len(_mailed(tmp_path)) == 3
    core.close()


def test_the_run_pass_sends_what_a_killed_sign_up_left(root: Path, tmp_path: Path) -> None:
    core = _core(root, tmp_path)
    ids = _pending(core, 2)
    _killed_child(root, tmp_path, "before", ids)
    result = core.run(NOW)
    assert result.confirmations == 2
    assert len(_mailed(tmp_path)) == 2
    assert core.run(NOW).confirmations == 0
    core.close()


def test_a_stored_name_no_header_can_carry_fails_its_email_alone_in_the_run_pass(
    root: Path, tmp_path: Path
) -> None:
    core = _core(root, tmp_path)
    ids = _pending(core, 3)
    with core.engine.begin() as conn:
        # As an older version could have stored it; today's doors turn it into a space.
        conn.execute(
            update(subscribers).where(subscribers.c.id == ids[1]).values(first_name="A\nB")
        )
    _killed_child(root, tmp_path, "before", ids)

    result = core.run(NOW)

    assert result.confirmations == 2
    assert len(_mailed(tmp_path)) == 2
    slots = _slots(core)
    assert all(slots[i][1] is not None for i in (ids[0], ids[2]))  # handed over
    assert slots[ids[1]][1] is None and slots[ids[1]][2] is None  # released, still owed
    # Reported like a lesson failed for good: counted, the first reason with its address,
    # `run` exits 3 (attention), and `status` shows it until the reader is mailed.
    assert result.confirmations_failed == 1 and result.attention
    assert result.confirmation_failure.startswith("cannot build the confirmation email: ")
    assert result.confirmation_failure.endswith(
        "(to p1@example.org); correct it with `subscribers rename p1@example.org NAME`, which "
        "offers the email again"
    )
    stuck = core.status().unconfirmed
    assert (stuck.count, stuck.email, stuck.reason) == (
        1,
        "p1@example.org",
        result.confirmation_failure,
    )
    core.close()


def test_a_slot_held_by_a_live_process_is_not_offered_twice(root: Path, tmp_path: Path) -> None:
    core = _core(root, tmp_path)
    (sid,) = _pending(core, 1)
    import socket

    # Another process of this host (this one: alive) holds the slot, its lease running.
    alive = f"{socket.gethostname()}:{os.getpid()}"
    with core.engine.begin() as conn:
        conn.execute(
            update(subscribers)
            .where(subscribers.c.id == sid)
            .values(
                confirm_count=1,
                confirm_sent_at=NOW,
                confirm_claimed_by=alive,
                confirm_lease_expires_at=NOW + LEASE,
            )
        )
    later = NOW + QUIET + timedelta(minutes=1)
    assert _core(root, tmp_path, NOW).send_confirmations([sid]) == 0
    assert _core(root, tmp_path, NOW).run(NOW).confirmations == 0
    # On another host only the lease can tell: once it ran out, the slot is offered again,
    # under its first key (number 1, the time it was taken), not as a second email.
    with core.engine.begin() as conn:
        conn.execute(
            update(subscribers)
            .where(subscribers.c.id == sid)
            .values(confirm_claimed_by="elsewhere:1")
        )
    assert _core(root, tmp_path, NOW + LEASE - timedelta(seconds=1)).run().confirmations == 0
    assert _core(root, tmp_path, later).run().confirmations == 1
    assert _mailed(tmp_path) == [f"confirm-s{sid}-{NOW:%Y%m%d%H%M%S}-n1.eml"]
    assert _slots(core)[sid] == (1, later, None)
    core.close()


def test_a_refused_email_is_offered_again_by_the_next_sign_up_not_by_run(
    root: Path, tmp_path: Path
) -> None:
    core = _core(root, tmp_path)
    (sid,) = _pending(core, 1)
    provider = core.provider
    real = provider.send_batch

    async def down(messages, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("provider unreachable")

    provider.send_batch = down  # type: ignore[method-assign]
    with pytest.raises(OSError):
        core.send_confirmations([sid])
    assert _slots(core)[sid] == (1, None, None)  # owed, released
    stuck = core.status().unconfirmed
    assert (stuck.count, stuck.reason) == (
        1,
        "not handed to the provider: provider unreachable (to p0@example.org)",
    )
    provider.send_batch = real  # type: ignore[method-assign]
    assert core.run(NOW).confirmations == 0  # a refusal is not retried every pass
    assert core.send_confirmations([sid]) == 1  # the reader signs up again: same slot
    assert core.status().unconfirmed.count == 0
    assert _mailed(tmp_path) == [f"confirm-s{sid}-{NOW:%Y%m%d%H%M%S}-n1.eml"]
    core.close()


def test_a_reader_who_left_and_signs_up_again_gets_a_new_first_email(
    root: Path, tmp_path: Path
) -> None:
    core = _core(root, tmp_path)
    signed = core.subscribe("back@example.org")
    assert signed.subscriber_id is not None
    assert core.send_confirmations([signed.subscriber_id]) == 1
    core.unsubscribe("back@example.org")
    later = NOW + timedelta(minutes=1)
    again = _core(root, tmp_path, later)
    assert again.subscribe("back@example.org").subscriber_id == signed.subscriber_id
    assert again.send_confirmations([signed.subscriber_id]) == 1
    assert len(_mailed(tmp_path)) == 2  # two keys: n1 of each sign-up, told apart by time
    core.close()


def test_a_confirmation_template_that_does_not_compile_fails_the_run_pass_s_emails_not_the_pass(
    root: Path, tmp_path: Path
) -> None:
    """`run --loop` must not end on a template typo: the interrupted confirmation emails it
    offers again are counted as not sent, each with the file:line, and the pass goes on."""
    core = _core(root, tmp_path)
    ids = _pending(core, 2)
    with core.engine.begin() as conn:
        conn.execute(  # taken by a process on another host whose lease ran out
            update(subscribers)
            .where(subscribers.c.id.in_(ids))
            .values(
                confirm_count=1,
                confirm_sent_at=NOW - timedelta(hours=1),
                confirm_claimed_by="elsewhere:1:1",
                confirm_lease_expires_at=NOW - timedelta(minutes=1),
            )
        )
    template = Path(root) / "emails" / "confirm.txt.j2"
    template.write_text("Hello {{ recipient.first_name \n")
    result = core.run(NOW)
    assert result.confirmations == 0 and result.confirmations_failed == 2
    assert "emails/confirm.txt.j2:1" in result.confirmation_failure
    assert result.confirmation_failure.endswith("(to p0@example.org)")
    assert _mailed(tmp_path) == []
    slots = _slots(core)
    assert all(slots[i][1] is None and slots[i][2] is None for i in ids)  # released, owed
    core.close()
