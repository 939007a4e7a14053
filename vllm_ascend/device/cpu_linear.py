"""CPU backend GEMMs: a large float32 LM head through oneDNN's inner product at decode batch
sizes; bfloat16/float16 linear layers and heads in float32 panels (described last).

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
embedding, frees for sleep mode and reloads, and the memory figures do not change.

bfloat16 and float16 weights (every unquantized linear layer and LM head): torch's CPU GEMM for
these types, without AVX-512 BF16, costs about the same per row whatever the row count, and
oneDNN's bf16 inner product needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT. From 8 rows, the
weight is converted to float32 a panel of output columns at a time (~4 MiB each, a temporary)
and multiplied by MKL's sgemm, accumulating in float32 and rounding once, as ``F.linear`` does.
Measured, bfloat16, one thread, ms per call, ``F.linear`` / panels:

    weight              1 row          16 rows          128 rows
    49152 x 576     12.53 / 18.27   135.18 / 37.86   914.87 / 179.43
    3072 x 576       0.41 / 0.77     6.25 / 1.97      47.35 / 7.35
    576 x 1536       0.33 / 1.11     3.13 / 1.34      23.93 / 4.73
    576 x 576        0.11 / 0.19     1.36 / 0.42      11.23 / 1.71
"""

from __future__ import annotations

from collections import Counter

import torch
from vllm.model_executor.layers.linear import UnquantizedLinearMethod
from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

from vllm_ascend.logger import init_logger

logger = init_logger(__name__)


# Rows up to which oneDNN serves (at most five primitives per head: 1, 2, 4, 8, 16 rows).
ONEDNN_MAX_ROWS = 16
# Weights from this many elements take oneDNN (measured above: the 28M-element head wins, every
# shape up to 1.8M elements is level or loses).
ONEDNN_MIN_ELEMENTS = 1 << 23


# Half-precision weights: rows from which the float32 panels serve, and each panel's size.
PANEL_MIN_ROWS = 8
PANEL_ELEMENTS = 1 << 20
HALF_DTYPES = (torch.bfloat16, torch.float16)


def _panel_linear(flat: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """[rows, k] @ weight.T (+ bias) for a half-precision weight: float32 sgemm on float32 copies
    of a few output columns' weights at a time; accumulated in float32, rounded once."""
    rows, k = flat.shape
    n = weight.shape[0]
    out = flat.new_empty((rows, n))
    x32 = flat.float()
    step = max(1, PANEL_ELEMENTS // k)  # k >= 1: with k = 0, _linear counts 0 rows
    for start in range(0, n, step):
        stop = min(start + step, n)
        part = torch.mm(x32, weight[start:stop].float().t())
        if bias is not None:
            part += bias[start:stop].float()
        out[:, start:stop] = part
    return out


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    k, n = x.shape[-1], weight.shape[0]
    rows = x.numel() // k if k else 0
    if weight.dtype in HALF_DTYPES:
        if rows < PANEL_MIN_ROWS or x.dtype != weight.dtype:
            return torch.nn.functional.linear(x, weight, bias)
        return _panel_linear(x.reshape(rows, k), weight, bias).reshape(*x.shape[:-1], n)
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


def cpu_gemm(x: torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias), as F.linear. float32: oneDNN's inner product on rows padded to a
    power of two up to ONEDNN_MAX_ROWS rows, F.linear above. bfloat16/float16: float32 panels
    from PANEL_MIN_ROWS rows, F.linear below."""
    if torch.compiler.is_compiling():
        return _linear_op(x, weight, bias)
    return _linear(x, weight, bias)


class _CpuGemm:
    """``apply`` of the methods below: vLLM's unquantized method with its GEMM through
    ``cpu_gemm`` (weights, loading, tying and sleep mode unchanged)."""

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        return cpu_gemm(x, layer.weight, bias)


class OneDnnEmbeddingMethod(_CpuGemm, UnquantizedEmbeddingMethod):
    """A large float32 LM head's GEMM through oneDNN (lookup unchanged)."""


class HalfPanelEmbeddingMethod(_CpuGemm, UnquantizedEmbeddingMethod):
    """A half-precision LM head's GEMM in float32 panels (lookup unchanged)."""


class HalfPanelLinearMethod(_CpuGemm, UnquantizedLinearMethod):
    """A half-precision linear layer's GEMM in float32 panels."""


def wanted() -> bool:
    """Whether this process's linear layers and LM heads may take the methods above."""
    from vllm_ascend.device.select import active_backend
    from vllm_ascend.kernels import fast_cpu

    return (active_backend() == "cpu" and fast_cpu.mode() == "fast"
            and torch.backends.mkldnn.is_available())


def _method_for(module: torch.nn.Module):
    """The method a layer takes, or None: large float32 heads take oneDNN, half-precision
    linear layers and heads the float32 panels; contiguous 2-D weights only."""
    kind = type(getattr(module, "quant_method", None))
    weight = getattr(module, "weight", None)
    if (kind not in (UnquantizedEmbeddingMethod, UnquantizedLinearMethod)
            or not isinstance(weight, torch.Tensor) or weight.is_meta or weight.dim() != 2
            or not weight.is_contiguous()):
        return None
    if weight.dtype in HALF_DTYPES:
        if kind is UnquantizedLinearMethod:
            return HalfPanelLinearMethod()
        return HalfPanelEmbeddingMethod()
    # The input embedding shares the method class; its ``apply`` is never called.
    if (kind is UnquantizedEmbeddingMethod and weight.dtype == torch.float32
            and weight.numel() >= ONEDNN_MIN_ELEMENTS):
        return OneDnnEmbeddingMethod()
    return None


def enable(*models: torch.nn.Module | None) -> int:
    """Give every eligible layer of ``models`` its CPU method; returns how many got one."""
    if not wanted():
        return 0
    switched = Counter()
    for model in models:
        for module in () if model is None else model.modules():
            method = _method_for(module)
            if method is not None:
                module.quant_method = method
                switched[type(method).__name__] += 1
    if switched:
        logger.info("vllm-ascend CPU backend: GEMMs of %s (float32 LM heads through oneDNN up "
                    "to %d rows; half precision in float32 panels from %d rows)",
                    dict(switched), ONEDNN_MAX_ROWS, PANEL_MIN_ROWS)
    return sum(switched.values())
