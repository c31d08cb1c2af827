"""The drip engine: plan -> claim (with a lease) -> render -> hand to provider -> record.

Exactly once rests on three things: the unique delivery key, a conditional claim (a row is taken
only if it is still free, so two workers never hold the same delivery), and the `sending` state
written *before* the provider call with its batch key, so a run that dies mid-call is followed by
a reconcile with the provider instead of a blind resend. On SQLite the claim and the `sending`
mark are one write, after rendering (`handover.deliver_free`): a day's deliveries are scattered
over the table, so each rewrite of a row costs a page written. On PostgreSQL a page is read with
its rows locked and claimed in that transaction, then marked before the call.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, bindparam, literal_column, select, update

from dripmail import schedule
from dripmail.handover import (
    CallAsync,
    FailureStreak,
    RenderFn,
    Report,
    claim,
    deliver,
    deliver_free,
    expire_dead_claims,
    release,
    run_in_new_loop,
)
from dripmail.providers.base import Provider
from dripmail.states import DONE
from dripmail.store import delivery_queries as dq
from dripmail.store.bulk import IdList
from dripmail.store.delivery_queries import DueRow
from dripmail.store.schema import deliveries, subscribers

LEASE = timedelta(minutes=10)


@dataclass
class RunReport(Report):
    """What one pass did, for the CLI to print (`due`: what a dry run would send;
    `in_flight`: what a dry run found held by a worker, which a real pass settles first when
    its holder is gone)."""

    due: list[DueRow] = field(default_factory=list)
    in_flight: int = 0


def _settled(report: RunReport) -> int:
    """How many lessons `report` counts as handled and recorded (`Report.settled`)."""
    return report.settled()


def default_worker_id() -> str:
    """host:pid:start, so an operator can tell whose claims these are and a reused pid is
    not taken for their holder (`dripmail.holders`)."""
    from dripmail.holders import this_process

    return this_process()


def _expired_claims(
    engine: Engine, now: datetime, limit: int, after: int = 0
) -> tuple[list[DueRow], int | None]:
    """See `delivery_queries.expired_claims`."""
    with engine.connect() as conn:
        return dq.expired_claims(conn, now, limit, after)


def _due_candidates(
    engine: Engine,
    now: datetime,
    horizon: datetime,
    limit: int,
    after: tuple[datetime, int] | None = None,
) -> list[DueRow]:
    """See `delivery_queries.due_page`."""
    with engine.connect() as conn:
        return dq.due_page(conn, now, horizon, limit, after)


def _previous_done(engine: Engine, rows: list[DueRow]) -> dict[tuple[int, int], datetime | None]:
    """For each (subscriber, day): when the day before took its local day
    (`delivery_queries.day_taken_at`), or absent if not done yet."""
    wanted = {(r["subscriber_id"], r["lesson_day"] - 1) for r in rows if r["lesson_day"] > 1}
    if not wanted:
        return {}
    sids = {s for s, _ in wanted}
    out: dict[tuple[int, int], datetime | None] = {}
    with engine.connect() as conn:
        for p in dq.lessons_of(conn, sids):
            k = (p["subscriber_id"], p["lesson_day"])
            if k in wanted and p["state"] in DONE:
                out[(k[0], k[1] + 1)] = dq.day_taken_at(
                    p["state"], p["sent_at"], p["due_at"], p["updated_at"]
                )
    return out


def _eligible(
    engine: Engine,
    rows: list[DueRow],
    now: datetime,
    default_send: time,
    skip_weekends: bool = False,
) -> list[DueRow]:
    """Keep lessons whose predecessor is done and that are due by `schedule.next_send_at`."""
    prev = _previous_done(engine, rows)
    keep = []
    # A page's readers share a few (time zone, send time) pairs: each is parsed once.
    local: dict[tuple[str, str | None], tuple[ZoneInfo, time]] = {}

    def due_of(row: DueRow, key: tuple[int, int]) -> datetime:
        where = (row["timezone"], row["send_time"])
        found = local.get(where)
        if found is None:
            send = time.fromisoformat(where[1]) if where[1] else default_send
            found = local[where] = (ZoneInfo(where[0]), send)
        zone, send = found
        return schedule.next_send_at(row["due_at"], prev.get(key), send, zone, skip_weekends)

    for row in rows:
        key = (row["subscriber_id"], row["lesson_day"])
        if row["state"] != "planned":
            # An expired claim: finish what was started, with the send time it had then, so
            # a batch resent after a crash is the same batch (see handover._resendable).
            if row["lesson_day"] == 1 or key in prev:
                row["effective_due"] = due_of(row, key)
            keep.append(row)
            continue
        if row["lesson_day"] > 1 and key not in prev:
            continue
        due = due_of(row, key)
        if due <= now:
            row["effective_due"] = due
            keep.append(row)
    return keep


def complete_finished(
    engine: Engine, now: datetime, subscriber_ids: Collection[int] | None = None
) -> int:
    """Mark active subscribers whose every lesson is done as `completed`; returns how many.

    With `subscriber_ids`, only those are looked at (a run checks whom it just mailed, so an
    idle run over a million subscribers costs nothing here).
    """
    if subscriber_ids is not None and not subscriber_ids:
        return 0
    if subscriber_ids is None:
        with engine.begin() as conn:
            return conn.execute(_FINISHED.values(status="completed", updated_at=now)).rowcount or 0
    ids = sorted(set(subscriber_ids))
    done = 0
    with engine.begin() as conn:
        for start in range(0, len(ids), 1000):
            part = ids[start : start + 1000]
            done += _FINISHED_AMONG.execute(conn, part, {"now": now}).rowcount or 0
    return done


_OPEN = ("planned", "claimed", "sending", "handed")
# Active readers who have lessons and none still to go out.
_FINISHED = update(subscribers).where(
    subscribers.c.status == "active",
    select(deliveries.c.id).where(deliveries.c.subscriber_id == subscribers.c.id).exists(),
    ~select(deliveries.c.id)
    .where(
        deliveries.c.subscriber_id == subscribers.c.id,
        # Literal states: no list parameter to render on every call (see `IdList`).
        deliveries.c.state.in_([literal_column(f"'{s}'") for s in _OPEN]),
    )
    .exists(),
)
# The same among a list of readers: one statement with an expanding parameter, run per 1,000.
_FINISHED_AMONG = IdList(
    _FINISHED.where(subscribers.c.id.in_(bindparam("ids", expanding=True))).values(
        status="completed", updated_at=bindparam("now", type_=subscribers.c.updated_at.type)
    )
)


def run_once(
    engine: Engine,
    provider: Provider,
    render: RenderFn[DueRow],
    now: datetime,
    *,
    default_send_time: time,
    skip_weekends: bool = False,
    worker_id: str | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    handover: timedelta = timedelta(0),
    chunk: int = 1000,
    halt_after: int = 0,
    progress: Callable[[int], None] | None = None,
    call: CallAsync | None = None,
    stop: Callable[[], bool] | None = None,
) -> RunReport:
    """One pass over what is due at `now` (plus `handover` for providers that schedule ahead).

    First every delivery a dead worker left in flight (however many), then the free queue,
    both in chunks of `chunk` rows: claim, render, hand over, record, next chunk; memory stays
    bounded by the chunk whatever the queue length. `limit` caps how many new deliveries
    this pass takes (what a crash left in flight is always finished, however many).
    `halt_after` consecutive permanent failures with one reason stop the pass (0: never; see
    `handover.FailureStreak`), with `report.halted` saying why. `progress` is called with the
    number handled after each chunk. `call` runs one provider coroutine to completion (the
    core's `Dripmail.call_provider`, one event loop per process; default: a new loop each
    time, for library use and tests). `stop` is asked after each chunk (true: Ctrl-C or
    SIGTERM came, `Dripmail.interrupted`): the pass ends there, what the chunk settled is
    recorded and counted.
    """
    report = RunReport()
    call = call or run_in_new_loop
    horizon = now + handover
    worker = worker_id or default_worker_id()
    streak = FailureStreak(halt_after)
    taken = 0
    touched: set[int] = set()
    recovered: set[int] = set()  # readers whose in-flight lessons this pass settled

    def stopped() -> bool:
        return stop is not None and stop()

    def size() -> int:
        return chunk if limit is None else min(chunk, limit - taken)

    def eligible(page: list[DueRow]) -> list[DueRow]:
        """The rows of `page` due now; a dry run lists them and gets none to hand over."""
        nonlocal taken
        rows = _eligible(engine, page, horizon, default_send_time, skip_weekends)
        if not dry_run:
            return rows
        report.due.extend(rows)
        taken += len(rows)
        return []

    def take(page: list[DueRow], bind: Engine | Connection) -> list[DueRow]:
        """The eligible rows of `page` this worker now holds.

        `bind`: a Connection when the page was read with its rows locked in its transaction.
        """
        rows = eligible(page)
        if not rows:
            return []
        locked = isinstance(bind, Connection)
        return claim(bind, deliveries, rows, worker, now, LEASE, locked=locked)

    def settle(hand: Callable[[], list[DueRow]], held: list[DueRow]) -> None:
        """Run one chunk's hand-over (`hand` returns the rows this worker took) and count
        it. On any exception (a refused credential, Ctrl-C), the claims in `held` go back to
        the queue unchanged, and what the chunk settled first is counted, so a stop can
        say so (Ctrl-C lets the chunk in progress finish: `Dripmail.call_provider`)."""
        nonlocal taken
        before = _settled(report)
        try:
            done = hand()
        except BaseException:
            release(engine, deliveries, [r["key"] for r in held], now)
            if progress and _settled(report) > before:
                progress(_settled(report) - before)
            raise
        taken += len(done)
        touched.update(r["subscriber_id"] for r in done)
        if progress:
            progress(len(done))

    def send(held: list[DueRow]) -> None:
        """Rows this worker claimed: rendered, marked `sending`, handed over (`deliver`)."""

        def deliver_held() -> list[DueRow]:
            call(lambda: deliver(engine, deliveries, provider, held, render, now, report, streak))
            return held

        if held:
            settle(deliver_held, held)

    def hand_over(page: list[DueRow]) -> None:
        send(take(page, engine))

    def send_free(page: list[DueRow]) -> None:
        """Free rows read without locks: rendered, then taken and marked in one write
        (`deliver_free`, which gives back what it took if it fails)."""
        rows = eligible(page)

        def take_and_deliver() -> list[DueRow]:
            args = (engine, deliveries, provider, rows, render, now, report, streak)
            return call(lambda: deliver_free(*args, worker, LEASE))

        if rows:
            settle(take_and_deliver, [])

    if dry_run:
        with engine.connect() as conn:
            report.in_flight = dq.count_in_flight(conn)
    else:
        # A `run` killed on this host cannot give its claims back: free them now instead of
        # waiting out the lease (rows left `sending` are reconciled, never resent blindly).
        expire_dead_claims(engine, deliveries, now, socket.gethostname())
        # Everything a crash left in flight is finished before new work, page by page.
        # Not bounded by `limit` (it caps new sends): a row left in flight is owed already.
        after: int | None = 0
        while after is not None and not report.halted and not stopped():
            page, after = _expired_claims(engine, now, chunk, after)
            if page:
                hand_over(page)
                recovered.update(r["subscriber_id"] for r in page)
        taken = 0
    cursor: tuple[datetime, int] | None = None
    # On PostgreSQL a page is read with its rows locked (SKIP LOCKED) and claimed in the same
    # transaction: workers running at once take different pages, instead of all reading the
    # same one and all but one losing the claim (4 workers were slower than 1).
    locking = engine.dialect.name == "postgresql" and not dry_run
    while (limit is None or taken < limit) and not report.halted and not stopped():
        want = size()
        if locking:
            with engine.begin() as conn:
                free = dq.due_page(conn, now, horizon, want, cursor, skip_locked=True)
                # A reader whose interrupted lesson was just settled (perhaps for review: it
                # may have arrived) gets the next one on a later pass, as if both had been
                # judged together.
                held = take([r for r in free if r["subscriber_id"] not in recovered], conn)
            send(held)
        else:
            # Read without locks (one writer at a time on SQLite): rendered first, then taken
            # and marked `sending` in one write per chunk (`deliver_free`).
            free = _due_candidates(engine, now, horizon, want, cursor)
            send_free([r for r in free if r["subscriber_id"] not in recovered])
        if not free:
            break
        cursor = (free[-1]["due_at"], free[-1]["id"])
        if len(free) < want:
            break
    if not dry_run:
        complete_finished(engine, now, touched)
    return report


def next_due(engine: Engine) -> datetime | None:
    """The earliest due time of anything still planned (for `run --loop` and `status`)."""
    with engine.connect() as conn:
        return conn.execute(
            select(deliveries.c.due_at)
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(deliveries.c.state == "planned", subscribers.c.status == "active")
            .order_by(deliveries.c.due_at)
            .limit(1)
        ).scalar()


def next_send_time(
    engine: Engine,
    now: datetime,
    *,
    default_send_time: time,
    skip_weekends: bool = False,
    handover: timedelta = timedelta(0),
    chunk: int = 1000,
) -> datetime | None:
    """The earliest time (UTC) at which a pass (`run_once` with the same `handover`) would find
    a planned lesson to hand over, or None when nothing is planned. For `run --loop`'s sleep.

    A lesson planned in the past may be held back by `schedule.next_send_at` (one lesson per
    local day, weekends): its time is when that rule lets it go, not its plan, so a loop does
    not wake every second for the rest of the day. Lessons waiting for the one before them
    count from that one. Held lessons are walked in pages like a pass walks them (the same
    rows, the same cost); of later ones, only the earliest plan is read.
    """
    horizon = now + handover
    times: list[datetime] = []
    cursor: tuple[datetime, int] | None = None
    while True:
        page = _due_candidates(engine, now, horizon, chunk, cursor)
        if not page:
            break
        cursor = (page[-1]["due_at"], page[-1]["id"])
        planned = [r for r in page if r["state"] == "planned"]
        prev = _previous_done(engine, planned)
        for row in planned:
            key = (row["subscriber_id"], row["lesson_day"])
            if row["lesson_day"] > 1 and key not in prev:
                continue  # waits for the lesson before it, whose own time is counted
            zone = ZoneInfo(row["timezone"])
            send = time.fromisoformat(row["send_time"]) if row["send_time"] else default_send_time
            times.append(
                schedule.next_send_at(row["due_at"], prev.get(key), send, zone, skip_weekends)
            )
        if times:
            times = [min(times)]
            # Pages come in plan order and nothing goes out before its plan: once a page ends
            # at or after the earliest time found, no later row can be earlier. (At 1M
            # subscribers with a day overdue, `status` walked 143 pages for this: 7 s.)
            if page[-1]["due_at"] >= times[0]:
                break
        if len(page) < chunk:
            break
    with engine.connect() as conn:
        later = conn.execute(
            select(deliveries.c.due_at)
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(
                deliveries.c.state == "planned",
                subscribers.c.status == "active",
                deliveries.c.due_at > horizon,
            )
            .order_by(deliveries.c.due_at)
            .limit(1)
        ).scalar()
    if later is not None:
        # Its plan is the earliest it can go (the rule may hold it later: the loop looks again).
        times.append(later)
    return min(times) - handover if times else None


def pending_keys(engine: Engine, states: Sequence[str] = ("planned",)) -> list[str]:
    """Keys of deliveries in the given states (for status and tests)."""
    with engine.connect() as conn:
        return list(
            conn.execute(select(deliveries.c.key).where(deliveries.c.state.in_(states))).scalars()
        )
