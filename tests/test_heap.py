"""`heap.collector_for_a_pass`: inside it the objects alive before are frozen and the young
threshold is raised; after it (nested blocks: after the outer one, or an error) everything is
as it was, and what it froze is collectable again."""

from __future__ import annotations

import gc
import weakref

import pytest

from dripmail.heap import YOUNG_THRESHOLD, collector_for_a_pass


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_the_collector_is_set_inside_and_set_back_after() -> None:
    assert gc.get_freeze_count() == 0
    thresholds = gc.get_threshold()
    before = _Cycle()
    frozen = weakref.ref(before)
    with collector_for_a_pass():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *thresholds[1:])
        assert gc.isenabled()
        with collector_for_a_pass():
            pass
        # The inner block ended, the outer one still runs: still set.
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        del before
        made = _Cycle()
        young = weakref.ref(made)
        del made
        gc.collect()
        # What the block made and dropped is collected as usual; the frozen cycle waits.
        assert young() is None
        assert frozen() is not None
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == thresholds
    gc.collect()
    assert frozen() is None


def test_an_error_in_the_block_sets_it_back_too() -> None:
    thresholds = gc.get_threshold()
    with pytest.raises(RuntimeError), collector_for_a_pass():
        raise RuntimeError("the pass failed")
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == thresholds
