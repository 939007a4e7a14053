"""CPU backend: float32 unquantized linear layers and LM head through oneDNN's inner product.

On an NPU, vLLM's ``UnquantizedLinearMethod`` (and the LM head's ``UnquantizedEmbeddingMethod``)
run ``F.linear``, an NPU matmul. On the CPU backend ``F.linear`` is MKL's sgemm on the transposed
[N, K] weight, which at decode-sized batches is markedly slower than oneDNN's inner product on the
same weight. SmolLM2-135M's five weight shapes (qkv, o, gate_up, down, the 49152-row LM head),
float32, one thread, each at 1, 3, 5, 9, 13 and 16 rows: 220 ms through MKL, 155 through oneDNN;
from 17 to 64 rows they are level, and from 100 rows MKL is faster. vLLM's own CPU build routes
these layers through oneDNN too (on prepacked weights).

So after loading, on the CPU backend with the fast CPU kernels selected
(``VLLM_ASCEND_CPU_KERNELS``; 'reference' keeps ``F.linear``), every such layer whose weight is a
contiguous 2-D float32 tensor gets a method whose ``apply`` calls ``vllm_ascend::cpu_linear``: up
to 16 rows oneDNN's ``torch.ops.mkldnn._linear_pointwise`` on the weight as it is stored, above
that ``F.linear``. Rows are padded to a power of two (1, 2, 4, 8, 16) because oneDNN keeps a
compiled primitive of ~0.6 MiB per (shape, rows) it has seen: unpadded, a server's resident
memory grew by ~100 MiB in 30 s of mixed requests; padded, at most five per weight shape (24 MiB
for SmolLM2, measured), made in the first steps. The op is opaque to torch.compile (its fake
gives the shape), so compiled graphs do not specialise on the row count.

No prepacked copy of a weight is made (one measured faster still, but it would be a second copy
of every weight): the weight stays the parameter vLLM loads, ties, frees for sleep mode and
reloads, and the memory figures do not change. bfloat16 and float16 layers keep ``F.linear``:
oneDNN's bf16 inner product needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT and was not measured.
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.linear import UnquantizedLinearMethod
from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

from vllm_ascend.logger import init_logger

logger = init_logger(__name__)


# Rows up to which oneDNN serves (from 17 to 64 rows it ties with MKL, above it loses).
ONEDNN_MAX_ROWS = 16


@torch.library.custom_op("vllm_ascend::cpu_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias), as F.linear: oneDNN's inner product on rows padded to a power of
    two up to ONEDNN_MAX_ROWS rows, F.linear above."""
    k, n = x.shape[-1], weight.shape[0]
    rows = x.numel() // k if k else 0
    if not 0 < rows <= ONEDNN_MAX_ROWS:
        return torch.nn.functional.linear(x, weight, bias)
    flat = x.reshape(rows, k)
    bucket = 1 << (rows - 1).bit_length()
    if bucket != rows:
        padded = flat.new_zeros((bucket, k))
        padded[:rows] = flat
        flat = padded
    y = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "none", [], "")
    return y[:rows].reshape(*x.shape[:-1], n)


@onednn_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


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
