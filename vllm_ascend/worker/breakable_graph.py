"""PIECEWISE graphs without a compiler: vLLM's breakable capture on the device layer's graphs.

vLLM 0.32's breakable capture (``vllm/compilation/breakable_cudagraph.py``, on when
``VLLM_USE_BREAKABLE_CUDAGRAPH=1``, which the platform sets by default) captures a forward as a
list of segments: graph segments, and eager breaks where vLLM's attention entry point
(``unified_attention_with_output``, decorated ``eager_break_during_capture``) ends the running
capture, runs attention eagerly and starts the next one. A replay runs the segments in order,
so attention (KV-cache write and fused attention) runs each step with that step's metadata:
nothing of it is frozen into a graph, and no length update is needed.

vLLM's capture is hard-wired to ``torch.cuda.CUDAGraph``. ``AscendBreakableGraphWrapper`` keeps
vLLM's dispatch (per batch descriptor, PIECEWISE runtime mode only) and capture context (the
decorator finds it through ``BreakableCUDAGraphCapture.current()``), and captures each segment
with ``device.current().Graph`` instead: torch_npu's NPUGraph on the NPU, the op tape on the
CPU backend.
"""

from __future__ import annotations

import collections
import gc
from typing import Any

import torch
from vllm.compilation.breakable_cudagraph import (
    BreakableCUDAGraphCapture,
    BreakableCUDAGraphWrapper,
)
from vllm.compilation.counter import compilation_counter
from vllm.compilation.monitor import validate_cudagraph_capturing_enabled
from vllm.utils.torch_utils import weak_ref_tensors

from vllm_ascend import device
from vllm_ascend.logger import init_logger

logger = init_logger(__name__)


class DeviceSegmentCapture(BreakableCUDAGraphCapture):
    """The segment capture, each graph segment a device-layer graph."""

    def _begin_segment(self) -> None:
        assert not self._capturing
        graph = device.current().Graph()
        graph.capture_begin(pool=self.pool)
        self._current_graph = graph
        self._capturing = True


class AscendBreakableGraphWrapper(BreakableCUDAGraphWrapper):
    """vLLM's breakable-graph wrapper capturing with the device layer's graphs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Replays per captured token count, for tests and the benchmark.
        self.replays: collections.Counter[int] = collections.Counter()
        # The tensor keyword arguments each graph was captured with (by batch descriptor).
        self._captured_kwargs: dict[Any, frozenset[str]] = {}
        self._eager_kwargs_logged = False

    def _capture(self, entry, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        validate_cudagraph_capturing_enabled()
        entry.input_addresses = self._collect_tensor_addresses(args, kwargs)
        self._captured_kwargs[entry.batch_descriptor] = _tensor_kwargs(kwargs)
        if gc.isenabled():  # bulk capture runs with gc frozen and does this once
            gc.collect()
            device.current().empty_cache()
        with DeviceSegmentCapture(pool=self.graph_pool) as capture:
            output = self.runnable(*args, **kwargs)
            # Weak before the last segment closes, so the pool may reuse the memory for the
            # next size's capture (the strong reference dies with this frame).
            output = weak_ref_tensors(output)
        entry.capture = capture
        entry.output = output
        compilation_counter.num_cudagraph_captured += 1
        logger.debug("captured %r for %s", capture, entry.batch_descriptor)
        return output

    def _replay(self, entry, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        extra = _tensor_kwargs(kwargs) - self._captured_kwargs.get(entry.batch_descriptor,
                                                                   frozenset())
        if extra:
            # The graphs were captured without these inputs (the runner's dummy batches do not
            # make, e.g., a cross-encoder's token_type_ids), so no replay would read them: the
            # step runs eagerly instead.
            if not self._eager_kwargs_logged:
                self._eager_kwargs_logged = True
                logger.info("vllm-ascend: steps with %s run eagerly (the graphs were captured "
                            "without them)", sorted(extra))
            return self.runnable(*args, **kwargs)
        self.replays[entry.batch_descriptor.num_tokens] += 1
        return super()._replay(entry, args, kwargs)


def _tensor_kwargs(kwargs: dict[str, Any]) -> frozenset[str]:
    return frozenset(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))


def check_attention_breaks() -> None:
    """Piecewise capture needs vLLM's attention entry point to carry its capture break, which
    vLLM decides when that module is first imported (from VLLM_USE_BREAKABLE_CUDAGRAPH)."""
    from vllm.model_executor.layers.attention import attention

    code = attention.unified_attention_with_output.__code__
    if not code.co_filename.endswith("breakable_cudagraph.py"):
        raise RuntimeError(
            "vllm-ascend: PIECEWISE graphs need VLLM_USE_BREAKABLE_CUDAGRAPH=1 before vLLM's "
            "attention layer is imported (the platform sets it when it loads; here the layer "
            "was imported earlier). Export VLLM_USE_BREAKABLE_CUDAGRAPH=1, or pass "
            "--enforce-eager or cudagraph_mode FULL_DECODE_ONLY")
