"""Putting failed lessons back in the queue: the operator's retry after fixing a cause.

A lesson fails for good when the provider refuses it (an unverified sender, a rejected
template) or its message cannot be built from the reader's stored data. The engine never
retries those on its own, and treats them as done: the next lesson follows. Once the cause is
fixed, `deliveries retry` selects failed lessons (by address, reason, date) and puts them
back to `planned`, keeping the promises the engine keeps:

- never to a reader who stopped mail: unsubscribed, bounced, complained, suppressed (their
  address hash is in `suppressions`) or erased (their rows are gone: naming the address says
  so); pending readers are left too. Each lesson left is reported with why.
- in order: a lesson whose reader already got a later lesson (or has one in review or in
  flight) is left, since it would arrive after it. A requeued lesson goes out on the next
  `run` at the earliest, never on the same local day as the lesson before it
  (`schedule.next_send_at`), and the lessons after it wait for it.
- at most once: the row goes back as never handed over (no batch key, no provider id), which
  is safe because a failed lesson was refused, never accepted; the same statement checks the
  state again, so two operators at the same moment never requeue it twice, and a later
  lesson a `run` has claimed blocks it. Left open: a `run` that read the next lesson as due
  (this one counting as done) and is still rendering its chunk claims it after the retry
  committed; the engine checks the lesson before at read time only (its hot path), so a
  retry during a pass can, in that window, let the next lesson go first.

Each requeue is an event row (provider ``dripmail``, type ``lesson_retry``, detail ``lesson
<day> by <who>[: note] (failed: <reason>)``), shown with the subscriber's timeline.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from dripmail import schedule
from dripmail.errors import InputError, NotFoundError
from dripmail.states import DONE, STOPPED
from dripmail.store import delivery_queries, retry_queries
from dripmail.store.retry_queries import FailedLesson
from dripmail.subscribers import email_hash
from dripmail.validation import normalise_email, one_line

__all__ = ["FailedLesson", "Left", "Requeue", "RetryPlan", "Selection", "apply", "plan"]


@dataclass(frozen=True)
class Selection:
    """Which failed lessons to retry; every filter given must match.

    `addresses`: readers' addresses (any case); `reason`: text the stored reason contains (any
    case); `since`/`until`: UTC days, inclusive, on which the lesson was marked failed;
    `everything`: no filter (must be said explicitly).
    """

    addresses: tuple[str, ...] = ()
    reason: str = ""
    since: date | None = None
    until: date | None = None
    everything: bool = False

    @property
    def empty(self) -> bool:
        """No filter given."""
        return not (self.addresses or self.reason.strip() or self.since or self.until)

    def describe(self) -> str:
        """The filters in words, for "nothing matches ..."."""
        parts = []
        if self.addresses:
            parts.append("to " + ", ".join(self.addresses))
        if self.reason.strip():
            parts.append(f"with a reason containing {self.reason.strip()!r}")
        if self.since:
            parts.append(f"failed on or after {self.since}")
        if self.until:
            parts.append(f"failed on or before {self.until}")
        return " ".join(parts) if parts else "at all"


@dataclass(frozen=True)
class Requeue:
    """A failed lesson that goes back in the queue, and when it goes out.

    `goes_out` (aware UTC) when the engine will send it, or None with `waits` saying what
    it waits for (the lesson before it, the reader's resume).
    """

    lesson: FailedLesson
    goes_out: datetime | None
    waits: str = ""


@dataclass(frozen=True)
class Left:
    """A failed lesson left as it is, and why (one short clause), and the why's kind."""

    lesson: FailedLesson
    why: str
    kind: str
    # Never requeued, whatever is fixed: the reader stopped mail (unsubscribed, bounced,
    # complained, suppressed) or already got a later lesson. Not final: a pending reader, a
    # later lesson in review or in flight, a lesson that changed meanwhile.
    final: bool = False


@dataclass
class RetryPlan:
    """What `apply` would do (`plan`) or did (`apply`): lessons requeued and lessons left.

    `now` is the clock the plan was made at; `moved` counts lessons that changed between the
    plan and the write (settled by someone else: left as they were).
    """

    now: datetime
    requeue: list[Requeue] = field(default_factory=list)
    left: list[Left] = field(default_factory=list)

    def left_by_kind(self, final: bool | None = None) -> list[tuple[str, int]]:
        """(kind, count) of the lessons left, most first: "3 unsubscribed, 1 bounced";
        `final` True or False: only the final (or only the other) ones."""
        return Counter(
            item.kind for item in self.left if final is None or item.final is final
        ).most_common()

    @property
    def final(self) -> list[Left]:
        """The lessons left that no retry will ever requeue (`Left.final`)."""
        return [item for item in self.left if item.final]

    @property
    def open(self) -> list[Left]:
        """The lessons left that a later retry may still requeue (not `Left.final`)."""
        return [item for item in self.left if not item.final]


def _day_bounds(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def _label(day: int) -> str:
    return "the welcome email" if day == 0 else f"lesson {day}"


def plan(
    engine: Engine,
    selection: Selection,
    now: datetime,
    default_send_time: time,
    skip_weekends: bool = False,
) -> RetryPlan:
    """The failed lessons `selection` picks, sorted into those that may go out and those left.

    Writes nothing. InputError when no filter is given without `everything`, or when
    `since` is after `until`; NotFoundError naming an address that is not a subscriber (an
    erased address says it was erased: its lessons are gone with it).
    """
    if selection.empty and not selection.everything:
        raise InputError("say which failed lessons to retry: --address, --reason, --since, "
                         "--until, or --all for every one")  # fmt: skip
    if selection.since and selection.until and selection.since > selection.until:
        raise InputError(f"--since {selection.since} is after --until {selection.until}")
    with engine.connect() as conn:
        ids = _subscriber_ids(conn, selection.addresses)
        found = retry_queries.failed_lessons(
            conn,
            subscriber_ids=ids,
            reason=selection.reason.strip(),
            since=_day_bounds(selection.since) if selection.since else None,
            until=_day_bounds(selection.until + timedelta(days=1)) if selection.until else None,
        )
        hashes = {row.email: email_hash(row.email, normalised=True) for row in found}
        barred = retry_queries.suppressed(conn, set(hashes.values()))
        readers = {row.subscriber_id for row in found}
        history = delivery_queries.lessons_of(conn, readers) if readers else []
    out = RetryPlan(now)
    going: set[tuple[int, int]] = set()
    for row in found:
        why = _why_left(row, barred.get(hashes[row.email]))
        if why:
            out.left.append(Left(row, *why))
        else:
            going.add((row.subscriber_id, row.lesson_day))
    # The engine's own reading of the day the lesson before took (a failed one counts from
    # when it failed), so the time promised here is the time `run` keeps.
    done = {
        (h["subscriber_id"], h["lesson_day"]): delivery_queries.day_taken_at(
            h["state"], h["sent_at"], h["due_at"], h["updated_at"]
        )
        for h in history
        if h["state"] in DONE
    }
    for row in found:
        if (row.subscriber_id, row.lesson_day) not in going:
            continue
        out.requeue.append(_when(row, going, done, now, default_send_time, skip_weekends))
    return out


def _subscriber_ids(conn, addresses: tuple[str, ...]) -> list[int] | None:
    """The readers named by `addresses` (None: no address filter); NotFoundError naming one
    that is not a subscriber, saying so when it was erased."""
    if not addresses:
        return None
    from dripmail.store import subscriber_queries as q

    ids = []
    for given in addresses:
        try:
            address = normalise_email(given)
        except InputError:
            raise InputError(f"--address {given!r} is not an email address") from None
        row = q.by_email(conn, address)
        if row is None:
            reason = retry_queries.suppressed(conn, [email_hash(address, normalised=True)])
            if reason:
                raise NotFoundError(
                    f"{address} was {_suppressed_words(next(iter(reason.values())))}: "
                    "nothing of theirs can be sent again"
                )
            raise NotFoundError(f"no subscriber {address}: see `subscribers list`")
        ids.append(int(row["id"]))
    return ids


def _suppressed_words(reason: str) -> str:
    return "erased (`subscribers forget`)" if reason == "forgotten" else f"suppressed ({reason})"


def _why_left(row: FailedLesson, suppressed: str | None) -> tuple[str, str, bool] | None:
    """(why, kind, final) a failed lesson may not go out again, or None when it may."""
    status = row.subscriber_status
    if status in STOPPED:
        return f"{row.email} is {status}", status, True
    if suppressed:
        return f"{row.email} is {_suppressed_words(suppressed)}", "suppressed", True
    if status not in retry_queries.REQUEUABLE_STATUSES:
        return f"{row.email} is {status} (not confirmed)", status, False
    if row.later_day is not None:
        gone = row.later_state in ("sent", "handed")
        went = (
            "already went out"
            if gone
            else _LATER_STATES.get(row.later_state or "", "is on its way")
        )
        return (
            f"{row.email}'s {_label(row.later_day)} {went}: {_label(row.lesson_day)} would "
            "arrive after it",
            "a later lesson went out" if gone else "a later lesson is on its way",
            gone,
        )
    return None


# How a later lesson that has not gone out yet stands in the way, in words.
_LATER_STATES = {"review": "is in review", "claimed": "is in flight", "sending": "is in flight"}


def _when(
    row: FailedLesson,
    going: set[tuple[int, int]],
    done: dict[tuple[int, int], datetime],
    now: datetime,
    default_send_time: time,
    skip_weekends: bool,
) -> Requeue:
    """When the engine will send a requeued lesson (`engine._eligible`'s rule)."""
    if row.subscriber_status == "paused":
        return Requeue(row, None, "when the reader resumes the course")
    before = (row.subscriber_id, row.lesson_day - 1)
    if row.lesson_day > 1 and before in going:
        return Requeue(row, None, f"after {_label(row.lesson_day - 1)} (one a day)")
    if row.lesson_day > 1 and before not in done:
        return Requeue(row, None, f"after {_label(row.lesson_day - 1)}")
    send = time.fromisoformat(row.send_time) if row.send_time else default_send_time
    due = schedule.next_send_at(
        row.due_at,
        done.get(before) if row.lesson_day > 1 else None,
        send,
        ZoneInfo(row.timezone),
        skip_weekends,
    )
    return Requeue(row, max(due, now))


def apply(engine: Engine, planned: RetryPlan, by: str, note: str, now: datetime) -> RetryPlan:
    """Requeue the lessons `planned.requeue` holds; returns what was done.

    Each lesson is requeued only if the same checks still hold when it is written
    (`retry_queries.requeue`); one that changed meanwhile is moved to `left`. `by` names who
    asked (recorded with `now`, aware UTC, and `note` in an event row); InputError when empty.
    Written in transactions of up to 500 lessons.
    """
    who = one_line(by, "--by").strip()
    if not who:
        raise InputError("--by is empty: say who puts these lessons back in the queue")
    note = one_line(note, "--note")
    asked = f"by {who}" + (f": {note.strip()}" if note.strip() else "")
    out = RetryPlan(now, left=list(planned.left))
    items = planned.requeue
    for start in range(0, len(items), 500):
        with engine.begin() as conn:
            for item in items[start : start + 500]:
                row = item.lesson
                was = row.last_error or "no reason recorded"
                if retry_queries.requeue(conn, row, now, f"back in the queue, asked {asked}"):
                    # Which lesson: the timeline lists events without their delivery key.
                    detail = f"{_label(row.lesson_day)} {asked} (failed: {was})"
                    retry_queries.record(conn, row, detail, now)
                    out.requeue.append(item)
                else:
                    out.left.append(Left(row, "it changed meanwhile (see `status`)", "changed"))
    return out
