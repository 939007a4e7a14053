"""FULL_DECODE_ONLY graphs through the device layer.

vLLM wraps the model in ``CUDAGraphWrapper(FULL)``, which captures with ``torch.cuda.CUDAGraph``
and keeps weak references to the outputs (``torch.ops._C.weak_ref_tensor``, absent here).
``AscendGraphWrapper`` keeps vLLM's dispatch (forward context, batch descriptors, the capture
switch, ``_all_instances``/``clear_graphs``/``unwrap``) and replaces the capture and replay:

* capture with ``device.current().Graph`` (torch_npu's NPUGraph on the NPU, the op tape on the
  CPU backend) and ``graph(..., auto_dispatch_capture=True)`` so the fused-attention calls are
  recorded as updatable;
* keep a strong reference to the captured output (it is the graph's static output buffer);
* before each replay, hand the step's attention lengths to ``update()``: a captured graph holds
  the host arguments it was captured with, and only ``update`` replaces the fused attention's
  ``actual_seq_lengths``/``actual_seq_lengths_kv``. The update comes before the replay it is
  meant for (the order valid on the tape and, with synchronous scheduling, on an NPU).
"""

from __future__ import annotations

from typing import Any

from vllm.compilation.counter import compilation_counter
from vllm.compilation.cuda_graph import CUDAGraphEntry, CUDAGraphWrapper
from vllm.compilation.monitor import validate_cudagraph_capturing_enabled
from vllm.config import CUDAGraphMode
from vllm.forward_context import get_forward_context, is_forward_context_available

from vllm_ascend import device
from vllm_ascend.attention.metadata import AscendAttentionMetadata
from vllm_ascend.logger import init_logger

logger = init_logger(__name__)

# Test-only switch: False skips the per-step length update, so a replay runs with the lengths
# frozen at capture (tests/e2e/test_graph_mode.py shows the output then diverges).
UPDATE_LENGTHS = True


class AscendGraphWrapper(CUDAGraphWrapper):
    """CUDAGraphWrapper capturing and replaying with the device layer's graphs."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not is_forward_context_available():
            return self.runnable(*args, **kwargs)
        context = get_forward_context()
        mode = context.cudagraph_runtime_mode
        if mode == CUDAGraphMode.NONE or mode != self.runtime_mode:
            return self.runnable(*args, **kwargs)
        desc = context.batch_descriptor
        assert desc is not None, "a graph step needs a batch descriptor"
        entry = self.concrete_cudagraph_entries.get(desc)
        if entry is None or entry.cudagraph is None:
            return self._capture(desc, args, kwargs)
        if UPDATE_LENGTHS:
            entry.cudagraph.update([attention_lengths(context.attn_metadata)])
        entry.cudagraph.replay()
        return entry.output

    def _capture(self, desc, args, kwargs) -> Any:
        validate_cudagraph_capturing_enabled()
        dev = device.current()
        graph = dev.Graph()
        with dev.graph(graph, pool=self.graph_pool, stream=dev.current_stream(),
                       auto_dispatch_capture=True):
            output = self.runnable(*args, **kwargs)
        self.concrete_cudagraph_entries[desc] = CUDAGraphEntry(
            batch_descriptor=desc, cudagraph=graph, output=output)
        compilation_counter.num_cudagraph_captured += 1
        logger.debug("captured a %s graph for %s", self.runtime_mode.name, desc)
        return output


def attention_lengths(attn_metadata) -> dict[str, list[int]]:
    """The step's fused-attention lengths in NPUGraph.update's format (one dict applies to
    every recorded attention call: the metadata is built once per step and shared by all
    layers)."""
    if isinstance(attn_metadata, list):
        raise NotImplementedError("graph replay with micro-batches is not supported")
    metas = {id(m): m for m in (attn_metadata or {}).values()}
    if len(metas) != 1:
        raise NotImplementedError(
            f"graph replay expects one attention metadata shared by all layers, got {len(metas)}"
        )
    (meta,) = metas.values()
    assert isinstance(meta, AscendAttentionMetadata), type(meta)
    return {"actual_seq_lengths": meta.cu_query_lens, "actual_seq_lengths_kv": meta.seq_lens}
