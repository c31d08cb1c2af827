"""`heap.objects_frozen`: objects alive before a block are out of the collector's way inside it,
and back in its care after it (nested blocks unfreeze once, at the end of the outer one)."""

from __future__ import annotations

import gc
import weakref

import pytest

from dripmail.heap import objects_frozen


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_objects_are_frozen_inside_and_collectable_after() -> None:
    assert gc.get_freeze_count() == 0
    before = _Cycle()
    frozen = weakref.ref(before)
    with objects_frozen():
        assert gc.get_freeze_count() > 0
        with objects_frozen():
            pass
        # The inner block ended, the outer one still runs: still frozen.
        assert gc.get_freeze_count() > 0
        del before
        made = _Cycle()
        young = weakref.ref(made)
        del made
        gc.collect()
        # What the block made and dropped is collected as usual; the frozen cycle waits.
        assert young() is None
        assert frozen() is not None
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert frozen() is None


def test_an_error_in_the_block_unfreezes_too() -> None:
    with pytest.raises(RuntimeError), objects_frozen():
        raise RuntimeError("the pass failed")
    assert gc.get_freeze_count() == 0
