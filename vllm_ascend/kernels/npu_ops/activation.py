"""CPU kernel of torch_npu's SwiGLU activation."""

from __future__ import annotations

import torch

from vllm_ascend.kernels.npu_library import npu_op


def _swiglu_fake(self, dim=-1):
    shape = list(self.shape)
    shape[dim] = shape[dim] // 2
    return self.new_empty(shape)


@npu_op("npu_swiglu(Tensor self, int dim=-1) -> Tensor", fake=_swiglu_fake)
def npu_swiglu(self: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """torch_npu.npu_swiglu (doc entry ``npu_swiglu``): swish(A) * B = A * sigmoid(A) * B.

    A and B are the first and second halves of x along ``dim``: the FIRST half is activated.
    Assumptions (the doc is silent): computed in float32 and rounded to x's dtype once; an odd size
    along ``dim`` is rejected (the meta function would floor it, leaving the split undefined).
    """
    if self.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"npu_swiglu: x must be float16, bfloat16 or float32, got {self.dtype} "
                        "(doc: npu_swiglu 'x' dtype)")
    if not 1 <= self.dim() <= 8:
        raise ValueError(f"npu_swiglu: x must have 1..8 dims, got shape {tuple(self.shape)} "
                         "(doc: npu_swiglu 'x' shape)")
    size = self.size(dim)
    if size % 2:
        raise ValueError(f"npu_swiglu: size {size} of dim {dim} must be even (split into halves "
                         "A and B; doc: npu_swiglu formula)")
    a, b = self.float().split(size // 2, dim=dim)
    return (torch.nn.functional.silu(a) * b).to(self.dtype)


@npu_op("npu_fast_gelu(Tensor self) -> Tensor", fake=lambda self: self.new_empty(self.shape))
def npu_fast_gelu(self: torch.Tensor) -> torch.Tensor:
    """torch_npu.npu_fast_gelu (doc entry ``npu_fast_gelu``), the Atlas A2/A3 formula (formula 2):
    x / (1 + exp(-1.702 x)) = x * sigmoid(1.702 x), i.e. QuickGELU. (Formula 1, of older Atlas
    products, equals it for every x.) Assumption: computed in float32, rounded once."""
    if self.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"npu_fast_gelu: input must be float16, bfloat16 or float32, got "
                        f"{self.dtype} (doc: npu_fast_gelu 'input', Atlas A2/A3)")
    if self.dim() > 8:
        raise ValueError(f"npu_fast_gelu: at most 8 dims, got {tuple(self.shape)} "
                         "(doc: npu_fast_gelu 'input')")
    x = self.float()
    return (x * torch.sigmoid(1.702 * x)).to(self.dtype)
