"""Taking free deliveries and marking them `sending` in one write (`handover.deliver_free`,
the engine's way on SQLite): what another worker took first is never sent twice, a batch's
recorded key names exactly the rows it holds, and a stop before the write holds nothing."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from dripmail.engine import run_once
from dripmail.errors import ContentError
from dripmail.handover import _whole_batch, claim
from dripmail.message import Mailbox, Message
from dripmail.providers.outbox import OutboxProvider
from dripmail.store.db import open_store
from dripmail.store.schema import deliveries, subscribers
from tests.due_fixture import seed_due
from tests.store_fixture import new_store

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
SENDER = Mailbox("hello@studio.example.com")


def _message(row: dict) -> Message:
    """A lesson addressed with the reader's stored first name, as the course's layout does."""
    return Message(
        key=row["key"],
        kind="lesson",
        ref=str(row["lesson_day"]),
        sender=SENDER,
        to=Mailbox(row["email"], row["first_name"]),
        subject="Day 1",
        html="<p>x</p>",
        text="x",
    )


def _rows(engine: Engine) -> dict[str, dict]:
    with engine.connect() as conn:
        found = conn.execute(
            select(deliveries.c.key, deliveries.c.state, deliveries.c.claimed_by,
                   deliveries.c.batch_key, deliveries.c.attempts, deliveries.c.last_error)
        ).mappings()  # fmt: skip
        return {r["key"]: dict(r) for r in found}


@pytest.fixture
def store(tmp_path: Path) -> Engine:
    engine = new_store("sqlite:///dripmail.db", tmp_path)
    seed_due(engine, 12, NOW)
    return engine


def test_a_row_another_worker_takes_while_this_one_renders_is_not_sent_by_it(
    store: Engine, tmp_path: Path
) -> None:
    stolen = "test-week-s5-d1"

    def render(row: dict) -> Message:
        if row["key"] == stolen:
            # Another worker claims this row between our page read and our write.
            other = {**row, "state": "planned"}
            assert claim(store, deliveries, [other], "elsewhere:1", NOW, timedelta(minutes=10))
        return _message(row)

    outbox = OutboxProvider(tmp_path / "outbox", clock=lambda: NOW)
    report = run_once(store, outbox, render, NOW, default_send_time=time(7))

    rows = _rows(store)
    assert report.sent == 11
    assert rows[stolen]["state"] == "claimed" and rows[stolen]["claimed_by"] == "elsewhere:1"
    assert rows[stolen]["attempts"] == 0
    sent = {k: r for k, r in rows.items() if k != stolen}
    assert {r["state"] for r in sent.values()} == {"sent"}
    # The batch's key was recomputed for the rows it kept, so a recovery after a crash can
    # still tell it holds the whole batch and resend it as it was.
    keys = sorted(sent)
    batch_keys = {r["batch_key"] for r in sent.values()}
    assert len(batch_keys) == 1
    assert _whole_batch(batch_keys.pop(), keys)


def test_a_stop_while_rendering_holds_nothing_and_the_next_run_sends_each_once(
    store: Engine, tmp_path: Path
) -> None:
    seen = 0

    def stopping(row: dict) -> Message:
        nonlocal seen
        seen += 1
        if seen == 7:
            raise KeyboardInterrupt
        return _message(row)

    outbox = OutboxProvider(tmp_path / "outbox", clock=lambda: NOW)
    with pytest.raises(KeyboardInterrupt):
        run_once(store, outbox, stopping, NOW, default_send_time=time(7))
    rows = _rows(store)
    assert {(r["state"], r["claimed_by"], r["attempts"]) for r in rows.values()} == {
        ("planned", None, 0)
    }

    report = run_once(store, outbox, _message, NOW, default_send_time=time(7))
    assert report.sent == 12
    assert {r["state"] for r in _rows(store).values()} == {"sent"}
    written = {p.stem for p in (tmp_path / "outbox").glob("*.eml")}
    assert written == {f"test-week-s{i}-d1" for i in range(1, 13)}


def _name(engine: Engine, subscriber_ids: range | list[int], first_name: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(subscribers)
            .where(subscribers.c.id.in_(list(subscriber_ids)))
            .values(first_name=first_name)
        )


def _errors(engine: Engine) -> dict[str, tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.key, deliveries.c.state, deliveries.c.last_error))
        return {key: (state, error) for key, state, error in rows}


@pytest.mark.parametrize("name", ["Zo\u00eb\u2028x", "Ann\x00", "Bo\x0bb"])
def test_a_stored_name_no_header_can_carry_fails_alone_and_the_batch_goes_out(
    store: Engine, tmp_path: Path, name: str
) -> None:
    _name(store, [4], name)
    outbox = OutboxProvider(tmp_path / "outbox", clock=lambda: NOW)
    report = run_once(store, outbox, _message, NOW, default_send_time=time(7))

    assert (report.sent, report.failed) == (11, 1)
    state, error = _errors(store)["test-week-s4-d1"]
    assert state == "failed"
    assert "the recipient's name contains" in (error or "") and "r4@example.org" in (error or "")
    assert {s for k, (s, _) in _errors(store).items() if k != "test-week-s4-d1"} == {"sent"}


def test_a_batch_an_older_version_left_sending_with_such_a_name_is_settled_not_stuck(
    store: Engine, tmp_path: Path
) -> None:
    # An earlier version marked the batch and then died in the outbox's header encoder on
    # U+2028: every later run retried it and died the same way.
    _name(store, [4], "Zo\u00eb\u2028x")
    with store.begin() as conn:
        conn.execute(
            update(deliveries).values(
                state="sending",
                batch_key="b-older",
                attempts=1,
                claimed_by="gone:1",
                lease_expires_at=NOW - timedelta(minutes=1),
            )
        )
    outbox = OutboxProvider(tmp_path / "outbox", clock=lambda: NOW)
    report = run_once(store, outbox, _message, NOW, default_send_time=time(7))

    errors = _errors(store)
    assert errors["test-week-s4-d1"][0] == "review"
    assert "r4@example.org" in (errors["test-week-s4-d1"][1] or "")
    assert {s for k, (s, _) in errors.items() if k != "test-week-s4-d1"} == {"sent"}
    assert report.sent == 11


def test_a_template_error_stops_the_pass_with_nothing_marked_however_few_are_due(
    store: Engine, tmp_path: Path
) -> None:
    def broken(row: dict) -> Message:
        raise ContentError.at("emails/lesson.txt.j2", 3, "lesson has no field 'strech'")

    outbox = OutboxProvider(tmp_path / "outbox", clock=lambda: NOW)
    with pytest.raises(ContentError, match=r"emails/lesson.txt.j2:3"):
        run_once(store, outbox, broken, NOW, default_send_time=time(7), halt_after=20)

    # 12 readers, fewer than the halt's 20: still nothing failed for good, nothing is held.
    assert {(r["state"], r["claimed_by"]) for r in _rows(store).values()} == {("planned", None)}
    fixed = run_once(store, outbox, _message, NOW, default_send_time=time(7), halt_after=20)
    assert fixed.sent == 12 and not fixed.halted


def test_an_unforeseen_error_failing_every_reader_trips_the_halt_and_loses_nothing(
    tmp_path: Path,
) -> None:
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    seed_due(engine, 30, NOW)

    def broken(row: dict) -> Message:
        raise ValueError("something nobody foresaw")

    outbox = OutboxProvider(tmp_path / "outbox", clock=lambda: NOW)
    report = run_once(engine, outbox, broken, NOW, default_send_time=time(7), halt_after=20)

    assert "nobody foresaw" in report.halted and "back to the queue" in report.halted
    assert report.failed == 0
    assert {(r["state"], r["claimed_by"]) for r in _rows(engine).values()} == {("planned", None)}
    held = {r["last_error"] for r in _rows(engine).values() if r["last_error"]}
    assert held and all(e.startswith("held back, same failure") for e in held)
    fixed = run_once(engine, outbox, _message, NOW, default_send_time=time(7), halt_after=20)
    assert fixed.sent == 30 and not fixed.halted
    # Sent now: the "held back" reason is stale, and `status`/`subscribers show` must not
    # keep showing it.
    assert {(r["state"], r["last_error"]) for r in _rows(engine).values()} == {("sent", None)}


def test_readers_bad_stored_names_never_stop_the_pass(tmp_path: Path) -> None:
    engine = open_store("sqlite:///dripmail.db", tmp_path)
    seed_due(engine, 30, NOW)
    _name(engine, range(1, 26), "Line\nbreak")
    outbox = OutboxProvider(tmp_path / "outbox", clock=lambda: NOW)
    report = run_once(engine, outbox, _message, NOW, default_send_time=time(7), halt_after=20)

    assert not report.halted
    assert (report.sent, report.failed) == (5, 25)
