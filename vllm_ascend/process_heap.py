"""Garbage collection over the heap that importing torch and vLLM leaves (~0.75M objects, about
0.5 s a full pass on a small host): kept out of the passes that cannot free any of it."""

from __future__ import annotations

import atexit
import functools
import gc
import multiprocessing


def freeze_start_heap() -> None:
    """Take the objects a worker starts with out of vLLM's garbage collections.

    While a worker loads, profiles and captures, vLLM runs about ten full collections (before
    each device-memory figure, around graph capture), each a pass over every object that
    importing torch and vLLM left behind. Those objects live as long as the process. Frozen, the
    passes skip them; what the worker allocates from here on is collected as before. vLLM
    freezes the whole heap itself once start-up ends (``freeze_gc_heap``) and unfreezes it
    before graph capture and at shutdown, so this moves its freeze earlier; garbage already
    there is collected first, not frozen."""
    gc.collect()
    gc.freeze()


@functools.cache
def skip_exit_collection() -> None:
    """In a process vLLM started (engine core, worker, extra API server), freeze the heap at exit.

    vLLM unfreezes the heap at shutdown, and the interpreter's final collection is then one more
    pass over everything (~3 s of CPU per process on a small host, paid by every process each
    time a server or multi-process engine stops, and inside the shutdown window of a SIGTERM).
    At exit nothing that pass frees outlives the process; atexit callbacks and weakref
    finalizers still run, only ``__del__`` of objects in reference cycles is skipped, which
    Python does not promise at exit. A user's own process (their script, an in-process engine,
    the ``vllm serve`` process itself) is left as it is."""
    if multiprocessing.parent_process() is not None:
        atexit.register(gc.freeze)
