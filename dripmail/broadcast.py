"""Newsletter broadcasts: one issue to every eligible subscriber, once each, resumable.

A broadcast is identified by its file's slug (the file name without `.md`) and the hash of its
content. Starting it plans one `broadcast_deliveries` row per eligible subscriber under the
unique key ``nl-<broadcast>-s<subscriber>`` (so a re-run can never plan anyone twice),
streaming subscribers by id in chunks of `CHUNK`; sending claims chunks with a lease (the same
conditional claim as lessons, `dripmail.handover.claim`; pages `send` plans as it goes are
written already claimed by it, see `plan_pages`) and hands them over through the same
careful path (`dripmail.handover.deliver`: batches of the provider's size, each marked
`sending` with its batch key before the call, outcomes recorded per batch). Killing it at any
moment and running the same command again continues where it stopped; rows that were in flight
are reconciled with the provider, never resent blindly.

Sending is a pipeline over one worker thread, which makes every database call: while chunk
N is at the provider, the worker stores what the provider said about chunk N-1, claims and
renders chunk N+1 and has the provider build its requests (`BaseProvider.prepare_batch`).
Chunk N+1 is marked `sending` only once N's answers are read (so a halt or
a refused credential in N hands nothing more over), and goes out as soon as that mark is
committed, before N's outcomes are written: a kill leaves at most two chunks `sending`.

Memory stays flat whatever the list size: at most two chunks of messages are held (the one at
the provider and the next, claimed and rendered meanwhile), plus the answers about the one
before (row ids and provider ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import (
    Engine,
    String,
    and_,
    bindparam,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.engine import RowMapping

from dripmail.content import Newsletter
from dripmail.errors import InputError, NotFoundError
from dripmail.handover import (
    Built,
    CallAsync,
    FailureStreak,
    Outgoing,
    RenderFn,
    Report,
    Told,
    build,
    claim,
    deliver,
    expire_dead_claims,
    hand_over,
    mark_sending,
    outgoing,
    read_answers,
    record_unbuilt,
    release,
    run_in_new_loop,
    stop_reason,
    store_answers,
    unmark,
)
from dripmail.heap import collector_for_a_pass
from dripmail.message import Message
from dripmail.providers.base import BaseProvider, Provider
from dripmail.store.bulk import Rows
from dripmail.store.db import small_page_cache
from dripmail.store.handover_rows import HeldRow
from dripmail.store.schema import (
    broadcast_deliveries,
    broadcasts,
    events,
    in_flight,
    subscribers,
)

LEASE = timedelta(minutes=10)
CHUNK = 1000
# Statuses that may receive a newsletter; unsubscribed, bounced and complained never do, and
# pending (unconfirmed) or paused subscribers are left alone. Forgotten ones no longer exist.
SEGMENTS = {"all": ("active", "completed"), "in-course": ("active",), "graduates": ("completed",)}
OPEN_STATES = ("planned", "claimed", "sending")
T = TypeVar("T")


class BroadcastRow(HeldRow):
    """One newsletter copy as `send` holds it: the hand-over's columns (`HeldRow`) plus the
    reader's status and newsletter choice, to skip readers who left after planning."""

    status: str
    newsletters: bool
    claimed_by: str | None  # a row `plan_pages` wrote claimed by this worker is held as is


@dataclass
class _Chunk:
    """One chunk of copies as `send` prepares it: claimed and rendered, not yet handed over."""

    held: list[BroadcastRow]
    skipped: int  # readers who left or stopped newsletters since planning (marked skipped)
    read: list[BroadcastRow]  # every row read, held or not (the next chunk starts after it)
    built: Built[BroadcastRow]
    # Its batches, planned (not yet marked `sending`); None when a crash left rows of it
    # `sending`: those take the careful path (`handover.deliver`).
    out: Outgoing[BroadcastRow] | None


@dataclass
class BroadcastReport(Report):
    """What one `send` pass did (`skipped`: readers who left after planning)."""

    skipped: int = 0


def content_hash(newsletter: Newsletter) -> str:
    """Hash of what readers get: subject, preheader and body."""
    text = "\x00".join((newsletter.subject, newsletter.preheader, newsletter.body))
    return hashlib.sha256(text.encode()).hexdigest()


def key_for(broadcast_id: int, subscriber_id: int) -> str:
    """The delivery key of one subscriber's copy of one broadcast."""
    return f"{key_prefix(broadcast_id)}{subscriber_id}"


def key_prefix(broadcast_id: int) -> str:
    """What every delivery key of one broadcast starts with (the subscriber id follows)."""
    return f"nl-{broadcast_id}-s"


def eligible(segment: str):
    """The WHERE clause for subscribers who may receive a newsletter of `segment` now."""
    if segment.startswith("tag:") and len(segment) > 4:
        tag = segment[4:].lower()  # stored lower-case (subscribers.normalise_tags)
        if not tag.replace("-", "").replace("_", "").isalnum():
            raise InputError(f"segment {segment!r}: a tag is letters, digits, - and _")
        # Tags are stored comma-separated; match a whole tag, `_` taken literally.
        pattern = "%," + tag.replace("_", "\\_") + ",%"
        return and_(
            subscribers.c.status.in_(SEGMENTS["all"]),
            subscribers.c.newsletters.is_(True),
            ("," + func.replace(subscribers.c.tags, " ", "") + ",").like(pattern, escape="\\"),
        )
    if segment not in SEGMENTS:
        raise InputError(f"segment {segment!r}: use all, in-course, graduates or tag:NAME")
    return and_(subscribers.c.status.in_(SEGMENTS[segment]), subscribers.c.newsletters.is_(True))


def count_eligible(engine: Engine, segment: str) -> int:
    """How many subscribers a broadcast to `segment` would reach now."""
    # One pass over the list, each page read once: no reason to keep it cached (store.db).
    with small_page_cache(engine), engine.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(subscribers).where(eligible(segment))
        ).scalar_one()


def nobody_to_send_to(segment: str) -> str:
    """The one line saying `segment` has no eligible reader now, with what to do about it."""
    check = "the tag" if segment.startswith("tag:") else "the segment"
    return (
        f"segment {segment!r} has no subscriber who can receive newsletters now: nothing was "
        f"started; check {check} (`subscribers list` shows who is there) or add subscribers first"
    )


def sample(engine: Engine, segment: str, size: int = 5) -> list[RowMapping]:
    """A few subscribers of the segment (email, first_name), to show before sending."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(subscribers.c.email, subscribers.c.first_name)
                .where(eligible(segment))
                .order_by(subscribers.c.id)
                .limit(size)
            ).mappings()
        )


def find(engine: Engine, ref: int | str) -> RowMapping:
    """A broadcast by id or slug; NotFoundError with a hint otherwise."""
    cond = broadcasts.c.id == ref if isinstance(ref, int) else broadcasts.c.slug == ref
    with engine.connect() as conn:
        row = conn.execute(select(broadcasts).where(cond)).mappings().first()
    if row is None:
        raise NotFoundError(f"no broadcast {ref!r}: see `broadcasts list`")
    return row


def existing(engine: Engine, slug: str) -> RowMapping | None:
    """The broadcast for this newsletter slug, if one was created."""
    with engine.connect() as conn:
        return conn.execute(select(broadcasts).where(broadcasts.c.slug == slug)).mappings().first()


def sent_to_nobody(engine: Engine, row: RowMapping) -> bool:
    """Whether `row` is `sent` without a single copy ever planned: an older dripmail marked a
    broadcast to an empty segment sent for good. Nobody got it, so it counts as not started
    (`open_broadcast` opens it again) rather than "already sent"."""
    if row["status"] != "sent":
        return False
    with engine.connect() as conn:
        planned = conn.execute(
            select(broadcast_deliveries.c.id)
            .where(broadcast_deliveries.c.broadcast_id == row["id"])
            .limit(1)
        ).first()
    return planned is None


def check_resumable(row: RowMapping, newsletter: Newsletter, segment: str) -> None:
    """Refuse to continue `row` with this file: cancelled, edited after start, other segment."""
    where = f"{newsletter.path.name} (broadcast {row['id']})"
    if row["status"] == "cancelled":
        raise InputError(f"{where} was cancelled; save the file under a new name to send it")
    edited = row["content_hash"] and row["content_hash"] != content_hash(newsletter)
    if row["started_at"] and edited:
        raise InputError(
            f"{where} was edited after it started sending; readers so far got the old text. "
            "Restore the file, or save the new text under a new file name for a new broadcast"
        )
    if row["started_at"] and row["segment"] != segment:
        raise InputError(f"{where} was started for segment {row['segment']!r}, not {segment!r}")


def open_broadcast(
    engine: Engine,
    newsletter: Newsletter,
    segment: str,
    now: datetime,
    scheduled_at: datetime | None = None,
    *,
    recipients: int | None = None,
) -> RowMapping:
    """The broadcast row for this newsletter, created on first use.

    Until it starts sending, the file, segment and schedule may change (the row follows the
    file); once started, only the same text and segment continue it, and a cancelled one is
    refused. The unique slug makes two processes starting the same file share one row.

    A broadcast not started yet whose segment has no eligible reader now is refused with
    InputError before anything is written (`recipients`: that count, if the caller has it):
    started, it would be marked sent to nobody for good, and a typo in a tag would burn the
    file for that segment. One that already started continues whatever the count; one an
    older version marked sent to nobody (`sent_to_nobody`) is opened again like a new one.
    """
    eligible(segment)
    digest = content_hash(newsletter)
    row = existing(engine, newsletter.slug)
    reopen = row is not None and sent_to_nobody(engine, row)
    if row is None or row["started_at"] is None or reopen:
        if recipients is None:
            recipients = count_eligible(engine, segment)
        if recipients == 0:
            raise InputError(nobody_to_send_to(segment))
    if row is not None and reopen:
        with engine.begin() as conn:
            conn.execute(
                update(broadcasts)
                .where(broadcasts.c.id == row["id"], broadcasts.c.status == "sent")
                .values(
                    status="scheduled",
                    started_at=None,
                    finished_at=None,
                    subject=newsletter.subject,
                    segment=segment,
                    file_segment=newsletter.segment,
                    content_hash=digest,
                    scheduled_at=scheduled_at,
                )
            )
        return find(engine, row["id"])
    if row is None:
        try:
            with engine.begin() as conn:
                conn.execute(
                    insert(broadcasts).values(
                        slug=newsletter.slug,
                        subject=newsletter.subject,
                        segment=segment,
                        file_segment=newsletter.segment,
                        status="scheduled",
                        scheduled_at=scheduled_at,
                        content_hash=digest,
                        created_at=now,
                    )
                )
        except Exception:
            # Another process created it at the same moment: continue theirs.
            if existing(engine, newsletter.slug) is None:
                raise
        return find(engine, newsletter.slug)
    check_resumable(row, newsletter, segment)
    if row["started_at"] is None:
        changes = {
            "subject": newsletter.subject,
            "segment": segment,
            "file_segment": newsletter.segment,
            "content_hash": digest,
            "scheduled_at": scheduled_at,
        }
        if any(row[k] != v for k, v in changes.items()):
            with engine.begin() as conn:
                conn.execute(
                    update(broadcasts)
                    .where(broadcasts.c.id == row["id"], broadcasts.c.started_at.is_(None))
                    .values(**changes)
                )
            return find(engine, row["id"])
    return row


def plan(
    engine: Engine,
    broadcast_id: int,
    segment: str,
    now: datetime,
    chunk: int = CHUNK,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Plan one delivery per eligible subscriber not planned yet; returns how many were added.

    Streams subscribers by id (keyset pagination, `chunk` ids per transaction), so memory does
    not grow with the list; the unique (broadcast, subscriber) pair makes a re-run add only
    those who were not planned before. `progress` gets the subscribers read by each page.
    """
    added = 0
    for read, new in plan_pages(engine, broadcast_id, segment, now, chunk):
        added += new
        if progress:
            progress(read)
    return added


def plan_pages(
    engine: Engine,
    broadcast_id: int,
    segment: str,
    now: datetime,
    chunk: int = CHUNK,
    claim_for: str | None = None,
) -> Iterator[tuple[int, int]]:
    """`plan`, one page (one transaction) per step: yields (subscribers read, copies added).

    `send` walks it a page ahead of its claims, so the first copies go out while the rest
    of the list is still being planned; it passes its worker id as `claim_for`, and the
    copies are written already claimed by it (lease `LEASE` from `now`), one write each
    instead of an insert and then a claim. A kill leaves them claimed by a dead worker:
    taken over like any other claim of one (`expire_dead_claims`, then the lease).

    Each page is one ``INSERT ... SELECT`` in the database: the eligible readers of the
    page who have no copy yet, their keys (`key_for`) written by SQL, nothing per reader
    in Python.
    """
    last = 0
    page = (
        select(subscribers.c.id)
        .where(eligible(segment), subscribers.c.id > bindparam("last"))
        .order_by(subscribers.c.id)
        .limit(chunk)
        .subquery()
    )
    bounds = select(func.count(), func.max(page.c.id))
    statement = _plan_statement(segment, claim_for is not None)
    values: dict[str, Any] = {
        "broadcast": broadcast_id,
        "prefix": key_prefix(broadcast_id),
        "now": now,
    }
    if claim_for is not None:
        values.update(worker=claim_for, lease=now + LEASE)
    while True:
        with engine.begin() as conn:
            read, upto = conn.execute(bounds, {"last": last}).one()
            if not read:
                return
            added = conn.execute(statement, {**values, "last": last, "upto": upto}).rowcount
        last = upto
        yield read, added or 0


def _plan_statement(segment: str, claimed: bool):
    """``INSERT INTO broadcast_deliveries ... SELECT`` the eligible readers with ids in
    (:last, :upto] who have no copy of :broadcast yet: planned, or claimed by :worker."""
    bd, s = broadcast_deliveries, subscribers
    copy = {
        "broadcast_id": bindparam("broadcast", type_=bd.c.broadcast_id.type),
        "subscriber_id": s.c.id,
        # The same text as `key_for`: the prefix, then the id in decimal.
        "key": sql_cast(bindparam("prefix", type_=String), String) + sql_cast(s.c.id, String),
        "state": literal_column("'claimed'" if claimed else "'planned'"),
        "attempts": literal_column("0"),
        "updated_at": bindparam("now", type_=bd.c.updated_at.type),
    }
    if claimed:
        copy["claimed_by"] = bindparam("worker", type_=bd.c.claimed_by.type)
        copy["lease_expires_at"] = bindparam("lease", type_=bd.c.lease_expires_at.type)
    have = (
        select(bd.c.id)
        .where(bd.c.broadcast_id == bindparam("broadcast"), bd.c.subscriber_id == s.c.id)
        .exists()
    )
    rows = select(*(value.label(name) for name, value in copy.items())).where(
        eligible(segment),
        s.c.id > bindparam("last"),
        s.c.id <= bindparam("upto"),
        ~have,
    )
    return insert(bd).from_select(list(copy), rows)


# What sending reads of a copy: the hand-over's columns and whether the reader still wants it.
_HELD_COLUMNS = (
    broadcast_deliveries.c.id,
    broadcast_deliveries.c.key,
    broadcast_deliveries.c.subscriber_id,
    broadcast_deliveries.c.state,
    broadcast_deliveries.c.batch_key,
    broadcast_deliveries.c.handed_at,
    broadcast_deliveries.c.claimed_by,
    subscribers.c.email,
    subscribers.c.first_name,
    subscribers.c.status,
    subscribers.c.newsletters,
)


def _chunk_query() -> Rows:
    """The rows of one chunk to claim: free (planned and due), left by a dead worker (lease
    over), or planned claimed by this worker (`plan_pages`); `after` an id, `chunk` at most."""
    bd = broadcast_deliveries
    now = bindparam("now", type_=bd.c.updated_at.type)
    free = and_(
        bd.c.state == "planned", or_(bd.c.next_attempt_at.is_(None), bd.c.next_attempt_at <= now)
    )
    expired = and_(in_flight(bd), bd.c.lease_expires_at < now)
    mine = and_(bd.c.state == "claimed", bd.c.claimed_by == bindparam("worker"))
    return Rows(
        select(*_HELD_COLUMNS)
        .join(subscribers, subscribers.c.id == bd.c.subscriber_id)
        # `broadcast_id + 0`: walk the primary key from `after` and stop after a chunk. On
        # the (broadcast, subscriber) index the planner read every row of the broadcast and
        # sorted them by id for each chunk: quadratic in the list (63 ms a chunk at 16,000).
        .where(
            (bd.c.broadcast_id + 0) == bindparam("broadcast"),
            bd.c.id > bindparam("after"),
            or_(free, expired, mine),
        )
        .order_by(bd.c.id)
        .limit(bindparam("chunk"))
    )


_CHUNK_ROWS = _chunk_query()


def _claim_chunk(
    engine: Engine, broadcast_id: int, worker: str, now: datetime, chunk: int, after: int = 0
) -> tuple[list[BroadcastRow], int, list[BroadcastRow]]:
    """Claim up to `chunk` rows still to send (free, or left by a dead worker) after id `after`.

    Returns the held rows, how many were skipped because their subscriber left or stopped
    newsletters since planning (marked `skipped`, never sent), and the rows read. Paging by
    id (keyset) keeps each read as cheap for the last chunk of a long list as for the first.
    Rows `plan_pages` wrote already claimed by `worker` are held as they are.
    """
    bd = broadcast_deliveries
    params = {"broadcast": broadcast_id, "after": after, "now": now, "worker": worker}
    with engine.connect() as conn:
        read = _CHUNK_ROWS.fetch(conn, {**params, "chunk": chunk})
    rows = cast(list[BroadcastRow], read)
    # Someone who left or stopped newsletters since planning gets nothing. A row already
    # `sending` may be at the provider: it is reconciled like any other, not skipped.
    own = {r["id"] for r in rows if r["claimed_by"] == worker and r["state"] == "claimed"}
    gone = [
        r["id"]
        for r in rows
        if (r["state"] == "planned" or r["id"] in own)
        and (r["status"] not in SEGMENTS["all"] or not r["newsletters"])
    ]
    if gone:
        with engine.begin() as conn:
            mine = and_(bd.c.state == "claimed", bd.c.claimed_by == worker)
            conn.execute(
                update(bd)
                .where(bd.c.id.in_(gone), or_(bd.c.state == "planned", mine))
                .values(state="skipped", claimed_by=None, lease_expires_at=None, updated_at=now)
            )
    skip = set(gone)
    held = [r for r in rows if r["id"] in own and r["id"] not in skip]
    others = [r for r in rows if r["id"] not in own and r["id"] not in skip]
    held += claim(engine, bd, others, worker, now, LEASE)
    return held, len(gone), rows


def release_claims(engine: Engine, broadcast_id: int, worker: str, now: datetime) -> int:
    """Give back every copy of the broadcast `worker` still holds claimed (never marked
    `sending`): what a pass that stops early planned or claimed ahead. Returns how many."""
    bd = broadcast_deliveries
    with engine.begin() as conn:
        result = conn.execute(
            update(bd)
            .where(
                bd.c.broadcast_id == broadcast_id,
                in_flight(bd),
                bd.c.state == "claimed",
                bd.c.claimed_by == worker,
            )
            .values(state="planned", claimed_by=None, lease_expires_at=None, updated_at=now)
        )
    return result.rowcount or 0


def start(engine: Engine, broadcast_id: int, now: datetime) -> datetime:
    """Mark the broadcast as sending (once); returns when it started.

    From then on its text and segment are fixed (`check_resumable`), and its start time
    stamps every reader's links (`render_fn`).
    """
    with engine.begin() as conn:
        conn.execute(
            update(broadcasts)
            .where(broadcasts.c.id == broadcast_id, broadcasts.c.started_at.is_(None))
            .values(started_at=now, status="sending")
        )
        return conn.execute(
            select(broadcasts.c.started_at).where(broadcasts.c.id == broadcast_id)
        ).scalar_one()


# The reason kept when a send was stopped by Ctrl-C or SIGTERM (nothing to fix: run it again).
INTERRUPTED = "interrupted by Ctrl-C or SIGTERM"


def record_stop(engine: Engine, broadcast_id: int, reason: str, now: datetime) -> None:
    """Keep why a send of this broadcast stopped (one line) and when, for `broadcasts show`
    and `list`. Its status stays as it was: running it again continues it."""
    with engine.begin() as conn:
        conn.execute(
            update(broadcasts)
            .where(broadcasts.c.id == broadcast_id)
            .values(stopped_reason=reason, stopped_at=now)
        )


def clear_stop(engine: Engine, broadcast_id: int) -> None:
    """Forget an earlier stop once a send pass of this broadcast ended without one."""
    with engine.begin() as conn:
        conn.execute(
            update(broadcasts)
            .where(broadcasts.c.id == broadcast_id, broadcasts.c.stopped_reason.is_not(None))
            .values(stopped_reason=None, stopped_at=None)
        )


def stopped(row: RowMapping) -> str:
    """Why `row` stopped and waits to be run again, or "" (sent, cancelled, or never
    stopped: a stop no longer matters once it is finished)."""
    if row["status"] in ("sent", "cancelled"):
        return ""
    # A row stored before the reason was kept alone still carries "stopped: ... run again".
    return stop_reason(str(row["stopped_reason"] or ""))


def render_fn(
    compiled, public_url: str, signer, broadcast_id: int, issued_at: datetime | None = None
) -> RenderFn[BroadcastRow]:
    """Personalise the compiled newsletter for a claimed row: name, unsubscribe, preferences.

    `compiled` is the newsletter's `CompiledEmail` (MJML compiled once for the broadcast);
    each reader costs one join of the compiled parts and the links the newsletter shows.
    `issued_at` (the broadcast's start, see `start`) stamps the links, so a copy rendered
    again after a crash is the same bytes: a batch resent under its idempotency key must be
    the same request.
    """
    ref = str(broadcast_id)
    if issued_at is not None:
        # The links only the newsletter shows (and unsubscribe), signed with what every
        # reader shares computed once: the same bytes as the general way below.
        personalise = compiled.for_readers(public_url, signer, issued_at, kind="broadcast", ref=ref)

        def render_fast(row: BroadcastRow) -> Message:
            return personalise(row["subscriber_id"], row["email"], row["first_name"], row["key"])

        return render_fast

    from dripmail.render import recipient_for

    links = compiled.links  # only what the newsletter shows, and unsubscribe for its header

    def render(row: BroadcastRow) -> Message:
        reader = {
            "id": row["subscriber_id"],
            "email": row["email"],
            "first_name": row["first_name"],
        }
        recipient = recipient_for(reader, public_url, signer, issued_at, links)
        return compiled.personalise(recipient, key=row["key"], kind="broadcast", ref=ref)

    return render


def default_worker_id() -> str:
    """host:pid, the form `expire_dead_claims` can judge."""
    from dripmail.engine import default_worker_id as engine_worker_id

    return engine_worker_id()


def send(
    engine: Engine,
    provider: Provider,
    broadcast: RowMapping,
    render: RenderFn[BroadcastRow],
    now: datetime,
    *,
    worker: str | None = None,
    chunk: int = CHUNK,
    halt_after: int = 0,
    progress: Callable[[int], None] | None = None,
    call: CallAsync | None = None,
    plan_segment: str | None = None,
    planned: Callable[[int], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> BroadcastReport:
    """Hand over everything planned for this broadcast; safe to run again after a crash.

    Claims of a worker on this host that is no longer running are taken over at once (a
    re-run right after a kill does not wait for the lease). `halt_after` consecutive
    permanent failures with one reason stop it with `report.halted` saying why (0: never;
    see `handover.FailureStreak`). `progress` is called with the number of rows finished
    after each chunk. `plan_segment`: plan the readers of this segment as it goes (`plan`,
    a page ahead of the claims, `planned` called with each page's count) instead of sending
    only what was planned before; the broadcast is finished only once the whole list was.
    `stop` is asked after each chunk (true: Ctrl-C came): the chunk at the provider is
    finished and recorded, the one prepared meanwhile goes back, and the pass ends there.
    """
    report = BroadcastReport()
    streak = FailureStreak(halt_after)
    worker = worker or default_worker_id()
    bd = broadcast_deliveries
    start(engine, broadcast["id"], now)
    expire_dead_claims(engine, bd, now, socket.gethostname())

    size = provider.capabilities.max_batch
    pages = (
        iter(())
        if plan_segment is None
        else plan_pages(engine, broadcast["id"], plan_segment, now, chunk, claim_for=worker)
    )
    planning = [plan_segment is not None]  # still pages to plan (a list: set in the worker)

    def plan_page() -> bool:
        """Plan the next page of the list, if any; False once the whole list is planned."""
        if not planning[0]:
            return False
        page = next(pages, None)
        if page is None:
            planning[0] = False
            return False
        if planned:
            planned(page[0])
        return True

    def prepare(after: int) -> _Chunk:
        """Plan a page more, claim the chunk after id `after`, render it and plan its batches
        (in the worker thread, see `run`): no provider call, nothing marked `sending` yet."""
        while True:
            more = plan_page()  # copies are planned in id order: always a page ahead
            held, skipped, read = _claim_chunk(engine, broadcast["id"], worker, now, chunk, after)
            if read or not more:
                break  # else: pages planned on an earlier run, nothing left to claim yet
        built = build(held, render)
        # A row left `sending` by a crash takes the careful path (`deliver`: reconciled with
        # the provider first); a chunk without one goes out as planned here.
        fresh = all(r["state"] != "sending" for r in held)
        out = outgoing(held, built[0], size) if fresh else None
        if out is not None and isinstance(provider, BaseProvider):
            for batch_key, batch in out.batches:
                provider.prepare_batch(batch, batch_key)  # its request encoded here, not later
        return _Chunk(held, skipped, read, built, out)

    def mark(part: _Chunk) -> None:
        """Fail the rows whose message cannot be built; mark the rest `sending` (worker)."""
        assert part.out is not None
        if part.built[1]:
            record_unbuilt(engine, bd, part.built[1], now, report, streak)
        if part.out.batches:
            mark_sending(engine, bd, provider.name, part.out, now)

    def store(told: Told, part: _Chunk) -> None:
        """Store a chunk's answers; a chunk whose credential was refused goes back (worker)."""
        store_answers(engine, bd, told, now, report, streak)
        if told.failure is not None:
            release(engine, bd, [r["key"] for r in part.held], now)

    async def run() -> None:
        # One event loop for the whole broadcast, so the provider's pooled connections are
        # reused from the first chunk to the last. Every database call runs in one worker
        # thread, in the order given: while chunk N is at the provider, the worker stores
        # the answers about chunk N-1 and claims and renders chunk N+1, so the provider is
        # not left waiting for our bookkeeping nor we for its answers.
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1, thread_name_prefix="dripmail-broadcast") as pool:

            def in_worker(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
                return loop.run_in_executor(pool, fn, *args)

            ahead: asyncio.Future[_Chunk] | None = in_worker(prepare, 0)
            # The chunk handed over last, once answered: its outcomes are stored after the
            # next chunk's `sending` mark, so the next goes out while they are written.
            answered: tuple[Told, _Chunk] | None = None
            storing: asyncio.Future[None] | None = None
            try:
                while ahead is not None:
                    part = await ahead
                    ahead = None
                    report.skipped += part.skipped
                    if progress and part.skipped:
                        progress(part.skipped)
                    if not part.read:
                        return
                    marked = in_worker(mark, part) if part.out is not None else None
                    if answered is not None:
                        storing = in_worker(store, *answered)
                        answered = None
                    # The next chunk is claimed and rendered while this one is at the
                    # provider. It is only claimed (never marked `sending`) until this one's
                    # answers are read, so a halt or an error below hands nothing more over.
                    ahead = in_worker(prepare, part.read[-1]["id"])
                    if part.out is None:
                        # Rows a crash left `sending`: everything before is stored first,
                        # then the careful path reconciles them with the provider.
                        if storing is not None:
                            await storing
                            storing = None
                        await _deliver_carefully(part)
                    elif marked is not None:
                        answered = await _hand_over(part, marked)
                        if storing is not None:
                            await storing  # chunk N-1 stored: its errors surface here
                            storing = None
                        told = answered[0]
                        if told.failure is not None or streak.tripped:
                            answered = None
                            await in_worker(store, told, part)
                            if told.failure is not None:
                                raise told.failure
                    if progress and part.held:
                        progress(len(part.held))
                    if report.halted or (stop is not None and stop()):
                        return
            finally:
                # Whatever stopped the loop: answers already read are stored (never left
                # `sending` for a lookup), and the chunk claimed meanwhile goes back.
                try:
                    if storing is not None:
                        await asyncio.wait([storing])
                    if answered is not None:
                        await in_worker(store, *answered)
                finally:
                    if ahead is not None:
                        # Its claims are given back below; a failed claim holds nothing.
                        with contextlib.suppress(Exception):
                            await ahead
                    # The chunk claimed meanwhile and any page planned ahead (written
                    # claimed by this worker) go back to the queue.
                    await in_worker(release_claims, engine, broadcast["id"], worker, now)

    async def _hand_over(part: _Chunk, marked: asyncio.Future[None]) -> tuple[Told, _Chunk]:
        """Hand a fresh chunk over once its `sending` mark is committed; its answers read."""
        assert part.out is not None
        try:
            await marked
        except BaseException:
            # Nothing of it went out: the marked rows (if the mark landed) and the claims
            # go back as they were.
            await asyncio.wait([marked])
            unmark(engine, bd, part.out, now)
            release(engine, bd, [r["key"] for r in part.held], now)
            raise
        answers = await hand_over(provider, part.out) if part.out.batches else []
        told = read_answers(part.out, answers, now, report, streak)
        part.out.batches = [(key, []) for key, _ in part.out.batches]  # messages sent: free them
        part.built = ({}, [])
        return told, part

    async def _deliver_carefully(part: _Chunk) -> None:
        if not part.held:
            return  # all skipped, or another worker won them: read on
        try:
            await deliver(engine, bd, provider, part.held, render, now, report, streak, part.built)
        except BaseException:
            release(engine, bd, [r["key"] for r in part.held], now)
            raise

    # Objects alive now (modules, templates, the engine) are never garbage: leave them out
    # of the collector's passes while chunks come and go, as a lesson pass does (nested
    # safely inside `run`'s). Request bodies need no collection: `providers.http` frees each
    # with its response (flat memory in bench_broadcast.py).
    with collector_for_a_pass():
        (call or run_in_new_loop)(run)
    if not planning[0]:  # a halt may stop it before the end of the list was planned
        finish_if_done(engine, broadcast["id"], now)
    return report


def needs_attention(stats: BroadcastStats) -> bool:
    """Whether a broadcast sent by its command needs the operator after a pass (exit 3).

    Copies failed or wait for review; or copies are left for later (the provider could not
    be reached, or asked us to wait): a broadcast started by hand continues only when its
    command runs again (`due` leaves it to the operator), so they would never go out alone.
    """
    return bool(stats.failed or stats.pending)


def finish_if_done(engine: Engine, broadcast_id: int, now: datetime) -> bool:
    """Mark the broadcast `sent` once nothing is left to hand over; True if it is done."""
    with engine.begin() as conn:
        left = conn.execute(
            select(func.count())
            .select_from(broadcast_deliveries)
            .where(
                broadcast_deliveries.c.broadcast_id == broadcast_id,
                broadcast_deliveries.c.state.in_(OPEN_STATES),
            )
        ).scalar_one()
        if left:
            return False
        conn.execute(
            update(broadcasts)
            .where(broadcasts.c.id == broadcast_id, broadcasts.c.status == "sending")
            .values(status="sent", finished_at=now)
        )
    return True


def due(engine: Engine, now: datetime) -> list[RowMapping]:
    """Scheduled broadcasts whose time has come and that still have something to do.

    A broadcast started by hand (no schedule) and interrupted is left to the operator: it
    continues when they run the same command again, never from `run` behind their back.
    """
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(broadcasts)
                .where(
                    broadcasts.c.status.in_(("scheduled", "sending")),
                    broadcasts.c.scheduled_at.is_not(None),
                    broadcasts.c.scheduled_at <= now,
                )
                .order_by(broadcasts.c.scheduled_at, broadcasts.c.id)
            ).mappings()
        )


@dataclass(frozen=True)
class Cancelled:
    """What `cancel` did: the broadcast, and how many deliveries it stopped."""

    broadcast: RowMapping
    stopped: int
    accepted: int


def cancel(engine: Engine, broadcast_id: int, now: datetime) -> Cancelled:
    """Cancel a broadcast: everything not yet handed over is stopped.

    Before it starts that is everyone. While it is sending (e.g. interrupted with Ctrl-C), the
    rest is stopped; copies a running process already holds still go. A finished broadcast
    cannot be cancelled.
    """
    row = find(engine, broadcast_id)
    if row["status"] == "sent":
        raise InputError(
            f"broadcast {broadcast_id} was sent at {row['finished_at']:%Y-%m-%d %H:%M} UTC: "
            "nothing left to cancel"
        )
    bd = broadcast_deliveries
    with engine.begin() as conn:
        conn.execute(
            update(broadcasts)
            .where(broadcasts.c.id == broadcast_id)
            .values(status="cancelled", finished_at=row["finished_at"] or now)
        )
        stopped = conn.execute(
            update(bd)
            .where(bd.c.broadcast_id == broadcast_id, bd.c.state == "planned")
            .values(state="cancelled", updated_at=now)
        ).rowcount
    return Cancelled(find(engine, broadcast_id), stopped or 0, stats(engine, broadcast_id).accepted)


@dataclass(frozen=True)
class BroadcastStats:
    """Counts for `broadcasts list` and `broadcasts show`."""

    recipients: int
    accepted: int
    failed: int
    pending: int
    skipped: int
    bounced: int
    complained: int
    unsubscribed: int
    opened: int
    clicked: int


def failures(engine: Engine, broadcast_id: int, limit: int = 20) -> tuple[list[RowMapping], int]:
    """Why copies of one broadcast failed or wait for review: (up to `limit` rows of
    ``state, last_error`` (the reason ends with the address), how many there are in all)."""
    bd = broadcast_deliveries
    failed = (bd.c.broadcast_id == broadcast_id, bd.c.state.in_(("failed", "review")))
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(bd).where(*failed)).scalar_one()
        rows = list(
            conn.execute(
                select(bd.c.state, bd.c.last_error).where(*failed).order_by(bd.c.id).limit(limit)
            ).mappings()
        )
    return rows, total


def stats(engine: Engine, broadcast_id: int) -> BroadcastStats:
    """Recipients and outcomes of one broadcast; events matched by its delivery keys.

    Opened and clicked count readers (distinct delivery keys), not events.
    """
    bd = broadcast_deliveries
    with engine.connect() as conn:
        states: dict[str, int] = dict(
            conn.execute(
                select(bd.c.state, func.count())
                .where(bd.c.broadcast_id == broadcast_id)
                .group_by(bd.c.state)
            ).all()
        )
        kinds: dict[str, int] = dict(
            conn.execute(
                select(events.c.type, func.count(func.distinct(events.c.delivery_key)))
                .where(events.c.delivery_key.like(f"{key_prefix(broadcast_id)}%"))
                .group_by(events.c.type)
            ).all()
        )
    return BroadcastStats(
        recipients=sum(v for k, v in states.items() if k not in ("skipped", "cancelled")),
        accepted=states.get("sent", 0) + states.get("handed", 0),
        failed=states.get("failed", 0) + states.get("review", 0),
        pending=sum(states.get(s, 0) for s in OPEN_STATES),
        skipped=states.get("skipped", 0) + states.get("cancelled", 0),
        bounced=kinds.get("bounced", 0),
        complained=kinds.get("complained", 0),
        unsubscribed=kinds.get("unsubscribed", 0),
        opened=kinds.get("opened", 0),
        clicked=kinds.get("clicked", 0),
    )


def list_broadcasts(engine: Engine) -> list[RowMapping]:
    """Every broadcast, newest first."""
    with engine.connect() as conn:
        return list(conn.execute(select(broadcasts).order_by(broadcasts.c.id.desc())).mappings())
