"""CPU backend: a large float32 LM head through oneDNN's inner product at decode batch sizes.

On an NPU, the LM head's ``UnquantizedEmbeddingMethod.apply`` runs ``F.linear``, an NPU matmul.
On the CPU backend ``F.linear`` is MKL's sgemm on the transposed [vocab, hidden] weight, which for
a large vocabulary at a few rows runs well below what oneDNN's inner product gets from the same
weight. Measured, float32, one thread, ms per call, MKL / oneDNN:

    weight              1 row          4 rows         16 rows
    49152 x 576     13.59 / 12.59   30.76 / 22.88   42.61 / 29.92   (SmolLM2-135M's LM head)
    3072 x 576       0.18 / 0.20     0.69 / 1.05     1.79 / 2.26    (its gate_up projection)
    1024 x 1024      0.10 / 0.11     0.43 / 0.41     0.76 / 0.73
    576 x 576        0.03 / 0.05     0.09 / 0.12     0.18 / 0.22

and oneDNN costs ~30 us more per call on tiny shapes. So only an LM head whose weight has at
least 2**23 elements takes it (linear layers keep ``F.linear``); vLLM's own CPU build routes
every layer through oneDNN, on prepacked copies of the weights.

After loading, on the CPU backend with the fast CPU kernels selected (``VLLM_ASCEND_CPU_KERNELS``;
'reference' keeps ``F.linear``), such a head with a contiguous 2-D float32 weight gets a method
whose ``apply`` runs up to 16 rows through ``torch.ops.mkldnn._linear_pointwise`` on the weight
as it is stored, more rows through ``F.linear``. Rows are padded to a power of two (1, 2, 4, 8,
16) because oneDNN keeps a compiled primitive of ~0.6 MiB for every (shape, rows) it has seen:
unpadded, a server's resident memory grew by ~100 MiB in 30 s of mixed requests. Under
torch.compile the call is the opaque op ``vllm_ascend::cpu_linear`` (its fake gives the shape),
so a compiled graph does not specialise on the row count; eager calls skip the op dispatcher.

No prepacked copy of the weight is made: it stays the parameter vLLM loads, ties to the input
embedding, frees for sleep mode and reloads, and the memory figures do not change. bfloat16 and
float16 heads keep ``F.linear``: oneDNN's bf16 inner product needs AVX-512 (BW, VL, DQ) or
AVX-NE-CONVERT and was not measured.
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

from vllm_ascend.logger import init_logger

logger = init_logger(__name__)


# Rows up to which oneDNN serves (at most five primitives per head: 1, 2, 4, 8, 16 rows).
ONEDNN_MAX_ROWS = 16
# Weights from this many elements take oneDNN (measured above: the 28M-element head wins, every
# shape up to 1.8M elements is level or loses).
ONEDNN_MIN_ELEMENTS = 1 << 23


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
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


@torch.library.custom_op("vllm_ascend::cpu_linear", mutates_args=())
def _linear_op(x: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    return _linear(x, weight, bias)


@_linear_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def onednn_linear(x: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias), as F.linear: oneDNN's inner product on rows padded to a power of
    two up to ONEDNN_MAX_ROWS rows, F.linear above."""
    if torch.compiler.is_compiling():
        return _linear_op(x, weight, bias)
    return _linear(x, weight, bias)


class OneDnnEmbeddingMethod(UnquantizedEmbeddingMethod):
    """vLLM's unquantized embedding method (lookup and weight tying unchanged) with the LM head's
    GEMM through oneDNN."""

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        return onednn_linear(x, layer.weight, bias)


def wanted() -> bool:
    """Whether this process's large float32 LM heads should run through oneDNN."""
    from vllm_ascend.device.select import active_backend
    from vllm_ascend.kernels import fast_cpu

    return (active_backend() == "cpu" and fast_cpu.mode() == "fast"
            and torch.backends.mkldnn.is_available())


def enable(*models: torch.nn.Module | None) -> int:
    """Give every eligible LM head (vocabulary embedding) of ``models`` the oneDNN method;
    returns how many got it."""
    if not wanted():
        return 0
    switched = 0
    for model in models:
        for module in () if model is None else model.modules():
            weight = getattr(module, "weight", None)
            # The input embedding shares the method class; its ``apply`` is never called.
            if (type(getattr(module, "quant_method", None)) is not UnquantizedEmbeddingMethod
                    or not isinstance(weight, torch.Tensor) or weight.is_meta
                    or weight.dtype != torch.float32 or weight.dim() != 2
                    or weight.numel() < ONEDNN_MIN_ELEMENTS or not weight.is_contiguous()):
                continue
            module.quant_method = OneDnnEmbeddingMethod()
            switched += 1
    if switched:
        logger.info("vllm-ascend CPU backend: %d float32 vocabulary embeddings run their LM-head "
                    "GEMM through oneDNN up to %d rows", switched, ONEDNN_MAX_ROWS)
    return switched
