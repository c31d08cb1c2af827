"""Settling deliveries set aside for review: the operator's decision, recorded with who and when.

An ambiguous hand-over (no answer, a dropped connection, a 5xx after sending) to a provider
that cannot be asked afterwards leaves the delivery in state ``review``: dripmail never resends
it on its own, because the reader may already have it. After checking the provider's activity
log the operator settles it:

- ``sent``: the provider did deliver it; it counts as sent (at its hand-over time).
- ``resend``: the provider never got it; it goes back to the queue as if never handed over
  (a lesson on the next ``run``; a newsletter copy when its ``broadcast`` command runs again,
  or on the next ``run`` if it was scheduled).

Each settlement is an event row (provider ``dripmail``, type ``review_sent`` or
``review_resend``, detail ``by <who>[: note]``), shown with the subscriber's timeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import Engine

from dripmail.errors import InputError, NotFoundError
from dripmail.store import reviews
from dripmail.store.reviews import ReviewRow
from dripmail.validation import one_line

Decision = Literal["sent", "resend"]
# A reader in these states must not be mailed again, whatever the review decides.
STOPPED = ("unsubscribed", "bounced", "complained", "forgotten")

__all__ = ["Decision", "ReviewRow", "Settled", "settle", "waiting"]


@dataclass
class Settled:
    """What `settle` did: keys settled, and keys left as they were with the reason why."""

    done: list[ReviewRow] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


def waiting(engine: Engine) -> list[ReviewRow]:
    """Every delivery waiting for review, oldest first, with what is known about each."""
    return reviews.waiting(engine)


def settle(
    engine: Engine,
    keys: Sequence[str] | None,
    decision: Decision,
    by: str,
    now: datetime,
    note: str = "",
) -> Settled:
    """Settle the review deliveries named by `keys` (None: all of them) as `decision`.

    `by` names who decided (recorded with `now`, aware UTC, in an event row). Raises
    NotFoundError for a key that is not waiting for review (naming its state if it exists)
    and InputError when `by` is empty. A resend for a reader who has stopped mail
    (unsubscribed, bounced, complained, forgotten) is refused for that key and reported in
    `Settled.refused`; the others are settled. Each key is settled in its own transaction,
    and only if it is still in review (two operators cannot both settle it).
    """
    who = one_line(by, "--by").strip()
    if not who:
        raise InputError("--by is empty: say who settles these deliveries")
    note = one_line(note, "--note")
    rows = reviews.waiting(engine, keys)
    if keys is not None:
        missing = sorted(set(keys) - {r.key for r in rows})
        if missing:
            raise NotFoundError(_not_waiting(engine, missing))
    detail = f"by {who}" + (f": {note.strip()}" if note.strip() else "")
    out = Settled()
    for row in rows:
        if decision == "resend" and row.subscriber_status in STOPPED:
            out.refused.append((row.key, f"{row.email} is {row.subscriber_status}"))
            continue
        with engine.begin() as conn:
            if decision == "sent":
                moved = reviews.settle_sent(conn, row, now)
            else:
                moved = reviews.settle_resend(conn, row, now, f"to be sent again, asked {detail}")
            if not moved:
                out.refused.append((row.key, "settled meanwhile by someone else"))
                continue
            reviews.record(conn, row, f"review_{decision}", detail, now)
        out.done.append(row)
    return out


def _not_waiting(engine: Engine, keys: list[str]) -> str:
    states = reviews.states(engine, keys)
    parts = [
        f"{k} is {states[k]}, not waiting for review" if k in states else f"no delivery {k}"
        for k in keys
    ]
    return "; ".join(parts) + " (see `deliveries review`)"
