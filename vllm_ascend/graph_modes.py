"""Graph modes on Ascend: which one runs, and which batch sizes are captured.

Modes (``compilation_config.cudagraph_mode``), none of them compiled (no torch.compile here):
- ``PIECEWISE``, the default on both backends: every forward up to the largest capture size is
  replayed as graph segments with attention (KV-cache write and fused attention) run eagerly
  between them (worker/breakable_graph.py). Attention reads each step's metadata, so nothing
  about sequence lengths is frozen, prefill and mixed steps are captured too, and the segments
  hold only ordinary ops (matmuls, norms, rotary, activations, collectives). It is the mode
  that asks the least of the device graph, which is why it is the default on the NPU; the CPU
  backend runs the same default so CI exercises what NPU users run.
- ``FULL_DECODE_ONLY``: uniform decode batches captured whole, attention included, with the
  fused attention's host lengths refreshed by ``NPUGraph.update`` before each replay
  (worker/graph_wrapper.py); every other step eager. The fewest host launches per decode step.
- ``FULL_AND_PIECEWISE``: the two together (decode whole, everything else piecewise).
- ``FULL`` (whole graphs of mixed batches) is not offered: a mixed batch's fused attention
  takes per-request host lengths that a whole graph would have to carry for every batch
  composition. It runs as ``FULL_AND_PIECEWISE``, with a warning.
- ``NONE`` (or ``--enforce-eager``): eager.
MLA models (DeepSeek-V2/V3) run eager whatever the mode: vLLM's MLA layer calls its attention
without the capture break, and the MLA decode's lengths have no graph update yet.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from vllm_ascend.logger import init_logger

if TYPE_CHECKING:
    from vllm.config import VllmConfig

logger = init_logger(__name__)

BREAKABLE_ENV = "VLLM_USE_BREAKABLE_CUDAGRAPH"
# ACL graphs draw on the device's 2048 streams; 1800 graphs leaves a margin for the runtime's
# own (the public plugin's figure, vllm-project/vllm-ascend#1168). A piecewise size costs one
# graph per segment (decoder layers + 1), a whole decode graph one.
NPU_GRAPH_BUDGET = 1800
# The CPU backend's default largest capture size. Its op tape keeps every captured
# intermediate alive (the sum over sizes, where a device pool holds about the peak), and replay
# saves little host time once a step's compute dominates; decode batches up to 16 are where
# the graph paths (padding, replay, length updates) are exercised. An explicit
# max_cudagraph_capture_size or cudagraph_capture_sizes wins.
CPU_DEFAULT_MAX_CAPTURE_SIZE = 16


def enable_breakable_capture() -> None:
    """PIECEWISE graphs use vLLM's breakable capture, which vLLM only turns on when
    ``VLLM_USE_BREAKABLE_CUDAGRAPH=1`` is in the environment when its config and attention
    layer are built: set it unless the user chose, before any config exists (worker processes
    inherit it)."""
    os.environ.setdefault(BREAKABLE_ENV, "1")


def _breakable_enabled() -> bool:
    return os.environ.get(BREAKABLE_ENV, "0") == "1"


def resolve_mode(vllm_config: VllmConfig, device_type: str) -> None:
    """Settle cudagraph_mode before vLLM derives capture sizes from it (unset means the
    default; an explicit request that cannot run is an error, not a silent downgrade)."""
    from vllm.config import CUDAGraphMode

    compilation_config = vllm_config.compilation_config
    requested = compilation_config.cudagraph_mode
    mode = CUDAGraphMode.PIECEWISE if requested is None else requested
    if mode == CUDAGraphMode.FULL:
        logger.warning("vllm-ascend: cudagraph_mode FULL (whole graphs of mixed batches) is not "
                       "supported; running FULL_AND_PIECEWISE (whole decode graphs, piecewise "
                       "graphs for the rest)")
        mode = CUDAGraphMode.FULL_AND_PIECEWISE
    if mode.has_piecewise_cudagraphs() and not _breakable_enabled():
        fallback = (CUDAGraphMode.FULL_DECODE_ONLY if mode.has_full_cudagraphs()
                    else CUDAGraphMode.NONE)
        logger.warning("vllm-ascend: %s=0 turns off piecewise graphs (captured with vLLM's "
                       "breakable capture; there is no torch.compile here); running %s",
                       BREAKABLE_ENV, fallback.name)
        mode = fallback
    parallel_config = vllm_config.parallel_config
    model_config = vllm_config.model_config
    if mode != CUDAGraphMode.NONE and model_config is not None and model_config.use_mla:
        # vLLM's MLA layer calls its attention directly, without the capture break of
        # unified_attention_with_output, and the MLA decode's lengths have no graph update yet.
        logger.warning("vllm-ascend: graphs off (eager) for MLA model %s: MLA attention is not "
                       "captured yet", model_config.model)
        mode = CUDAGraphMode.NONE
    parallel = []
    if model_config is None or model_config.is_moe:
        # An expert-parallel MoE layer reads row counts on the host (the all-to-all split
        # sizes, or the local row count: ops/fused_moe.py), which no graph can hold. Under data
        # parallel without it, vLLM's all-gather dispatch captured in a graph gave tokens that
        # differ from Hugging Face's (tests/e2e/test_distributed.py, not yet diagnosed), so it
        # stays eager too. Dense models capture under every parallel mode.
        if parallel_config.data_parallel_size > 1:
            parallel.append(f"data_parallel_size={parallel_config.data_parallel_size}")
        if parallel_config.enable_expert_parallel:  # (vLLM refuses it for a dense model)
            parallel.append("enable_expert_parallel")
    parallel = ", ".join(parallel)
    if mode != CUDAGraphMode.NONE and parallel:
        if requested is not None:
            raise ValueError(
                f"vllm-ascend: cudagraph_mode={mode.name} is not supported for an MoE model "
                f"with {parallel} yet (tensor and pipeline parallel are, and dense models with "
                "data parallel); pass --enforce-eager or drop cudagraph_mode")
        logger.info("vllm-ascend: graphs off (eager) for an MoE model with %s", parallel)
        mode = CUDAGraphMode.NONE
    compilation_config.cudagraph_mode = mode
    if (mode != CUDAGraphMode.NONE and device_type == "cpu"
            and compilation_config.max_cudagraph_capture_size is None
            and compilation_config.cudagraph_capture_sizes is None):
        compilation_config.max_cudagraph_capture_size = CPU_DEFAULT_MAX_CAPTURE_SIZE


def finalize_sizes(vllm_config: VllmConfig) -> None:
    """Trim vLLM's capture sizes to what the mode can replay and the device can hold."""
    from vllm.config import CUDAGraphMode

    compilation_config = vllm_config.compilation_config
    mode = compilation_config.cudagraph_mode
    sizes = sorted(compilation_config.cudagraph_capture_sizes or [])
    if mode != CUDAGraphMode.NONE and mode.has_full_cudagraphs():
        # The padding tokens of a whole decode graph write distinct slots of the reserved null
        # block 0 (attention/impl.py), so its sizes stay within one block.
        limit = vllm_config.cache_config.block_size
        dropped = [size for size in sizes if size > limit]
        if dropped:
            logger.warning("vllm-ascend: capture sizes above the block size (%d) dropped for "
                           "%s: %s", limit, mode.name, dropped)
            sizes = [size for size in sizes if size <= limit]
    if mode != CUDAGraphMode.NONE and mode.has_piecewise_cudagraphs():
        sizes = _within_graph_budget(sizes, vllm_config)
    if mode != CUDAGraphMode.NONE and not sizes:
        if vllm_config.model_config is not None:  # (a config without a model has no sizes)
            logger.warning("vllm-ascend: no graph capture size left; running eager")
        mode = CUDAGraphMode.NONE
    if mode == CUDAGraphMode.NONE:
        sizes = []
    compilation_config.cudagraph_mode = mode
    compilation_config.cudagraph_capture_sizes = sizes
    compilation_config.max_cudagraph_capture_size = sizes[-1] if sizes else 0
    if sizes:
        logger.info("vllm-ascend: %s graphs for batches of %s tokens", mode.name, sizes)


def _within_graph_budget(sizes: list[int], vllm_config: VllmConfig) -> list[int]:
    """At most NPU_GRAPH_BUDGET graphs in all: keep evenly spread sizes, always the smallest
    and the largest. Applied on the CPU backend too, so it captures what an NPU can."""
    model_config = vllm_config.model_config
    layers = model_config.get_num_layers(vllm_config.parallel_config) if model_config else 0
    per_size = (layers + 1 + int(vllm_config.compilation_config.cudagraph_mode
                                 .has_full_cudagraphs())) * _lora_graph_sets(vllm_config)
    keep = max(2, NPU_GRAPH_BUDGET // per_size)
    if len(sizes) <= keep:
        return sizes
    step = (len(sizes) - 1) / (keep - 1)
    kept = sorted({sizes[round(i * step)] for i in range(keep)})
    logger.warning("vllm-ascend: %d capture sizes x %d graphs each exceed the device's budget "
                   "of %d graphs; capturing %s (set compilation_config cudagraph_capture_sizes "
                   "to choose)", len(sizes), per_size, NPU_GRAPH_BUDGET, kept)
    return kept


def _lora_graph_sets(vllm_config: VllmConfig) -> int:
    """With LoRA, vLLM captures every size once per LoRA case (cudagraph_specialize_lora):
    without adapters, and per captured count of active adapters. The LoRA ops themselves are
    graph-safe (lora/punica_wrapper.py)."""
    lora_config = vllm_config.lora_config
    if lora_config is None or not vllm_config.compilation_config.cudagraph_specialize_lora:
        return 1
    from vllm.lora.utils import get_captured_lora_counts

    return 1 + len(get_captured_lora_counts(lora_config.max_loras,
                                            lora_config.specialize_active_lora))
