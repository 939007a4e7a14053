"""CPU backend: float32 unquantized linear layers and LM head through oneDNN's inner product.

On an NPU, vLLM's ``UnquantizedLinearMethod`` (and the LM head's ``UnquantizedEmbeddingMethod``)
run ``F.linear``, an NPU matmul. On the CPU backend ``F.linear`` is MKL's sgemm on the transposed
[N, K] weight, which at decode-sized batches is markedly slower than oneDNN's inner product on the
same weight: SmolLM2-135M's layers (30 x qkv, o, gate_up, down, plus the 49152-row LM head),
float32, 2 threads, GEMM milliseconds per step: 89 vs 58 at 16 tokens, 25 vs 22 at 1, 518 vs 496
at 256; the whole engine (one thread, 16 prompts of 128 in / 128 out) 67 vs 62 output tokens/s.
vLLM's own CPU build routes these layers through oneDNN too.

So after loading, on the CPU backend with the fast CPU kernels selected
(``VLLM_ASCEND_CPU_KERNELS``; 'reference' keeps ``F.linear``), every such layer whose weight is a
contiguous 2-D float32 tensor gets a method whose ``apply`` calls
``torch.ops.mkldnn._linear_pointwise`` on the weight as it is stored. No prepacked copy is made
(one measured faster still, 43 ms at 16 tokens, but it would be a second copy of every weight):
the weight stays the parameter vLLM loads, ties, frees for sleep mode and reloads, and the memory
figures do not change. bfloat16 and float16 layers keep ``F.linear``: oneDNN's bf16 inner product
needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT and was not measured.
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.linear import UnquantizedLinearMethod
from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

from vllm_ascend.logger import init_logger

logger = init_logger(__name__)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias), as F.linear, through oneDNN's float32 inner product."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDnnLinearMethod(UnquantizedLinearMethod):
    """vLLM's unquantized linear method with its GEMM through oneDNN."""

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        return onednn_linear(x, layer.weight, bias)


class OneDnnEmbeddingMethod(UnquantizedEmbeddingMethod):
    """vLLM's unquantized embedding method (lookup and weight tying unchanged) with the LM head's
    GEMM through oneDNN (the input embedding gets it too, and never calls ``apply``)."""

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        return onednn_linear(x, layer.weight, bias)


_REPLACEMENTS = {UnquantizedLinearMethod: OneDnnLinearMethod,
                 UnquantizedEmbeddingMethod: OneDnnEmbeddingMethod}


def wanted() -> bool:
    """Whether this process's float32 linear layers should run through oneDNN."""
    from vllm_ascend.device.select import active_backend
    from vllm_ascend.kernels import fast_cpu

    return (active_backend() == "cpu" and fast_cpu.mode() == "fast"
            and torch.backends.mkldnn.is_available())


def enable(*models: torch.nn.Module | None) -> int:
    """Give every eligible layer of ``models`` the oneDNN method; returns how many got it."""
    if not wanted():
        return 0
    switched = 0
    for model in models:
        for module in () if model is None else model.modules():
            replacement = _REPLACEMENTS.get(type(getattr(module, "quant_method", None)))
            weight = getattr(module, "weight", None)
            if (replacement is None or not isinstance(weight, torch.Tensor) or weight.is_meta
                    or weight.dtype != torch.float32 or weight.dim() != 2
                    or not weight.is_contiguous()):
                continue
            module.quant_method = replacement()
            switched += 1
    if switched:
        logger.info("vllm-ascend CPU backend: %d float32 linear layers run through oneDNN",
                    switched)
    return switched
