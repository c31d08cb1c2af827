"""Sending the double opt-in email, at most once per address per quiet period.

Shared by the web sign-up and `subscribers import --confirm`, so both throttle the same way
and a form submitted ten times never floods an inbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import Row, or_, update

from dripmail.config import Project, Settings
from dripmail.runner import Runner
from dripmail.store.schema import subscribers

# A second confirmation for the same address goes out only after this long, and never more
# than MAX_CONFIRMS in all: enough for a lost email, too few to be used for harassment.
QUIET = timedelta(minutes=15)
MAX_CONFIRMS = 5


def _take_slot(runner: Runner, subscriber_id: int, now: datetime) -> Row | None:
    """Atomically reserve the right to send: (number, email, first name), or None."""
    with runner.engine.begin() as conn:
        result = conn.execute(
            update(subscribers)
            .where(
                subscribers.c.id == subscriber_id,
                subscribers.c.status == "pending",
                subscribers.c.confirm_count < MAX_CONFIRMS,
                or_(
                    subscribers.c.confirm_sent_at.is_(None),
                    subscribers.c.confirm_sent_at <= now - QUIET,
                ),
            )
            .values(
                confirm_sent_at=now,
                confirm_count=subscribers.c.confirm_count + 1,
                updated_at=now,
            )
            .returning(subscribers.c.confirm_count, subscribers.c.email, subscribers.c.first_name)
        ).first()
    return result


def send_confirmations(
    project: Project,
    settings: Settings,
    subscriber_ids: Iterable[int],
    now: datetime,
    runner: Runner | None = None,
) -> int:
    """Send the confirm email to pending subscribers not mailed recently; returns how many."""
    from dripmail.providers.base import Outcome
    from dripmail.render import recipient_for

    runner = runner or Runner(project, settings)
    compiled = runner.renderer.confirm()
    messages = []
    for sid in subscriber_ids:
        slot = _take_slot(runner, sid, now)
        if slot is None:
            continue
        number, email, first_name = slot
        recipient = recipient_for(
            {"id": sid, "email": email, "first_name": first_name},
            settings.public_url,
            runner.signer,
            links=compiled.links,
        )
        messages.append(
            compiled.personalise(
                recipient,
                key=f"confirm-s{sid}-{now:%Y%m%d%H%M%S}-n{number}",
                kind="confirm",
                ref="confirm",
            )
        )
    sent = 0

    async def hand_over() -> None:
        nonlocal sent
        size = runner.provider.capabilities.max_batch
        for start in range(0, len(messages), size):
            results = await runner.provider.send_batch(messages[start : start + size])
            sent += sum(r.outcome is Outcome.ACCEPTED for r in results)

    if messages:
        # The core's one event loop where there is one (`Dripmail.call_provider`): the
        # provider's pooled client belongs to it.
        call = getattr(runner, "call_provider", None)
        if call is not None:
            call(hand_over)
        else:
            asyncio.run(hand_over())
    return sent
