"""process_heap: the worker freezes the heap it starts with (garbage already there is collected
first, objects made afterwards are collected as before, the frozen ones wait until vLLM unfreezes
the heap); a process vLLM started freezes its heap at exit, a user's process does not."""

from __future__ import annotations

import gc
import pathlib
import subprocess
import sys
import textwrap
import weakref

from vllm_ascend.process_heap import freeze_start_heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_start_heap_is_frozen_after_its_garbage_is_collected():
    gc.unfreeze()
    earlier = weakref.ref(Node())
    kept = Node()
    kept_ref = weakref.ref(kept)
    try:
        freeze_start_heap()
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


CHILD = textwrap.dedent("""
    import atexit, gc, multiprocessing, sys
    from vllm_ascend.process_heap import skip_exit_collection

    def child(path, skip):
        # Registered first, so it runs after skip_exit_collection's callback (LIFO).
        atexit.register(lambda: open(path, "w").write(str(gc.get_freeze_count())))
        if skip:
            skip_exit_collection()

    if __name__ == "__main__":
        before = atexit._ncallbacks()
        skip_exit_collection()
        print(atexit._ncallbacks() - before)
        ctx = multiprocessing.get_context("spawn")
        for path, skip in ((sys.argv[1], True), (sys.argv[2], False)):
            p = ctx.Process(target=child, args=(path, skip))
            p.start()
            p.join()
            assert p.exitcode == 0, p.exitcode
""")


def test_a_spawned_process_exits_with_its_heap_frozen(tmp_path: pathlib.Path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    skipped, plain = tmp_path / "skipped", tmp_path / "plain"
    out = subprocess.run([sys.executable, str(script), str(skipped), str(plain)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0", "the user's own process got an exit callback"
    assert int(skipped.read_text()) > 0, "the spawned process's heap was not frozen at exit"
    assert int(plain.read_text()) == 0
