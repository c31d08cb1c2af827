"""Queries of the double opt-in email's slot: take it, take over one a crash left, settle it.

A *slot* is the right to send one confirmation email: `confirm_count` (its number) and
`confirm_sent_at` (when it was taken, part of the email's idempotency key) on the subscriber
row. Taking it records a holder (`confirm_claimed_by`, `host:pid`) with a lease; the holder
sets `confirm_handed_at` once the provider accepted the email. A slot taken and not handed
over is *owed*: its holder died, or the provider did not accept it. See
`dripmail.confirmations` for the rules that use these queries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import uuid4

from sqlalchemy import ColumnElement, Connection, and_, bindparam, func, or_, select, update

from dripmail.states import SubscriberStatus
from dripmail.store.schema import events, subscribers
from dripmail.store.subscriber_queries import insert_own_event

_s = subscribers.c
CHUNK = 500  # values per IN (...): well under every database's parameter limit


@dataclass(frozen=True, slots=True)
class Slot:
    """A confirmation slot held by this process: whom to mail and under which number."""

    subscriber_id: int
    number: int  # confirm_count after taking it: 1 for the first email
    taken_at: datetime  # confirm_sent_at (aware UTC)
    email: str
    first_name: str


def _owed() -> ColumnElement[bool]:
    """Pending, a slot taken, its email not accepted by the provider."""
    return and_(
        _s.status == SubscriberStatus.PENDING.value,
        _s.confirm_count > 0,
        _s.confirm_handed_at.is_(None),
    )


def _slots(rows: Iterable) -> list[Slot]:
    return [
        Slot(int(r.id), int(r.confirm_count), r.confirm_sent_at, r.email, r.first_name)
        for r in rows
    ]


_RETURNED = (_s.id, _s.confirm_count, _s.confirm_sent_at, _s.email, _s.first_name)


def take_new(
    conn: Connection,
    ids: Sequence[int],
    worker: str,
    now: datetime,
    *,
    quiet: timedelta,
    most: int,
    lease: timedelta,
) -> list[Slot]:
    """Take a fresh slot for each of `ids` that may be mailed now (one conditional UPDATE).

    Only a pending subscriber with fewer than `most` slots, none in the last `quiet`, and no
    slot owed gets one: so two requests racing for the same reader win one slot between them.
    """
    if not ids:
        return []
    rows = conn.execute(
        update(subscribers)
        .where(
            _s.id.in_(list(ids)),
            _s.status == SubscriberStatus.PENDING.value,
            _s.confirm_count < most,
            or_(_s.confirm_sent_at.is_(None), _s.confirm_sent_at <= now - quiet),
            or_(_s.confirm_count == 0, _s.confirm_handed_at.is_not(None)),
        )
        .values(
            confirm_count=_s.confirm_count + 1,
            confirm_sent_at=now,
            confirm_handed_at=None,
            confirm_claimed_by=worker,
            confirm_lease_expires_at=now + lease,
            updated_at=now,
        )
        .returning(*_RETURNED)
    )
    return _slots(rows)


def owed_holders(conn: Connection, ids: Sequence[int], now: datetime) -> set[str]:
    """The holders of owed slots among `ids` whose lease still runs (to ask if they live)."""
    if not ids:
        return set()
    found = conn.execute(
        select(_s.confirm_claimed_by)
        .where(
            _s.id.in_(list(ids)),
            _owed(),
            _s.confirm_claimed_by.is_not(None),
            _s.confirm_lease_expires_at >= now,
        )
        .distinct()
    ).scalars()
    return {w for w in found if w}


def held_elsewhere(
    conn: Connection, ids: Sequence[int], worker: str, now: datetime
) -> dict[str, tuple[int, datetime]]:
    """Owed slots among `ids` that another holder than `worker` holds, its lease running:
    holder -> (how many, when its last lease runs out)."""
    if not ids:
        return {}
    rows = conn.execute(
        select(_s.confirm_claimed_by, _s.confirm_lease_expires_at).where(
            _s.id.in_(list(ids)),
            _owed(),
            _s.confirm_claimed_by.is_not(None),
            _s.confirm_claimed_by != worker,
            _s.confirm_lease_expires_at >= now,
        )
    )
    found: dict[str, tuple[int, datetime]] = {}
    for holder, until in rows:
        count, last = found.get(holder, (0, until))
        found[holder] = (count + 1, max(last, until))
    return found


def take_over(
    conn: Connection,
    ids: Sequence[int],
    worker: str,
    now: datetime,
    *,
    lease: timedelta,
    dead: Iterable[str] = (),
    released: bool = True,
) -> list[Slot]:
    """Hold the owed slots among `ids` that nobody is handing over now (same number, same key).

    Free are slots whose holder's lease ran out or whose holder is in `dead`, and, with
    `released`, slots whose hand-over ended without acceptance (holder cleared). The slot
    keeps its number and time, so the email offered again has the same key and Message-ID.
    """
    if not ids:
        return []
    free = [_s.confirm_lease_expires_at < now]
    gone = sorted(set(dead))
    if gone:
        free.append(_s.confirm_claimed_by.in_(gone))
    holder = and_(_s.confirm_claimed_by.is_not(None), or_(*free))
    if released:
        holder = or_(_s.confirm_claimed_by.is_(None), holder)
    rows = conn.execute(
        update(subscribers)
        .where(_s.id.in_(list(ids)), _owed(), holder)
        .values(confirm_claimed_by=worker, confirm_lease_expires_at=now + lease, updated_at=now)
        .returning(*_RETURNED)
    )
    return _slots(rows)


def settle(
    conn: Connection, slots: Sequence[Slot], worker: str, now: datetime, *, accepted: bool
) -> int:
    """End this worker's hold on `slots`: handed over at `now` when `accepted`, else released
    (still owed, offered again by the next import or sign-up). Returns rows changed."""
    if not slots:
        return 0
    values: dict = {"confirm_claimed_by": None, "confirm_lease_expires_at": None}
    if accepted:
        values["confirm_handed_at"] = now
    result = conn.execute(
        update(subscribers)
        .where(
            _s.id == bindparam("sid"),
            _s.confirm_count == bindparam("number"),
            _s.confirm_claimed_by == worker,
        )
        .values(**values),
        [{"sid": s.subscriber_id, "number": s.number} for s in slots],
    )
    return result.rowcount or 0


def owed_among(conn: Connection, ids: Iterable[int]) -> list[int]:
    """Of `ids`, the pending subscribers owed a confirmation email: never asked, or asked and
    the email never handed over (an import with --confirm killed between the two)."""
    wanted = sorted(set(ids))
    found: list[int] = []
    for start in range(0, len(wanted), CHUNK):
        found.extend(
            conn.execute(
                select(_s.id).where(
                    _s.id.in_(wanted[start : start + CHUNK]),
                    _s.status == SubscriberStatus.PENDING.value,
                    or_(_s.confirm_count == 0, _s.confirm_handed_at.is_(None)),
                )
            ).scalars()
        )
    return found


def crashed(
    conn: Connection, now: datetime, host: str, *, after: int = 0, limit: int = CHUNK
) -> list[int]:
    """Ids above `after` (at most `limit`, by id) of owed slots whose hand-over may have been
    interrupted: held on `host` (the caller asks whether the holder lives) or by any holder
    whose lease ran out."""
    return list(
        conn.execute(
            select(_s.id)
            .where(
                _s.id > after,
                _owed(),
                _s.confirm_claimed_by.is_not(None),
                or_(
                    _s.confirm_lease_expires_at < now,
                    _s.confirm_claimed_by.startswith(f"{host}:", autoescape=True),
                ),
            )
            .order_by(_s.id)
            .limit(limit)
        ).scalars()
    )


# The event row that says why a confirmation email was not handed over.
NOT_SENT = "confirm_not_sent"


def record_not_sent(conn: Connection, slot: Slot, why: str, now: datetime) -> None:
    """Keep why `slot`'s email was not handed over (it could not be built, or the provider
    did not take it) as an event row: `status` and the reader's timeline show it."""
    # Every attempt is its own row: two at the same clock (a simulated `--now`) too.
    key = f"{NOT_SENT}-{slot.subscriber_id}-n{slot.number}-{uuid4().hex}"
    insert_own_event(conn, NOT_SENT, key, why, now, subscriber_id=slot.subscriber_id)


@dataclass(frozen=True)
class NotSent:
    """Pending readers whose confirmation email was not handed over and nobody is handing it
    over now: how many, and the first of them (by id) with the last reason recorded.

    `listed`: (address, last reason) of the first `LISTED` of them by id, the first included.
    """

    count: int
    email: str = ""
    reason: str = ""
    listed: tuple[tuple[str, str], ...] = ()


# How many readers owed a confirmation `status` names one by one (the rest are counted).
LISTED = 20


def not_sent(conn: Connection, most: int = LISTED) -> NotSent:
    """`NotSent` for `status`: owed slots with no holder (released after the email could not
    be built, the provider did not take it, or it could not be reached). Two queries and one
    per listed reader (at most `most`)."""
    stuck = and_(_owed(), _s.confirm_claimed_by.is_(None))
    count = conn.execute(select(func.count()).select_from(subscribers).where(stuck)).scalar_one()
    if not count:
        return NotSent(0)
    rows = conn.execute(
        select(_s.id, _s.email).where(stuck).order_by(_s.id).limit(max(1, most))
    ).all()
    listed = []
    for row in rows:
        reason = conn.execute(
            select(events.c.detail)
            .where(events.c.subscriber_id == row.id, events.c.type == NOT_SENT)
            .order_by(events.c.occurred_at.desc(), events.c.id.desc())
            .limit(1)
        ).scalar()
        listed.append((str(row.email), reason or ""))
    first_email, first_reason = listed[0]
    return NotSent(int(count), first_email, first_reason, tuple(listed))
