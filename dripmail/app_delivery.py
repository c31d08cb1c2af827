"""The delivery use cases of the application core: the run pass, broadcasts and test-send.

`DeliveryUseCases` is mixed into `dripmail.app.Dripmail` (the one door): the CLI and the web
app call these methods and print their typed results; the policy lives here (which clock may
really send, the handover window, the halt rule, which scheduled broadcasts are due) and the
queries live in the store layer. Provider calls run on the core's one event loop
(`Dripmail.call_provider`), so a pass reuses one pooled client from the first chunk to the last.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import RowMapping

from dripmail.errors import DripmailError, InputError
from dripmail.providers.base import Outcome, SendResult

if TYPE_CHECKING:
    from dripmail.broadcast import BroadcastReport, BroadcastStats, Cancelled
    from dripmail.config import Project, Settings
    from dripmail.confirmations import ConfirmReport
    from dripmail.content import Newsletter
    from dripmail.engine import RunReport
    from dripmail.providers.base import Provider
    from dripmail.stats import Status
    from dripmail.store.delivery_queries import DueRow

# How long `run --loop` sleeps at most before looking again (new sign-ups, retries).
LOOP_RECHECK = timedelta(seconds=60)


@dataclass(frozen=True)
class ScheduledBroadcast:
    """One scheduled broadcast `run` found due: what it did, or why it could not."""

    id: int
    slug: str
    report: BroadcastReport | None = None
    stats: BroadcastStats | None = None
    error: str = ""  # the file is missing, broken or was edited after it started

    @property
    def attention(self) -> bool:
        """Copies failed, were held back, or the broadcast could not be sent."""
        if self.error:
            return True
        halted = bool(self.report and (self.report.halted or self.report.unreachable))
        return halted or bool(self.stats and self.stats.failed)


@dataclass(frozen=True)
class RunResult:
    """`run`: the lesson pass at `at` (UTC) and the scheduled broadcasts that were due."""

    at: datetime
    lessons: RunReport
    broadcasts: list[ScheduledBroadcast] = field(default_factory=list)
    # Confirmation emails a crash had kept from the provider, accepted now.
    confirmations: int = 0
    # Of those, emails that could not be built (a stored name no header can carry) or that
    # the provider did not take, and the first reason with its address: reported like a
    # lesson failed for good (`run` exits 3, `status` lists them).
    confirmations_failed: int = 0
    confirmation_failure: str = ""
    # A dry run: the scheduled broadcasts a real run would send (none is sent).
    would_broadcast: list[DueBroadcast] = field(default_factory=list)

    @property
    def halted(self) -> str:
        """Why the lesson pass stopped early (one line), or ""."""
        return self.lessons.halted

    @property
    def attention(self) -> bool:
        """Some delivery failed or waits for review, or the provider kept the lessons from
        going out (`Report.provider_down`: unreachable, or none taken for a reason other
        than a rate limit; unlike a 429 pause, that does not pass by itself): `run` exits 3."""
        lessons = bool(self.lessons.failed or self.lessons.review or self.lessons.provider_down())
        confirmations = bool(self.confirmations_failed)
        return lessons or confirmations or any(b.attention for b in self.broadcasts)


@dataclass(frozen=True)
class DueBroadcast:
    """A scheduled broadcast due at a dry run's time: its id, file slug, segment, how many
    readers the segment has now, and why a real `run` would not send it (or "")."""

    id: int
    slug: str
    segment: str
    recipients: int
    problem: str = ""  # why a real run would not send it now (one line), or ""


@dataclass(frozen=True)
class BroadcastPlan:
    """`plan_broadcast`: a newsletter checked against the store, before anything is written.

    `when` is the scheduled time (UTC) when the send is for later, else None (send now).
    """

    newsletter: Newsletter
    segment: str
    when: datetime | None
    existing: RowMapping | None  # the broadcast of this file, if it was created before
    recipients: int
    sample: list[RowMapping]

    @property
    def already_sent(self) -> bool:
        return self.existing is not None and self.existing["status"] == "sent"

    @property
    def started(self) -> bool:
        """It started sending before: continuing it asks for no confirmation."""
        return self.existing is not None and self.existing["started_at"] is not None

    @property
    def nobody(self) -> str:
        """Why it cannot start (its segment has no eligible reader now), or "".

        `open_broadcast` refuses such a plan; a dry run shows this as a warning.
        """
        if self.started or self.recipients:
            return ""
        from dripmail.broadcast import nobody_to_send_to

        return nobody_to_send_to(self.segment)


@dataclass(frozen=True)
class TestSent:
    """`test_send`: what went where, or the provider's answer when it was not accepted."""

    day: int
    address: str
    subject: str
    key: str
    result: SendResult
    where: str  # the provider's name, or the outbox file

    @property
    def accepted(self) -> bool:
        return self.result.outcome is Outcome.ACCEPTED


class DeliveryUseCases:
    """The delivery side of `Dripmail` (see the module docstring)."""

    # Provided by `Runner` / `Dripmail`.
    project: Project
    settings: Settings
    clock: Callable[[], datetime]
    engine: Any
    course: Any
    renderer: Any
    rules: Any
    refresh_content: Callable[[], bool]
    signer: Any
    provider: Provider
    render_lesson: Callable[[DueRow], Any]
    call_provider: Callable[[Callable[[], Awaitable[Any]]], Any]
    interrupted: threading.Event  # set by `call_provider` when Ctrl-C reached it
    resend_interrupted_confirmations: Callable[[], ConfirmReport]

    # -- the run pass --

    def check_simulated_clock(self, at: datetime | None, *, dry_run: bool, yes: bool) -> None:
        """Refuse a pretended time that would really mail readers (issue 15).

        The rule: a simulated clock (`--now`) is for trying a schedule, so it runs freely with
        a dry run or the outbox provider (nothing leaves the machine); with any other provider
        it needs an explicit yes (an operator catching up by hand on purpose). InputError
        otherwise, in one line.
        """
        if at is None or dry_run or yes or self.settings.provider == "outbox":
            return
        raise InputError(
            f"--now with DRIPMAIL_PROVIDER={self.settings.provider} would really mail readers "
            "at a pretended time: add --dry-run to try the schedule, or --yes to send for real"
        )

    def handover(self) -> timedelta:
        """How far ahead of its due time a lesson may be handed to the configured provider."""
        from dripmail.runner import handover_window

        return handover_window(self.provider, self.settings)

    def count_due(self, at: datetime) -> int:
        """How many lessons a pass at `at` would hand over, at most (plus the handover window):
        active readers with a lesson due, each counted once since a pass sends a reader one
        lesson at most. An estimate for a progress bar: some wait for their previous lesson.
        """
        from dripmail.store.delivery_queries import count_due

        with self.engine.connect() as conn:
            return count_due(conn, at + self.handover())

    def run(
        self,
        at: datetime | None = None,
        *,
        limit: int | None = None,
        dry_run: bool = False,
        progress: Callable[[int], None] | None = None,
        broadcasts: bool = True,
    ) -> RunResult:
        """One pass: every lesson due at `at` (default: now), then the scheduled broadcasts due.

        Lessons left in flight by a crash are finished first, however many, and confirmation
        emails a crash kept from the provider are offered again. One message that
        cannot be built or that the provider refuses fails alone; `DRIPMAIL_HALT_AFTER_FAILURES`
        permanent failures in a row with one reason stop the pass (`RunResult.halted`). A dry
        run writes and sends nothing; it lists the broadcasts due (`RunResult.would_broadcast`).
        """
        from dripmail.engine import run_once
        from dripmail.heap import collector_for_a_pass

        now = at or self.clock()
        self.interrupted.clear()  # an earlier Ctrl-C, handled, does not stop this pass
        # The files as they are now (`run --loop` keeps one core for days); ContentError,
        # before anything is claimed, while they do not load.
        self.refresh_content()
        engine, provider, course, handover = (
            self.engine,
            self.provider,
            self.course,
            self.handover(),
        )
        # Store, provider and course are loaded: frozen for the pass (see `heap`).
        with collector_for_a_pass():
            report = run_once(
                engine,
                provider,
                self.render_lesson,
                now,
                default_send_time=course.send_time,
                skip_weekends=course.skip_weekends,
                limit=limit,
                dry_run=dry_run,
                handover=handover,
                halt_after=self.settings.halt_after_failures,
                progress=progress,
                call=self.call_provider,
                stop=self.interrupted.is_set,
            )
        done: list[ScheduledBroadcast] = []
        confirmed = None
        if self.interrupted.is_set():
            # A stop came during the lessons (Ctrl-C raises in the caller as well): nothing
            # more is started; the next run does the rest.
            return RunResult(now, report, done)
        if not dry_run:
            confirmed = self.resend_interrupted_confirmations()
        if broadcasts and not dry_run:
            done = self.send_due_broadcasts(now)
        if broadcasts and dry_run:
            return RunResult(now, report, done, would_broadcast=self.due_broadcasts(now))
        if confirmed is None:
            return RunResult(now, report, done)
        return RunResult(
            now,
            report,
            done,
            confirmed.accepted,
            confirmed.failed,
            confirmed.failure_reason,
        )

    def status(self, recent: int = 10) -> Status:
        """The counts `status` prints (`stats.collect`), with "next due" as the engine sends:
        a lesson planned in the past but held by the one-lesson-per-local-day rule counts from
        when the rule lets it go. With a course that does not load, the plan time is shown."""
        from dripmail.errors import ContentError
        from dripmail.stats import collect

        try:
            course = self.course
        except ContentError:
            report = collect(self.engine, recent, self.clock())
        else:
            report = collect(
                self.engine,
                recent,
                self.clock(),
                send_time=course.send_time,
                skip_weekends=course.skip_weekends,
            )
        if report.deliveries.get("failed"):
            from datetime import time

            from dripmail import retry

            # What `deliveries retry --all` would leave for good, by the same checks.
            whole = retry.plan(self.engine, retry.Selection(everything=True), report.now, time(0))
            report.failed_final = len(whole.final)
            report.failed_waiting = whole.left_by_kind(final=False)
        return report

    def seconds_to_next(self, at: datetime | None = None) -> float:
        """How long `run --loop` may sleep: until a pass would find a lesson to hand over
        (`engine.next_send_time`: a lesson held back by the one-per-local-day rule counts from
        when the rule lets it go), at most a minute (new sign-ups and retries appear
        meanwhile), at least a second."""
        from dripmail.engine import next_send_time
        from dripmail.errors import ContentError

        now = at or self.clock()
        wait = LOOP_RECHECK.total_seconds()
        try:
            rules = self.course
        except ContentError:
            # Nothing goes out until the files load (lessons due now would wake it every
            # second): the loop looks again in a minute.
            return wait
        upcoming = next_send_time(
            self.engine,
            now,
            default_send_time=rules.send_time,
            skip_weekends=rules.skip_weekends,
            handover=self.handover(),
        )
        if upcoming is not None:
            wait = min(wait, max(1.0, (upcoming - now).total_seconds()))
        return wait

    # -- broadcasts --

    def find_broadcast(self, ref: int | str) -> RowMapping:
        """A broadcast by id or slug; NotFoundError with a hint otherwise."""
        from dripmail import broadcast as bc

        return bc.find(self.engine, ref)

    def count_eligible(self, segment: str) -> int:
        """How many subscribers a broadcast to `segment` would reach now."""
        from dripmail import broadcast as bc

        return bc.count_eligible(self.engine, segment)

    def broadcast_stats(self, broadcast_id: int) -> BroadcastStats:
        """Recipients and outcomes of one broadcast."""
        from dripmail import broadcast as bc

        return bc.stats(self.engine, broadcast_id)

    def broadcast_failures(self, broadcast_id: int) -> tuple[list[RowMapping], int]:
        """The first 20 failed or for-review copies of one broadcast with their reasons, and
        how many there are in all (`broadcast.failures`)."""
        from dripmail import broadcast as bc

        return bc.failures(self.engine, broadcast_id)

    def list_broadcasts(self) -> list[tuple[RowMapping, BroadcastStats]]:
        """Every broadcast, newest first, with its counts."""
        from dripmail import broadcast as bc

        return [(row, bc.stats(self.engine, row["id"])) for row in bc.list_broadcasts(self.engine)]

    def plan_broadcast(
        self, file: Path, segment: str | None = None, when: datetime | None = None
    ) -> BroadcastPlan:
        """Load a newsletter and check it can be sent (or continued) to `segment` (default:
        the file's; for a broadcast already started, the one it started with) at `when` (UTC;
        None: now). Writes nothing.

        InputError in one line: an unknown segment, a file edited after its broadcast started
        or cancelled, a scheduled file outside newsletters/ (`run` would not find it), a
        `when` already past, no `segment` for a broadcast scheduled to another segment than
        the file names.
        """
        from dripmail import broadcast as bc
        from dripmail.content import load_newsletter

        newsletter = load_newsletter(self.project, file)
        row = bc.existing(self.engine, newsletter.slug)
        if row is not None and bc.sent_to_nobody(self.engine, row):
            row = None  # nobody got it: planned as new (`open_broadcast` opens it again)
        started = row is not None and row["started_at"] is not None
        chosen = segment or newsletter.segment
        if segment is None and row is not None and row["segment"] != newsletter.segment:
            if started:
                # Running the same command again continues it, to the readers it began with.
                chosen = row["segment"]
            elif row["status"] != "cancelled":
                # Scheduled for one audience, the file names another: which one is meant is
                # the operator's call, never a silent change of who gets it.
                raise InputError(
                    f"{newsletter.path.name} (broadcast {row['id']}) is scheduled for segment "
                    f"{row['segment']}, the file says {newsletter.segment}: give --segment "
                    f"{row['segment']} to keep it, or --segment {newsletter.segment} to change it"
                )
        bc.eligible(chosen)  # validates the segment before anything is written
        if row is not None:
            bc.check_resumable(row, newsletter, chosen)
        now = self.clock()
        if when is not None and when <= now and not started:
            # A time already past is a typo more often than a wish to send now: a broadcast
            # cannot be recalled, so it is refused rather than sent at once.
            raise InputError(
                f"--schedule {when:%Y-%m-%d %H:%M} UTC is in the past (it is "
                f"{now:%Y-%m-%d %H:%M} UTC): give a later time, or leave --schedule out to "
                "send now"
            )
        later = when if when is not None and not started else None
        if later is not None:
            inside = self.project.newsletters_dir.resolve()
            if newsletter.path.resolve().parent != inside:
                raise InputError(
                    f"{file}: a scheduled newsletter must live in newsletters/ so `run` finds "
                    "it when it is due; move it there"
                )
        return BroadcastPlan(
            newsletter,
            chosen,
            later,
            row,
            bc.count_eligible(self.engine, chosen),
            list(bc.sample(self.engine, chosen)),
        )

    def check_broadcast_template(self, plan: BroadcastPlan) -> None:
        """Compile the newsletter (a dry run shows template errors too)."""
        self.renderer.newsletter(plan.newsletter)

    def open_broadcast(self, plan: BroadcastPlan) -> RowMapping:
        """Create (or update, until it starts) the broadcast row: scheduled for `plan.when`,
        or ready to send now. InputError, nothing written, when it has not started and its
        segment has no eligible reader (`BroadcastPlan.nobody`)."""
        from dripmail import broadcast as bc

        return bc.open_broadcast(
            self.engine,
            plan.newsletter,
            plan.segment,
            self.clock(),
            plan.when,
            recipients=plan.recipients,
        )

    def send_broadcast(
        self,
        newsletter: Newsletter,
        row: RowMapping,
        at: datetime | None = None,
        *,
        planned: Callable[[int], None] | None = None,
        sent: Callable[[int], None] | None = None,
    ) -> BroadcastReport:
        """Plan and hand over one broadcast (MJML compiled once); safe to run again.

        `planned` and `sent` are progress callbacks (readers planned, copies handled).
        """
        from dripmail import broadcast as bc
        from dripmail.store.db import small_page_cache

        now = at or self.clock()
        try:
            compiled = self.renderer.newsletter(newsletter)
            self.interrupted.clear()  # an earlier Ctrl-C, handled, does not stop this one
            started = bc.start(self.engine, row["id"], now)
            render = bc.render_fn(
                compiled, self.settings.public_url, self.signer, row["id"], started
            )
            # Planning and sending walk the list in id order: each page is read once, and a
            # large page cache would only make memory grow with the list (store.db).
            with small_page_cache(self.engine):
                # Planned as it goes, a page ahead of the claims: the first copies leave
                # while the rest of the list is planned.
                report = bc.send(
                    self.engine,
                    self.provider,
                    row,
                    render,
                    now,
                    halt_after=self.settings.halt_after_failures,
                    progress=sent,
                    call=self.call_provider,
                    plan_segment=row["segment"],
                    planned=planned,
                    stop=self.interrupted.is_set,
                )
        except DripmailError as exc:
            # A template error (naming its file and line), a refused credential...: the row
            # keeps its status, so `broadcasts show` must say it stopped, and why.
            bc.record_stop(self.engine, row["id"], _one_line(exc), now)
            raise
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM: this is why it stopped now; a reason kept from an earlier
            # stop (a template error since fixed) would tell the operator to fix what is fine.
            bc.record_stop(self.engine, row["id"], bc.INTERRUPTED, now)
            raise
        if report.halted:
            from dripmail.handover import stop_reason

            bc.record_stop(self.engine, row["id"], stop_reason(report.halted), now)
        else:
            bc.clear_stop(self.engine, row["id"])
        return report

    def due_broadcasts(self, at: datetime | None = None) -> list[DueBroadcast]:
        """The scheduled broadcasts whose time has come at `at` (default: now) and what
        `send_due_broadcasts` would do with each: send it, or not and why
        (`DueBroadcast.problem`, by the same checks). Writes nothing."""
        from dripmail import broadcast as bc

        now = at or self.clock()
        out = []
        for row in bc.due(self.engine, now):
            problem = ""
            try:
                self._due_newsletter(row)
            except DripmailError as exc:
                problem = _one_line(exc)
            segment = row["segment"]
            count = bc.count_eligible(self.engine, segment)
            out.append(DueBroadcast(row["id"], row["slug"], segment, count, problem))
        return out

    def _due_newsletter(self, row: RowMapping) -> Newsletter:
        """The file of a scheduled broadcast that is due, loaded as `run` sends it.

        InputError/ContentError: the file is missing or broken, or (not started yet) its
        `segment:` changed since it was scheduled (`file_segment`): who gets it is the
        operator's call, never a silent change. An explicit `--segment` over a file left as
        it was still goes to the segment chosen.
        """
        from dripmail.content import load_newsletter

        path = self.project.newsletters_dir / f"{row['slug']}.md"
        newsletter = load_newsletter(self.project, path)
        then = row["file_segment"]
        if row["started_at"] is None and then is not None and newsletter.segment != then:
            raise InputError(
                f"newsletters/{row['slug']}.md now says segment {newsletter.segment} (it said "
                f"{then} when scheduled for {row['segment']}): schedule it again with "
                f"--segment {newsletter.segment} or --segment {row['segment']}"
            )
        return newsletter

    def send_due_broadcasts(self, at: datetime | None = None) -> list[ScheduledBroadcast]:
        """Send the scheduled broadcasts whose time has come (`run` calls this).

        One whose file is missing, broken or was edited after it started, or whose segment has
        no eligible reader when its time comes, is reported and left as it is (scheduled: the
        next run tries again); the others still go out. One interrupted mid-way continues on
        the next run.
        """
        from dripmail import broadcast as bc

        now = at or self.clock()
        out: list[ScheduledBroadcast] = []
        for row in bc.due(self.engine, now):
            try:
                newsletter = self._due_newsletter(row)
                # Edits before the start are sent as they are now; after the start, refused.
                row = bc.open_broadcast(
                    self.engine, newsletter, row["segment"], now, row["scheduled_at"]
                )
                report = self.send_broadcast(newsletter, row, now)
            except DripmailError as exc:
                # A missing, broken or edited file, or nobody to send to: not sent at its
                # time, kept as the reason it stopped (`send_broadcast` keeps its own).
                bc.record_stop(self.engine, row["id"], _one_line(exc), now)
                out.append(ScheduledBroadcast(row["id"], row["slug"], error=str(exc)))
                continue
            stats = bc.stats(self.engine, row["id"])
            out.append(ScheduledBroadcast(row["id"], row["slug"], report, stats))
        return out

    def cancel_broadcast(self, ref: int | str, at: datetime | None = None) -> Cancelled:
        """Cancel a broadcast: before it starts nobody gets it; mid-way the rest is stopped."""
        from dripmail import broadcast as bc

        target = bc.find(self.engine, ref)
        return bc.cancel(self.engine, target["id"], at or self.clock())

    # -- test-send --

    def test_send(self, day: int, to: str) -> TestSent:
        """Send lesson `day` to `to` (the author's own address) through the configured provider.

        Sample reader values fill the placeholders. The same content to the same address is
        one test email (its key is a digest of both); an edit makes a new one.
        """
        from dripmail.checks import sample_recipient
        from dripmail.render import Recipient
        from dripmail.validation import normalise_email

        address = normalise_email(to)
        compiled = self.renderer.lesson(day)
        sample = sample_recipient()
        reader = Recipient(
            email=address,
            first_name=sample.first_name,
            unsubscribe_url=sample.unsubscribe_url,
            preferences_url=sample.preferences_url,
        )
        probe = compiled.personalise(reader, key="probe", kind="test", ref=str(day))
        digest = hashlib.sha256(f"{address}|{probe.subject}|{probe.html}".encode()).hexdigest()
        key = f"test-d{day}-{digest[:16]}"
        message = compiled.personalise(reader, key=key, kind="test", ref=str(day))
        (result,) = self.call_provider(lambda: self.provider.send_batch([message]))
        where: str = self.settings.provider
        if where == "outbox":
            outbox = self.project.resolve(self.settings.outbox_dir)
            where = f"outbox ({Path(outbox) / (key + '.eml')})"
        return TestSent(day, address, message.subject, key, result, where)


def _one_line(exc: BaseException) -> str:
    """An error's message on one line (a ContentError may list several problems)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] + (f" (and {len(lines) - 1} more)" if len(lines) > 1 else "")
