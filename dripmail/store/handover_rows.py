"""The row shape the shared hand-over reads, whichever table the delivery lives in.

Lessons (`delivery_queries.DueRow`) and newsletter copies (`broadcast.BroadcastRow`) both
extend it with their own columns; `dripmail.handover` claims, renders, hands over and records
any of them, and reads only these keys.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict


class HeldRow(TypedDict):
    """One delivery joined with its subscriber: what the hand-over needs of it.

    `state` is a `DeliveryState` value; `batch_key` and `handed_at` (aware UTC) are set while
    it is (or was, before a crash) at a provider, else None.
    """

    id: int
    key: str
    subscriber_id: int
    state: str
    batch_key: str | None
    handed_at: datetime | None
    email: str
    first_name: str
