"""The worker freezes the heap it starts with (worker._freeze_start_heap): garbage already there
is collected first, objects made afterwards are collected as before, the frozen ones wait until
vLLM unfreezes the heap (before graph capture, at shutdown)."""

from __future__ import annotations

import gc
import weakref

from vllm_ascend.worker.worker import _freeze_start_heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_start_heap_is_frozen_after_its_garbage_is_collected():
    gc.unfreeze()
    earlier = weakref.ref(Node())
    kept = Node()
    kept_ref = weakref.ref(kept)
    try:
        _freeze_start_heap()
        assert earlier() is None, "garbage from before the freeze was frozen, not collected"
        assert gc.get_freeze_count() > 0
        later = weakref.ref(Node())
        gc.collect()
        assert later() is None, "an object made after the freeze escaped the collection"
        del kept
        gc.collect()
        assert kept_ref() is not None, "the frozen heap was not skipped"
    finally:
        gc.unfreeze()
    gc.collect()
    assert kept_ref() is None
