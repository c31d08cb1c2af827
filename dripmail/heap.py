"""The garbage collector set for one pass over the queue, and set back after it.

A pass allocates a dozen containers per delivery (its row, its message, the provider's
answer, the tuples of its updates) that live for one chunk of 1,000 and are then freed by
reference counting. With CPython's defaults a young collection runs every 700 net new
containers, so a chunk's objects are walked several times while still in use, promoted, and
every few chunks a full collection walks every object of the process (the modules,
SQLAlchemy's compiled statements, the course). At 1,000,000 subscribers that was 1,400
young and 10 full collections, 1.3 s of a 19 s pass. For the pass:
- `gc.freeze` moves the objects alive before it to a generation no collection walks;
- the young threshold is 20,000 instead of 700: more than a chunk holds at once, so most
  of a chunk's objects are freed before any collection sees them.
Both are undone when the pass ends (`gc.unfreeze`, the threshold before), and the collector
stays on throughout: cycles a pass leaves are collected as before, a little later.
Documented in https://docs.python.org/3/library/gc.html (`freeze`, `set_threshold`).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 20_000

_lock = threading.Lock()
_holders = 0
_thresholds: tuple[int, int, int] = (700, 10, 10)


@contextmanager
def collector_for_a_pass() -> Iterator[None]:
    """Freeze every object alive now and raise the young threshold for the block; then undo.

    Safe to nest and to use from several threads at once: everything is set back when the
    last block ends (a block that starts later freezes what was created meanwhile too).
    """
    global _holders, _thresholds
    with _lock:
        if _holders == 0:
            _thresholds = gc.get_threshold()
            young, *older = _thresholds
            gc.set_threshold(max(young, YOUNG_THRESHOLD), *older)
        _holders += 1
        gc.freeze()
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                gc.unfreeze()
                gc.set_threshold(*_thresholds)
