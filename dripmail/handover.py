"""Handing claimed rows to a provider and recording what it said: shared by lessons and newsletters.

The rows live in `deliveries` (lessons) or `broadcast_deliveries` (newsletters); both have the
same state columns, so one implementation of the careful part serves both.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from hashlib import sha256
from operator import attrgetter
from typing import Any, Generic, TypeVar
from uuid import uuid4

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    Engine,
    Integer,
    Table,
    and_,
    any_,
    bindparam,
    null,
    select,
    update,
)
from sqlalchemy.sql.dml import Update

from dripmail import holders
from dripmail.errors import ContentError, ProviderAuthError
from dripmail.message import Message, ReaderProblem, header_problem, rename_hint
from dripmail.providers.base import (
    Lookup,
    Outcome,
    Provider,
    is_rate_limited,
    is_stopped,
    is_unreachable,
)
from dripmail.store.bulk import Bulk, IdList, UnnestUpdate
from dripmail.store.handover_rows import HeldRow
from dripmail.store.schema import back_in_queue, in_flight
from dripmail.store.transactions import transaction
from dripmail.subscribers import suppress

RETRY_AFTER = timedelta(minutes=15)
# Resend an interrupted batch only this long before the provider forgets its idempotency key.
KEY_MARGIN = timedelta(hours=1)
# A delivery row of either table, as the hand-over holds it (lessons: `DueRow`, newsletters:
# `BroadcastRow`); the functions below give back the very rows they were given.
R = TypeVar("R", bound=HeldRow)
RenderFn = Callable[[R], Message]
# Runs one coroutine (made by the callable) to completion and returns its result: the core's
# `Dripmail.call_provider` (one event loop per process) or `run_in_new_loop`.
CallAsync = Callable[[Callable[[], Awaitable[Any]]], Any]


def run_in_new_loop(make: Callable[[], Awaitable[Any]]) -> Any:
    """`CallAsync` without a core: a new event loop for this one call (library use, tests)."""

    async def call() -> Any:
        return await make()

    return asyncio.run(call())


@dataclass
class Report:
    """What a hand-over pass did; the engine and broadcasts extend it with their own fields.

    `halted` is the one-line reason the pass stopped early (see `FailureStreak`), else "".
    """

    sent: int = 0
    handed: int = 0
    retry: int = 0
    failed: int = 0
    review: int = 0
    recovered: int = 0
    suppressed: int = 0
    halted: str = ""
    # Why the first message left for later was not taken ("" when none was), and the same
    # when that is because the provider could not be reached at all (`providers.base.
    # is_unreachable`): a fault that does not pass by itself, so the commands exit 3.
    retry_reason: str = ""
    unreachable: str = ""
    # The reason of the first delivery failed for good (it ends with the address), for the
    # one line the commands print beside the count.
    failure_reason: str = ""
    # Deliveries a stop (Ctrl-C, SIGTERM) kept from the provider: back in the queue unsent,
    # or, for one a crash left in flight, not looked up and left `sending` for the next
    # run's recovery. Not handed over, so not among the counts above.
    stopped: int = 0

    def settled(self) -> int:
        """How many deliveries this pass handed over and recorded: sent, scheduled at the
        provider, left to retry, failed, for review. Each once: `suppressed` counts addresses
        a refusal suppressed, whose deliveries are among the failed."""
        return self.sent + self.handed + self.retry + self.failed + self.review

    def provider_down(self) -> bool:
        """Whether the provider kept this pass's deliveries from going out in a way that does
        not pass by itself: it could not be reached, or it took none of them and they wait
        for a reason other than a rate limit (5xx every attempt, an account refusal). The
        commands exit 3 on it; a routine 429 pause, or some taken and some waiting, is 0."""
        if self.unreachable:
            return True
        took = self.sent or self.handed
        return bool(self.retry) and not took and not is_rate_limited(self.retry_reason)

    def failed_for(self, reason: str) -> None:
        """Count one delivery failed for good because of `reason`."""
        self.failed += 1
        if not self.failure_reason:
            self.failure_reason = reason

    def retried(self, reason: str | None) -> None:
        """Count one message left for a later attempt because of `reason`."""
        self.retry += 1
        if reason and not self.retry_reason:
            self.retry_reason = reason
        if not self.unreachable and is_unreachable(reason):
            self.unreachable = str(reason)


@dataclass
class FailureStreak:
    """Consecutive permanent failures with one reason, across batches and chunks of one pass.

    One refused or unbuildable message fails alone; but when `limit` messages in a row fail
    for the same reason (an unverified sender, a template the provider rejects), the fault is
    not the readers': the pass stops and those deliveries go back to the queue (listmonk
    pauses a campaign the same way). A message accepted in between, or another reason,
    starts the count again; recipient-specific refusals (suppressions) and transient answers
    do not count. `limit` 0 never stops.
    """

    limit: int
    reason: str = ""
    keys: list[str] = field(default_factory=list)

    def failed(self, key: str, reason: str) -> None:
        """Count one permanent failure of delivery `key` for `reason`."""
        if reason != self.reason:
            self.reason, self.keys = reason, []
        self.keys.append(key)

    def passed(self) -> None:
        """A message went through: the streak is broken."""
        self.reason, self.keys = "", []

    @property
    def tripped(self) -> bool:
        return self.limit > 0 and len(self.keys) >= self.limit


def record_many(
    engine: Engine | Connection,
    table: Table,
    now: datetime,
    outcomes: Sequence[tuple[int, dict]],
) -> None:
    """Record several deliveries' outcomes, by row id, in one transaction (claims released).

    Outcomes with the same columns go out as one executemany of a statement compiled once
    (`WHERE id = ?`, see `store.bulk`), so a chunk of 1,000 costs a handful of statements, not
    1,000 round trips nor an IN list of 1,000 keys. A value shared by every row of a group
    (the state, `sent_at` = now) is bound once, not per row. Given a Connection, it joins
    that transaction.
    """
    groups: dict[tuple[str, ...], list[tuple[int, dict]]] = {}
    for row_id, values in outcomes:
        # Keyed by the columns in the order given: each caller builds them the same way.
        groups.setdefault(tuple(values), []).append((row_id, values))
    if not groups:
        return
    with transaction(engine) as conn:
        for columns, members in groups.items():
            first = members[0][1]
            shared = tuple(c for c in columns if all(v[c] == first[c] for _, v in members))
            per_row = tuple(c for c in columns if c not in shared)
            rows = [(row_id, *(v[c] for c in per_row)) for row_id, v in members]
            record_group(conn, table, now, per_row, rows, {c: first[c] for c in shared})


def record_group(
    conn: Connection,
    table: Table,
    now: datetime,
    per_row: tuple[str, ...],
    rows: Sequence[tuple[Any, ...]],
    shared: Mapping[str, Any],
) -> None:
    """Record outcomes of one shape in the caller's transaction (claims released): each of
    `rows` is ``(row id, *values of per_row)``; `shared` columns get one value for all.

    For a caller that builds its rows grouped already (the accepted messages of a chunk), so
    no dict per row is made and compared; `record_many` groups dicts and ends here too.
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        _outcome_unnest(table, per_row, tuple(shared)).run(
            conn, rows, {"updated_at": now, **shared}
        )
        return
    constants = {"now": now, **{f"v_{c}": value for c, value in shared.items()}}
    _outcome_statement(table, per_row, tuple(shared)).run(conn, rows, constants)


_OUTCOMES: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Bulk] = {}


def _outcome_statement(table: Table, per_row: tuple[str, ...], shared: tuple[str, ...]) -> Bulk:
    """``UPDATE table SET <columns>, claim released WHERE id = ?`` (built once per shape)."""
    key = (table.name, per_row, shared)
    bulk = _OUTCOMES.get(key)
    if bulk is None:
        values: dict[str, Any] = {
            "updated_at": bindparam("now", type_=table.c.updated_at.type),
            "claimed_by": null(),
            "lease_expires_at": null(),
        }
        values.update({c: bindparam(f"v_{c}", type_=table.c[c].type) for c in per_row + shared})
        statement = update(table).where(table.c.id == bindparam("row_id")).values(**values)
        bulk = _OUTCOMES[key] = Bulk(statement, ("row_id", *(f"v_{c}" for c in per_row)))
    return bulk


_UNNESTS: dict[tuple[str, tuple[str, ...], tuple[str, ...]], UnnestUpdate] = {}


def _outcome_unnest(
    table: Table, per_row: tuple[str, ...], shared: tuple[str, ...]
) -> UnnestUpdate:
    """PostgreSQL's `_outcome_statement`: the whole group in one ``UPDATE ... FROM unnest``."""
    key = (table.name, per_row, shared)
    found = _UNNESTS.get(key)
    if found is None:
        released = {"claimed_by": "NULL", "lease_expires_at": "NULL"}
        found = _UNNESTS[key] = UnnestUpdate(table, per_row, ("updated_at", *shared), released)
    return found


def _sending_unnest(table: Table, first_use: bool) -> UnnestUpdate:
    """PostgreSQL's `_sending_list`: a whole chunk's mark in one ``UPDATE ... FROM unnest``."""
    key = (table.name, ("sending",), (str(first_use),))
    found = _UNNESTS.get(key)
    if found is None:
        shared = ("state", "provider", "updated_at", *(("handed_at",) if first_use else ()))
        attempts = {"attempts": f"{table.name}.attempts + 1"}
        found = _UNNESTS[key] = UnnestUpdate(table, ("batch_key",), shared, attempts)
    return found


_SENDING_LISTS: dict[tuple[str, bool], IdList] = {}


def _sending_list(table: Table, first_use: bool) -> IdList:
    """``UPDATE table SET state = 'sending', batch_key = :bk, ... WHERE id IN (...)``: one
    batch's mark (built once per table).

    On first use of a batch key, `handed_at` records when: a recovery trusts the provider's
    idempotency key only while the provider still remembers it (`_resendable`).
    """
    found = _SENDING_LISTS.get((table.name, first_use))
    if found is None:
        now = bindparam("now", type_=table.c.updated_at.type)
        mark: dict[str, Any] = {
            "state": "sending",
            "batch_key": bindparam("bk", type_=table.c.batch_key.type),
            "updated_at": now,
            "attempts": table.c.attempts + 1,
            "provider": bindparam("provider", type_=table.c.provider.type),
        }
        if first_use:
            mark["handed_at"] = now
        ids = table.c.id.in_(bindparam("ids", expanding=True))
        statement = update(table).where(ids).values(**mark)
        found = _SENDING_LISTS[(table.name, first_use)] = IdList(statement)
    return found


def record(engine: Engine, table: Table, key: str, now: datetime, **values) -> None:
    """Record one delivery's outcome (claim released)."""
    with engine.begin() as conn:
        conn.execute(
            update(table)
            .where(table.c.key == key)
            .values(updated_at=now, claimed_by=None, lease_expires_at=None, **values)
        )


def _digest(keys: Sequence[str]) -> str:
    return sha256("|".join(keys).encode()).hexdigest()[:24]


def batch_key_for(keys: Sequence[str]) -> str:
    """A new key for one hand-over of these deliveries (given sorted).

    It names the rows (a digest of their keys, so a recovery can tell it holds the whole
    batch) and this hand-over (a random part): a lesson cancelled at the provider and handed
    over again must not reuse the key, or the provider would answer with the cancelled email
    from its idempotency memory instead of scheduling a new one.
    """
    return f"b-{_digest(keys)}-{uuid4().hex[:8]}"


def _whole_batch(batch_key: str, keys: Sequence[str]) -> bool:
    """Whether `keys` (sorted) are every row of the batch named by `batch_key`."""
    return batch_key.startswith(f"b-{_digest(keys)}-")


def _resendable(provider: Provider, rows: Sequence[HeldRow], now: datetime) -> dict[str, list[str]]:
    """Interrupted batches the provider deduplicates: batch key -> the batch's keys, sorted.

    Where the provider honours an idempotency key (Resend), a batch left `sending` by a crash
    is sent again *as it was*: same rows, same order, same key, same bytes (links are stamped
    with the send time, see `tokens`). The provider answers the first result if it had
    accepted it, or sends it now if not. That needs the whole batch in hand (its keys hash to
    the recorded batch key) and the key still remembered by the provider (`idempotency_ttl`,
    counted from `handed_at`, when the key was first used).
    """
    caps = provider.capabilities
    ttl = getattr(caps, "idempotency_ttl", None)
    if not caps.idempotency_key or ttl is None:
        return {}
    by_batch: dict[str, list[HeldRow]] = {}
    for row in rows:
        if row["batch_key"]:
            by_batch.setdefault(row["batch_key"], []).append(row)
    out = {}
    for batch_key, members in by_batch.items():
        keys = sorted(r["key"] for r in members)
        if not _whole_batch(batch_key, keys):
            continue  # part of the batch is elsewhere: it cannot be rebuilt exactly
        started = [r["handed_at"] for r in members if r["handed_at"] is not None]
        if len(started) < len(members) or now - min(started) > ttl - KEY_MARGIN:
            continue  # the provider may have forgotten the key: a resend could land twice
        out[batch_key] = keys
    return out


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# Rendered rows: (messages by delivery key, [(row, why its message cannot be built)]).
Built = tuple[dict[str, Message], list[tuple[R, str]]]


def build(held: Sequence[R], render: RenderFn[R]) -> Built[R]:
    """Render each held row; (messages by key, [(row, why it cannot be built)]).

    Raises `ContentError` (a template or lesson error, naming its file and line) as it comes:
    it is not one reader's, and marking deliveries `failed` for it would lose them.

    Pure rendering, no database: a caller may run it for the next chunk in a worker thread
    while this chunk is at the provider (`broadcast.send`).
    """
    messages: dict[str, Message] = {}
    unbuilt: list[tuple[R, str]] = []
    for row in held:
        problem: str | None
        try:
            message = render(row)
            problem = header_problem(message)
        except ContentError:
            # A template or lesson error (file:line) is the course's, the same for every
            # reader it reaches: it stops the pass with nothing marked, however few are due.
            raise
        except Exception as exc:  # one reader's stored data must not stop everyone else's mail
            problem = _one_line(exc)
        if problem:
            unbuilt.append((row, problem))
        else:
            messages[row["key"]] = message
    return messages, unbuilt


def _address(row: HeldRow) -> str:
    return row["email"] or f"subscriber {row['subscriber_id']}"


@dataclass
class Outgoing(Generic[R]):
    """One chunk's batches on their way to the provider: planned, marked, answered, stored.

    `batches` are (batch key, messages sorted by key); `recovered` names the batches sent
    again as they were under the key of an interrupted hand-over (`_resendable`).
    """

    by_key: dict[str, R]
    batches: list[tuple[str, list[Message]]]
    recovered: set[str] = field(default_factory=set)


def outgoing(held: Sequence[R], messages: Mapping[str, Message], size: int) -> Outgoing[R]:
    """New batches of at most `size` for `messages` (rows of `held` never handed over).

    Pure computation, no database: a caller may plan the next chunk's batches in a worker
    thread while this one is at the provider (`broadcast.send`).
    """
    keys = list(messages)
    batches = []
    for start in range(0, len(keys), size):
        # Sorted within the batch, so the recorded key is enough to rebuild it after a crash.
        batch = sorted((messages[k] for k in keys[start : start + size]), key=_by_key)
        batches.append((batch_key_for([m.key for m in batch]), batch))
    return Outgoing({row["key"]: row for row in held}, batches)


_by_key = attrgetter("key")


def mark_sending(engine: Engine, table: Table, provider: str, out: Outgoing, now: datetime) -> None:
    """Record every batch of `out` as `sending` under its key, in one transaction.

    Committed before any of them goes to the provider: a crash after this leaves rows that
    the next run reconciles, never resends blindly. On SQLite one ``UPDATE ... WHERE id IN``
    per batch (its rows share every value; a chunk's mark is what the provider waits for
    between two chunks of a broadcast); on PostgreSQL one ``UPDATE ... FROM unnest``.
    """
    by_id = out.by_key
    with engine.begin() as conn:
        if conn.dialect.name != "postgresql":
            for batch_key, batch in out.batches:
                first_use = batch_key not in out.recovered
                ids = [by_id[m.key]["id"] for m in batch]
                values = {"bk": batch_key, "now": now, "provider": provider}
                _sending_list(table, first_use).execute(conn, ids, values)
            return
        marks: dict[bool, list[tuple[int, str]]] = {True: [], False: []}
        for batch_key, batch in out.batches:
            first_use = batch_key not in out.recovered
            marks[first_use].extend((by_id[m.key]["id"], batch_key) for m in batch)
        for first_use, params in marks.items():
            if params:
                mark = {"state": "sending", "provider": provider, "updated_at": now}
                if first_use:
                    mark["handed_at"] = now
                _sending_unnest(table, first_use).run(conn, params, mark)


def unmark(engine: Engine, table: Table, out: Outgoing, now: datetime) -> None:
    """Give back a chunk marked `sending` that never reached the provider (a stop came
    between the mark and the hand-over): its rows return to the queue as they were."""
    ids = [out.by_key[m.key]["id"] for key, batch in out.batches for m in batch]
    if not ids:
        return
    with engine.begin() as conn:
        for start in range(0, len(ids), 500):
            conn.execute(
                update(table)
                .where(table.c.id.in_(ids[start : start + 500]), table.c.state == "sending")
                .values(
                    state="planned",
                    batch_key=None,
                    attempts=table.c.attempts - 1,
                    claimed_by=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
            )


async def hand_over(provider: Provider, out: Outgoing) -> list[Any]:
    """Send every batch of `out` concurrently (the provider's own limiter paces requests and
    connections); each answer is the provider's results or the exception the call raised."""
    return await asyncio.gather(
        *(provider.send_batch(batch, batch_key=key) for key, batch in out.batches),
        return_exceptions=True,
    )


def read_answers(
    out: Outgoing, answers: Sequence[Any], now: datetime, report: Report, streak: FailureStreak
) -> Told:
    """What the provider said about a chunk, as row updates still to store (`store_answers`).

    No database: the failure streak and the report are up to date when this returns, so the
    caller knows whether to stop before anything more goes out. `Told.failure` is the first
    exception of a call (a refused credential, or an unknown fate), to raise once stored.
    """
    told = Told()
    for (batch_key, batch), answer in zip(out.batches, answers, strict=True):
        recovered = batch_key in out.recovered
        if isinstance(answer, ProviderAuthError):
            # The credential was refused for the whole call: nothing was sent by it. The rows
            # go back to the queue exactly as they were; a recovered batch may be at the
            # provider from before the crash, so it stays `sending` under its key (recovered
            # again once the credential is fixed).
            told.refused.append(([m.key for m in batch], recovered))
            told.failure = told.failure or answer
        elif isinstance(answer, BaseException):
            # Unknown fate: the rows stay `sending` and the next run reconciles them.
            told.failure = told.failure or answer
        else:
            _outcomes(told, batch, answer, out.by_key, now, report, streak, recovered)
    told.halts = streak.tripped
    return told


def store_answers(
    engine: Engine, table: Table, told: Told, now: datetime, report: Report, streak: FailureStreak
) -> None:
    """Store what `read_answers` made of a chunk: batches whose credential was refused back
    to the queue, outcomes in one transaction, addresses suppressed; and when the failure
    streak tripped as these answers were read (`Told.halts`), its deliveries back to the
    queue with `report.halted` saying why."""
    for keys, recovered in told.refused:
        undo: dict = {"attempts": table.c.attempts - 1}
        if not recovered:
            # Never handed over: no batch key was used, so none is recorded, nor when.
            undo.update(state="claimed", batch_key=None, handed_at=None, provider=None)
        with engine.begin() as conn:
            conn.execute(
                update(table)
                .where(table.c.key.in_(keys), table.c.state == "sending")
                .values(**undo)
            )
    _store_told(engine, table, told, now, report)
    if told.halts and not report.halted:
        _halt(engine, table, streak, now, report)


async def deliver(
    engine: Engine,
    table: Table,
    provider: Provider,
    held: Sequence[R],
    render: RenderFn[R],
    now: datetime,
    report: Report,
    streak: FailureStreak | None = None,
    built: Built[R] | None = None,
) -> None:
    """Render the rows this worker holds and hand them to the provider in batches.

    A row whose message cannot be built (a line break in a stored name, a template error) is
    marked `failed` on its own, with the reason and the address; the others go on. Rows left
    `sending` by a crashed worker are recovered first: resent as the same batch under the
    same key where the provider deduplicates (`_resendable`), else looked up. Each batch is
    marked `sending` with its batch key before the call; outcomes land in one transaction per
    batch. A refused credential puts the batch back as it was and re-raises. When `streak`
    trips (too many permanent failures in a row for one reason), those deliveries go back to
    the queue and `report.halted` says why; the caller stops. `built`: these rows already
    rendered by `build` (else they are rendered here). After a stop (Ctrl-C, SIGTERM: the
    provider's `stop_on`), messages whose request did not go out return to the queue due at
    once (a recovered batch stays `sending` for the same batch later), and rows whose
    look-up was not asked stay `sending` for the next run's recovery (`report.stopped`).
    """
    streak = streak if streak is not None else FailureStreak(0)
    messages, unbuilt = built if built is not None else build(held, render)
    if unbuilt:
        record_unbuilt(engine, table, unbuilt, now, report, streak)
    # Crash recovery first: anything left `sending` may already be at the provider.
    in_flight = [row for row in held if row["state"] == "sending" and row["key"] in messages]
    recovered: dict[str, list[Message]] = {}
    for batch_key, keys in _resendable(provider, in_flight, now).items():
        recovered[batch_key] = [messages.pop(k) for k in keys]
        report.recovered += len(keys)
    in_flight = [row for row in in_flight if row["key"] in messages]
    if in_flight:
        looked = await provider.reconcile([messages[r["key"]] for r in in_flight])
        settled: list[tuple[int, dict]] = []
        not_asked: list[int] = []
        for row in in_flight:
            found = looked.get(row["key"], Lookup.UNKNOWN)
            if found is Lookup.NOT_ASKED:
                # A stop came before its look-up went out: nothing is known, so nothing is
                # decided; it stays `sending` for the next run (never review, never resent).
                not_asked.append(row["id"])
                report.stopped += 1
                messages.pop(row["key"])
                continue
            report.recovered += 1
            if found is Lookup.FOUND:
                settled.append((row["id"], {"state": "sent", "sent_at": now, "last_error": None}))
                report.sent += 1
                messages.pop(row["key"])
            elif found is Lookup.UNKNOWN:
                why = "hand-over interrupted; provider cannot tell: check by hand"
                settled.append((row["id"], {"state": "review", "last_error": why}))
                report.review += 1
                messages.pop(row["key"])
        # One transaction for the whole chunk: a crash can leave a thousand rows in flight.
        with engine.begin() as conn:
            record_many(conn, table, now, settled)
            _leave_for_recovery(conn, table, not_asked, now)
    # Rows whose earlier hand-over the provider surely did not keep go again as the very
    # same batch under the same batch key (Resend's Idempotency-Key needs key + identical body).
    again: dict[str, list[Message]] = {}
    for row in in_flight:
        earlier = row["batch_key"]
        if row["key"] in messages and earlier:
            again.setdefault(earlier, []).append(messages.pop(row["key"]))
    out = outgoing(held, messages, provider.capabilities.max_batch)
    out.batches[:0] = [*again.items(), *recovered.items()]
    out.recovered = set(recovered)
    if not out.batches:
        return
    mark_sending(engine, table, provider.name, out, now)
    told = read_answers(out, await hand_over(provider, out), now, report, streak)
    store_answers(engine, table, told, now, report, streak)
    if told.failure is not None:
        raise told.failure


async def deliver_free(
    engine: Engine,
    table: Table,
    provider: Provider,
    rows: Sequence[R],
    render: RenderFn[R],
    now: datetime,
    report: Report,
    streak: FailureStreak,
    worker: str,
    lease: timedelta,
) -> list[R]:
    """Render free (`planned`) rows, take them and mark them `sending` in one write, hand
    them to the provider and record the answers; returns the rows this worker took.

    The one-write way for a worker that reads its page without locking it (the engine on
    SQLite): `claim` then `mark_sending` rewrite each delivery row twice before the call,
    and at a million subscribers a day's rows are scattered over the table, so every rewrite
    is a page written per delivery. Here rendering comes first (no database), then one
    transaction per chunk takes each batch's rows that are still free straight to `sending`
    under its batch key (`claim_sending`). Crash safety is unchanged: a kill before that
    commit leaves the rows free; after it, they are in flight with a lease, and the next run
    reconciles them as before. Rows whose message cannot be built are taken by `claim` and
    failed (`record_unbuilt`). On any exception, what this worker holds and did not hand
    over goes back to the queue (`release`), and the exception is raised.
    """
    held: list[R] = []
    try:
        messages, unbuilt = build(rows, render)
        if unbuilt:
            unbuilt_rows = [row for row, _ in unbuilt]
            taken = {r["id"] for r in claim(engine, table, unbuilt_rows, worker, now, lease)}
            mine = [(row, why) for row, why in unbuilt if row["id"] in taken]
            held.extend(row for row, _ in mine)
            record_unbuilt(engine, table, mine, now, report, streak)
        planned = outgoing(rows, messages, provider.capabilities.max_batch)
        out = claim_sending(engine, table, provider.name, planned, worker, now, lease)
        held.extend(out.by_key.values())
        if not out.batches:
            return held
        told = read_answers(out, await hand_over(provider, out), now, report, streak)
        store_answers(engine, table, told, now, report, streak)
        if told.failure is not None:
            raise told.failure
    except BaseException:
        release(engine, table, [r["key"] for r in held], now, worker)
        raise
    return held


_CLAIM_SENDING: dict[str, IdList] = {}


def _claim_sending_list(table: Table) -> IdList:
    """``UPDATE table SET state = 'sending', <claim>, <mark> WHERE id IN (...) AND state =
    'planned' RETURNING id``: one batch taken and marked at once (built once per table)."""
    found = _CLAIM_SENDING.get(table.name)
    if found is None:
        now = bindparam("now", type_=table.c.updated_at.type)
        statement = (
            update(table)
            .where(table.c.id.in_(bindparam("ids", expanding=True)), table.c.state == "planned")
            .values(
                state="sending",
                claimed_by=bindparam("worker"),
                lease_expires_at=bindparam("lease", type_=table.c.lease_expires_at.type),
                batch_key=bindparam("bk", type_=table.c.batch_key.type),
                provider=bindparam("provider", type_=table.c.provider.type),
                attempts=table.c.attempts + 1,
                handed_at=now,
                updated_at=now,
            )
            .returning(table.c.id)
        )
        found = _CLAIM_SENDING[table.name] = IdList(statement)
    return found


def claim_sending(
    engine: Engine,
    table: Table,
    provider: str,
    out: Outgoing[R],
    worker: str,
    now: datetime,
    lease: timedelta,
) -> Outgoing[R]:
    """Take the rows of `out`'s new batches that are still free and mark them `sending` under
    their batch key, in one transaction; returns the batches as taken.

    A batch's key is a digest of its rows (`batch_key_for`), which recovery checks: a batch
    that lost rows to another worker gets a new key for the rows it kept, in the same
    transaction, before anything is handed over. `out.by_key` of the result holds only the
    rows taken.
    """
    by_key = out.by_key
    values = {"worker": worker, "lease": now + lease, "now": now, "provider": provider}
    kept: list[tuple[str, list[Message]]] = []
    with engine.begin() as conn:
        for batch_key, batch in out.batches:
            ids = [by_key[m.key]["id"] for m in batch]
            marked = _claim_sending_list(table).execute(conn, ids, {"bk": batch_key, **values})
            won = set(marked.scalars().all())
            if len(won) < len(ids):
                batch = [m for m in batch if by_key[m.key]["id"] in won]
                if not batch:
                    continue
                batch_key = batch_key_for([m.key for m in batch])
                conn.execute(
                    update(table).where(table.c.id.in_(list(won))).values(batch_key=batch_key)
                )
            kept.append((batch_key, batch))
    taken = {m.key: by_key[m.key] for _, batch in kept for m in batch}
    return Outgoing(taken, kept)


def record_unbuilt(
    engine: Engine,
    table: Table,
    unbuilt: Sequence[tuple[HeldRow, str]],
    now: datetime,
    report: Report,
    streak: FailureStreak,
) -> None:
    """Fail each delivery whose message cannot be built, naming the reason and the address.

    A row already `sending` may be at the provider from before a crash: it goes to review.
    """
    outcomes: list[tuple[int, dict]] = []
    for row, problem in unbuilt:
        reason = f"cannot build the message: {problem}"
        state = "review" if row["state"] == "sending" else "failed"
        address = _address(row)
        then = f"then `deliveries retry --address {address}`" if state == "failed" else ""
        why = f"{reason} (to {address})" + rename_hint(problem, address, then)
        outcomes.append((row["id"], {"state": state, "last_error": why}))
        if state == "failed":
            report.failed_for(why)
            if not isinstance(problem, ReaderProblem):
                streak.failed(row["key"], reason)
        else:
            report.review += 1
    record_many(engine, table, now, outcomes)
    # A template error fails every reader alike: once the streak trips, those deliveries go
    # back to the queue and the pass stops, as for a provider's refusals (`store_answers`).
    if streak.tripped and not report.halted:
        _halt(engine, table, streak, now, report)


def _halt(
    engine: Engine, table: Table, streak: FailureStreak, now: datetime, report: Report
) -> None:
    """Put the deliveries of a tripped streak back in the queue and say why in one line."""
    keys = list(dict.fromkeys(streak.keys))
    back = 0
    with engine.begin() as conn:
        for start in range(0, len(keys), 500):
            back += (
                conn.execute(
                    update(table)
                    .where(table.c.key.in_(keys[start : start + 500]), table.c.state == "failed")
                    .values(
                        state="planned",
                        next_attempt_at=None,
                        last_error=f"held back, same failure as many others: {streak.reason}",
                        updated_at=now,
                    )
                ).rowcount
                or 0
            )
    report.failed -= back
    report.halted = f"stopped: {halt_reason(len(keys), streak.reason)}. {HALT_ADVICE}"


# What `run` and `broadcast` print after a halt's reason; not stored with a broadcast's stop
# (`broadcasts list` and `show` say what to do in their own words).
HALT_ADVICE = "Fix the cause and run again"


def halt_reason(count: int, reason: str) -> str:
    """Why a pass stopped early, as one clause (kept as a broadcast's stop reason)."""
    return (
        f"{count} deliveries in a row failed with the same reason ({reason}); they went back "
        "to the queue, nothing else was sent"
    )


def stop_reason(halted: str) -> str:
    """The reason in `Report.halted` without its "stopped: " and the advice after it: what a
    broadcast keeps as the reason it stopped, said once (also for rows stored before)."""
    return halted.removeprefix("stopped: ").removesuffix(f". {HALT_ADVICE}")


@dataclass
class Told:
    """What the provider said about the batches of one chunk, to be stored together."""

    outcomes: list[tuple[int, dict]] = field(default_factory=list)  # (row id, new values)
    # The usual outcome, kept without a dict per row: (row id, provider message id) of
    # messages accepted for delivery now (state `sent`, `sent_at` = now).
    sent: list[tuple[int, str | None]] = field(default_factory=list)
    again: list[int] = field(default_factory=list)  # recovered rows left `sending`
    # Rows whose request a stop kept from going out: back to `planned` as before the mark.
    stopped: list[int] = field(default_factory=list)
    suppress: list[int] = field(default_factory=list)  # subscriber ids
    # Batches whose credential was refused: (their delivery keys, whether recovered).
    refused: list[tuple[list[str], bool]] = field(default_factory=list)
    failure: BaseException | None = None  # raised once the rest is stored
    # Whether these answers tripped the failure streak. Decided when they are read, not when
    # stored: a broadcast stores chunk N-1 while chunk N is at the provider, and N-1's rows
    # must be recorded as failed (not halted) even if N's answers tripped the streak
    # meanwhile, else N's rows, failed only after the halt, would stay failed.
    halts: bool = False


def _outcomes(
    told: Told,
    batch: list[Message],
    results: list,
    by_key: Mapping[str, HeldRow],
    now: datetime,
    report: Report,
    streak: FailureStreak,
    recovered: bool = False,
) -> None:
    """Turn the provider's answers for one batch into row updates (stored by `_store_told`)."""
    outcomes, again, to_suppress = told.outcomes, told.again, told.suppress
    sent = told.sent
    accepted = Outcome.ACCEPTED
    for message, result in zip(batch, results, strict=True):
        if result.outcome is accepted:
            if streak.keys:
                streak.passed()
            if message.send_at is None or message.send_at <= now:
                sent.append((by_key[message.key]["id"], result.provider_id))
                report.sent += 1
                continue
            # Scheduled at the provider: it reaches the reader then. The catch-up rule reads
            # `sent_at`, so a late lesson (sent now) must not look early, nor this one late.
            outcomes.append(
                (
                    by_key[message.key]["id"],
                    {
                        "state": "handed",
                        "provider_message_id": result.provider_id,
                        "sent_at": message.send_at,
                        "last_error": None,
                    },
                )
            )
            report.handed += 1
        elif result.outcome is Outcome.TRANSIENT and recovered:
            # Not sent by this call, but the call before the crash may have landed: only the
            # same batch under the same key may go again, so it stays `sending` for later.
            again.append(by_key[message.key]["id"])
            report.retried(result.error)
        elif result.outcome is Outcome.TRANSIENT and is_stopped(result.error):
            # A stop kept its request from going out (`providers.base.stopped_error`): surely
            # not sent, and owed now, so no retry delay and no error to show.
            told.stopped.append(by_key[message.key]["id"])
            report.stopped += 1
        elif result.outcome is Outcome.TRANSIENT:
            outcomes.append(
                (
                    by_key[message.key]["id"],
                    {
                        "state": "planned",
                        "last_error": result.error,
                        "next_attempt_at": now + RETRY_AFTER,
                    },
                )
            )
            report.retried(result.error)
        elif result.outcome is Outcome.PERMANENT:
            reason = result.error or "refused by the provider"
            row = by_key[message.key]
            error = f"{reason} (to {_address(row)})"
            outcomes.append((row["id"], {"state": "failed", "last_error": error}))
            report.failed_for(error)
            if result.suppress:
                # e.g. Postmark 406 (inactive recipient): never mail this address again. It
                # is about this reader, not everyone: it does not count toward a halt.
                to_suppress.append(row["subscriber_id"])
            else:
                streak.failed(message.key, reason)
        else:
            error = f"{result.error} (to {_address(by_key[message.key])})"
            outcomes.append((by_key[message.key]["id"], {"state": "review", "last_error": error}))
            report.review += 1


def _store_told(engine: Engine, table: Table, told: Told, now: datetime, report: Report) -> None:
    """Store the outcomes of a chunk's batches in one transaction; then suppress addresses."""
    if told.outcomes or told.sent or told.again or told.stopped:
        with engine.begin() as conn:
            _unsend(conn, table, told.stopped, now)
            # A reason left from before (held back by a halt, requeued by an operator, a
            # retry) is stale once the provider took it: `status` must not show it.
            sent = {"state": "sent", "sent_at": now, "last_error": None}
            record_group(conn, table, now, ("provider_message_id",), told.sent, sent)
            record_many(conn, table, now, told.outcomes)
            if told.again:
                conn.execute(
                    update(table)
                    .where(table.c.id.in_(told.again), table.c.state == "sending")
                    .values(
                        claimed_by=None,
                        lease_expires_at=now + RETRY_AFTER,
                        last_error="interrupted batch not taken this time: "
                        "the same batch goes again",
                    )
                )
    for subscriber_id in told.suppress:
        suppress(engine, subscriber_id, "bounced", now)
        report.suppressed += 1


def _unsend(conn: Connection, table: Table, ids: Sequence[int], now: datetime) -> None:
    """Put rows a stop kept from the provider back in the queue as they were before their
    `sending` mark: `planned`, due at once (no `next_attempt_at`), no batch key, hand-over
    time, provider or error, the attempt not counted. Only rows still `sending`."""
    for start in range(0, len(ids), 500):
        conn.execute(
            update(table)
            .where(table.c.id.in_(list(ids[start : start + 500])), table.c.state == "sending")
            .values({**back_in_queue(now, None), "attempts": table.c.attempts - 1})
        )


def _leave_for_recovery(conn: Connection, table: Table, ids: Sequence[int], now: datetime) -> None:
    """Leave rows a crash left in flight, which a stop kept from being looked up, `sending`
    under their batch key with the claim given back and the lease over: the next run
    recovers them at once (`expired_claims`), as it would have without the stop."""
    for start in range(0, len(ids), 500):
        conn.execute(
            update(table)
            .where(table.c.id.in_(list(ids[start : start + 500])), table.c.state == "sending")
            .values(
                claimed_by=None,
                lease_expires_at=now - timedelta(microseconds=1),
                updated_at=now,
            )
        )


def release(
    engine: Engine, table: Table, keys: Sequence[str], now: datetime, worker: str | None = None
) -> None:
    """Give claimed rows back to the queue untouched (e.g. the provider refused our credential).

    Only `claimed` rows: a row marked `sending` may be at the provider and is left for
    reconcile (except when the provider refused the whole call, see `deliver`). `worker`:
    only rows this worker holds (for a caller whose `keys` may include rows another worker
    took first, see `deliver_free`).
    """
    if not keys:
        return
    held = [table.c.key.in_(list(keys)), table.c.state == "claimed"]
    if worker is not None:
        held.append(table.c.claimed_by == worker)
    with engine.begin() as conn:
        conn.execute(
            update(table)
            .where(*held)
            .values(state="planned", claimed_by=None, lease_expires_at=None, updated_at=now)
        )


def _claim_free(table: Table, ids: ColumnElement[bool]) -> Update:
    """``UPDATE table SET state = 'claimed', ... WHERE <ids> AND state = 'planned'
    RETURNING id``: the conditional claim of free rows."""
    return (
        update(table)
        .where(ids, table.c.state == "planned")
        .values(
            state="claimed",
            claimed_by=bindparam("worker"),
            lease_expires_at=bindparam("lease", type_=table.c.lease_expires_at.type),
            updated_at=bindparam("now", type_=table.c.updated_at.type),
        )
        .returning(table.c.id)
    )


_CLAIM_LISTS: dict[str, IdList] = {}


def _claim_list(table: Table) -> IdList:
    """`_claim_free` with ``id IN (...)`` of an expanding parameter (built once per table)."""
    found = _CLAIM_LISTS.get(table.name)
    if found is None:
        statement = _claim_free(table, table.c.id.in_(bindparam("ids", expanding=True)))
        found = _CLAIM_LISTS[table.name] = IdList(statement)
    return found


def claim(
    bind: Engine | Connection,
    table: Table,
    rows: Sequence[R],
    worker: str,
    now: datetime,
    lease: timedelta,
    locked: bool = False,
) -> list[R]:
    """Take `rows` of `table` that are still free (conditional update); returns those held.

    Free rows (`planned`) are taken with one conditional UPDATE ... RETURNING for the whole
    chunk, so another worker that read the same rows wins none of them twice. Rows whose
    lease expired (their worker died) are taken over one by one, only if still expired.
    On PostgreSQL, rows another worker is locking right now are skipped, not waited for.
    Given a Connection, it joins that transaction; `locked`: the caller's transaction already
    holds these rows' locks (the engine's page read), so they are not locked again.
    """
    held: list[R] = []
    with transaction(bind) as conn:
        if conn.dialect.name == "postgresql" and rows and not locked:
            lockable = set(
                conn.execute(
                    select(table.c.id)
                    .where(table.c.id.in_(bindparam("ids", expanding=True)))
                    .with_for_update(skip_locked=True),
                    {"ids": [r["id"] for r in rows]},
                ).scalars()
            )
            rows = [r for r in rows if r["id"] in lockable]
        free = {r["id"]: r for r in rows if r["state"] == "planned"}
        if free:
            values = {"worker": worker, "lease": now + lease, "now": now}
            if conn.dialect.name == "postgresql":
                # One array parameter: an IN list of a thousand ids is rendered, sent and
                # parsed as a thousand parameters on every call (most of a worker's CPU).
                ids = table.c.id == any_(bindparam("ids", type_=ARRAY(Integer)))
                result = conn.execute(_claim_free(table, ids), {"ids": list(free), **values})
            else:
                result = _claim_list(table).execute(conn, list(free), values)
            held.extend(free[i] for i in result.scalars().all())
        for row in rows:
            if row["state"] == "planned":
                continue
            result = conn.execute(
                update(table)
                .where(
                    table.c.id == row["id"],
                    table.c.state == row["state"],
                    table.c.lease_expires_at < now,
                )
                .values(claimed_by=worker, lease_expires_at=now + lease, updated_at=now)
            )
            if result.rowcount == 1:
                held.append(row)
    return held


def _alive_here(worker: str, host: str) -> bool:
    """Whether a worker id names a process still running on this host (a zombie does not:
    see `dripmail.holders`); ids of other hosts are alive, only their lease can tell."""
    return holders.holder_alive(worker, host)


def expire_dead_claims(engine: Engine, table: Table, now: datetime, host: str) -> int:
    """End the leases of claims held by workers on this host that no longer run.

    A killed process cannot give its claims back; without this, running the same command
    again right away would wait out the lease (minutes) before finishing the job. Only ids of
    the form `host:pid` naming this host are judged (by asking the OS whether the pid
    exists); claims of other hosts keep waiting for their lease. Rows left `sending` are
    then reconciled with the provider by `deliver`, never resent blindly. Returns how many
    rows were freed.
    """
    held = and_(in_flight(table), table.c.lease_expires_at >= now)
    with engine.connect() as conn:
        workers = [
            w
            for w in conn.execute(select(table.c.claimed_by).where(held).distinct()).scalars()
            if w and w.startswith(host + ":")
        ]
    me = {f"{host}:{os.getpid()}", holders.this_process()}
    dead = [w for w in workers if w not in me and not _alive_here(w, host)]
    if not dead:
        return 0
    with engine.begin() as conn:
        result = conn.execute(
            update(table)
            .where(held, table.c.claimed_by.in_(dead))
            .values(lease_expires_at=now - timedelta(microseconds=1))
        )
    return result.rowcount or 0
