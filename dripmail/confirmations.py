"""Sending the double opt-in email: at most once per address per quiet period, never lost.

Shared by the web sign-up, `subscribers import --confirm` and the `run` pass (through
`Dripmail.send_confirmations` / `Dripmail.resend_interrupted_confirmations`), so all of them
throttle the same way and a form submitted ten times never floods an inbox.

Each email is a *slot* on the subscriber row (`dripmail.store.confirmation_queries`): taking it
is committed first (so two requests racing win one between them) and records this process as
its holder; the hand-over is recorded only after the provider accepted the email. A process
killed in between leaves the slot *owed*: the next import of that reader, sign-up of that
address or `run` pass offers the same slot again, under the same key and Message-ID
(`confirm-s<id>-<slot time>-n<number>`), so a provider that deduplicates (the outbox, or an
idempotency key) never holds two different emails for one slot. A slot is offered again only
when its holder is gone (on this host: a dead pid, a zombie, or a pid reused by a process that
started later, see `dripmail.holders`; elsewhere: its lease ran out), never while another
process may still be handing it over.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from dripmail import holders
from dripmail.errors import ContentError
from dripmail.message import header_problem, rename_hint
from dripmail.providers.base import Outcome, SendResult
from dripmail.store import confirmation_queries as cq

if TYPE_CHECKING:
    from dripmail.message import Message
    from dripmail.runner import Runner

log = logging.getLogger("dripmail")

# A second confirmation for the same address goes out only after this long, and never more
# than MAX_CONFIRMS in all: enough for a lost email, too few to be used for harassment.
QUIET = timedelta(minutes=15)
MAX_CONFIRMS = 5
# How long a slot's holder may take to hand it over before another process may offer it again
# (holders on this host that died are noticed at once, by their pid).
LEASE = timedelta(minutes=10)


def worker_id() -> str:
    """This process as a slot holder: `host:pid:start` (see `dripmail.holders`)."""
    return holders.this_process()


def holder_gone(holder: str, host: str) -> bool:
    """Whether a holder id names a process of this host that no longer runs (or a zombie,
    or a new process under a reused pid). Holders on other hosts are never judged gone:
    only their lease can free their slots."""
    return not holders.holder_alive(holder, host)


def confirm_key(slot: cq.Slot) -> str:
    """The email's key (and so its Message-ID and idempotency key): one per slot, stable.

    The slot's time tells apart the first email of a reader who unsubscribed and signed up
    again (their count starts at 1 again) from the first one of their earlier sign-up.
    """
    return f"confirm-s{slot.subscriber_id}-{slot.taken_at:%Y%m%d%H%M%S}-n{slot.number}"


@dataclass
class ConfirmReport:
    """What one call to send confirmation emails did.

    `sent`: new emails the provider accepted. `offered_again`: emails a crash had interrupted,
    handed over again under their first key (a provider that deduplicates, like the outbox or
    one with idempotency keys, may already have held them: they are not counted as new).
    `held_elsewhere`: owed emails another live process is still handing over, by holder id:
    (how many, when its hold runs out); they are left to it.
    """

    sent: int = 0
    offered_again: int = 0
    held_elsewhere: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    # Emails that could not be built or that the provider did not take (their slot stays
    # owed; an event row keeps why), and the first reason with its address, as `run` prints
    # it beside the count (the same form as a lesson failed for good).
    failed: int = 0
    failure_reason: str = ""

    def add(self, handed: Handed, offered: Collection[int] = ()) -> None:
        """Count one chunk's hand-over (`offered`: ids whose slot was offered again)."""
        self.offered_again += sum(1 for sid in handed.accepted if sid in offered)
        self.sent += sum(1 for sid in handed.accepted if sid not in offered)
        self.failed += len(handed.refused)
        if handed.refused and not self.failure_reason:
            self.failure_reason = handed.refused[0]

    @property
    def accepted(self) -> int:
        """Every email the provider accepted in this call (new or offered again)."""
        return self.sent + self.offered_again


def send_confirmations(
    runner: Runner,
    subscriber_ids: Iterable[int],
    now: datetime,
    *,
    call: Callable[[Callable[[], Any]], Any] | None = None,
    worker: str | None = None,
) -> int:
    """Like `confirm` (see there); returns how many emails the provider accepted in all."""
    return confirm(runner, subscriber_ids, now, call=call, worker=worker).accepted


def confirm(
    runner: Runner,
    subscriber_ids: Iterable[int],
    now: datetime,
    *,
    call: Callable[[Callable[[], Any]], Any] | None = None,
    worker: str | None = None,
) -> ConfirmReport:
    """Send the confirm email to pending subscribers that may be mailed; returns a
    `ConfirmReport` (new emails accepted, interrupted ones offered again, owed ones another
    live process holds).

    For each id: an owed slot whose holder is gone is offered again as it was; otherwise a new
    slot is taken if the reader is pending, was not mailed in the last QUIET and had fewer
    than MAX_CONFIRMS. Ids in chunks of the provider's batch size: one short transaction to
    take the chunk's slots, one hand-over, one transaction to record it. `call` runs a provider
    coroutine (the core's event loop, `Dripmail.call_provider`; default `asyncio.run`). A
    provider error is raised after the chunk's slots were released (owed, offered again).
    """
    worker = worker or worker_id()
    host = socket.gethostname()
    ids = list(dict.fromkeys(subscriber_ids))
    size = max(1, min(runner.provider.capabilities.max_batch, cq.CHUNK))
    report = ConfirmReport()
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        with runner.engine.begin() as conn:
            dead = {h for h in cq.owed_holders(conn, chunk, now) if holder_gone(h, host)}
            again = cq.take_over(conn, chunk, worker, now, lease=LEASE, dead=dead)
            new = cq.take_new(conn, chunk, worker, now, quiet=QUIET, most=MAX_CONFIRMS, lease=LEASE)
            for holder, (count, until) in cq.held_elsewhere(conn, chunk, worker, now).items():
                before, last = report.held_elsewhere.get(holder, (0, until))
                report.held_elsewhere[holder] = (before + count, max(last, until))
        if again or new:
            handed = _hand_over(runner, [*again, *new], worker, now, call)
            report.add(handed, {s.subscriber_id for s in again})
    return report


def resend_interrupted(
    runner: Runner,
    now: datetime,
    *,
    call: Callable[[Callable[[], Any]], Any] | None = None,
    worker: str | None = None,
) -> ConfirmReport:
    """Offer again every slot whose hand-over a crash interrupted (holder dead, lease out).

    For the `run` pass: a sign-up whose web worker was killed before the email went out gets
    it without signing up again. Slots the provider refused are left to the reader (sign up
    again) or the operator (import again), so a refusal is not retried every pass. Returns
    a `ConfirmReport`: `offered_again` the emails the provider accepted, `failed` those that
    could not be built or that it did not take (with the first reason).
    """
    worker = worker or worker_id()
    host = socket.gethostname()
    report = ConfirmReport()
    last = 0
    while True:
        with runner.engine.connect() as conn:
            found = cq.crashed(conn, now, host, after=last)
        if not found:
            return report
        last = found[-1]
        with runner.engine.begin() as conn:
            dead = {h for h in cq.owed_holders(conn, found, now) if holder_gone(h, host)}
            slots = cq.take_over(conn, found, worker, now, lease=LEASE, dead=dead, released=False)
        if not slots:
            continue
        try:
            handed = _hand_over(runner, slots, worker, now, call)
        except ContentError as exc:
            # The templates do not compile (file:line): the chunk's emails wait, each with
            # its reason recorded, and the pass goes on (a loop must not end on a typo).
            report.add(Handed([], [_not_built(exc, slot) for slot in slots]))
            continue
        report.add(handed, {s.subscriber_id for s in slots})


def _not_built(exc: ContentError, slot: cq.Slot) -> str:
    """Why `slot`'s email was not handed over, as `_hand_over` records it."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"not handed to the provider: {line} (to {slot.email})"


@dataclass(frozen=True)
class Handed:
    """One chunk's hand-over: subscriber ids whose email the provider accepted, and one
    line per email not handed over (``reason (to address)``)."""

    accepted: list[int]
    refused: list[str]


def _hand_over(
    runner: Runner,
    slots: Sequence[cq.Slot],
    worker: str,
    now: datetime,
    call: Callable[[Callable[[], Any]], Any] | None,
) -> Handed:
    """Build and hand over one chunk's emails, then record which the provider took, and why
    each other one was not (an event row per email, type ``confirm_not_sent``)."""
    from dripmail.render import recipient_for

    unfit: list[tuple[cq.Slot, str]] = []

    def build() -> list[Message]:
        compiled = runner.renderer.confirm()
        messages = []
        for slot in slots:
            recipient = recipient_for(
                {"id": slot.subscriber_id, "email": slot.email, "first_name": slot.first_name},
                runner.settings.public_url,
                runner.signer,
                # Stamped with the slot's time: offered again, the email is the same bytes
                # (and its link's age runs on the clock that took the slot, not the wall).
                issued_at=slot.taken_at,
                links=compiled.links,
            )
            key = confirm_key(slot)
            message = compiled.personalise(recipient, key=key, kind="confirm", ref="confirm")
            # A stored value no header can carry (a line break in a name an older version
            # kept) fails this email alone: in the batch, the provider's encoder would refuse
            # every reader's.
            problem = header_problem(message)
            if problem:
                unfit.append((slot, problem))
            else:
                messages.append(message)
        return messages

    try:
        messages = build()
        keys = sorted(m.key for m in messages)
        # The same slots offered again make the same batch key: a provider that keeps
        # idempotency keys answers with the batch it already has.
        batch_key = "confirm-" + sha256("|".join(keys).encode()).hexdigest()[:24]

        async def send() -> Any:
            return await runner.provider.send_batch(messages, batch_key=batch_key)

        results: list[SendResult] = []
        if messages:
            results = call(send) if call is not None else asyncio.run(send())
    except BaseException as exc:
        # Not handed over (or not known to be): released, still owed, offered again.
        with runner.engine.begin() as conn:
            cq.settle(conn, slots, worker, now, accepted=False)
            if isinstance(exc, Exception):  # not Ctrl-C: a fault `status` should name
                line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                for slot in slots:
                    why = f"not handed to the provider: {line} (to {slot.email})"
                    cq.record_not_sent(conn, slot, why, now)
        raise
    outcome = {r.key: r for r in results}
    taken = [s for s in slots if _handed(outcome.get(confirm_key(s)))]
    handed = {s.subscriber_id for s in taken}
    refused = [s for s in slots if s.subscriber_id not in handed]
    why_unfit = {slot.subscriber_id: problem for slot, problem in unfit}
    reasons = []
    for slot in refused:
        result = outcome.get(confirm_key(slot))
        problem = why_unfit.get(slot.subscriber_id)
        if problem:
            why = f"cannot build the confirmation email: {problem}"
        else:
            answer = result.error if result is not None else ""
            why = f"not accepted by the provider: {answer or 'no answer'}"
        hint = rename_hint(problem or "", slot.email, "which offers the email again")
        reasons.append(f"{why} (to {slot.email}){hint}")
        log.warning("confirmation email for subscriber %s: %s", slot.subscriber_id, reasons[-1])
    with runner.engine.begin() as conn:
        cq.settle(conn, taken, worker, now, accepted=True)
        cq.settle(conn, refused, worker, now, accepted=False)
        # Kept for `status` and the reader's timeline: the log line alone is gone by the
        # time anyone looks.
        for slot, why in zip(refused, reasons, strict=True):
            cq.record_not_sent(conn, slot, why, now)
    accepted = [
        s.subscriber_id for s in taken if outcome[confirm_key(s)].outcome is Outcome.ACCEPTED
    ]
    return Handed(accepted, reasons)


def _handed(result: SendResult | None) -> bool:
    # REVIEW (ambiguous, the provider cannot tell) counts as handed over: like a lesson, it
    # is never resent automatically; the reader can ask again after the quiet period.
    return result is not None and result.outcome in (Outcome.ACCEPTED, Outcome.REVIEW)
