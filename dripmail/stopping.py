"""A stop request (Ctrl-C, SIGTERM) shared by the thread that catches it and the provider loop.

The core (`Dripmail.interrupted`) sets it when Ctrl-C reaches a thread waiting for a provider
call; the HTTP layer (`providers.http`) reads it between requests, so a hand-over of many
rate-limited requests stops after the ones already on the wire instead of minutes later.
`StopRequest` is a `threading.Event` that also wakes coroutines sleeping on it (a request
waiting for its rate-limiter slot or for a retry), on whichever event loop they run.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

# How often a sleep looks at a plain `threading.Event`, which cannot wake it (a library
# caller's own event; the core always hands over a `StopRequest`).
_POLL_SECONDS = 0.1


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class StopRequest(threading.Event):
    """`threading.Event` meaning "stop at the next request boundary"; `set` also wakes every
    coroutine sleeping in `sleep` (thread-safe, from any thread)."""

    def __init__(self) -> None:
        super().__init__()
        self._guard = threading.Lock()
        self._sleepers: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    def set(self) -> None:
        """Request the stop and wake the sleepers."""
        super().set()
        with self._guard:
            sleepers = list(self._sleepers)
        for loop, future in sleepers:
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(_wake, future)

    async def sleep(self, seconds: float) -> bool:
        """Sleep `seconds`, or less if the stop is requested meanwhile; True when it was."""
        if self.is_set():
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (loop, future)
        with self._guard:
            self._sleepers.add(entry)
        timer = loop.call_later(max(0.0, seconds), _wake, future)
        try:
            if self.is_set():  # set between the first look and the registration
                return True
            await future
            return self.is_set()
        finally:
            timer.cancel()
            with self._guard:
                self._sleepers.discard(entry)


async def sleep_unless_stopped(seconds: float, stop: threading.Event | None) -> bool:
    """Sleep `seconds` (asyncio), cut short when `stop` is set; True when stopped.

    `stop` None: a plain sleep. A `StopRequest` wakes the sleep at once; a plain
    `threading.Event` is looked at every 0.1 s.
    """
    if seconds <= 0:
        return stop is not None and stop.is_set()
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    if isinstance(stop, StopRequest):
        return await stop.sleep(seconds)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not stop.is_set():
        left = deadline - loop.time()
        if left <= 0:
            return False
        await asyncio.sleep(min(left, _POLL_SECONDS))
    return True
