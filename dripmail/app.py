"""`Dripmail`: the one application door. The CLI and the web app parse, call one method, print.

Each audience use case (add, import, sign up, confirm, unsubscribe, pause, resume, preferences,
forget, provider events) is one method that validates its input (`dripmail.validation`), does
its database work in one transaction and returns a typed result. Taking back lessons already
handed to a provider (stop, cancel at the provider, return to the queue) is `_recall`, the one
place that sequence exists: the provider call happens after the commit, never while a write
lock is held, and what it cancelled goes back to `planned` in a second short transaction.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import RowMapping

from dripmail import schedule
from dripmail import subscribers as subs
from dripmail.app_delivery import DeliveryUseCases
from dripmail.errors import ConfigError, InputError, NotFoundError, StoreError
from dripmail.runner import Runner
from dripmail.states import SubscriberStatus
from dripmail.stopping import StopRequest
from dripmail.store import delivery_queries
from dripmail.store import subscriber_queries as q
from dripmail.store.erasure import flush_erased
from dripmail.subscriber_io import ImportReport
from dripmail.validation import (
    clean_name,
    normalise_email,
    parse_send_time,
    parse_start_date,
    parse_status,
    start_date_warning,
    validate_timezone,
    zone_note,
)

if TYPE_CHECKING:
    from dripmail.confirmations import ConfirmReport

T = TypeVar("T")
log = logging.getLogger("dripmail")


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recall:
    """Lessons already handed to the provider when the course stopped, paused or moved."""

    handed: int = 0  # scheduled at the provider at that moment
    cancelled: int = 0  # taken back there (SendGrid, Resend can)

    @property
    def still_arriving(self) -> int:
        """Handed-over lessons the provider could not take back: they will still arrive."""
        return self.handed - self.cancelled


@dataclass(frozen=True)
class Added:
    """`add_subscriber`: who, whether new, and when lesson 1 goes out (local date)."""

    id: int
    email: str
    created: bool
    status: SubscriberStatus
    first_lesson: date | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Renamed:
    """`rename`: the name before and after, and what the new name can now unblock."""

    id: int
    email: str
    status: SubscriberStatus
    old: str
    new: str
    failed_days: tuple[int, ...]  # lessons failed for good (`deliveries retry` requeues them)
    owes_confirmation: bool  # pending, its confirmation email never handed over

    @property
    def changed(self) -> bool:
        """False when the stored name already was the new one."""
        return self.old != self.new


@dataclass(frozen=True)
class SignedUp:
    """`subscribe` (web): the subscriber to send a confirmation to, or None (say nothing)."""

    subscriber_id: int | None
    zone_fallback: bool = False  # the form's zone was unusable: the course's zone was used


@dataclass(frozen=True)
class Confirmed:
    """`confirm`: the subscriber's state after the click and their next lesson."""

    id: int
    email: str
    status: SubscriberStatus
    timezone: str
    confirmed_now: bool
    next_lesson: tuple[int, datetime] | None  # (day, due time UTC)


@dataclass(frozen=True)
class Stopped:
    """`unsubscribe` / `pause`: the new status and what was taken back at the provider."""

    id: int
    email: str
    status: SubscriberStatus
    changed: bool  # False when it already was in that state
    recall: Recall = field(default_factory=Recall)


@dataclass(frozen=True)
class Resumed:
    """`resume`: the local date of the next lesson (None when none is left)."""

    id: int
    email: str
    next_lesson_date: date | None
    changed: bool = True  # False: the course was not paused (already active), nothing done


@dataclass(frozen=True)
class PreferencesSaved:
    """`set_preferences`: what changed and what was taken back at the provider."""

    id: int
    status: SubscriberStatus
    replanned: bool
    recall: Recall = field(default_factory=Recall)


@dataclass(frozen=True)
class Forgotten:
    """`forget`: how much was erased; only a hashed suppression is kept."""

    email: str
    lessons: int
    events: int
    recall: Recall = field(default_factory=Recall)
    # Messages erased from what the provider keeps on this machine (the outbox's files).
    provider_messages: int = 0
    # False when another process kept reading through every checkpoint try: the old pages
    # stay in SQLite's write-ahead log until the next complete checkpoint (README, erasure).
    flushed: bool = True


@dataclass(frozen=True)
class Timeline:
    """`timeline`: one subscriber with their lessons and events."""

    subscriber: RowMapping
    lessons: list[RowMapping]
    events: list[RowMapping]


# -- the door -------------------------------------------------------------------------------


@dataclass
class Dripmail(DeliveryUseCases, Runner):
    """The application core for one project: store, course, renderer, provider and signer.

    Built from `Project`, `Settings` and a clock (aware UTC; `--now` and tests simulate it).
    Everything is built lazily on first use (a `list` never loads the course).
    """

    def __post_init__(self) -> None:
        self._loop_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set when Ctrl-C (or SIGTERM made KeyboardInterrupt) reaches a thread waiting in
        # `call_provider`: a long call (a whole broadcast) stops at its next chunk boundary,
        # and the provider (handed this event when built, `Runner.provider`) sends no request
        # that is not on the wire yet, so the chunk at the provider ends within a request.
        self.interrupted = StopRequest()

    def now(self) -> datetime:
        """The core's clock (aware UTC)."""
        return self.clock()

    # -- provider calls and the one recall sequence --

    def _provider_loop(self) -> asyncio.AbstractEventLoop:
        """The process's one event loop for provider calls, on its own daemon thread.

        Started on first use. The provider's pooled HTTP client belongs to this loop, so every
        call (each chunk of a run, each web request's thread) reuses its connections, and no
        lock has to serialise callers: calls from several threads run concurrently on it.
        """
        with self._loop_lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="dripmail-provider-loop", daemon=True
                ).start()
                self._loop = loop
            return self._loop

    def call_provider(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run one provider coroutine on the core's event loop and wait for its result.

        Called from synchronous code (the CLI, or a web worker thread, never from inside an
        event loop: there, await it instead). Exceptions of the coroutine are raised here.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("call_provider() inside an event loop: run it in a worker thread")

        async def call() -> T:
            return await make()

        future = asyncio.run_coroutine_threadsafe(call(), self._provider_loop())
        try:
            return future.result()
        except BaseException:
            if not future.done():
                # Ctrl-C reached this thread while the call runs on the loop (the call's own
                # errors come with it done): let the hand-over in progress finish (its marks
                # and outcomes stay consistent) before the caller releases what it holds, so
                # the two never race. Setting `interrupted` makes that quick: the provider
                # sends no request not yet on the wire (those come back "not sent: stopped"
                # and return to the queue), so this waits for the requests already out; a
                # call that goes on for many chunks (`broadcast.send`) watches it too.
                self.interrupted.set()
                concurrent.futures.wait([future])
            raise

    def close(self) -> None:
        """Close the provider's connections and stop the core's event loop (if started)."""
        with self._loop_lock:
            loop, self._loop = self._loop, None
        if loop is None:
            return
        if "provider" in self.__dict__:
            # Best effort: the process is ending anyway.
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.provider.aclose(), loop).result()
        loop.call_soon_threadsafe(loop.stop)

    def _recall(self, handed: list[str], now: datetime) -> Recall:
        """Cancel handed-over lessons at the provider and return those it cancelled to the queue.

        Lessons of a stopped subscriber were already cancelled locally (so `unhand` finds
        nothing to return for them); a paused or moved course gets them back as `planned`. A
        provider that cannot cancel, or fails to, leaves them to arrive: the count says so.
        """
        if not handed:
            return Recall()
        try:
            cancelled = self.call_provider(lambda: self.cancel_handed(handed))
        except Exception as exc:  # the change itself is stored; the provider may be down
            log.error(
                "could not cancel %d scheduled lesson(s) at the provider: %s", len(handed), exc
            )
            cancelled = []
        if cancelled:
            with self.engine.begin() as conn:
                q.unhand(conn, cancelled, now)
        return Recall(handed=len(handed), cancelled=len(cancelled))

    # -- lookups --

    def ping(self) -> None:
        """Raise StoreError-like errors unless the database answers (for `/healthz`)."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def subscriber(self, ref: int | str) -> RowMapping:
        """A subscriber by id or address; NotFoundError naming what was asked for."""
        return subs.get_subscriber(self.engine, ref)

    def timeline(self, ref: int | str) -> Timeline:
        """A subscriber with every lesson (by day) and every event (by time)."""
        with self.engine.connect() as conn:
            sub = subs.get_subscriber(conn, ref)
            return Timeline(sub, q.lessons_of(conn, sub["id"]), q.events_of(conn, sub["id"]))

    def list_subscribers(self, status: str | None = None) -> Iterator[RowMapping]:
        """Every subscriber by id, optionally only one status (streamed in pages)."""
        if status is not None:
            status = _status(status)
        return q.iter_subscribers(self.engine, status)

    def next_lesson(self, subscriber_id: int) -> tuple[int, datetime] | None:
        """(day, UTC time it really goes out) of a subscriber's next lesson, or None.

        The time is `schedule.next_send_at`, the rule the engine sends by (one lesson per
        local day, weekends skipped when the course says so): a page never promises another
        day than the one the lesson arrives on.
        """
        with self.engine.connect() as conn:
            found = delivery_queries.next_lesson(conn, subscriber_id)
            if found is None:
                return None
            sub = subs.get_subscriber(conn, subscriber_id)
        # Rules only (a lesson with a typo must not take the preferences page down).
        course = self.rules
        send = time.fromisoformat(sub["send_time"]) if sub["send_time"] else course.send_time
        due = schedule.next_send_at(
            found.due_at,
            found.previous_sent_at,
            send,
            ZoneInfo(sub["timezone"]),
            course.skip_weekends,
        )
        return found.day, due

    # -- adding --

    def add_subscriber(
        self,
        email: str,
        *,
        name: str = "",
        timezone: str | None = None,
        start: str | date | None = None,
        tags: str = "",
        source: str = "cli",
    ) -> Added:
        """Add an active subscriber (the operator vouches for consent) and plan the week.

        One transaction: added, activated and planned together, or not at all. An address
        already there is left as it is (`created` False). InputError names the bad field.
        """
        now = self.now()
        address = normalise_email(email)
        zone = validate_timezone(timezone or self.course.timezone)
        today = now.astimezone(ZoneInfo(zone)).date()
        first = parse_start_date(start, today, field="--start" if source == "cli" else "start_date")
        notes = (
            zone_note(timezone or "", zone),
            start_date_warning(first, today, len(self.course.lessons)),
        )
        with self.engine.begin() as conn:
            sid, created = subs.add_subscriber(
                conn,
                address,
                first_name=clean_name(name, "--name" if source == "cli" else "first_name"),
                timezone=zone,
                status=SubscriberStatus.PENDING,
                consent_source=source,
                now=now,
                start_date=first,
                tags=tags,
            )
            if not created:
                row = q.by_id(conn, sid)
                assert row is not None
                return Added(sid, address, False, SubscriberStatus(row["status"]))
            begins = subs.activate(conn, sid, self.course, now)
        return Added(
            sid,
            address,
            True,
            SubscriberStatus.ACTIVE,
            begins,
            tuple(note for note in notes if note),
        )

    def import_subscribers(
        self,
        path: Path,
        *,
        confirm: bool = False,
        dry_run: bool = False,
        progress: Callable[[int, int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> ImportReport:
        """Import a CSV file (see `dripmail.subscriber_io`).

        Encoding checked before anything is written; every row is validated like every other
        door; each batch of rows is added, activated (or left pending with `confirm`) and
        planned in one transaction. `progress(lines_done, lines_total)` is called per batch;
        `stop`, once set (Ctrl-C), ends it between two batches (`ImportReport.stopped`).
        """
        from dripmail.subscriber_io import import_csv

        report = import_csv(
            self.engine,
            path,
            self.course,
            self.course.timezone,
            self.now(),
            confirm=confirm,
            dry_run=dry_run,
            progress=progress,
            stop=stop,
        )
        if report.handed:
            # Readers the file marks as unsubscribed, bounced or complained were stopped
            # here: what the provider holds for them is taken back, as `unsubscribe` does.
            self._recall(report.handed, self.now())
        return report

    def subscribe(
        self,
        email: str,
        *,
        name: str = "",
        timezone: str = "",
        ip: str | None = None,
        user_agent: str | None = None,
        page: str | None = None,
        source: str = "web-form",
    ) -> SignedUp:
        """A web sign-up: a pending subscriber with a consent record (double opt-in).

        The address must be valid (InputError naming `email`); a time zone the browser sent
        that is not usable falls back to the course's zone instead of refusing the reader.
        A suppressed address gets `subscriber_id` None: the page says the same either way.
        Someone who unsubscribed earlier is reopened as pending with a fresh consent record.
        A reader still pending who gives a name gets it stored (a ``renamed`` event).
        """
        now = self.now()
        raw = email.strip()
        if not raw:
            raise InputError("email: please enter your email address")
        try:
            address = normalise_email(raw)
        except InputError as exc:
            # The validator's own sentence, without the address echoed back before it.
            text = str(exc)
            detail = text.partition("is not a valid email address: ")[2] or text
            detail = detail.removeprefix("email: ").rstrip(".")
            raise InputError(f"email: that does not look like an email address. {detail}") from None
        fallback = False
        # The course's zone from its rules: a sign-up is stored while a lesson is broken (its
        # confirmation email waits until the files load: `send_confirmations`).
        try:
            zone = validate_timezone(timezone.strip()) if timezone.strip() else self.rules.timezone
        except InputError:
            zone, fallback = self.rules.timezone, True
        first_name = clean_name(name, "first_name")
        consent = {
            "consent_source": source,
            "consent_ip": ip,
            "consent_user_agent": user_agent,
            "consent_page": page,
        }
        with self.engine.begin() as conn:
            try:
                sid, created = subs.add_subscriber(
                    conn,
                    address,
                    timezone=zone,
                    status=SubscriberStatus.PENDING,
                    now=now,
                    first_name=first_name,
                    **consent,  # type: ignore[arg-type]
                )
            except InputError:  # suppressed (bounced, complained, forgotten): say nothing
                return SignedUp(None, fallback)
            if not created:
                subs.rejoin(conn, sid, now, **consent)  # type: ignore[arg-type]
                if first_name and subs.get_subscriber(conn, sid)["status"] == "pending":
                    # Not confirmed yet, they consent again: the name they give now is the
                    # one to greet them by (it also replaces a stored name no header can
                    # carry, so the confirmation offered again can be built). An empty field
                    # keeps the stored name; an active reader's is never changed this way.
                    subs.rename(conn, sid, first_name, now, "replaced by a new sign-up")
        return SignedUp(sid, fallback)

    def send_confirmations(self, subscriber_ids: Iterable[int]) -> int:
        """Send the double opt-in email to pending subscribers that may be mailed now.

        Returns how many the provider accepted. An email a crash kept from the provider is
        offered again (same key); a new one only after the quiet period (see
        `dripmail.confirmations`).
        """
        from dripmail.confirmations import send_confirmations

        return send_confirmations(self, subscriber_ids, self.now(), call=self.call_provider)

    def confirm_subscribers(self, subscriber_ids: Iterable[int]) -> ConfirmReport:
        """Like `send_confirmations`, told apart for the operator: new emails sent, emails a
        crash interrupted offered again (same key), owed emails another live process still
        holds (`dripmail.confirmations.ConfirmReport`)."""
        from dripmail.confirmations import confirm

        return confirm(self, subscriber_ids, self.now(), call=self.call_provider)

    def resend_interrupted_confirmations(self) -> ConfirmReport:
        """Offer again the confirmation emails whose hand-over a crash interrupted.

        For the `run` pass; returns a `ConfirmReport` (`offered_again`: accepted by the
        provider; `failed`: could not be built or not taken, with the first reason).
        """
        from dripmail.confirmations import resend_interrupted

        return resend_interrupted(self, self.now(), call=self.call_provider)

    # -- the reader's choices --

    def confirm(self, subscriber_id: int) -> Confirmed:
        """The double opt-in click: pending -> active, lessons planned by the start rule.

        Idempotent: a second click (or one racing the first) changes nothing. A stopped
        subscriber is not restarted.
        """
        now = self.now()
        with self.engine.begin() as conn:
            sub = subs.get_subscriber(conn, subscriber_id)
            confirmed_now = False
            if sub["status"] == SubscriberStatus.PENDING:
                subs.activate(conn, subscriber_id, self.course, now)
                subs.plan_welcome(conn, subscriber_id, self.course, now)
                subs.record_event(
                    conn,
                    "dripmail",
                    f"confirm-{subscriber_id}-{now.isoformat()}",
                    "confirmed",
                    now,
                    now,
                    subscriber_id=subscriber_id,
                    detail="link",
                )
                confirmed_now = True
                sub = subs.get_subscriber(conn, subscriber_id)
            nxt = q.next_open_lesson(conn, subscriber_id)
        return Confirmed(
            subscriber_id,
            sub["email"],
            SubscriberStatus(sub["status"]),
            sub["timezone"],
            confirmed_now,
            nxt,
        )

    def unsubscribe(self, ref: int | str, source: str = "cli") -> Stopped:
        """Stop all mail at once (idempotent) and take back what the provider holds."""
        now = self.now()
        with self.engine.begin() as conn:
            sub = subs.get_subscriber(conn, ref)
            sid = int(sub["id"])
            if sub["status"] in subs.STOPPED:
                return Stopped(sid, sub["email"], SubscriberStatus(sub["status"]), False)
            handed = subs.unsubscribe(conn, sid, now, source=source)
        recall = self._recall(handed, now)
        return Stopped(sid, sub["email"], SubscriberStatus.UNSUBSCRIBED, True, recall)

    def pause(self, ref: int | str) -> Stopped:
        """Freeze the course; lessons the provider holds are taken back where it can."""
        now = self.now()
        with self.engine.begin() as conn:
            sub = subs.get_subscriber(conn, ref)
            sid = int(sub["id"])
            was = sub["status"]
            handed = subs.pause(conn, sid, now)
            if was != "paused":
                _note(conn, sid, "paused", "cli", now)
        recall = self._recall(handed, now)
        return Stopped(sid, sub["email"], SubscriberStatus.PAUSED, was != "paused", recall)

    def rename(self, ref: int | str, name: str) -> Renamed:
        """Correct a reader's first name (cleaned by the sign-up's rules), recorded as an event.

        Says which failed lessons and whether an owed confirmation email the old name kept
        from being built can now go (the caller offers them: `deliveries retry`,
        `confirm_subscribers`).
        """
        from dripmail import retry
        from dripmail.store import confirmation_queries as cq

        now = self.now()
        with self.engine.begin() as conn:
            sub = subs.get_subscriber(conn, ref)
            sid = int(sub["id"])
            old, new = subs.rename(conn, sid, name, now)
            owed = bool(cq.owed_among(conn, [sid]))
        # Only the failed lessons a retry would put back (retry's own plan; the send time
        # does not matter for which, and the course need not load): a reader who stopped
        # mail, or whose later lesson went out, has none to offer.
        planned = retry.plan(self.engine, retry.Selection(addresses=(sub["email"],)), now, time(0))
        failed = tuple(sorted(item.lesson.lesson_day for item in planned.requeue))
        status = SubscriberStatus(sub["status"])
        return Renamed(sid, sub["email"], status, old, new, failed, owed)

    def resume(self, ref: int | str) -> Resumed:
        """Continue a paused course: the next lesson at the next local send time. An active
        course is left as it is (`Resumed.changed` False); InputError for any other status."""
        now = self.now()
        with self.engine.begin() as conn:
            sub = subs.get_subscriber(conn, ref)
            if sub["status"] == SubscriberStatus.ACTIVE:
                # As a second `pause` is: asked twice, the second time finds it done.
                return Resumed(int(sub["id"]), sub["email"], None, changed=False)
            first = subs.resume(conn, int(sub["id"]), self.rules, now)
            _note(conn, int(sub["id"]), "resumed", "cli", now)
        return Resumed(int(sub["id"]), sub["email"], first)

    def set_preferences(
        self,
        subscriber_id: int,
        *,
        newsletters: bool,
        timezone: str = "",
        send_time: str = "",
        course: str = "",
    ) -> PreferencesSaved:
        """Save the preferences page: newsletter, zone, send time, pause/resume.

        Everything is validated before anything is written (InputError naming the field). A
        new zone or time re-plans the lessons left from the next local send time; lessons the
        provider holds are taken back first where it can. A stopped subscriber is refused.
        """
        now = self.now()
        rules = self.rules  # send time and weekends: kept while a lesson is broken
        with self.engine.begin() as conn:
            sub = subs.get_subscriber(conn, subscriber_id)
            if sub["status"] in subs.STOPPED:
                raise InputError("This address is unsubscribed: nothing was changed")
            zone = validate_timezone(timezone.strip() or sub["timezone"])
            current = sub["send_time"] or rules.send_time.strftime("%H:%M")
            wanted_time = _parse_send_time(send_time or current)
            if course not in ("", "active", "paused"):
                raise InputError(f"course: {course[:20]!r} is not active or paused")
            timing_changed = zone != sub["timezone"] or wanted_time != current
            default = rules.send_time.strftime("%H:%M")
            stored_time = None if wanted_time == default and not sub["send_time"] else wanted_time
            q.update_subscriber(
                conn, subscriber_id, now, newsletters=newsletters, timezone=zone,
                send_time=stored_time,
            )  # fmt: skip
            status = sub["status"]
            handed: list[str] = []
            replan = False
            if status == "active" and course == "paused":
                handed = subs.pause(conn, subscriber_id, now)
                status = SubscriberStatus.PAUSED
                _note(conn, subscriber_id, "paused", "preferences page", now)
            elif status == "paused" and course == "active":
                subs.resume(conn, subscriber_id, rules, now)  # re-plans from the next morning
                status = SubscriberStatus.ACTIVE
                replan = True
                _note(conn, subscriber_id, "resumed", "preferences page", now)
            elif status == "active" and timing_changed:
                handed = q.handed_ids(conn, subscriber_id)
                subs.reschedule(conn, subscriber_id, rules, now)
                replan = True
            changes = []
            if timing_changed:
                changes.append(f"send time {wanted_time} {zone}")
            if bool(newsletters) != bool(sub["newsletters"]):
                changes.append("newsletters " + ("on" if newsletters else "off"))
            if changes:
                _note(conn, subscriber_id, "preferences", ", ".join(changes), now)
        recall = self._recall(handed, now)
        if replan and recall.cancelled:
            # What the provider gave back is planned again: move it to the new timing too.
            self.replan(subscriber_id)
        return PreferencesSaved(subscriber_id, SubscriberStatus(status), replan, recall)

    def replan(self, subscriber_id: int) -> date | None:
        """Re-plan a subscriber's lessons not yet handed over, by the one planning function."""
        with self.engine.begin() as conn:
            return subs.reschedule(conn, subscriber_id, self.rules, self.now())

    def forget(self, ref: int | str) -> Forgotten:
        """Erase a subscriber: rows and events deleted, a hashed suppression kept."""
        now = self.now()
        try:
            with self.engine.connect() as conn:
                subs.get_subscriber(conn, ref)
        except NotFoundError:
            # Erased already, but a failure may have left the outbox's files: erase those.
            erased = self.forget_at_provider(ref) if isinstance(ref, str) else 0
            if erased:
                return Forgotten(str(ref), 0, 0, provider_messages=erased)
            raise
        with self.engine.begin() as conn:
            sub = subs.get_subscriber(conn, ref)
            sid = int(sub["id"])
            lessons = len(q.lessons_of(conn, sid))
            events = len(q.events_of(conn, sid))
            handed = subs.forget(conn, sid, now)
        recall = self._recall(handed, now)
        # After the commit: the WAL still holds the pages as they were, address included.
        flushed = flush_erased(self.engine)
        # After the rows are gone (a failure here: `forget ADDRESS` again erases the files).
        return Forgotten(
            sub["email"],
            lessons,
            events,
            recall,
            self.forget_at_provider(sub["email"]),
            flushed,
        )

    def forget_at_provider(self, *addresses: str) -> int:
        """Erase what the provider keeps on this machine for `addresses` (the outbox's files
        and index lines); returns messages erased. HTTP providers keep nothing here."""
        try:
            provider = self.provider
        except ConfigError:
            return 0  # no usable provider configured: it holds nothing here either
        hook = getattr(provider, "forget", None)
        if hook is None:
            return 0
        try:
            return int(hook(list(addresses)))
        except OSError as exc:
            raise StoreError(
                f"could not erase {', '.join(addresses)} from the {provider.name} "
                f"provider's files: {exc}; fix that and run `subscribers forget` again"
            ) from exc

    # -- provider events --

    def apply_events(self, provider: str, headers: dict[str, str], body: bytes) -> Any:
        """A provider's webhook request: verified, stored once, mail stopped where it says.

        Returns `dripmail.webhooks.apply.Applied` with `recall` set. Raises WebhookAuthError
        (401), InputError (400), ConfigError, StoreError as the route maps them.
        """
        from dripmail.webhooks import ingest, verify_and_parse

        now = self.now()
        batch = verify_and_parse(provider, headers, body, self.settings, now)
        applied = ingest(self.engine, batch, now)
        applied.recall = self._recall(applied.to_cancel, now)
        return applied

    # -- deliveries waiting for review (dripmail.review) --

    def deliveries_for_review(self) -> list[Any]:
        """Deliveries whose hand-over was ambiguous, oldest first (`review.ReviewRow`s)."""
        from dripmail import review

        return review.waiting(self.engine)

    def settle_review(self, keys: list[str] | None, decision: str, by: str, note: str = "") -> Any:
        """Settle review deliveries (`keys`, None: all) as ``sent`` or ``resend``.

        Recorded with `by` and the core's clock; returns `review.Settled`. See `review.settle`.
        """
        from dripmail import review

        if decision not in ("sent", "resend"):
            raise InputError(f"settle as {decision!r}: use sent or resend")
        return review.settle(self.engine, keys, decision, by, self.now(), note)  # type: ignore[arg-type]

    # -- failed lessons back in the queue (dripmail.retry) --

    def plan_retry(self, selection: Any) -> Any:
        """The failed lessons `selection` (`retry.Selection`) picks: those that would go back
        in the queue (with when they go out) and those left, with why. Writes nothing."""
        from dripmail import retry

        course = self.course
        return retry.plan(
            self.engine, selection, self.now(), course.send_time, course.skip_weekends
        )

    def retry_failed(self, planned: Any, by: str, note: str = "") -> Any:
        """Requeue the lessons of a `plan_retry` result, each only if it still may go; the
        requeue is recorded with `by`, `note` and the core's clock (`retry.apply`)."""
        from dripmail import retry

        return retry.apply(self.engine, planned, by, note, self.now())


def _note(conn: Any, subscriber_id: int, kind: str, detail: str, now: datetime) -> None:
    """Record what the reader or the operator changed, for `subscribers show`."""
    import uuid

    subs.record_event(
        conn,
        "dripmail",
        f"{kind}-{subscriber_id}-{uuid.uuid4().hex}",
        kind,
        now,
        now,
        subscriber_id=subscriber_id,
        detail=detail,
    )


def _status(value: str) -> str:
    return parse_status(value, "--status").value


def _parse_send_time(value: str) -> str:
    return parse_send_time(value, "send time")
