"""Requests prepared ahead: a batch's CPU work (payloads, grouping, JSON) done before its turn.

`broadcast.send` renders chunk N+1 in a worker thread while chunk N is at the provider, and
calls `BaseProvider.prepare_batch` for each of its batches there: an HTTP provider
(`providers.api.HttpProvider`) builds that batch's request then, and `send_batch` with the
same messages and batch key only sends it. The work is kept here, per batch key, with the
delivery keys it was done for: a batch sent with other messages (one left out because its
address cannot be carried) is built again at send time, never sent as prepared.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Generic, TypeVar

from dripmail.message import Message

# Batches prepared and not sent yet (a halted broadcast leaves its next chunk's) are kept for
# this many batch keys at most: a few megabytes of request body each.
PREPARED_MAX = 8

T = TypeVar("T")


class Prepared(Generic[T]):
    """Work done ahead for batches, by batch key, given back only for the same messages.

    Thread-safe: `put` runs in the broadcast's worker thread, `take` on the event loop.
    """

    def __init__(self, keep: int = PREPARED_MAX) -> None:
        self.keep = keep
        self._work: dict[str, tuple[tuple[str, ...], T]] = {}
        self._lock = threading.Lock()

    def put(self, batch_key: str, messages: Sequence[Message], work: T) -> None:
        """Keep `work` done for `messages` under `batch_key` (the oldest goes beyond `keep`)."""
        keys = tuple(m.key for m in messages)
        with self._lock:
            self._work[batch_key] = (keys, work)
            while len(self._work) > self.keep:
                del self._work[next(iter(self._work))]

    def take(self, messages: Sequence[Message], batch_key: str | None) -> T | None:
        """The work `put` under `batch_key` for exactly these messages, in this order (then
        forgotten); None when there is none or it was done for other messages."""
        if batch_key is None:
            return None
        with self._lock:
            found = self._work.pop(batch_key, None)
        if found is None or found[0] != tuple(m.key for m in messages):
            return None
        return found[1]

    def __len__(self) -> int:
        with self._lock:
            return len(self._work)
