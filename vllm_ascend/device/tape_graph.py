"""The CPU backend's graph: an op tape with the NPUGraph interface.

On an NPU, ``torch.npu.NPUGraph`` captures the kernels a forward launches and replays them with no
Python in the loop: every buffer the graph touches is fixed at capture, host arguments (sizes,
``actual_seq_lengths``) are baked into the captured tasks, and only ``NPUGraph.update`` changes
the length arguments of the recorded fused-attention calls. ``TapeGraph`` gives the CPU backend
the same contract, so graph-mode code is exercised, and fails, on the host as it would on a device:

* Capture records every op that reaches the dispatcher (a ``TorchDispatchMode``), below autograd
  and below composite decompositions, with its arguments: tensors by identity, host values
  (ints, floats, int lists) as copies of what was passed. Ops run normally while recording.
* ``replay()`` re-executes exactly that op sequence. The result of each op is copied into the
  tensor that op returned during capture, so every intermediate and the final output are static
  buffers, like graph memory. Outputs that alias an input (views, in-place ops, ``out=``) are
  not copied: they stay right through aliasing. Pure view ops and ``empty`` factories are not
  re-executed at all (the captured view or buffer is the result).
* Consequently: writing new contents into a captured input in place changes the next replay's
  result; writing them into a fresh tensor does not (a stale buffer gives the old output); a host
  value keeps its captured value unless ``update()`` replaces it.
* ``update(cpu_update_input)`` follows torch_npu's ``NPUGraph.update`` (torch_npu/npu/graphs.py,
  ``_GraphDispatchMode.update_capture_record``; per-op specs in
  ``torch_npu/npu/_npugraph_handlers/``): one dict per recorded update-able call (the fused
  attention ops), in capture order, or a single dict applied to all of them; a key that names a
  keyword argument of the recorded call replaces it; a key in the op's positional spec replaces
  that positional argument. It requires ``auto_dispatch_capture=True`` at capture, as torch_npu
  does. Stricter than torch_npu: a key that would change nothing raises instead of being ignored.
  The change persists for every later replay. On an NPU the captured graph also waits, at each
  such call, on an event that ``update()`` records; on the tape ``update()`` must simply come
  before the ``replay()`` it is meant for (the order that is valid on both).
* vLLM's own custom ops (``vllm::moe_forward``, ``vllm::all_reduce``, ...) are Python glue: the
  tape records the ops they run, not the glue, so their Python does not run at replay.
* Collectives (``c10d::*`` ops, e.g. tensor-parallel all-reduce over gloo) are recorded like any
  op; a replay waits on the work handle each returns before the next op, as the eager call did
  (on an NPU the HCCL kernels are captured into the graph's stream).
* Host-device synchronisation inside a capture (``.item()``, ``nonzero``, ``equal``, ...) raises,
  as a device capture does.
* Random ops draw fresh numbers from the generator's state at each replay (like CUDA/NPU graphs,
  which advance the generator offset per replay); seeding before a replay reproduces it.
* Memory pools: ``graph_pool_handle()`` and ``pool()`` return opaque tokens so callers that pass
  pools work unchanged; the tape keeps its own buffers (no sharing between graphs) and keeps
  every captured intermediate alive, so a tape costs the sum of its intermediates, not the peak.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

logger = logging.getLogger("vllm." + __name__)

# Op name (OpOverload.__name__) -> positional (index, update key) pairs: torch_npu's UPDATE_SPECS
# for the ops its graph dispatch mode records (ifa_handler.py, simple_handler.py). Only ops that
# reach the tape's dispatcher on the CPU backend matter; FIA v1 is the one the plugin calls.
UPDATE_SPECS: dict[str, tuple[tuple[int, str], ...]] = {
    "npu_fused_infer_attention_score.default": ((5, "actual_seq_lengths"),
                                                (6, "actual_seq_lengths_kv")),
    "npu_fused_infer_attention_score.out": ((5, "actual_seq_lengths"),
                                            (6, "actual_seq_lengths_kv")),
    "npu_fused_infer_attention_score_v2.default": ((7, "actual_seq_qlen"),
                                                   (8, "actual_seq_kvlen")),
    "npu_fused_infer_attention_score_v2.out": ((7, "actual_seq_qlen"), (8, "actual_seq_kvlen")),
    "_npu_paged_attention.default": ((7, "context_lens"),),
    "npu_multi_head_latent_attention.out": ((5, "context_lens"),),
}

# Namespaces of ops whose kernels are Python glue around other ops (vLLM's custom ops, e.g.
# vllm::moe_forward, vllm::all_reduce): the tape records the ops inside them, not the glue, so
# their host values are frozen at capture like everything else.
TRANSPARENT_NAMESPACES = frozenset({"vllm"})
_CPU_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)

# Ops whose result is read on the host: a device capture cannot contain them.
_HOST_SYNC_OPS = frozenset({
    "_local_scalar_dense.default", "is_nonzero.default", "equal.default", "nonzero.default",
    "masked_select.default", "_unique2.default", "unique_dim.default",
    "unique_consecutive.default",
})
# Factories whose contents are undefined: the captured buffer is already the result.
_UNINITIALISED_FACTORIES = frozenset({
    "empty.memory_format", "empty_strided.default", "new_empty.default",
    "new_empty_strided.default", "empty_like.default",
})

# Marks a recorded collective: its result's last item is a c10d work handle to wait on.
WAIT = "wait"

# Process-wide totals, for tests and logs.
COUNTERS: collections.Counter = collections.Counter()

_pool_ids = itertools.count(1)
_capture_lock = threading.Lock()
_capturing: TapeGraph | None = None


class GraphCaptureError(RuntimeError):
    """Something happened inside a capture that a device graph cannot hold."""


def graph_pool_handle() -> tuple[int, int]:
    """An opaque pool token (the tape keeps its own buffers; the token is only passed around)."""
    return (0, next(_pool_ids))


def is_current_stream_capturing() -> bool:
    return _capturing is not None


def _freeze(value: Any) -> Any:
    """Host values as captured: lists/tuples are copied (tensors inside kept by identity)."""
    if isinstance(value, list):
        return [_freeze(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _tensors(value: Any):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class _Recorder(TorchDispatchMode):
    def __init__(self, tape: TapeGraph) -> None:
        super().__init__()
        self.tape = tape

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace in TRANSPARENT_NAMESPACES:
            # Python glue registered as an op: run its (CPU) kernel with this mode active,
            # so the ops it runs are recorded, as a device graph captures the kernels
            # launched inside it.
            with self:
                return func.redispatch(_CPU_KEYS, *args, **kwargs)
        name = func.__name__
        if name in _HOST_SYNC_OPS:
            raise GraphCaptureError(
                f"graph capture: {func} reads a device value on the host (a synchronisation), "
                "which a device graph cannot capture; keep such values on the host side"
            )
        out = func(*args, **kwargs)
        self.tape._record(func, args, kwargs, out)
        return out


def _out_variant(func):
    """The ``out=`` overload of an aten op whose arguments are func's plus ``out``, or None."""
    if func.namespace != "aten":
        return None
    try:
        out = func.overloadpacket.out
    except AttributeError:
        return None
    names = [a.name for a in func._schema.arguments]
    if [a.name for a in out._schema.arguments] != names + ["out"] or len(out._schema.returns) != 1:
        return None
    return out


def _plan_entry(step) -> tuple:
    """(callable, args, kwargs, copies) replayed for one recorded step. An aten op with one new
    output replays through its out= overload straight into the captured buffer, which saves
    the copy (one more op per replayed op) that the generic path needs."""
    copies = step.copies
    if copies not in (None, WAIT) and len(copies) == 1 and copies[0][:2] == (None, None):
        out = _out_variant(step.func)
        if out is not None:
            return out._op, step.args, {**step.kwargs, "out": copies[0][2]}, None
    fn = step.func._op if hasattr(step.func, "_op") else step.func
    return fn, step.args, step.kwargs, copies


class _Step:
    """One recorded op: what to call and where its results go."""

    __slots__ = ("func", "name", "args", "kwargs", "copies", "replayed")

    def __init__(self, func, args, kwargs, copies, replayed) -> None:
        self.func = func
        self.name = func.__name__
        self.args = args  # list, so update() can replace a positional argument
        self.kwargs = kwargs
        # None, or a list of (return index, list index or None, captured output tensor); or
        # WAIT for a collective whose returned work handle a replay must wait on.
        self.copies = copies
        self.replayed = replayed


class TapeGraph:
    """An op tape with torch_npu's NPUGraph interface (see the module docstring)."""

    def __init__(self) -> None:
        self.auto_dispatch_capture = False
        self._steps: list[_Step] = []
        self._plan: list[tuple] = []
        self._recorder: _Recorder | None = None
        self._pool: tuple[int, int] | None = None
        self._state = "empty"  # empty -> capturing -> captured (-> empty on reset)
        self.num_replays = 0
        self.num_updates = 0

    # ----------------------------------------------------------------- capture
    def capture_begin(self, pool=None, capture_error_mode: str = "global") -> None:
        global _capturing
        if capture_error_mode not in ("global", "thread_local", "relaxed"):
            raise ValueError(f"unknown capture_error_mode {capture_error_mode!r}")
        if self._state != "empty":
            raise RuntimeError("this graph already holds a capture; reset() it or use a new one")
        with _capture_lock:
            if _capturing is not None:
                raise RuntimeError("another graph capture is underway in this process")
            _capturing = self
        self._pool = pool if pool is not None else graph_pool_handle()
        self._state = "capturing"
        self._recorder = _Recorder(self)
        self._recorder.__enter__()

    def capture_end(self) -> None:
        if self._state != "capturing":
            raise RuntimeError("capture_end() without capture_begin()")
        self._stop_recording(None, None, None)
        self._plan = [_plan_entry(s) for s in self._steps if s.replayed]
        self._state = "captured"
        COUNTERS["captures"] += 1
        logger.debug("tape graph %#x captured: %d ops recorded, %d replayed, %d updatable",
                     id(self), self.num_ops, self.num_replay_ops, len(self._update_records()))

    def _stop_recording(self, exc_type, exc, tb) -> None:
        global _capturing
        recorder, self._recorder = self._recorder, None
        try:
            if recorder is not None:
                recorder.__exit__(exc_type, exc, tb)
        finally:
            with _capture_lock:
                if _capturing is self:
                    _capturing = None

    def _abort_capture(self, exc_type, exc, tb) -> None:
        self._stop_recording(exc_type, exc, tb)
        self._steps, self._plan = [], []
        self._state = "failed"

    def _record(self, func, args, kwargs, out) -> None:
        schema = func._schema
        writes = any(a.alias_info is not None and a.alias_info.is_write
                     for a in schema.arguments)
        input_storages = {_storage_key(t) for t in _tensors(args) if t.numel()}
        input_storages.update(_storage_key(t) for t in _tensors(list(kwargs.values()))
                              if t.numel())
        results = out if isinstance(out, (tuple, list)) and len(schema.returns) != 1 else (out,)
        # Whether an output aliases an input is read from the output itself: the schema only
        # says "may alias" for ops such as contiguous, reshape and to, which copy when they must.
        copies = []
        for i, res in enumerate(results):
            items = [(None, res)] if not isinstance(res, (list, tuple)) else list(enumerate(res))
            for j, t in items:
                if not isinstance(t, torch.Tensor) or t.numel() == 0:
                    continue
                if _storage_key(t) in input_storages:
                    continue  # a view of an input, or the input itself (in place, out=)
                copies.append((i if len(results) > 1 else None, j, t))
        name = func.__name__
        if any("c10d.Work" in str(r.type) for r in schema.returns):
            if copies:
                raise GraphCaptureError(f"graph capture: collective {func} returned a new "
                                        "tensor; only in-place collectives can be replayed")
            self._steps.append(_Step(func, _freeze(list(args)),
                                     {k: _freeze(v) for k, v in kwargs.items()}, WAIT, True))
            return
        all_alias = bool(schema.returns) and all(r.alias_info is not None for r in schema.returns)
        pure_view = all_alias and not writes and not copies
        replayed = not pure_view and name not in _UNINITIALISED_FACTORIES
        self._steps.append(_Step(func, _freeze(list(args)),
                                 {k: _freeze(v) for k, v in kwargs.items()},
                                 copies or None, replayed))

    # ----------------------------------------------------------------- replay
    def replay(self) -> None:
        if self._state != "captured":
            raise RuntimeError(f"replay() of a graph that is {self._state} (capture it first)")
        if _capturing is not None:
            raise RuntimeError("replay() while a graph capture is underway")
        with torch.inference_mode():
            for fn, args, kwargs, copies in self._plan:
                out = fn(*args, **kwargs)
                if copies is None:
                    continue
                if copies is WAIT:
                    out[-1].wait()
                    continue
                for i, j, dst in copies:
                    src = out if i is None else out[i]
                    dst.copy_(src if j is None else src[j])
        self.num_replays += 1
        COUNTERS["replays"] += 1
        COUNTERS["replayed_ops"] += len(self._plan)

    def reset(self) -> None:
        if self._state == "capturing":
            self._abort_capture(None, None, None)
        self._steps, self._plan = [], []
        self._state = "empty"
        self._pool = None
        self.num_replays = 0
        self.num_updates = 0

    def pool(self) -> tuple[int, int]:
        if self._pool is None:
            self._pool = graph_pool_handle()
        return self._pool

    # ----------------------------------------------------------------- update
    def _update_records(self) -> list[_Step]:
        return [s for s in self._steps if s.name in UPDATE_SPECS]

    def update(self, cpu_update_input) -> None:
        """Replace host arguments of the recorded fused-attention calls (torch_npu's format)."""
        if not self.auto_dispatch_capture:
            raise RuntimeError("this graph was not captured for update: capture with "
                               "auto_dispatch_capture=True (as torch_npu requires)")
        if self._state != "captured":
            raise RuntimeError(f"update() of a graph that is {self._state}")
        records = self._update_records()
        updates = list(cpu_update_input)
        if len(updates) == 1:
            updates = updates * len(records)
        if len(updates) != len(records):
            raise RuntimeError(f"the graph holds {len(records)} updatable calls but "
                               f"cpu_update_input has {len(updates)} entries")
        for n, (step, new) in enumerate(zip(records, updates, strict=True)):
            positions = dict((key, idx) for idx, key in UPDATE_SPECS[step.name])
            for key, value in new.items():
                if key in step.kwargs:
                    step.kwargs[key] = _freeze(value)
                elif key in positions and positions[key] < len(step.args):
                    step.args[positions[key]] = _freeze(value)
                else:
                    raise ValueError(
                        f"update key {key!r} reaches no argument of recorded call #{n} "
                        f"({step.name}): only keyword arguments passed at capture (and the op's "
                        "positional length arguments) can be replaced; torch_npu would ignore it"
                    )
        self.num_updates += 1
        COUNTERS["updates"] += 1

    # ----------------------------------------------------------------- stats
    @property
    def num_ops(self) -> int:
        """Ops recorded at capture."""
        return len(self._steps)

    @property
    def num_replay_ops(self) -> int:
        """Ops a replay executes (recorded ops minus pure views and empty factories)."""
        return sum(s.replayed for s in self._steps)

    def recorded_op_names(self) -> list[str]:
        return [str(s.func) for s in self._steps]


class graph:
    """Context manager capturing into a TapeGraph, with torch.npu.graph's signature."""

    def __init__(self, npu_graph: TapeGraph, pool=None, stream=None,
                 auto_dispatch_capture: bool = False, capture_error_mode: str = "global") -> None:
        self.npu_graph = npu_graph
        self.pool = pool
        self.capture_stream = stream  # host work is synchronous: any stream is the same
        self.capture_error_mode = capture_error_mode
        npu_graph.auto_dispatch_capture = auto_dispatch_capture

    def __enter__(self) -> None:
        self.npu_graph.capture_begin(self.pool, capture_error_mode=self.capture_error_mode)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.npu_graph._abort_capture(exc_type, exc, tb)
            return
        self.npu_graph.capture_end()
