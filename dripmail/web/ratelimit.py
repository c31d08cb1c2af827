"""A per-client token bucket for the sign-up endpoint, in memory.

Each key (a client address) has a bucket of `capacity` tokens that refills at `per_second`;
a request takes one token or is refused with the seconds until the next one. The state lives
in this process only: enough to stop one script hammering one server. Several server
processes behind a balancer each count their own (put a shared limit in the proxy then).
Memory is bounded: the least recently seen keys are dropped beyond `max_keys`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBucket:
    """At most `capacity` requests at once per key, refilling at `per_second`."""

    def __init__(
        self,
        capacity: int,
        per_second: float,
        *,
        max_keys: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.per_second = per_second
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self._lock = threading.Lock()

    def take(self, key: str) -> float | None:
        """Take one token: None when allowed, else the seconds to wait before trying again."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (float(self.capacity), now))
            tokens = min(float(self.capacity), tokens + (now - at) * self.per_second)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                wait = None
            else:
                self._buckets[key] = (tokens, now)
                wait = (1 - tokens) / self.per_second
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)  # least recently seen first
        return wait
